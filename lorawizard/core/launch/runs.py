"""Detached training runs: launch, find, reattach, stop, resume.

A run lives in `<paths.runs>/<run-id>/`: `train.log` (stdout+stderr of the trainer, raw bytes), `run.json` (the
command, pid and process create-time of the run's session leader, start time, a copy of session.toml, the absolute
step/epoch it started from, its process group), `trainer.json` (the trainer's pid, start time and group, written by the
supervisor at launch), `exit.json` (written by the supervisor when the trainer ends), plus everything the
trainer writes there (checkpoints, `-state` folders, samples, TensorBoard logs, the two generated config files).

The session leader is `lorawizard.core.launch.supervisor` (our own small Python process) in a new session
(`start_new_session=True`), so closing or killing the wizard or losing SSH does not touch the run, the process group
id equals its pid, and `os.killpg` reaches accelerate and the trainer (accelerate does not forward signals).
A run is "live" only when a process with the recorded pid *and* create-time exists: a reused pid is never taken
for it.

The process group is the truth about a run (issue 23): the trainer stays in the supervisor's group when the supervisor
is killed with kill -9, and it re-creates a run folder that was deleted under it. So run.json records the group
(`pgid`), every process of a run carries `LORAWIZARD_RUN_ID` (and, below the supervisor, `LORAWIZARD_PROJECT` and
`LORAWIZARD_RUN_GROUP`) in its environment, and a run is live while any of its processes lives: `--status`, `--stop`,
the wizard and every launch look at the group, and `project_processes` finds a run whose records are gone.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from lorawizard.core.common.fsutil import atomic_write_json
from lorawizard.core.launch.processes import (
    CREATE_TIME_TOLERANCE,
    GPU_ENV,
    PROJECT_ENV,
    RUN_DIR_ENV,
    RUN_ID_ENV,
    group_processes,
    process_matches,
    project_processes,
    run_dir_of,
    run_env,
)
from lorawizard.core.launch.supervisor import EXIT_FILE, SECRET_ENV, TRAINER_FILE, final_lora, lora_metadata

RUN_FILE = "run.json"
LOG_FILE = "train.log"
# how long a stop waits after SIGINT, then SIGTERM, then SIGKILL: the wizard's s, `--stop` and Ctrl-C in replay alike
STOP_INT_S, STOP_TERM_S, STOP_KILL_S = 60.0, 15.0, 5.0
_children: dict[int, subprocess.Popen[bytes]] = {}  # runs started by this process (reaped by poll())
RunStatus = Literal["running", "finished", "failed", "stopped", "lost"]  # lost: ended without telling how


class RunError(Exception):
    """A run could not be started, found or stopped; the message is one line meant for a person."""


@dataclass
class RunRecord:
    run_id: str
    dir: Path
    argv: list[str]
    env: dict[str, str]  # what lorawizard set (not the inherited environment)
    cwd: str
    pid: int = 0
    create_time: float = 0.0
    pgid: int = 0  # the run's process group (the supervisor's pid; 0 in records written before it was kept: pid)
    started: str = ""  # ISO time
    started_ts: float = 0.0
    session_text: str = ""
    output_name: str = ""
    base_step: int = 0  # absolute step at which this run started (0, or the step of the state it resumed)
    base_epoch: int = 0
    resumed_from: str | None = None  # state folder
    gpu_uuid: str | None = None
    stop_requested: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.dir / LOG_FILE

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        data["version"] = 1
        atomic_write_json(self.dir / RUN_FILE, data)

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        path = Path(run_dir) / RUN_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunError(f"{path}: not a readable run record ({exc})") from None
        if not isinstance(data, dict):
            raise RunError(f"{path}: not a run record (a JSON object was expected, got {type(data).__name__})")
        data.pop("version", None)
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key, value in values.items():
            problem = _field_problem(key, value)
            if problem:
                raise RunError(f"{path}: {key}: expected {problem}, got {json.dumps(value)[:40]}")
        values["dir"] = Path(run_dir)
        try:
            return cls(**values)
        except TypeError as exc:
            raise RunError(f"{path}: incomplete run record ({exc})") from None

    def reload(self) -> RunRecord:
        """The record as run.json says now (e.g. after a stop); this one when the file became unreadable."""
        try:
            return RunRecord.load(self.dir)
        except RunError:
            return self

    # -- state

    def exit_info(self) -> dict[str, Any] | None:
        try:
            info = json.loads((self.dir / EXIT_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    @property
    def group(self) -> int:
        return self.pgid or self.pid

    def trainer(self) -> tuple[int, float | None] | None:
        """The trainer's (launcher's) pid and start time, as the supervisor recorded them at launch (trainer.json);
        None when it is not there. Only while `process_matches` says so is that pid still the trainer."""
        try:
            data = json.loads((self.dir / TRAINER_FILE).read_text(encoding="utf-8"))
            pid, created = data["pid"], data.get("create_time")
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not _is_int(pid) or not (created is None or _is_number(created)):
            return None
        return pid, created

    def trainer_pids(self) -> list[int]:
        """This run's living processes in its group, less a supervisor that has written exit.json (it then only runs
        on_finish, in a session of its own): the launcher and the trainer even after kill -9 of the supervisor."""
        pids = group_processes(self.group, self.run_id)
        if pids and (self.dir / EXIT_FILE).exists():
            pids = [pid for pid in pids if pid not in (self.pid, self.group)]
        return pids

    def is_alive(self) -> bool:
        """The trainer is running: the leader lives and has not yet written exit.json (then it may run on_finish), or
        any other process of the run's group lives (a supervisor killed with kill -9 leaves the trainer running)."""
        if process_matches(self.pid, self.create_time) and not (self.dir / EXIT_FILE).exists():
            return True
        return bool(self.trainer_pids())

    def status(self) -> RunStatus:
        """running | finished | failed | stopped | lost (ended without telling how: killed with its supervisor)."""
        _reap(self.pid)
        info = self.exit_info()  # written when the trainer ends, before on_finish runs (the leader may live on)
        if self.is_alive():  # the group is the truth: a trainer outliving its supervisor or its exit.json runs
            return "running"
        # decided from files, never from the log (a hook's output may follow `model saved.`): the supervisor's exit
        # record says it when the trainer ended, else the exit status and the final LoRA (final_lora_ok)
        recorded = info.get("status") if info is not None else None
        if recorded in ("finished", "failed", "stopped"):
            return recorded  # type: ignore[no-any-return]
        if self.stop_requested is not None:
            return "finished" if self.final_lora_ok() else "stopped"
        if info is None:
            return "lost"
        if info.get("returncode") == 0 and self.final_lora_ok():
            return "finished"
        return "failed"

    @property
    def final_lora(self) -> Path:
        return final_lora(self.dir, self.output_name)

    def final_lora_ok(self) -> bool:
        """The final LoRA is on disk and complete (its safetensors header and every tensor's bytes)."""
        return lora_metadata(self.final_lora) is not None

    def returncode(self) -> int | None:
        info = self.exit_info()
        code = None if info is None else info.get("returncode")
        return code if _is_int(code) else None

    def process_tree(self) -> list[Any]:
        """psutil.Process objects of the run (leader first): its group's processes and the leader's descendants (also
        one that left the group); [] when it is not running."""
        import psutil

        found: dict[int, Any] = {}
        try:
            leader = psutil.Process(self.pid)
            if abs(leader.create_time() - self.create_time) <= CREATE_TIME_TOLERANCE:
                found = {p.pid: p for p in (leader, *leader.children(recursive=True))}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
        for pid in group_processes(self.group, self.run_id):
            if pid not in found:
                try:
                    found[pid] = psutil.Process(pid)
                except psutil.Error:
                    continue
        return sorted(found.values(), key=lambda p: p.pid != self.pid)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# What each run.json field must hold: a record edited by hand or half-written by another tool is skipped, not a crash.
_FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "run_id": (lambda v: isinstance(v, str), "a string"),
    "dir": (lambda v: isinstance(v, str), "a string"),
    "argv": (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v), "a list of strings"),
    "env": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in (*v, *v.values())), "a table of strings"),
    "cwd": (lambda v: isinstance(v, str), "a string"),
    "pid": (lambda v: _is_int(v) and 0 <= v < 1 << 31, "a process id"),
    "create_time": (_is_number, "a number"),
    "pgid": (lambda v: _is_int(v) and 0 <= v < 1 << 31, "a process group id"),
    "started": (lambda v: isinstance(v, str), "a string"),
    "started_ts": (_is_number, "a number"),
    "session_text": (lambda v: isinstance(v, str), "a string"),
    "output_name": (lambda v: isinstance(v, str), "a string"),
    "base_step": (lambda v: _is_int(v) and v >= 0, "a step number"),
    "base_epoch": (lambda v: _is_int(v) and v >= 0, "an epoch number"),
    "resumed_from": (lambda v: v is None or isinstance(v, str), "a path or null"),
    "gpu_uuid": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "stop_requested": (lambda v: v is None or _is_number(v), "a time or null"),
    "extra": (lambda v: isinstance(v, dict), "a table"),
}


def _field_problem(key: str, value: Any) -> str | None:
    check = _FIELD_CHECKS.get(key)
    return None if check is None or check[0](value) else check[1]


