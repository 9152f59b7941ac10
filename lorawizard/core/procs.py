"""Child processes we start in their own process group (trainer trials, pip, git, check scripts)."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def kill_process_group(process: subprocess.Popen[Any], grace: float = 3.0, final_wait: float = 10.0) -> None:
    """SIGTERM to the whole group (a launcher and its children), then SIGKILL if it is still there after `grace`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, final_wait)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # children left in the group: accelerate's trainer outlives a SIGTERMed launcher
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
