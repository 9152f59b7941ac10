"""Run one of the trainer's LoRA tools: its own process group, its output logged, progress and ETA from its bars.

* The tool runs in a new session (`start_new_session`): a cancel (Ctrl-C in replay, esc in the wizard) ends the whole
  group (SIGTERM, then SIGKILL: core.common.procs.kill_process_group), and a terminal's Ctrl-C never reaches it
  directly (the step decides).
* It writes under a temp name beside the final one (`.<name>.part-<pid>.safetensors`: the tools insist on the suffix);
  only a complete safetensors file (header and every tensor's bytes) is renamed to the final name. A crash, a cancel
  or a cut-short file leaves nothing under the final name, and the temp file is removed.
* stdout and stderr go, as raw bytes, to `<project>/.lorawizard/loratools/<when>-<what>.log`; lines are split at
  `\\r` and `\\n` (tqdm redraws with `\\r`). A tqdm bar (`merging: 40%|████ | 2/5 [00:03<00:04, 1.2it/s]`) becomes
  progress with the rate and ETA of core.common.progress.ProgressMeter; the tool's other lines name the phase.
  `COLUMNS` is set wide so rich's log lines are not wrapped at 80 columns.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from lorawizard.core.common.procs import kill_process_group
from lorawizard.core.common.progress import LogCallback, ProgressCallback, ProgressMeter, ignore_progress
from lorawizard.core.common.text import one_line
from lorawizard.core.contract import Cancelled
from lorawizard.core.launch.supervisor import lora_metadata
from lorawizard.core.loratools.commands import ToolCommand

BAR = re.compile(r"(?:^|\s)(?:(?P<label>[^|%]*?):\s*)?(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)\s*\[")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*(?:\x07|\x1b\\)")
# rich's log line: `2026-… INFO     message      file.py:123`; what a person reads is the message
LOG_LINE = re.compile(r"^\s*(?:\d{4}-\d\d-\d\d[ T][\d:.,]+\s+)?(?:INFO|WARNING|ERROR|DEBUG|CRITICAL)\s+"
                      r"(?P<message>.*?)(?:\s{2,}\S+\.py:\d+)?\s*$")
PATH_TAIL = re.compile(r"\s+(?:from|to|at)\s+\S*[/\\]\S*$")  # "Loading t5xxl from /m/t5.safetensors" → "Loading t5xxl"
KEEP_LINES = 4000  # lines of the tool's output kept in memory (the log file has all of it)


@dataclass
class ToolRun:
    returncode: int
    log: Path
    lines: list[str] = field(default_factory=list)  # its output, split at \r and \n, bars dropped
    seconds: float = 0.0

    def tail(self, count: int = 3) -> str:
        """The last lines a person should see after a failure (a traceback's last line is its message)."""
        meaningful = [line for line in self.lines if line.strip()]
        return " | ".join(one_line(line)[:200] for line in meaningful[-count:])

    def error_line(self) -> str:
        """The tool's own one-line reason: the last `SomethingError: …` line, else its last line."""
        for line in reversed(self.lines):
            stripped = line.strip()
            if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", stripped):
                return one_line(stripped)[:300]
        return self.tail(1)


def message_of(line: str) -> str:
    """A log line without rich's time, level and `file.py:NN` columns."""
    match = LOG_LINE.match(line)
    return match.group("message").strip() if match else line.strip()


def temp_name(final: Path) -> Path:
    return final.with_name(f".{final.stem}.part-{os.getpid()}-{threading.get_ident() % 10000}{final.suffix}")


class _Reader:
    """Reads the tool's combined output: raw bytes to the log, lines (split at \\r/\\n) to a bounded deque, bars to
    the meter of the current phase."""

    def __init__(self, proc: subprocess.Popen[bytes], log_file: Path, progress: ProgressCallback, step: str,
                 what: str, log: LogCallback) -> None:
        self.proc, self.log_file, self.progress, self.step, self.what = proc, log_file, progress, step, what
        self.log = log
        self.lines: deque[str] = deque(maxlen=KEEP_LINES)
        self.phase = what
        self.meter: ProgressMeter | None = None
        self._meter_key: tuple[str, int] | None = None
        self.thread = threading.Thread(target=self._run, name=f"{what}-output", daemon=True)

    def _run(self) -> None:
        assert self.proc.stdout is not None  # noqa: S101
        pending = b""
        with open(self.log_file, "ab") as log:
            while True:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                pending += chunk
                parts = re.split(rb"[\r\n]", pending)
                pending = parts.pop()
                for raw in parts:
                    self._line(raw.decode("utf-8", "replace"))
        if pending:
            self._line(pending.decode("utf-8", "replace"))

    def _line(self, text: str) -> None:
        text = ANSI.sub("", text)
        bar = BAR.search(text)
        if bar is None:
            if text.strip():
                self.lines.append(text)
                message = message_of(text)
                if message.endswith(("...", "…")) and len(message) < 400:  # "merging...", "Generating image..."
                    phase = PATH_TAIL.sub("", message.rstrip(".… "))[:60]
                    if phase and phase != self.phase:
                        self.phase = phase
                        self.log(f"{self.what}: {phase}…")
            return
        done, total = int(bar.group("done")), int(bar.group("total"))
        label = (bar.group("label") or "").strip() or self.phase
        key = (label, total)
        if self.meter is None or key != self._meter_key:
            self._meter_key = key
            task = label if self.what == self.step else f"{self.what}: {label}"
            self.meter = ProgressMeter(self.progress, self.step, task, total, "it", interval=0.5)
        if done >= total:
            self.meter.update(done)
            self.meter.finish()
        else:
            self.meter.update(done)


def run_tool(command: ToolCommand, *, log: Path, step: str, final: Path | None = None,
             progress: ProgressCallback = ignore_progress, cancel: threading.Event | None = None,
             timeout_s: float | None = None, log_line: LogCallback = lambda line: None) -> ToolRun:
    """Run `command` to the end (or until `cancel`: Cancelled after its group is gone, no temp file left). With
    `final`, the command's output (a temp name) is renamed to `final` when the tool succeeded and the file is a
    complete safetensors file; otherwise removed (returncode 0 with no complete file counts as a failure: 1).
    `log_line` hears each new phase the tool announces ("merge: loading…"): long steps without a bar."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        handle.write(f"$ {command.shell_text()}\n".encode())
    env = {**os.environ, "COLUMNS": "400", "PYTHONIOENCODING": "utf-8", **command.env}
    started = time.monotonic()
    try:
        proc = subprocess.Popen(command.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(command.cwd), env=env, start_new_session=True)
    except OSError as exc:
        return ToolRun(127, log, [f"cannot start {command.argv[0]}: {exc.strerror or exc}"])
    reader = _Reader(proc, log, progress, step, command.what, log_line)
    reader.thread.start()
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                kill_process_group(proc, grace=3.0)
                raise Cancelled()
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                kill_process_group(proc, grace=3.0)
                reader.thread.join(5)
                return ToolRun(124, log, [*reader.lines, f"stopped after {timeout_s:g} s"],
                               time.monotonic() - started)
            time.sleep(0.1)
    except BaseException:
        if proc.poll() is None:
            kill_process_group(proc, grace=3.0)
        _remove(command.output if final is not None else None)
        raise
    reader.thread.join(10)
    code = proc.returncode
    result = ToolRun(code, log, list(reader.lines), time.monotonic() - started)
    if final is not None:
        if code == 0 and lora_metadata(command.output) is not None:
            os.replace(command.output, final)
        else:
            _remove(command.output)
            if code == 0:
                result.returncode = 1
                result.lines.append(f"the tool ended without writing a complete {command.output.suffix} file")
    return result


def _remove(path: Path | None) -> None:
    if path is not None and path.suffix and path.name.startswith("."):
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            pass