def orphan_runs(project_dir: Path | str, runs_dir: Path) -> list[RunRecord]:
    """Runs of this project whose processes live but whose run.json is gone or unreadable (the run folder deleted
    under a live trainer, which re-creates it): records made from the processes, never saved."""
    records = []
    for run_id, (pgid, _pids_of_run) in sorted(project_processes(project_dir).items()):
        safe = run_id if run_id and "/" not in run_id and run_id not in (".", "..") else f"group-{pgid}"
        folder = Path(runs_dir) / safe
        recorded = run_dir_of(pgid, run_id)
        if recorded is not None and recorded.name == safe and recorded.parent.parent.parent == Path(runs_dir):
            folder = recorded  # a variant's run: <runs>/variants/<name>/<run-id>
        pinned = run_env(pgid, run_id, GPU_ENV)  # its GPUs: a queue's run on another GPU is not in the way
        records.append(RunRecord(run_id=safe, dir=folder, argv=[], env={}, cwd="", pid=pgid, pgid=pgid,
                                 gpu_uuid=pinned.split(",")[0] if pinned else None,
                                 extra={"orphan": True, **({"gpu_uuids": pinned.split(",")} if pinned else {})}))
    return records


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)


def log_has_model_saved(path: Path, *, tail_bytes: int = 1 << 16) -> bool:
    """`model saved.` near the end of the log (a hint for people only: a run's result is `RunRecord.status()`,
    decided from its files)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - tail_bytes))
            data = handle.read()
    except OSError:
        return False
    return b"model saved." in data


# ------------------------------------------------------------------ listing


def new_run_id(runs_dir: Path, now: datetime | None = None) -> str:
    """A fresh `YYYYmmdd-HHMMSS[-N]` id whose folder this call has created, unique in the whole project: the base
    runs folder and every `variants/<V>/` one (a run's id marks its processes, and a queue's runs side by side start
    within a second of each other). Two callers, even in two processes, never get the same one: the choice is made
    under a lock file in the project's runs folder, and mkdir is the reservation."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    root = runs_dir.parent.parent if runs_dir.parent.name == VARIANTS_DIR else runs_dir
    with open(root / ID_LOCK, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folders = [root, *(d for d in (root / VARIANTS_DIR).glob("*") if d.is_dir())]
        n = 1
        while True:
            run_id = stamp if n == 1 else f"{stamp}-{n}"
            n += 1
            if any((folder / run_id).exists() for folder in folders):
                continue
            try:
                (runs_dir / run_id).mkdir()
                return run_id
            except FileExistsError:
                continue


ID_LOCK = ".run-id.lock"  # in the project's runs folder: new_run_id's choice across the base and variant folders


VARIANTS_DIR = "variants"  # <runs>/variants/<name>/<run-id>: the runs of `[[train.variants]]` (core/train/queue.py)


def variant_runs_dirs(runs_dir: Path) -> list[Path]:
    """The runs folders of the project's variants (every one that has a folder, in session.toml or not)."""
    try:
        return sorted(p for p in (Path(runs_dir) / VARIANTS_DIR).iterdir() if p.is_dir())
    except OSError:
        return []


def list_runs(runs_dir: Path, problems: list[str] | None = None, *, variants: bool = False) -> list[RunRecord]:
    """Every readable run under `runs_dir`, oldest first; a malformed run.json is skipped (its one-line reason
    appended to `problems` when given). With `variants`, the variants' runs too (`<runs>/variants/<name>/`)."""
    records = []
    folders = [Path(runs_dir), *(variant_runs_dirs(runs_dir) if variants else [])]
    try:
        entries = sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir() if (p / RUN_FILE).is_file())
    except OSError:
        return []
    for entry in entries:
        try:
            records.append(RunRecord.load(entry))
        except RunError as exc:
            if problems is not None:
                problems.append(f"skipped {exc}")
            continue
    records.sort(key=lambda r: (r.started_ts, r.run_id))
    return records


