"""The train step with `[[train.variants]]`: a queue — the base run, then each variant, one after another.

Each entry is an ordinary run (core/train/step.py) of a session with the variant's changes applied
(`Session.with_changes`): its own output name `<name>-<variant>`, its own runs folder `<runs>/variants/<variant>/`
(so its resume chain, checkpoints, samples and keep are its own) and record. A failed run does not stop the queue:
it is recorded and the next one starts. `.lorawizard/queue.json` says what happened (written only by the process
driving the queue); `--stop` asks that process to stop through `.lorawizard/queue-stop` and stops the running run;
`--resume` continues the stopped entry from its state, then the ones not started.

`--detach` hands the whole queue to one detached driver (`python -m lorawizard.core.train.queue`), which inherits the
project lock (an flock belongs to the open file: no moment without a holder) and logs to `.lorawizard/queue.log`.
The trust rules of a single run hold for the queue: no launch while any process of the project's runs lives; a
kill -9 of the driver leaves the running run going (its own supervisor) and `--status` says the queue was lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

from lorawizard.core.common.fsutil import atomic_write_json, display_path, shell_path
from lorawizard.core.common.progress import format_duration
from lorawizard.core.contract import Cancelled, StepContext, StepFailed, StepResult
from lorawizard.core.launch import projectlock, runs
from lorawizard.core.session.document import Session
from lorawizard.core.session.variants import BASE, Variant
from lorawizard.core.train import step as train_step

QUEUE_FILE, STOP_FILE, QUEUE_LOG, DECISIONS_FILE = "queue.json", "queue-stop", "queue.log", "queue-decisions.json"
ENTRY_STATES = ("pending", "running", "finished", "failed", "stopped", "skipped")
_SAVE_LOCK = threading.Lock()
DISK_MARGIN = 1.1  # the estimate is rough: ask for a tenth more free space than it says


class Entry(NamedTuple):
    label: str  # "base" or the variant's name
    variant: Variant | None
    session: Session  # the run's settings (the base session, or a read-only copy with the variant's changes)

    def describe(self) -> str:
        return "the base run" if self.variant is None else self.variant.describe()


def entry_session(session: Session, variant: Variant) -> Session:
    runs_dir = session.paths.runs / runs.VARIANTS_DIR / variant.name
    return session.with_changes({**variant.changes, "name": f"{session.name}-{variant.name}",
                                 "paths.runs": str(runs_dir)})


def entries(session: Session, only: list[str] | None = None) -> list[Entry]:
    """The base run, then each variant, in file order; `only` picks some by label ("base", a variant's name)."""
    every = [Entry(BASE, None, session), *(Entry(v.name, v, entry_session(session, v)) for v in session.variants())]
    if not only:
        return every
    by_label = {e.label.lower(): e for e in every}
    unknown = [label for label in only if label.lower() not in by_label]
    if unknown:
        raise StepFailed(f"--variants: no run named {', '.join(map(repr, unknown))}; this queue has "
                         f"{', '.join(e.label for e in every)}")
    wanted = {label.lower() for label in only}
    return [e for e in every if e.label.lower() in wanted]


# ------------------------------------------------------------------ the record (.lorawizard/queue.json)


@dataclass
class QueueEntry:
    label: str
    output_name: str
    status: str = "pending"
    run_ids: list[str] = field(default_factory=list)
    summary: str = ""
    kept: str | None = None
    forecast_s: float | None = None
    suggested: str = ""  # `suggested: epoch 6 (val 0.412; …)` when the run measured validation loss


@dataclass
class QueueRecord:
    path: Path
    queue_id: str
    entries: list[QueueEntry]
    state: str = "running"  # running, finished, stopped (lost: running with its driver gone, see `status`)
    pid: int = 0
    create_time: float = 0.0
    started: str = ""
    detached: bool = False

    def save(self) -> None:
        with _SAVE_LOCK:  # the lanes of a queue side by side save from their own threads
            data = asdict(self)
            data.pop("path")
            atomic_write_json(self.path, data)

    @classmethod
    def load(cls, session: Session) -> QueueRecord | None:
        """The project's last queue, or None (none yet, or a file that does not read: a queue is then unknown)."""
        path = queue_path(session)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            items = [QueueEntry(**{k: v for k, v in e.items() if k in QueueEntry.__dataclass_fields__})
                     for e in data["entries"]]
            return cls(path=path, queue_id=str(data["queue_id"]), entries=items, state=str(data.get("state", "")),
                       pid=int(data.get("pid", 0)), create_time=float(data.get("create_time", 0.0)),
                       started=str(data.get("started", "")), detached=bool(data.get("detached", False)))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def driver_alive(self) -> bool:
        from lorawizard.core.launch.processes import process_matches

        return process_matches(self.pid, self.create_time)

    def status(self) -> str:
        """running, finished, stopped, or lost (its driver ended without saying so: kill -9, a reboot)."""
        if self.state == "running" and not self.driver_alive():
            return "lost"
        return self.state

    def entry(self, label: str) -> QueueEntry | None:
        return next((e for e in self.entries if e.label == label), None)


def queue_path(session: Session) -> Path:
    return session.paths.state / QUEUE_FILE


def stop_path(session: Session) -> Path:
    return session.paths.state / STOP_FILE


def request_stop(session: Session) -> QueueRecord | None:
    """`--stop` with a queue going: no further run starts (the running one is stopped as one run is). Returns the
    queue asked, or None when no queue is going."""
    record = QueueRecord.load(session)
    if record is None or record.status() != "running":
        return None
    stop_path(session).parent.mkdir(parents=True, exist_ok=True)
    stop_path(session).write_text(record.queue_id + "\n", encoding="utf-8")
    return record


def _stop_requested(session: Session, record: QueueRecord) -> bool:
    try:
        return stop_path(session).read_text(encoding="utf-8").strip() == record.queue_id
    except OSError:
        return False


# ------------------------------------------------------------------ forecast and disk


@dataclass
class Forecast:
    per_entry: dict[str, float | None]  # label → seconds (None: no speed known yet)
    basis: str  # where the speed came from
    lanes: int = 1  # runs side by side (one per GPU)
    price_per_hour: float | None = None  # gpu.price_per_hour: the queue's GPU-hours in money
    startup_measured: bool = False  # each run's start-up (loading, caching) from the probe is in its time

    @property
    def total_s(self) -> float | None:
        """The whole queue's time: one after another, or spread over the lanes (each takes the next run)."""
        values = list(self.per_entry.values())
        if not values or any(v is None for v in values):
            return None
        times = cast(list[float], values)
        if self.lanes <= 1:
            return sum(times)
        ends = [0.0] * self.lanes
        for seconds in times:
            ends[ends.index(min(ends))] += seconds
        return max(ends)

    def line(self, *, left: bool = False) -> str:
        total = self.total_s
        what = "left" if left else "in all"
        if total is None:
            unknown = [k for k, v in self.per_entry.items() if v is None]
            return (f"queue: {len(self.per_entry)} runs; time unknown for {', '.join(unknown)} (no probe and no "
                    "earlier run measured the speed yet; it is forecast again after each run)")
        parts = ", ".join(f"{k} {format_duration(v)}" for k, v in self.per_entry.items())
        side = f", {self.lanes} side by side" if self.lanes > 1 else ""
        money = ""
        if self.price_per_hour:  # every run holds one GPU for its time, side by side or not
            gpu_hours = sum(v or 0.0 for v in self.per_entry.values()) / 3600
            money = f" · ≈{gpu_hours * self.price_per_hour:.2f} at {self.price_per_hour:g} per GPU-hour"
        startup = ", start-up from the probe" if self.startup_measured else ""
        return (f"queue: ≈{format_duration(total)} {what} for {len(self.per_entry)} runs{side} ({parts}; speed from "
                f"{self.basis}{startup}){money}")


def entry_steps(session: Session) -> int | None:
    """Training steps of one run: steps per epoch (its batch sizes, repeats, processes) × epochs."""
    from lorawizard.core.dataset.step import bucket_counts
    from lorawizard.core.launch import multigpu
    from lorawizard.core.launch.command import CommandError, batch_size_for

    try:
        counts = bucket_counts(session)
        sizes = train_step.without_gpu(session)[1]  # no GPU: set by hand, else 1
        batches = {b: (n, batch_size_for(session, b, sizes)) for b, n in counts.items()}
    except (CommandError, OSError, ValueError):
        return None
    if not batches:
        return None
    per = multigpu.steps_per_epoch(batches, session.dataset.num_repeats, 1)
    return per * session.train.max_train_epochs


def forecast(items: list[Entry], base: Session, *, lanes: int = 1) -> Forecast:
    """Each run's time: its steps × the measured seconds per step (the probe's, else the newest run's log rate — its
    own, else the base run's: the queue's own finished runs, once there are some), plus its sampling, plus its start-up
    where the probe measured one (launch → first step): the first run the longest trial's (loading and caching), the
    others the shortest's (loading only: they reuse the caches beside the images)."""
    from lorawizard.core.train import samples, statesave

    per: dict[str, float | None] = {}
    basis = ""
    first_start, later_start = startup_times(base)
    for number, entry in enumerate(items):
        speed, source = statesave.measured_s_per_step(entry.session)
        if speed is None and entry.variant is not None:
            speed, source = statesave.measured_s_per_step(base)
        steps = entry_steps(entry.session)
        if speed is None or steps is None:
            per[entry.label] = None
            continue
        basis = basis or source
        sampling = samples.sampling_seconds(entry.session, speed)
        per[entry.label] = steps * speed + sampling + (later_start if number else first_start)
    return Forecast(per, basis or "no measurement", lanes, base.gpu.price_per_hour, bool(first_start or later_start))


def startup_times(session: Session) -> tuple[float, float]:
    """(the first run's start-up, each later run's) in seconds from the probe's measured phases; 0 where unmeasured.
    With text-encoder caches already beside the images, the first run loads only, like the others."""
    from lorawizard.core.gpu.probe_results import load_results

    phases = (load_results(session).get("fit") or {}).get("phases") or {}
    longest, shortest = phases.get("startup_s"), phases.get("startup_min_s")
    valid = [float(v) for v in (longest, shortest) if isinstance(v, (int, float)) and v > 0]
    if not valid:
        return 0.0, 0.0
    loading, caching = min(valid), max(valid)
    try:
        cached = any(session.paths.dataset.glob("*/*_flux_te.npz"))
    except OSError:
        cached = False
    return (loading if cached else caching), loading


def disk_needed(items: list[Entry]) -> int:
    """Bytes the queue's runs will write: every checkpoint's LoRA (bf16) plus the two newest states each."""
    from lorawizard.core.train import statesave

    total = 0
    for entry in items:
        train = entry.session.train
        lora = int(statesave.estimated_state_bytes(train.network_dim, "adamw") / 12 * 2)  # the weights, in bf16
        checkpoints = train.max_train_epochs // max(1, train.save_every_n_epochs) + 1
        total += checkpoints * lora + 2 * statesave.estimated_state_bytes(train.network_dim, train.optimizer_type)
    return total


def disk_problem(session: Session, items: list[Entry]) -> str | None:
    """One line when the queue's runs would not fit the disk of the runs folder, else None."""
    need = int(disk_needed(items) * DISK_MARGIN)
    folder = session.paths.runs
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return None
    if need <= free:
        return None
    return (f"the queue's {len(items)} runs need ≈{need / 1e9:.1f} GB (LoRA files and resumable states, estimated) "
            f"and {display_path(folder)} has {free / 1e9:.1f} GB free: free some space or queue fewer runs")


# ------------------------------------------------------------------ the step


class QueueOptions(train_step.TrainOptions, total=False):
    driver: bool  # this process is the detached driver (internal)


def run_step(ctx: StepContext) -> StepResult:
    """The registry's train step: one run as always, or the queue when the session has variants."""
    options = cast(QueueOptions, ctx.options)
    session = ctx.session
    if session.gpu.machines or options.get("attach") or not (session.variants() or options.get("only")):
        return train_step.run_step(ctx)
    items = entries(session, options.get("only"))
    if ctx.dry_run:
        return _dry_run(ctx, items)
    if options.get("detach") and not options.get("driver"):
        return _start_detached(ctx, items, resume=bool(options.get("resume")))
    return drive(ctx, items, resume=bool(options.get("resume")))


def start_queue(session: Session, *, resume: bool = False, only: list[str] | None = None,
                log: Callable[[str], None] = lambda line: None) -> StepResult:
    """The wizard's `g` with variants: the whole queue to a detached driver (as `--replay --detach`). Raises
    StepFailed with one line (a run going, no queue to resume, not enough disk)."""
    ctx = StepContext(session=session, log=log, options={"detach": True, "resume": resume, "only": only or []})
    return _start_detached(ctx, entries(session, only), resume=resume)


def _dry_run(ctx: StepContext, items: list[Entry]) -> StepResult:
    for number, entry in enumerate(items, 1):
        ctx.log(f"queue: run {number}/{len(items)}: {entry.label} ({entry.describe()}), output "
                f"{entry.session.name}, runs in {display_path(entry.session.paths.runs)}")
        result = train_step.run_step(_entry_ctx(ctx, entry, resume=False))
        for line in result.details:
            ctx.log(line)
    ctx.log(forecast(items, ctx.session).line())
    problem = disk_problem(ctx.session, items)
    if problem:
        ctx.log(f"queue: warning: {problem}")
    return StepResult(True, f"dry run: {len(items)} runs queued (base and {len(items) - 1} variants), nothing "
                      "launched")


def _entry_ctx(ctx: StepContext, entry: Entry, *, resume: bool, beside: bool = False) -> StepContext:
    def log(line: str) -> None:
        ctx.log(line.replace("train: ", f"train [{entry.label}]: ", 1) if line.startswith("train: ") else line)

    return StepContext(session=entry.session, progress=ctx.progress, log=log, dry_run=ctx.dry_run, cancel=ctx.cancel,
                       hurry=ctx.hurry, decisions=ctx.decisions,
                       options={"resume": resume, **({"variant": entry.label} if entry.variant else {}),
                                **({"beside": True} if beside else {})})


def _refuse_live(session: Session) -> None:
    live = train_step.live_run(session)
    if live is not None:
        project = shell_path(session.project_dir)
        raise StepFailed(f"run {live.run_id} is going in this project: the queue starts when it has ended (follow "
                         f"it: lorawizard {project} --follow; stop it: lorawizard {project} --stop)")


def _new_record(session: Session, items: list[Entry], *, detached: bool) -> QueueRecord:
    now = datetime.now(UTC)
    plan = forecast(items, session)
    return QueueRecord(
        path=queue_path(session), queue_id=now.strftime("%Y%m%d-%H%M%S"), started=now.isoformat(timespec="seconds"),
        entries=[QueueEntry(e.label, e.session.name, forecast_s=plan.per_entry.get(e.label)) for e in items],
        detached=detached,
    )


def _resumable(session: Session, items: list[Entry]) -> tuple[QueueRecord, list[Entry]]:
    """The stopped or lost queue `--resume` continues, with its entries as the session has them now."""
    record = QueueRecord.load(session)
    if record is None:
        raise StepFailed("no queue to resume in this project: start one with --steps train")
    if record.status() == "running":
        raise StepFailed(f"queue {record.queue_id} is still going (pid {record.pid}): nothing to resume")
    if record.status() == "finished":
        raise StepFailed(f"queue {record.queue_id} has finished: nothing to resume (--steps train starts a new one)")
    by_label = {e.label: e for e in items}
    picked = []
    for item in record.entries:
        if item.status in ("finished", "failed", "skipped"):
            continue
        entry = by_label.get(item.label)
        if entry is None:
            item.status, item.summary = "skipped", "no longer in session.toml"
            continue
        if item.status == "running":  # the driver was lost while this run went on: what did the run say?
            newest = runs.list_runs(entry.session.paths.runs)
            mine = [r for r in newest if r.run_id in item.run_ids]
            if mine and mine[-1].status() == "finished":
                item.status, item.summary = "finished", f"run {mine[-1].run_id} finished while the queue was lost"
                continue
            item.status = "stopped"
        picked.append(entry)
    return record, picked


def drive(ctx: StepContext, items: list[Entry], *, resume: bool) -> StepResult:
    """Run the queue's entries here, one after another (replay in the foreground, or the detached driver)."""
    session = ctx.session
    train_step.claim_project(session)
    _refuse_live(session)
    if resume:
        record, todo = _resumable(session, items)
    else:
        record, todo = _new_record(session, items, detached=bool(cast(QueueOptions, ctx.options).get("driver"))), items
    problem = disk_problem(session, todo)
    if problem:
        raise StepFailed(problem)
    import psutil

    record.pid, record.state = os.getpid(), "running"
    record.create_time = psutil.Process().create_time()
    stop_path(session).unlink(missing_ok=True)
    record.save()
    gpus = parallel_gpus(session)
    ctx.log(forecast(todo, session, lanes=len(gpus) or 1).line())
    if gpus:
        ctx.log(f"queue: {len(gpus)} runs side by side, one per GPU ({', '.join(gpus)}; gpu.parallel_runs): each "
                "takes the next run when its own has ended")
    try:
        if gpus:
            _drive_side_by_side(ctx, record, todo, gpus)
        for number, entry in enumerate([] if gpus else todo, 1):
            item = cast(QueueEntry, record.entry(entry.label))
            if _stop_requested(session, record):
                break
            if number > 1:
                ctx.log(forecast(todo[number - 1:], session).line(left=True))  # re-forecast from what the runs measured
            _run_entry(ctx, record, item, entry, number, len(todo))
            if item.status == "stopped":
                break
    except Cancelled:
        record.state = "stopped"
        record.save()
        raise
    stopped = _stop_requested(session, record) or any(e.status == "stopped" for e in record.entries)
    record.state = "stopped" if stopped else "finished"
    record.save()
    stop_path(session).unlink(missing_ok=True)
    result = _result(session, record)
    sheets = _contact_sheets(ctx)
    if sheets:
        result.details.append(sheets)
    return result


def parallel_gpus(session: Session) -> list[str]:
    """The GPUs a queue runs on side by side (`gpu.parallel_runs` with several in `gpu.uuids`), else []."""
    from lorawizard.core.launch.multigpu import SelectionError, chosen_uuids

    if not session.gpu.parallel_runs or session.gpu.machines:
        return []
    try:
        uuids = chosen_uuids(session)
    except SelectionError as exc:
        raise StepFailed(str(exc)) from None
    return uuids if len(uuids) > 1 else []


def _drive_side_by_side(ctx: StepContext, record: QueueRecord, todo: list[Entry], gpus: list[str]) -> None:
    """One lane per GPU: each takes the next run of the queue, pinned to its GPU, until none is left (or a stop)."""
    lock = threading.Lock()
    waiting = list(enumerate(todo, 1))
    cancelled: list[Cancelled] = []

    def lane(uuid: str) -> None:
        while True:
            with lock:
                if not waiting or ctx.cancel.is_set() or _stop_requested(ctx.session, record):
                    return
                if any(e.status == "stopped" for e in record.entries):
                    return
                number, entry = waiting.pop(0)
            pinned = Entry(entry.label, entry.variant,
                           entry.session.with_changes({"gpu.uuid": uuid, "gpu.uuids": []}))
            item = cast(QueueEntry, record.entry(entry.label))
            try:
                _run_entry(ctx, record, item, pinned, number, len(todo), beside=True, where=f" on {uuid}")
            except Cancelled as exc:
                cancelled.append(exc)
                return

    lanes = [threading.Thread(target=lane, args=(uuid,), name=f"queue-{uuid}", daemon=True) for uuid in gpus]
    for thread in lanes:
        thread.start()
        time.sleep(0.5)  # launches one after another: each checks the GPUs the others hold
    for thread in lanes:
        while thread.is_alive():
            thread.join(0.5)
    if cancelled:
        raise cancelled[0]


def _contact_sheets(ctx: StepContext) -> str:
    """The queue's samples side by side: one PNG per prompt (run × epoch) in the project; "" when none."""
    from lorawizard.core.train.contact_sheet import write_contact_sheets

    try:
        written = write_contact_sheets(ctx.session)
    except (OSError, ValueError) as exc:
        ctx.log(f"queue: the contact sheets were not written: {exc}")
        return ""
    if not written:
        return ""
    line = f"samples compared: {len(written)} contact sheet(s) (run × epoch) in {display_path(written[0].parent)}"
    ctx.log(f"queue: {line}")
    return line


def _run_entry(ctx: StepContext, record: QueueRecord, item: QueueEntry, entry: Entry, number: int, total: int, *,
               beside: bool = False, where: str = "") -> None:
    from lorawizard.core.train import statesave

    resume = item.status == "stopped"
    if resume:
        point = statesave.resume_point(entry.session.paths.runs, entry.session.train.max_train_epochs)
        if point.state is None or not point.resumable:  # stopped before its first state: it starts again
            ctx.log(f"queue: {entry.label}: {point.reason}; it starts from the beginning")
            resume = False
    ctx.log(f"queue: run {number}/{total}: {entry.label} ({entry.describe()}){where}{' resumed' if resume else ''}")
    item.status, item.summary = "running", ""
    record.save()
    sub = _entry_ctx(ctx, entry, resume=resume, beside=beside)
    try:
        result = train_step.run_step(sub)
    except Cancelled:
        item.status, item.summary = "stopped", "stopped (Ctrl-C)"
        _note_run(item, entry)
        raise
    except StepFailed as exc:
        item.status, item.summary = "failed", str(exc)
        _note_run(item, entry)
        record.save()
        ctx.log(f"queue: {entry.label} failed: {exc}; the queue goes on")
        return
    run_id = result.data.get("run_id")
    if run_id and run_id not in item.run_ids:
        item.run_ids.append(str(run_id))
    item.kept = result.data.get("kept")
    item.summary = result.summary
    _note_suggestion(ctx, item, entry)
    if result.ok:
        item.status = "finished"
    else:
        latest = _latest_record(entry, item)
        item.status = "stopped" if latest is not None and latest.status() == "stopped" else "failed"
        if item.status == "failed":
            ctx.log(f"queue: {entry.label} failed: {result.summary}; the queue goes on")
    record.save()


def _note_suggestion(ctx: StepContext, item: QueueEntry, entry: Entry) -> None:
    """The run's suggested epoch (validation loss per epoch from its log index), said and kept for `--status`."""
    from lorawizard.core.train import suggest

    latest = _latest_record(entry, item)
    found = suggest.for_run(latest) if latest is not None else None
    item.suggested = found.line if found is not None else ""
    if found is not None:
        ctx.log(f"train [{entry.label}]: {found.line}")


def _note_run(item: QueueEntry, entry: Entry) -> None:
    latest = runs.list_runs(entry.session.paths.runs)
    if latest and latest[-1].run_id not in item.run_ids:
        item.run_ids.append(latest[-1].run_id)


def _latest_record(entry: Entry, item: QueueEntry) -> runs.RunRecord | None:
    found = [r for r in runs.list_runs(entry.session.paths.runs) if r.run_id in item.run_ids]
    return found[-1] if found else None


def _result(session: Session, record: QueueRecord) -> StepResult:
    counts = {state: sum(e.status == state for e in record.entries) for state in ENTRY_STATES}
    said = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    details = [entry_line(e) for e in record.entries]
    failed = [e.label for e in record.entries if e.status == "failed"]
    if record.state == "stopped":
        summary = (f"queue {record.queue_id} stopped ({said}); continue it: lorawizard --replay "
                   f"{shell_path(session.path)} --steps train --resume")
        return StepResult(False, summary, details, data={"queue_id": record.queue_id})
    summary = f"queue {record.queue_id}: {said}" + (f" (failed: {', '.join(failed)})" if failed else "")
    return StepResult(not failed, summary, details, data={"queue_id": record.queue_id,
                                                           "kept": [e.kept for e in record.entries if e.kept]})


def entry_line(item: QueueEntry) -> str:
    """`dim16  finished  run 20261207-101010  kept loras/demo-dim16.safetensors` — one run of the queue."""
    run = f"  run {item.run_ids[-1]}" if item.run_ids else ""
    kept = f"  kept {display_path(Path(item.kept))}" if item.kept else ""
    why = f"  {item.summary}" if item.status == "failed" and item.summary else ""
    suggested = f"  {item.suggested}" if item.suggested else ""
    return f"{item.label:<12} {item.status:<8}{run}{kept}{suggested}{why}"


def status_lines(session: Session) -> list[str]:
    """What `--status` prints for the project's queue: its state, then one line per run. [] without a queue."""
    record = QueueRecord.load(session)
    if record is None:
        return []
    state = record.status()
    head = f"queue {record.queue_id}: {state}"
    if state == "lost":
        head += (" (its driver ended without a word: kill -9 or a reboot; a run it started may still be going); "
                 f"continue it: lorawizard --replay {shell_path(session.path)} --steps train --resume")
    if state == "running":
        head += _time_left(session, record)
    return [head, *(f"  {entry_line(e)}" for e in record.entries)]


def _time_left(session: Session, record: QueueRecord) -> str:
    """` · ≈1:20 for the 2 runs not started (re-forecast …)`: the runs to come, forecast again from the speed the
    queue's runs measured so far (the running run's own ETA is on the run's line)."""
    waiting = {e.label for e in record.entries if e.status == "pending"}
    if not waiting:
        return ""
    try:
        items = [e for e in entries(session) if e.label in waiting]
        lanes = len(parallel_gpus(session)) or 1
    except StepFailed:
        items, lanes = [], 1
    if items:
        plan = forecast(items, session, lanes=lanes)
        if plan.total_s is not None:
            return (f" · ≈{format_duration(plan.total_s)} for the {len(items)} run(s) not started (re-forecast from "
                    f"{plan.basis})")
    stored = [e.forecast_s for e in record.entries if e.label in waiting]
    if stored and all(v is not None for v in stored):
        return f" · ≈{format_duration(sum(cast(list[float], stored)))} for the runs not started (forecast at its start)"
    return ""


# ------------------------------------------------------------------ detached: one driver for the whole queue


def _start_detached(ctx: StepContext, items: list[Entry], *, resume: bool) -> StepResult:
    session = ctx.session
    train_step.claim_project(session)
    _refuse_live(session)
    if resume:
        _resumable(session, items)  # refuse here, in one line, what the driver would refuse in its log
    problem = disk_problem(session, items)
    if problem:
        raise StepFailed(problem)
    ctx.log(forecast(items, ctx.session).line())
    fd = projectlock.held_fd(session.project_dir)
    state = session.paths.state
    decisions = state / DECISIONS_FILE
    atomic_write_json(decisions, ctx.decisions)  # what this replay decided where session.toml was silent
    argv = [sys.executable, "-m", "lorawizard.core.train.queue", str(session.path),
            "--only", ",".join(e.label for e in items), "--lock-fd", str(fd), "--decisions", str(decisions)]
    if resume:
        argv.append("--resume")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    log_path = state / QUEUE_LOG
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=session.project_dir, env=env, start_new_session=True,
                                   pass_fds=(fd,) if fd is not None else ())
    project = shell_path(session.project_dir)
    ctx.log(f"queue of {len(items)} runs keeps going in the background (pid {process.pid}; log "
            f"{display_path(log_path)}). Follow it: lorawizard {project}; status: lorawizard {project} --status")
    return StepResult(True, f"queue of {len(items)} runs started in the background (pid {process.pid})",
                      data={"pid": process.pid, "log": str(log_path)})


