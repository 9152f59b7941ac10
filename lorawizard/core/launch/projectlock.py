"""One writer per project: an OS file lock on `<project>/.lorawizard/project.lock`.

Whatever launches, stops or otherwise changes a training run takes it first and keeps it for the rest of the
process (the kernel drops it when the process ends, even on kill -9, so there is never a stale lock to clean).
It is an `flock`, not a pid file: the pid written into the file only names the holder in the refusal message.
Reading (dashboards following a live run, listing runs) never needs it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

LOCK_NAME = "project.lock"
_held: dict[Path, int] = {}  # project dir -> fd of the lock this process holds
_guard = threading.Lock()


class ProjectBusy(Exception):
    """Another process holds the project; `pid` names it (None when it could not be read)."""

    def __init__(self, project: Path, pid: int | None, what: str) -> None:
        self.project, self.pid, self.what = project, pid, what
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"{holder}{f' ({what})' if what else ''} holds this project")


def lock_path(project_dir: Path) -> Path:
    return Path(project_dir) / ".lorawizard" / LOCK_NAME


def claim(project_dir: Path, what: str) -> None:
    """Take the project lock for the life of this process (no-op when this process has it already).

    `what` says who holds it ("replay", "wizard"). Raises ProjectBusy at once instead of waiting, OSError when the
    lock file cannot be written (a read-only project folder, a full disk): `lock_problem` says that in one line."""
    key = Path(project_dir).resolve()
    with _guard:
        if key in _held:
            return
        path = lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid, holder_what = _read_holder(path)
            raise ProjectBusy(key, pid, holder_what) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        except OSError:  # a full disk: the lock is not taken (the caller says so in one line)
            os.close(fd)
            raise
        _held[key] = fd


def lock_problem(project_dir: Path, exc: OSError) -> str:
    """One line for a lock that could not be taken because of the folder or the disk."""
    from lorawizard.core.common.fsutil import display_path

    hint = {errno.EROFS: "; choose a writable project folder", errno.ENOSPC: "; free some space and run it again",
            errno.EDQUOT: "; free some space and run it again"}.get(exc.errno or 0, "")
    return f"cannot take the project lock {display_path(lock_path(project_dir))}: {exc.strerror or exc}{hint}"


def holds(project_dir: Path) -> bool:
    return Path(project_dir).resolve() in _held


def held_fd(project_dir: Path) -> int | None:
    """The descriptor of the lock this process holds (to hand it to a child that carries on: `adopt`)."""
    return _held.get(Path(project_dir).resolve())


def adopt(project_dir: Path, fd: int, what: str) -> None:
    """Hold the lock a parent handed over as inherited descriptor `fd` (an flock belongs to the open file, so the
    child holds it on after the parent ends): the detached queue takes its launcher's lock with no moment free."""
    key = Path(project_dir).resolve()
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already (shared open file): succeeds; else ProjectBusy
    with _guard:
        _held[key] = fd
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
    except OSError:
        pass  # the holder's name is only for messages


def release(project_dir: Path) -> None:
    """Give the lock back early (tests; a process that ends releases it anyway)."""
    with _guard:
        fd = _held.pop(Path(project_dir).resolve(), None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the open file drops the flock


def _read_holder(path: Path, wait_s: float = 1.0) -> tuple[int | None, str]:
    # The holder writes its pid just after locking; until then the file is empty or names an ended holder.
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid_text, _, what = path.read_text(encoding="utf-8", errors="replace").strip().partition(" ")
            pid = int(pid_text)
            os.kill(pid, 0)
            return pid, what.strip()[:40]
        except PermissionError:  # alive, someone else's
            return pid, what.strip()[:40]
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return None, ""
            time.sleep(0.02)