def live_run(runs_dir: Path, problems: list[str] | None = None, *,
             project_dir: Path | str | None = None) -> RunRecord | None:
    """The newest run any of whose processes is still running, if any (the variants' runs included: one trainer per
    project); with `project_dir`, also a run whose run.json is gone (found by its processes: `orphan_runs`)."""
    records = list_runs(runs_dir, problems, variants=True)
    for record in reversed(records):
        if record.status() == "running":
            return record
    if project_dir is None:
        return None
    by_id = {r.run_id: r for r in records}
    for orphan in reversed(orphan_runs(project_dir, runs_dir)):
        known = by_id.get(orphan.run_id)
        if known is None:
            return orphan
        known.pgid = orphan.pgid  # its processes are in that group (a record edited by hand said otherwise)
        return known
    return None


def live_runs(runs_dir: Path, problems: list[str] | None = None, *,
              project_dir: Path | str | None = None) -> list[RunRecord]:
    """Every live run, oldest first (a queue's runs side by side, one per GPU; else at most one), the runs found
    only by their processes (`orphan_runs`) included with `project_dir`."""
    records = list_runs(runs_dir, problems, variants=True)
    live = [r for r in records if r.status() == "running"]
    if project_dir is not None:
        by_id = {r.run_id: r for r in records}
        seen = {r.run_id for r in live}
        for orphan in orphan_runs(project_dir, runs_dir):
            if orphan.run_id in seen:
                continue
            known = by_id.get(orphan.run_id)
            if known is not None:
                known.pgid = orphan.pgid
            live.append(known or orphan)
    return live


# ------------------------------------------------------------------ launch


