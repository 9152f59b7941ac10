"""Child processes we start in their own process group (trainer trials, pip, git, check scripts), and the
initializer of our worker-process pools."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

PARENT_CHECK_S = 0.5  # how often a pool worker looks whether the process that made the pool still lives


def parent_identity() -> tuple[int, float]:
    """(pid, create time) of this process: what `pool_worker_init` watches (a reused pid is not taken for it)."""
    import psutil

    try:
        return os.getpid(), psutil.Process().create_time()
    except psutil.Error:
        return os.getpid(), 0.0


def pool_worker_init(parent_pid: int, parent_created: float = 0.0) -> None:
    """Initializer of a worker process of our pools (`initializer=pool_worker_init, initargs=parent_identity()`).

    * Ctrl-C is the parent's: a terminal sends SIGINT to the whole foreground group, workers included, and a worker
      that died of KeyboardInterrupt mid-image broke the pool. The parent cancels and shuts the pool down instead
      (workers finish the image in hand, so no half-written temp file stays behind).
    * A worker whose parent is gone (kill -9, OOM killer) exits: otherwise it waits forever for work, since every
      worker holds the write end of the pool's queue (and of the forkserver's liveness pipe). A daemon thread checks
      every PARENT_CHECK_S. Not PR_SET_PDEATHSIG: with the forkserver start method (ours on Linux) a worker's parent
      is the forkserver, which itself only ends once the workers have, and the signal follows the parent *thread*.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watcher = threading.Thread(target=_exit_when_gone, args=(parent_pid, parent_created), name="parent-watch",
                               daemon=True)
    watcher.start()


def _exit_when_gone(pid: int, created: float, every: float = PARENT_CHECK_S) -> None:
    while True:
        if not _alive(pid, created):
            os._exit(1)
        time.sleep(every)


def _alive(pid: int, created: float) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        if created and abs(process.create_time() - created) > 0.05:
            return False  # the pid was reused
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


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