def main(argv: list[str]) -> int:
    """The detached driver: run the queue, log to stdout (queue.log), exit 0 when every run finished."""
    import argparse

    from lorawizard.core.contract import apply_decision

    parser = argparse.ArgumentParser(prog="lorawizard-queue")
    parser.add_argument("session")
    parser.add_argument("--only", default="")
    parser.add_argument("--lock-fd", type=int, default=-1)
    parser.add_argument("--decisions", default="")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    session = Session.load(args.session, read_only=True)
    if args.lock_fd >= 0:
        projectlock.adopt(session.project_dir, args.lock_fd, "queue")
    decisions: dict[str, Any] = {}
    if args.decisions:
        try:
            decisions = json.loads(Path(args.decisions).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            decisions = {}
    for key, value in decisions.items():
        apply_decision(session, key, value)

    def log(line: str) -> None:
        print(f"{datetime.now().strftime('%H:%M:%S')} {line}", flush=True)

    last = [0.0]

    def progress(update: Any) -> None:  # a line a minute is enough for a log nobody watches live
        if time.monotonic() - last[0] >= 60:
            last[0] = time.monotonic()
            log(f"progress: {getattr(update, 'text', '') or update}")

    ctx = StepContext(session=session, log=log, progress=progress, decisions=decisions,
                      options={"only": [x for x in args.only.split(",") if x], "resume": args.resume, "driver": True})
    presses = [0]

    def on_signal(signum: int, frame: Any) -> None:
        presses[0] += 1
        (ctx.cancel if presses[0] == 1 else ctx.hurry).set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    log(f"queue driver pid {os.getpid()} for {display_path(session.path)}")
    outcome: list[StepResult | BaseException] = []
    worker = threading.Thread(target=lambda: outcome.append(_guarded(ctx)), daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    result = outcome[0] if outcome else StepFailed("the queue ended without a result")
    if isinstance(result, BaseException):
        log(f"queue: {result}")
        return 130 if isinstance(result, Cancelled) else 1
    log(f"queue: {result.summary}")
    for line in result.details:
        log(f"  {line}")
    return 0 if result.ok else 1


def _guarded(ctx: StepContext) -> StepResult | BaseException:
    try:
        return drive(ctx, entries(ctx.session, cast(QueueOptions, ctx.options).get("only")),
                     resume=bool(ctx.options.get("resume")))
    except (StepFailed, Cancelled) as exc:
        return exc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
