"""`python runsupervisor.py RUN_DIR -- ARGV...`: the session leader of a detached training run (stdlib only).

It runs ARGV (the accelerate command) as its child with the inherited stdout/stderr (the run's train.log), waits,
and writes `RUN_DIR/exit.json` with the child's status, so a wizard that reattaches later (not the parent) still
learns how the run ended. SIGINT and SIGTERM sent to the process group reach the trainer; this process only notes
them and keeps waiting (handlers, not SIG_IGN, so the child starts with default signal handling). Stdlib only.
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

EXIT_FILE = "exit.json"


def _write(path: Path, data: dict[str, object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python runsupervisor.py RUN_DIR -- ARGV...\n")
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
    _write(run_dir / EXIT_FILE, {
        "returncode": code, "child_pid": child.pid, "started": started, "ended": time.time(),
        "signals": sorted(set(received)),
    })
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
