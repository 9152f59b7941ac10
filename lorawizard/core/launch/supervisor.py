"""`python supervisor.py RUN_DIR -- ARGV...`: the session leader of a detached training run (stdlib only).

It runs ARGV (the accelerate command) as its child with the inherited stdout/stderr (the run's train.log), waits,
and writes `RUN_DIR/exit.json` with the child's status, so a wizard that reattaches later (not the parent) still
learns how the run ended. SIGINT and SIGTERM sent to the process group reach the trainer; this process only notes
them and keeps waiting (handlers, not SIG_IGN, so the child starts with default signal handling). Stdlib only.

Then, once, `train.on_finish` (an argv list from run.json's `extra.on_finish`; never a shell) runs in its own
session with LORAWIZARD_RUN_STATUS (finished | failed | stopped), LORAWIZARD_RUN_DIR and LORAWIZARD_LORA in its
environment, under a time limit; how it went is added to exit.json and to the log. It never changes the run's result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXIT_FILE = "exit.json"
RUN_FILE = "run.json"
ON_FINISH_TIMEOUT_S = 60.0


def _write(path: Path, data: dict[str, object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python supervisor.py RUN_DIR -- ARGV...\n")
        return 2
    run_dir, command = Path(argv[0]), argv[2:]
    received: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, frame: received.append(number))
    started = time.time()
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        sys.stderr.write(f"lorawizard: cannot start the trainer: {exc}\n")
        _write(run_dir / EXIT_FILE, {"returncode": 127, "started": started, "ended": time.time(), "error": str(exc)})
        return 127
    code = child.wait()
    info: dict[str, Any] = {"returncode": code, "child_pid": child.pid, "started": started, "ended": time.time(),
            "signals": sorted(set(received))}
    _write(run_dir / EXIT_FILE, info)  # first: the run has ended, whatever on_finish does
    record = _read_json(run_dir / RUN_FILE)
    on_finish = (record.get("extra") or {}).get("on_finish")
    if on_finish:
        info["on_finish"] = run_on_finish(on_finish, run_dir, run_status(run_dir, code, received, record), record)
        sys.stdout.write(f"lorawizard: on_finish: {info['on_finish']['line']}\n")
        sys.stdout.flush()
        _write(run_dir / EXIT_FILE, info)
    return code if code >= 0 else 128 - code


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _log_says_saved(run_dir: Path) -> bool:
    try:
        with open(run_dir / "train.log", "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - (1 << 16)))
            return b"model saved." in handle.read()
    except OSError:
        return False


def run_status(run_dir: Path, code: int, received: list[int], record: dict[str, Any]) -> str:
    if code == 0 and _log_says_saved(run_dir):
        return "finished"
    stopped = record.get("stop_requested") or _read_json(run_dir / RUN_FILE).get("stop_requested")
    if stopped or signal.SIGINT in received or signal.SIGTERM in received:
        return "stopped"
    return "failed"


def run_on_finish(command: list[Any], run_dir: Path, status: str, record: dict[str, Any],
                  timeout: float | None = None) -> dict[str, Any]:
    """Run the on_finish argv once; returns {status, returncode, line} (never raises)."""
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        return {"ok": False, "returncode": None, "line": "train.on_finish must be a list of strings; not run"}
    timeout = float(record.get("extra", {}).get("on_finish_timeout", ON_FINISH_TIMEOUT_S)) if timeout is None else timeout
    lora = run_dir / f"{record.get('output_name') or ''}.safetensors"
    env = dict(os.environ)
    env.update({"LORAWIZARD_RUN_STATUS": status, "LORAWIZARD_RUN_DIR": str(run_dir),
                "LORAWIZARD_LORA": str(lora) if status == "finished" and lora.is_file() else ""})
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env, cwd=run_dir, start_new_session=True)
    except OSError as exc:
        return {"ok": False, "returncode": None, "line": f"cannot run {command[0]!r}: {exc.strerror or exc}"}
    try:
        returncode = process.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        process.wait()
        return {"ok": False, "returncode": None, "line": f"{command[0]!r} did not end within {timeout:g} s; killed"}
    if returncode != 0:
        return {"ok": False, "returncode": returncode, "line": f"{command[0]!r} exited with status {returncode}"}
    return {"ok": True, "returncode": 0, "line": f"{command[0]!r} ran (run {status})"}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