def launch(
    argv: Sequence[str],
    run_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    session_text: str = "",
    output_name: str = "",
    base_step: int = 0,
    base_epoch: int = 0,
    resumed_from: Path | str | None = None,
    gpu_uuid: str | None = None,
    base_env: Mapping[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    project: Path | str | None = None,
    beside_other_gpus: bool = False,
) -> RunRecord:
    """Start `argv` detached (own session, stdin closed, stdout+stderr → train.log) and write run.json.

    With `project`, refuses (RunError) while any trainer process of an earlier run of that project lives, and marks
    this run's processes as the project's (`project_processes`); `beside_other_gpus` (a queue's runs side by side,
    one per GPU) refuses only while a run pinned to the same GPU, or to none, lives. A folder that cannot be written
    is one line."""
    import psutil

    from lorawizard.core.session.document import FORBIDDEN_CHARS, name_problem

    if output_name and name_problem(output_name):  # the trainer writes <run_dir>/<output_name>*.safetensors
        raise RunError(f"name: {output_name!r} is not a safe file name: {name_problem(output_name)}")
    if any(FORBIDDEN_CHARS.search(str(word)) for word in [*argv, *(env or {}).values()]):
        raise RunError("the command contains NUL, CR or a line break: refused")
    if project is not None:
        _refuse_while_running(project, gpu_uuid if beside_other_gpus else None)
    run_dir = Path(run_dir).absolute()
    ours = dict(env or {})
    ours["PYTHONUNBUFFERED"] = "1"
    ours[RUN_ID_ENV] = run_dir.name
    ours[RUN_DIR_ENV] = str(run_dir)  # where an orphan's folder was (a variant's runs are one level down)
    ours.update(_pinned_env(gpu_uuid, extra))
    if project is not None:
        ours[PROJECT_ENV] = str(Path(project).resolve())
    full_env = dict(os.environ if base_env is None else base_env)
    full_env.update(ours)
    full_env.pop("COLUMNS", None)  # rich wraps at 80 in a pipe; the parser expects that (or any width)
    for name in SECRET_ENV:  # publishing uses the token in lorawizard's own process; the trainer and the hook never
        full_env.pop(name, None)
    cwd = str(cwd or run_dir)
    record = RunRecord(
        run_id=run_dir.name, dir=run_dir, argv=[str(a) for a in argv], env=ours, cwd=cwd,
        session_text=session_text, output_name=output_name, base_step=base_step, base_epoch=base_epoch,
        resumed_from=str(resumed_from) if resumed_from else None, gpu_uuid=gpu_uuid, extra=dict(extra or {}),
    )
    # by path, not `-m`: it is stdlib-only, so it runs even where lorawizard is not importable from `cwd`
    supervisor = [sys.executable, str(Path(__file__).with_name("supervisor.py")), str(run_dir), "--", *record.argv]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / EXIT_FILE).unlink(missing_ok=True)
        log = open(run_dir / LOG_FILE, "ab")  # noqa: SIM115 - closed below, once the child has its own copy
    except OSError as exc:
        raise RunError(_write_problem(exc, run_dir)) from None
    with log:
        try:
            process = subprocess.Popen(
                supervisor, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                env=full_env, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            raise RunError(f"cannot start the trainer: {exc.strerror or exc}") from None
    _children[process.pid] = process
    record.pid = record.pgid = process.pid  # start_new_session: the supervisor leads the run's process group
    try:
        record.create_time = psutil.Process(process.pid).create_time()
    except psutil.Error:
        record.create_time = time.time()
    now = datetime.now(UTC)
    record.started, record.started_ts = now.isoformat(timespec="seconds"), now.timestamp()
    try:
        record.save()
    except OSError as exc:  # no record, no run: one nobody could find, follow or stop must not go on
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        process.wait()
        raise RunError(_write_problem(exc, run_dir)) from None
    return record


def _pinned_env(gpu_uuid: str | None, extra: dict[str, Any] | None) -> dict[str, str]:
    """LORAWIZARD_GPU: the GPUs a run was pinned to (a queue's runs side by side refuse only a run on their own)."""
    pinned = [str(u) for u in (extra or {}).get("gpu_uuids") or ([gpu_uuid] if gpu_uuid else [])]
    return {GPU_ENV: ",".join(pinned)} if pinned else {}


def _write_problem(exc: OSError, folder: Path) -> str:
    from lorawizard.core.common.fsutil import display_path

    return f"cannot write in {display_path(folder)}: {exc.strerror or exc}"


def _refuse_while_running(project: Path | str, beside_gpu: str | None = None) -> None:
    """Never a second trainer: not while any process of an earlier run of this project lives (with `beside_gpu`:
    one pinned to another GPU may go on — a queue's runs side by side, one per GPU)."""
    found = project_processes(project)
    if beside_gpu:
        found = {run_id: group for run_id, group in found.items()
                 if beside_gpu in (run_env(group[0], run_id, GPU_ENV) or beside_gpu).split(",")}
    if found:
        run_id, (pgid, pids) = sorted(found.items())[-1]
        from lorawizard.core.common.fsutil import shell_path

        raise RunError(f"run {run_id} of this project is still running (process group {pgid}, pids "
                       f"{', '.join(map(str, sorted(pids)[:5]))}): stop it first: lorawizard "
                       f"{shell_path(Path(project))} --stop")


# ------------------------------------------------------------------ stop


def stop(
    record: RunRecord,
    *,
    int_timeout: float = STOP_INT_S,
    term_timeout: float = STOP_TERM_S,
    kill_timeout: float = STOP_KILL_S,
    on_stage: Callable[[str], object] = lambda stage: None,
    hurry: threading.Event | None = None,
) -> str:
    """SIGINT to the run's process group, then SIGTERM, then SIGKILL, each after its time limit.

    `hurry` (a further Ctrl-C): when it is set, the current stage's wait ends at once and the next signal goes out
    (the event is cleared, so each press moves one stage on). The stop ends only when every process of the run is gone
    (its group, and a descendant that left it); RunError when some are still there after SIGKILL.
    Returns the signal that ended it ("SIGINT", "SIGTERM", "SIGKILL"), or "not running".
    """
    import psutil

    procs = record.process_tree()
    if not procs:
        return "not running"
    record.stop_requested = time.time()
    _save_quietly(record)
    for signum, timeout in ((signal.SIGINT, int_timeout), (signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
        name = signal.Signals(signum).name
        on_stage(name)
        try:
            os.killpg(record.group, signum)  # the group outlives its leader: kill -9 of the supervisor changes nothing
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise RunError(f"cannot signal run {record.run_id}: {exc.strerror}") from None
        for proc in procs:  # also the ones that left the group (orphaned trainer)
            if signum == signal.SIGKILL:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if hurry is not None and hurry.is_set() and signum != signal.SIGKILL:
                hurry.clear()
                break
            procs = _still_there(record, procs)
            if not procs:
                _reap(record.pid)
                if record.exit_info() is None and not record.extra.get("orphan") and record.dir.is_dir():
                    try:
                        atomic_write_json(record.dir / EXIT_FILE,
                                          {"returncode": None, "ended": time.time(), "stopped_by": name})
                    except OSError:
                        pass
                return name
    pids = ", ".join(str(p.pid) for p in procs[:5])
    raise RunError(f"run {record.run_id}: {len(procs)} process(es) still there after SIGKILL (pid {pids}): "
                   "not stopped yet; --status says when they are gone")


def _still_there(record: RunRecord, procs: list[Any]) -> list[Any]:
    """The run's processes still running after a 0.1 s wait, with any that joined its group since (a launcher
    starting the trainer); a leader that outlives the trainer only to run on_finish (own session) is not counted."""
    import psutil

    _reap(record.pid)
    _, alive = psutil.wait_procs(procs, timeout=0.1)
    ended = bool(record.extra.get("on_finish")) and record.exit_info() is not None
    alive = [p for p in alive if _still_running(p) and not (ended and p.pid == record.pid)]
    known = {p.pid for p in alive}
    for pid in record.trainer_pids():
        if pid not in known and not (ended and pid == record.pid):
            try:
                alive.append(psutil.Process(pid))
            except psutil.Error:
                continue
    return alive


def _save_quietly(record: RunRecord) -> None:
    """run.json with the stop noted, where there is one to update (never for a run found by its processes alone, and
    never re-creating a deleted run folder)."""
    if record.extra.get("orphan") or not record.dir.is_dir():
        return
    try:
        record.save()
    except OSError:
        pass


def _still_running(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


# ------------------------------------------------------------------ resume


@dataclass(frozen=True)
class SavedState:
    path: Path
    epoch: int  # absolute (sd-scripts' epoch numbers stay absolute)
    step: int  # absolute (ours: the owning run's base_step + the within-run step sd-scripts recorded)
    run_id: str
    mtime: float


def saved_states(runs_dir: Path) -> list[SavedState]:
    """Every `*-state` folder with a train_state.json under `runs_dir`, oldest first: by run (the order they were
    started), then by step within a run. The last one continues the newest run: a run started afresh begins again at
    step 0, so an older run's higher step is not newer (r after stopping a fresh run resumed an old one's end)."""
    states: list[tuple[int, SavedState]] = []
    for order, record in enumerate(list_runs(runs_dir)):
        try:
            folders = [p for p in record.dir.iterdir() if p.is_dir() and p.name.endswith("-state")]
        except OSError:
            continue
        for folder in folders:
            try:
                data = json.loads((folder / "train_state.json").read_text(encoding="utf-8"))
                epoch, step = int(data["current_epoch"]), int(data["current_step"])
                mtime = (folder / "train_state.json").stat().st_mtime
            except (OSError, ValueError, KeyError, TypeError):
                continue
            offset = int(record.extra.get("state_step_offset", record.base_step))  # see training.plan_run
            states.append((order, SavedState(folder, epoch, offset + step, record.run_id, mtime)))
    states.sort(key=lambda item: (item[0], item[1].step, item[1].mtime))
    return [state for _, state in states]


def newest_state(runs_dir: Path) -> SavedState | None:
    states = saved_states(runs_dir)
    return states[-1] if states else None


def newest_state_step(record: RunRecord) -> int | None:
    """The absolute step a resume after stopping `record` starts from: its own newest saved state, else the state it
    was itself resumed from (None: nothing saved, a stop loses every step). `--stop`, `--status` and the wizard's s."""
    own = [s for s in saved_states(record.dir.parent) if s.run_id == record.run_id]
    if own:
        return own[-1].step
    return record.base_step or None


def resume_overrides(state: SavedState, own_step_in_state: int | None = None) -> dict[str, Any]:
    """Trainer options for resuming from `state`. sd-scripts derives the epoch to start from the state's own step,
    which is wrong for a state written by a run that was itself resumed (its step restarted at 0): then the
    absolute step is passed as `--initial_step` (sd-scripts then ignores the state's step)."""
    if own_step_in_state is not None and own_step_in_state != state.step:
        return {"initial_step": state.step}
    return {}


def read_state_step(state_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(state_dir) / "train_state.json").read_text(encoding="utf-8"))["current_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoints(run_dir: Path, output_name: str) -> list[tuple[Path, int | None, int]]:
    """(path, epoch or None for the final model, size) of the run's LoRA files, by modification time."""
    found = []
    try:
        files = [p for p in Path(run_dir).glob("*.safetensors") if p.is_file()]
    except OSError:
        return []
    for path in files:
        stem = path.stem
        epoch: int | None = None
        if output_name and stem.startswith(output_name + "-"):
            tail = stem[len(output_name) + 1 :]
            epoch = int(tail) if tail.isdigit() else None
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((path, epoch, stat.st_size, stat.st_mtime))
    found.sort(key=lambda item: item[3])
    return [(p, e, s) for p, e, s, _ in found]


def newest_sample(run_dir: Path) -> Path | None:
    folder = Path(run_dir) / "sample"
    try:
        images = [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]
    except OSError:
        return None
    return max(images, key=lambda p: p.stat().st_mtime, default=None)
