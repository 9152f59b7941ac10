"""`python supervisor.py RUN_DIR -- ARGV...`: the session leader of a detached training run (stdlib only).

It runs ARGV (the accelerate command) as its child with the inherited stdout/stderr (the run's train.log), waits,
and writes `RUN_DIR/exit.json` with the child's status, so a wizard that reattaches later (not the parent) still
learns how the run ended. SIGINT and SIGTERM sent to the process group reach the trainer; this process only notes
them and keeps waiting (handlers, not SIG_IGN, so the child starts with default signal handling). Stdlib only.

Then, once, `train.on_finish` (an argv list from run.json's `extra.on_finish`; never a shell) runs in its own
session with LORAWIZARD_RUN_STATUS (finished | failed | stopped), LORAWIZARD_RUN_DIR and LORAWIZARD_LORA in its
environment, under a time limit; its output goes to its own bounded log (`RUN_DIR/on_finish.log`, at most
ON_FINISH_LOG_BYTES), one line about how it went is added to exit.json and to train.log. It never changes the run's
result, which is decided from files, never from the log: the trainer's exit status and the final LoRA
(`<output_name>.safetensors`, a complete safetensors file) — `exit.json`'s `status`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

EXIT_FILE = "exit.json"
RUN_FILE = "run.json"
GROUP_ENV = "LORAWIZARD_RUN_GROUP"  # processes.GROUP_ENV
TRAINER_FILE = "trainer.json"  # the trainer's pid, start time and group (note_trainer)
ON_FINISH_TIMEOUT_S = 60.0
ON_FINISH_LOG = "on_finish.log"
ON_FINISH_LOG_BYTES = 1 << 20  # the hook's output kept (the rest is counted, not kept)
HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is not a LoRA's
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # never passed to the trainer or the hook
# The launcher writes run.json once this process has started (it needs its pid): a run that ends first waits this
# long for it, as the output name (the final LoRA's) and on_finish are in it.
RUN_FILE_WAIT_S = 30.0


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
        # the trainer's processes carry the run's group (the hook, started with this process's own environment, does
        # not): processes.project_processes finds them even when run.json and the run folder are gone
        child = subprocess.Popen(command, env={**os.environ, GROUP_ENV: str(os.getpgrp())})
    except OSError as exc:
        sys.stderr.write(f"lorawizard: cannot start the trainer: {exc}\n")
        _write(run_dir / EXIT_FILE, {"returncode": 127, "started": started, "ended": time.time(), "error": str(exc)})
        return 127
    note_trainer(run_dir, child.pid)
    code = child.wait()
    record = _run_record(run_dir / RUN_FILE)
    status = run_status(run_dir, code, received, record)
    info: dict[str, Any] = {"returncode": code, "child_pid": child.pid, "started": started, "ended": time.time(),
            "signals": sorted(set(received)), "status": status}
    _write(run_dir / EXIT_FILE, info)  # first: the run has ended, whatever on_finish does
    on_finish = (record.get("extra") or {}).get("on_finish")
    if on_finish:
        info["on_finish"] = run_on_finish(on_finish, run_dir, status, record)
        sys.stdout.write(f"lorawizard: on_finish: {info['on_finish']['line']}\n")
        sys.stdout.flush()
        _write(run_dir / EXIT_FILE, info)
    return code if code >= 0 else 128 - code


def note_trainer(run_dir: Path, pid: int) -> None:
    """`RUN_DIR/trainer.json`: the trainer's (launcher's) pid, start time and process group, recorded at launch (best
    effort: a run folder that cannot be written changes nothing; the group is found by its processes anyway)."""
    try:
        _write(run_dir / TRAINER_FILE, {"pid": pid, "create_time": _create_time(pid), "pgid": os.getpgrp()})
    except OSError:
        pass


def _create_time(pid: int) -> float | None:
    """A process's start time as psutil reports it (boot time + start ticks), from /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _run_record(path: Path, wait_s: float = RUN_FILE_WAIT_S) -> dict[str, Any]:
    """run.json, waiting up to `wait_s` for the launcher to write it (a run shorter than the launcher's next step:
    judged without it, its final LoRA was looked for under the wrong name and the run said "failed"); {} without."""
    deadline = time.monotonic() + wait_s
    while not path.exists() and path.parent.is_dir() and time.monotonic() < deadline:  # a deleted folder: no wait
        time.sleep(0.05)
    return _read_json(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lora_metadata(path: Path) -> dict[str, str] | None:
    """The `__metadata__` of a complete safetensors file ({} when it has none); None when `path` is not one (missing,
    truncated, a header that is not JSON). Reads the header only: 8 bytes of little-endian length, then JSON."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            length = int.from_bytes(handle.read(8), "little")
            if not 2 <= length <= min(HEADER_LIMIT, size - 8):
                return None
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return None
        end = max(end, offsets[1])
    if 8 + length + end > size:  # the tensors are not all there: a save cut short
        return None
    metadata = header.get("__metadata__")
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def final_lora(run_dir: Path, output_name: str) -> Path:
    """Where sd-scripts writes the run's final LoRA (it never numbers the last epoch)."""
    return Path(run_dir) / f"{output_name or 'last'}.safetensors"


def run_status(run_dir: Path, code: int, received: list[int], record: dict[str, Any]) -> str:
    """finished (status 0 and the final LoRA complete on disk) | stopped | failed — from files, never the log."""
    if code == 0 and lora_metadata(final_lora(run_dir, str(record.get("output_name") or ""))) is not None:
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
    lora = final_lora(run_dir, str(record.get("output_name") or ""))
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update({"LORAWIZARD_RUN_STATUS": status, "LORAWIZARD_RUN_DIR": str(run_dir),
                "LORAWIZARD_LORA": str(lora) if status == "finished" and lora.is_file() else ""})
    try:
        log = open(run_dir / ON_FINISH_LOG, "wb")  # noqa: SIM115 - closed by _copy_bounded's thread
    except OSError as exc:
        return {"ok": False, "returncode": None, "line": f"cannot write {ON_FINISH_LOG}: {exc.strerror or exc}"}
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=env, cwd=run_dir, start_new_session=True)
    except OSError as exc:
        log.close()
        reason = "an empty program name" if not command[0] else repr(command[0])
        return {"ok": False, "returncode": None, "line": f"cannot run {reason}: {exc.strerror or exc}"}
    copier = threading.Thread(target=_copy_bounded, args=(process.stdout, log), daemon=True)
    copier.start()
    try:
        returncode = process.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        process.wait()
        copier.join(5)
        return {"ok": False, "returncode": None, "line": f"{command[0]!r} did not end within {timeout:g} s; killed"}
    copier.join(5)  # a grandchild that keeps the pipe open is not waited for
    if returncode != 0:
        return {"ok": False, "returncode": returncode, "line": f"{command[0]!r} exited with status {returncode}"}
    return {"ok": True, "returncode": 0, "line": f"{command[0]!r} ran (run {status})"}


def _copy_bounded(source: Any, log: Any, limit: int = ON_FINISH_LOG_BYTES) -> None:
    """The hook's output into its log: the first `limit` bytes, then a note of how much more there was."""
    kept = dropped = 0
    try:
        while True:
            data = source.read1(1 << 16)
            if not data:
                break
            room = max(0, limit - kept)
            log.write(data[:room])
            kept += min(room, len(data))
            dropped += max(0, len(data) - room)
        if dropped:
            log.write(f"\n[lorawizard: {dropped} more bytes of output not kept]\n".encode())
    except (OSError, ValueError):
        pass
    finally:
        log.close()
        source.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
