"""A run's processes found from the system, not from its files: a process matched by pid and start time (a pid
reused by another program is not the run's), the living members of a run's process group, and every living
process of a project's runs, found by the environment the supervisor gave them. What survives a kill -9 of the
supervisor or a deleted run folder (issue 23 A2, A4): `runs` decides from these whether a run lives.
"""

from __future__ import annotations

import os
from pathlib import Path

CREATE_TIME_TOLERANCE = 0.05  # psutil's create_time has ~10 ms resolution


def process_matches(pid: int, create_time: float) -> bool:
    """True when process `pid` exists, is not a zombie, and was created at `create_time` (so not a reused pid)."""
    if pid <= 0:
        return False
    import psutil

    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > CREATE_TIME_TOLERANCE:
            return False
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


RUN_ID_ENV, PROJECT_ENV = "LORAWIZARD_RUN_ID", "LORAWIZARD_PROJECT"
RUN_DIR_ENV = "LORAWIZARD_RUN_DIR"  # the run's folder (a variant's is <runs>/variants/<name>/<run-id>)
GPU_ENV = "LORAWIZARD_GPU"  # the one GPU a run was pinned to (a queue's runs side by side: one per GPU)
GROUP_ENV = "LORAWIZARD_RUN_GROUP"  # supervisor.GROUP_ENV (stdlib only, so it repeats it): set for its child
_PROC = Path("/proc")


def _environ(pid: int, marker: bytes) -> dict[str, str] | None:
    """The environment process `pid` started with, when it contains `marker` (else None: not ours, gone, a zombie)."""
    if _PROC.is_dir():
        try:
            data = (_PROC / str(pid) / "environ").read_bytes()
        except OSError:
            return None
        if marker not in data:
            return None
        pairs = (item.partition(b"=") for item in data.split(b"\0"))
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, sep, v in pairs if sep}
    import psutil

    try:
        env: dict[str, str] = psutil.Process(pid).environ()
    except psutil.Error:
        return None
    return env if any(marker.decode() in f"{k}={v}" for k, v in env.items()) else None


def _pids() -> list[int]:
    import psutil

    return [pid for pid in psutil.pids() if pid != os.getpid()]


def group_processes(pgid: int, run_id: str) -> list[int]:
    """Pids of the living processes of run `run_id` in process group `pgid` (each one's environment names the run,
    so a group id reused after the run has gone is never taken for it)."""
    if pgid <= 0:
        return []
    try:
        os.killpg(pgid, 0)  # one call says whether the group has any process at all
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    found = []
    for pid in _pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
        except OSError:
            continue
        env = _environ(pid, f"{RUN_ID_ENV}=".encode())
        if env is not None and env.get(RUN_ID_ENV) == run_id:
            found.append(pid)
    return found


def project_processes(project_dir: Path | str) -> dict[str, tuple[int, list[int]]]:
    """The living trainer processes (launcher, trainer, ranks) of every run of this project, found by their
    environment, whatever happened to run.json or the run folder: run id -> (process group, pids)."""
    key = str(Path(project_dir).resolve())
    found: dict[str, tuple[int, list[int]]] = {}
    for pid in _pids():
        env = _environ(pid, f"{GROUP_ENV}=".encode())
        if env is None or env.get(PROJECT_ENV) != key:
            continue
        try:
            pgid = os.getpgid(pid)
        except OSError:
            continue
        if env.get(GROUP_ENV) != str(pgid):  # a child that left the run's group is not taken for a run
            continue
        run_id = env.get(RUN_ID_ENV, "")
        found.setdefault(run_id, (pgid, []))[1].append(pid)
    return found


def run_env(pgid: int, run_id: str, key: str) -> str | None:
    """`key` in the environment the processes of run `run_id` (group `pgid`) were started with; None when unset."""
    for pid in group_processes(pgid, run_id):
        env = _environ(pid, f"{key}=".encode())
        if env is not None and env.get(key):
            return env[key]
    return None


def run_dir_of(pgid: int, run_id: str) -> Path | None:
    """The run folder the processes of run `run_id` (group `pgid`) were started for, from their environment."""
    found = run_env(pgid, run_id, RUN_DIR_ENV)
    return Path(found) if found else None
