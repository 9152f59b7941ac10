"""A pretend terminal for tests and benches: runs a command in a real pty at 80×24 and answers DA1 like tmux.

`PtyTerminal.start(argv)`; `.wait_for(b"text")`; `.send(b"keys")`; `.close()`. Output is kept raw (escape codes).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time

DA1_QUERY = b"\x1b[c"
DA1_REPLY = b"\x1b[?1;2c"  # what tmux 3.3a answers: VT100 with advanced video, no sixel


class PtyTerminal:
    def __init__(self, pid: int, fd: int, *, answer_da1: bool) -> None:
        self.pid, self.fd, self.answer_da1 = pid, fd, answer_da1
        self.output = b""
        self.started = time.perf_counter()
        self.queries_answered = 0

    @classmethod
    def start(cls, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
              answer_da1: bool = True, size: tuple[int, int] = (80, 24)) -> PtyTerminal:
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes the app
            try:
                if cwd:
                    os.chdir(cwd)
                os.execvpe(argv[0], argv, env if env is not None else os.environ)
            finally:
                os._exit(127)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        return cls(pid, fd, answer_da1=answer_da1)

    def pump(self, wait: float = 0.05) -> bool:
        """Read what the app wrote; answer DA1 queries. False once the app has gone."""
        if not select.select([self.fd], [], [], wait)[0]:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            return False
        if not data:
            return False
        if self.answer_da1 and DA1_QUERY in self.output[-2:] + data:
            self.queries_answered += 1
            os.write(self.fd, DA1_REPLY)
        self.output += data
        return True

    def wait_for(self, marker: bytes, timeout: float = 20.0) -> float:
        """Seconds from start until `marker` appears in the output (TimeoutError otherwise)."""
        deadline = time.perf_counter() + timeout
        while marker not in self.output:
            if time.perf_counter() > deadline or not self.pump():
                raise TimeoutError(f"{marker!r} not seen; output tail: {self.output[-400:]!r}")
        return time.perf_counter() - self.started

    def linger(self, seconds: float) -> None:
        """Keep reading (and answering) for a while."""
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline and self.pump(0.02):
            pass

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait_exit(self, timeout: float = 10.0) -> int | None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self.pump(0.02)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
        return None

    def close(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = 0
        try:
            os.close(self.fd)
        except OSError:
            pass
