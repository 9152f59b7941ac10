"""Train step: launch sd-scripts detached (or find the live run), follow its log, say how it ended.

`run_step(ctx)` options: `detach` (start and return), `resume` (continue from the newest state folder),
`attach` (only follow a live run, never start one). Headless, the step reports a progress line every few seconds
and at each epoch; Ctrl-C (`ctx.cancel`) stops the run it started as the wizard's s does (SIGINT, SIGTERM, SIGKILL to
its process group, each after its time limit; `ctx.hurry` skips to the next) and waits until it is gone; with `detach`
a run that was started is left running. A run it did not start is never doubled: it is followed (and said to be), and
Ctrl-C only stops the following; `resume` refuses while it runs. The wizard's Train screen uses
`RunFollower` and `start_run` directly.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

from lorawizard.core.common.fsutil import atomic_write_json, shell_path
from lorawizard.core.common.progress import LogCallback, Progress, ProgressCallback, format_duration, format_rate
from lorawizard.core.common.text import one_line
from lorawizard.core.contract import Cancelled, StepContext, StepFailed, StepResult
from lorawizard.core.launch import projectlock, runs
from lorawizard.core.launch.runs import RunError, RunRecord
from lorawizard.core.session.document import Session
from lorawizard.core.train.diagnosis import Diagnosis, diagnose
from lorawizard.core.train.logparse import Epoch, LogParser, TrainState
from lorawizard.core.train.suggest import EPOCH_LOSSES, index_epoch_losses

DRY_RUN_DIR = "dry-run"  # under <project>/.lorawizard/: the config files a dry run writes
FLUSH_AFTER_S = 0.5  # close a pending rich record after this much quiet
# a follower that opens a log already this long reads its head (the totals) and its tail, never the middle:
# `--status` and `--follow` cost the same on a 1 GB log as on a 1 MB one
CATCH_UP_HEAD, CATCH_UP_TAIL = 512 << 10, 512 << 10
INDEX_FILE = "log-index.json"  # in the run folder: how far the log was read, and what was known there
_INDEX_FIELDS: dict[str, type] = {  # what an index keeps of a TrainState, by type
    "step": int, "total_steps": int, "epoch": int, "epochs": int, "steps_per_epoch": int, "rate": float,
    "elapsed_s": float, "loss": float, "phase": str, "samples": int, "model_saved": bool, "nan_since": int,
    "line_count": int, "sampled_epoch": int, "saved_epoch": int}


class RunFollower:
    """Tails a run's train.log into a `TrainState` (bounded memory; reads in chunks from where it left off).

    Opening a log that is already long (`catch_up`), it reads at most CATCH_UP_HEAD bytes from the start (the totals)
    and the last CATCH_UP_TAIL bytes. With `use_index` (`--status`, `--follow`) it starts from the run's index
    (`log-index.json`, written by `finish`: the offset read to and the state there) when that still fits the file,
    and reads only what came after it (at most its last CATCH_UP_TAIL bytes). `bytes_read` counts what it read."""

    def __init__(self, record: RunRecord, *, chunk: int = 1 << 20, clock: Callable[[], float] = time.monotonic,
                 catch_up: bool = True, use_index: bool = False) -> None:
        self.record = record
        self.state = TrainState(base_step=record.base_step, base_epoch=record.base_epoch,
                                processes=_processes(record.extra.get("processes")), **epoch_ends(record))
        self._eta: tuple[float | None, float] = (None, 0.0)  # the last estimate and when it was made
        self.parser = LogParser()
        self.chunk = chunk
        self.clock = clock
        self.offset = 0
        self.last_growth = clock()
        self._flushed = True
        self._handle: Any = None
        self.epochs_seen: list[Epoch] = []
        self.catch_up, self.use_index = catch_up, use_index
        self.bytes_read = 0
        self.skipped = 0  # bytes of the log's middle never read (a long log opened late)
        self._skip_at: int | None = None  # at this offset, jump to _resume_at
        self._resume_at = 0
        self._opened = False
        self._last_break = 0  # offset just after the last line break read: where an index may resume

    def _open(self) -> bool:
        try:
            self._handle = open(self.record.log_path, "rb")  # noqa: SIM115 - kept open while following
        except OSError:
            return False
        if self._opened or not self.catch_up:
            self._opened = True
            self._handle.seek(self.offset)
            return True
        self._opened = True
        stat = os.fstat(self._handle.fileno())
        index = load_index(self.record, stat) if self.use_index else None
        if index is not None:
            self.offset = self._last_break = index[0]
            restore_state(self.state, index[1])
            self._handle.seek(self.offset)
        unread = stat.st_size - self.offset
        head = 0 if index is not None else CATCH_UP_HEAD
        if unread > head + CATCH_UP_TAIL:
            self._skip_at = self.offset + head
            self._resume_at = stat.st_size - CATCH_UP_TAIL
        return True

    def _jump(self) -> None:
        """Leave the head for the tail: close what the head left open, then read on after the tail's first break."""
        self._apply(self.parser.finish())
        self.parser = LogParser()
        self.state.forget_timing_gap()
        self._skip_at = None
        self.skipped += self._resume_at - self.offset
        self._handle.seek(self._resume_at)
        self.offset = self._resume_at
        data = self._handle.read(self.chunk)
        self.bytes_read += len(data)
        breaks = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
        cut = min(breaks) + 1 if breaks else len(data)
        self.offset += cut
        self._last_break = self.offset
        self._handle.seek(self.offset)

    def poll(self, max_bytes: int = 8 << 20) -> int:
        """Read what the log gained (at most `max_bytes`); returns the number of events applied."""
        if self._handle is None and not self._open():
            return 0
        count = 0
        read = 0
        while read < max_bytes:
            if self._skip_at is not None and self.offset >= self._skip_at:
                self._jump()
            want = self.chunk if self._skip_at is None else min(self.chunk, max(1, self._skip_at - self.offset))
            data = self._handle.read(want)
            if not data:
                break
            read += len(data)
            self.bytes_read += len(data)
            last = max(data.rfind(b"\n"), data.rfind(b"\r"))
            if last >= 0:
                self._last_break = self.offset + last + 1
            self.offset += len(data)
            events = self.parser.feed(data)
            self._apply(events)
            count += len(events)
        now = self.clock()
        if read:
            self.last_growth = now
            self._flushed = False
        elif not self._flushed and now - self.last_growth >= FLUSH_AFTER_S:
            events = self.parser.flush()
            self._apply(events)
            count += len(events)
            self._flushed = True
        return count

    def finish(self) -> int:
        count = self.poll(max_bytes=1 << 40)
        events = self.parser.finish()
        self._apply(events)
        self.save_index()
        self.close()
        return count + len(events)

    def save_index(self) -> None:
        """Note how far the log was read and what was known there (best effort: a read-only run folder is fine)."""
        if self._handle is None or not self._last_break:
            return
        try:
            stat = os.fstat(self._handle.fileno())
            atomic_write_json(self.record.dir / INDEX_FILE, {
                "version": 1, "offset": self._last_break, "dev": stat.st_dev, "ino": stat.st_ino,
                "state": {name: getattr(self.state, name) for name in _INDEX_FIELDS}
                | {"checkpoints": self.state.checkpoints[-20:], "sampling_s": self.state.timing.sampling_s,
                   "saving_s": self.state.timing.saving_s,
                   "losses": [[s, v] for s, v in self.state.losses.points if math.isfinite(v)],
                   **{key: [[e, v] for e, v in sorted(getattr(self.state, key).items()) if math.isfinite(v)]
                      for key in EPOCH_LOSSES}}})
        except (OSError, ValueError, TypeError):
            pass

    def eta_s(self) -> float | None:
        """The run's ETA now: the state's estimate, counted down by the clock while nothing changes it (sampling or
        saving draws no training bar for minutes: the estimate must not stand still)."""
        value, now = self.state.eta_s, self.clock()
        if value != self._eta[0]:
            self._eta = (value, now)
            return value
        return None if value is None else max(0.0, value - (now - self._eta[1]))

    def _apply(self, events: list[Any]) -> None:
        if not events:
            return
        self.state.apply(events)
        for event in events:
            if type(event) is Epoch:
                self.epochs_seen.append(event)

    @property
    def quiet_s(self) -> float:
        return self.clock() - self.last_growth

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def diagnosis(self, *, alive: bool | None = None) -> Diagnosis | None:
        alive = self.record.is_alive() if alive is None else alive
        return diagnose(
            self.state, alive=alive, returncode=None if alive else self.record.returncode(),
            quiet_s=self.quiet_s, stopped=self.record.stop_requested is not None,
        )


def _processes(value: Any) -> int:
    """run.json's `extra.processes` (a record edited by hand: anything not a count is 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return 1
    try:
        count = int(value)
    except ValueError:
        return 1
    return count if 1 <= count <= 4096 else 1


def load_index(record: RunRecord, stat: os.stat_result) -> tuple[int, dict[str, Any]] | None:
    """(offset, state) of the run's log index when it still describes this file (same file, not shorter), else None."""
    try:
        data = json.loads((record.dir / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("state"), dict):
        return None
    offset = data.get("offset")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 < offset <= stat.st_size:
        return None
    if data.get("dev") != stat.st_dev or data.get("ino") != stat.st_ino:
        return None
    return offset, data["state"]


def restore_state(state: TrainState, saved: dict[str, Any]) -> None:
    """Put what an index knew back into `state` (values of the wrong type are left as they are)."""
    for name, kind in _INDEX_FIELDS.items():
        value = saved.get(name)
        if kind in (bool, str) and isinstance(value, kind):
            setattr(state, name, value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and (
                kind is float or float(value).is_integer()):
            setattr(state, name, kind(value))
    checkpoints = saved.get("checkpoints")
    if isinstance(checkpoints, list):
        state.checkpoints = [str(c) for c in checkpoints[-20:]]
    state.losses.points = index_losses(saved)
    for key in EPOCH_LOSSES:
        setattr(state, key, index_epoch_losses(saved, key))
    for name, learned in (("sampling_s", state.timing.rounds), ("saving_s", state.timing.saves)):
        value = saved.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            learned[:] = [float(value)]  # what the run had learned of its epoch ends: --status's ETA counts them


def index_losses(saved: dict[str, Any]) -> list[tuple[int, float]]:
    """The loss history an index kept ([step, loss] pairs; anything else is skipped)."""
    losses = saved.get("losses")
    if not isinstance(losses, list):
        return []
    return [(int(p[0]), float(p[1])) for p in losses[-2048:]
            if isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)]


def epoch_ends(record: RunRecord) -> dict[str, Any]:
    """What the run's command says comes at epoch ends (sampling every N epochs, saving every M, how many prompts):
    the ETA counts them."""
    from lorawizard.core.train.samples import read_prompts

    argv = list(getattr(record, "argv", None) or [])  # a record read back without its command: nothing known

    def value(option: str) -> int | None:
        try:
            return int(argv[argv.index(option) + 1])
        except (ValueError, IndexError):
            return None

    sampling = "--sample_prompts" in argv
    prompts = len(read_prompts(record.dir)) if sampling else 0
    return {"sample_every": value("--sample_every_n_epochs") if sampling else None,
            "save_every": value("--save_every_n_epochs"), "sample_prompts": prompts or None}


@dataclass
class Tick:
    """One look at a followed run: `follower.state` is up to date; `new_lines` arrived since the previous tick."""

    follower: RunFollower
    record: RunRecord  # reloaded once the run has ended (its exit information)
    alive: bool
    new_lines: list[Any]  # logparse.Line
    first: bool
    notice: str = ""  # once: the surviving ranks of a failed multi-process run are being stopped


def watch(record: RunRecord, *, poll_s: float = 0.25, wait: Callable[[float], bool | None] = time.sleep,
          follower: RunFollower | None = None, rank_grace_s: float = 120.0) -> Generator[Tick, None, None]:
    """The one follow loop (headless `follow` and the wizard's dashboard): poll the log, yield a `Tick`, wait
    `poll_s`; after the run has ended the rest of the log is read and a last tick yielded. `wait` returning True
    stops the loop (a threading.Event's wait). Closing the iterator early reads the rest of the log too."""
    follower = follower or RunFollower(record)
    orphans = RankWatch(rank_grace_s)
    seen, first, finished = 0, True, False
    try:
        while True:
            follower.poll()
            alive = record.is_alive()
            if not alive:
                follower.finish()
                finished = True
                record = record.reload()
            state = follower.state
            count, seen = state.line_count - seen, state.line_count
            new = list(state.lines)[-count:] if count > 0 else []
            notice = ""
            if alive and orphans.check(state, follower.clock()):
                notice = stop_surviving_ranks(record, orphans.reason(state))
            yield Tick(follower, record, alive, new, first, notice)
            first = False
            if not alive or wait(poll_s):
                return
    finally:
        if not finished:
            follower.finish()


# ------------------------------------------------------------------ starting a run


@dataclass
class Plan:
    """What `start_run` would launch (also what --dry-run prints)."""

    run_dir: Path
    command: Any  # core.command.TrainCommand
    files: list[Path]
    base_step: int = 0
    base_epoch: int = 0
    resumed_from: Path | None = None
    launch: Any = None  # core.multigpu.Launch: processes, GPUs in rank order, notes
    notes: list[str] = field(default_factory=list)  # for people: state cadence, sampling cost
    extra: dict[str, Any] = field(default_factory=dict)  # kept in run.json
    cpu: Any = None  # core.gpu.cpu_mode.CpuMode when no GPU is visible: the CPU trains, as a test mode
    batch_sizes: dict[str, int] | None = None  # without a GPU: set by hand, else 1 (the rule of core.gpu.cpu_mode)
    cache_line: str | None = None  # set by start_run: the text-encoder caches it removed (core.train.te_cache)

    def cpu_lines(self) -> list[str]:
        """Without a GPU: the test-mode line with its expected speed, and bf16 on a CPU without it (before launch)."""
        if self.cpu is None:
            return []
        return [self.cpu.label(), *[line for line in [self.cpu.bf16_line()] if line]]


def plan_run(session: Session, *, resume: bool = False, run_dir: Path | None = None) -> Plan:
    """Write the run's config files and build its command. Raises StepFailed with one line when it cannot."""
    from lorawizard.core.launch.command import CommandError, prepare_run
    from lorawizard.core.train import samples, statesave

    runs_dir = session.paths.runs
    overrides: dict[str, Any] = {"save_state": True}
    state = None
    base_step = base_epoch = 0
    extra: dict[str, Any] = {}
    if resume:
        point = statesave.resume_point(runs_dir, session.train.max_train_epochs)
        if point.state is None or not point.resumable:
            raise StepFailed(point.reason)
        state, base_step, base_epoch = point.state, point.base_step, point.base_epoch
        if point.steps_per_epoch:
            # skip the batches already trained in the state's epoch: a step state loses nothing more than the stop did
            overrides.update({"initial_step": state.step, "skip_until_initial_step": True})
            # sd-scripts' step restarts at the remainder
            extra["state_step_offset"] = state.step - state.step % point.steps_per_epoch
        else:
            overrides.update(runs.resume_overrides(state, runs.read_state_step(state.path)))
    cadence = statesave.cadence(session)
    overrides.update(cadence.overrides())
    cpu, sizes = without_gpu(session)
    try:  # a read-only or full runs folder: one line (StepFailed), never a traceback
        run_dir = Path(run_dir or runs_dir / runs.new_run_id(runs_dir)).absolute()
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides.update(samples.sample_overrides(session, run_dir))
        if state is not None:  # a resume continues a chain whose first run made the baseline: no second one
            overrides["sample_at_first"] = None
        prepared = prepare_run(session, run_dir, overrides=overrides, resume=state.path if state else None,
                               batch_sizes=sizes)
    except CommandError as exc:
        raise StepFailed(str(exc)) from None
    except OSError as exc:
        raise StepFailed(f"cannot write the run's config files in {run_dir or runs_dir}: {exc.strerror or exc}") from None
    files = list(prepared.files)
    if overrides.get("sample_prompts"):
        files.append(Path(overrides["sample_prompts"]))
    size, estimated = statesave.state_bytes(runs_dir)
    if size is None:
        size = statesave.estimated_state_bytes(session.train.network_dim, session.train.optimizer_type)
    notes = [cadence.line(size, estimated), samples.sampling_cost(session, cadence.s_per_step, resume=state is not None)]
    upcast = fp8_file_line(session, prepared.command.options)
    if upcast:
        notes.insert(0, upcast)
    stale = stale_fit_line(session)
    if stale:
        notes.insert(0, stale)
    used = fit_used_line(session, prepared.command.options)
    if used:
        notes.append(used)
    return Plan(
        run_dir=run_dir, command=prepared.command, files=files, base_step=base_step, base_epoch=base_epoch,
        resumed_from=state.path if state else None, launch=prepared.launch, notes=notes, extra=extra,
        cpu=cpu, batch_sizes=sizes,
    )


def fit_used_line(session: Session, options: dict[str, Any]) -> str | None:
    """What the probe's fit made this run train with, from the trainer's final options (train.extra_args win over
    the fit): swap, base, checkpointing and an 8-bit optimizer in place of the person's — so nothing in the
    command surprises. None with the preset (`gpu.fit = preset`) or before a fit was measured."""
    from lorawizard.core.launch.command import fit_options

    if not fit_options(session) or session.gpu.fit_swap is None:
        return None
    words = [f"swap {options.get('blocks_to_swap') or 0}", "fp8 base" if options.get("fp8_base") else "16-bit base",
             "gradient checkpointing" if options.get("gradient_checkpointing") else "no gradient checkpointing"]
    optimizer = str(options.get("optimizer_type") or "")
    if optimizer and optimizer.lower() != session.train.optimizer_type.lower():
        words.append(f"{optimizer} in place of your {session.train.optimizer_type} (the same rule, 8-bit state)")
    return f"the probe's fit (gpu.fit = {session.gpu.fit}) trains with: " + ", ".join(words)


def stale_fit_line(session: Session) -> str | None:
    """One warning line when the run uses a fastest fit (`gpu.fit_*`) measured for another GPU, other buckets or
    settings: its checkpointing-off or batch may no longer fit (the run still uses it: the person decides)."""
    from lorawizard.core.launch.command import fit_options
    from lorawizard.core.train.forecast import fit_staleness

    if not fit_options(session) or session.gpu.fit_swap is None:
        return None
    reason = fit_staleness(session)
    if reason is None:
        return None
    return (f"warning: the probe's fit (gpu.fit = {session.gpu.fit}) is not current — {reason}; this run uses it "
            "anyway: probe again (step 5, or --steps probe) if it runs out of memory")


def fp8_file_line(session: Session, options: dict[str, Any]) -> str | None:
    """One warning line when the base model's file holds fp8 weights and `train.base_precision = "16bit"` trains a
    16-bit base: without --fp8_base sd-scripts loads the file cast to the weight dtype (the training script:
    `loading_dtype = None if args.fp8_base else weight_dtype`), so the fp8 rounding stays and the transformer takes
    twice the GPU memory. The file's header says its dtype; a file not there yet, its file set's precision."""
    from lorawizard.core.models.files import preset_name
    from lorawizard.core.models.identify import identify
    from lorawizard.core.profile import family_for

    if session.train.base_precision != "16bit" or options.get("fp8_base"):
        return None
    family = family_for(session)
    role, option = family.backend.role_options[0]  # the base model's file (argv order: it comes first)
    path = Path(str(options.get(option) or ""))
    if path.is_file():
        fp8 = identify(path, family).dtype.startswith("fp8")
    else:
        fp8 = not session.get(f"models.{role}") and family.preset(preset_name(session)).precision == "fp8"
    if not fp8:
        return None
    return (f'warning: {path.name} holds fp8 weights and train.base_precision = "16bit": sd-scripts upcasts them at '
            "load, so no quality is gained (the fp8 rounding stays) and the base takes twice the GPU memory; choose "
            'a 16-bit file set (Models step) or train.base_precision = "fp8"')


def without_gpu(session: Session) -> tuple[Any, dict[str, int] | None]:
    """The rule for "no GPU" (core.gpu.cpu_mode), the same in the wizard and in replay: (CpuMode, the batch sizes set
    by hand, else 1) when NVML sees no GPU; (None, None) otherwise."""
    from lorawizard.core.dataset.step import bucket_counts
    from lorawizard.core.gpu import cpu_mode

    if cpu_mode.gpu_visible():
        return None, None
    buckets = bucket_counts(session)
    return cpu_mode.cpu_mode(session, buckets), cpu_mode.batch_sizes(session, buckets)


def claim_project(session: Session) -> None:
    """Take the project lock (kept for the life of this process) before launching or changing a run."""
    try:
        projectlock.claim(session.project_dir, "replay" if session.read_only else "wizard")
    except projectlock.ProjectBusy as exc:
        raise StepFailed(busy_line(session, exc)) from None
    except OSError as exc:  # a read-only project folder, a full disk: one line, exit 1 (never a traceback)
        raise StepFailed(projectlock.lock_problem(session.project_dir, exc)) from None


def busy_line(session: Session, busy: projectlock.ProjectBusy) -> str:
    """Why another process has the project: a live run to watch, or (QA: a wizard that once started or stopped a run
    keeps the lock while it is open) no run at all, which "a run is starting" wrongly said."""
    holder = f"pid {busy.pid}" if busy.pid else "another process"
    what = f" ({busy.what})" if busy.what else ""
    live = live_run(session)
    if live is not None:
        return (f"run {live.run_id} is going in this project and {holder}{what} holds it; "
                f"use `lorawizard {session.project_dir}` to watch it, or try again when that process has ended")
    return (f"{holder}{what} holds this project (it is starting a run, or started or stopped one and is still open; "
            "no run is going now): try again when that process has ended (a wizard: quit it with q)")


def live_run(session: Session, problems: list[str] | None = None, *, gpu: str | None = None) -> RunRecord | None:
    """The project's live run: the newest one any of whose processes lives (its group is the truth), also when its
    run.json or run folder is gone (found by its processes). What every launch, `--status`, `--stop` and the wizard
    look at. With `gpu` (a queue's runs side by side): the newest live run on that GPU (or on none known)."""
    if gpu is None:
        return runs.live_run(session.paths.runs, problems, project_dir=session.project_dir)
    for record in reversed(runs.live_runs(session.paths.runs, problems, project_dir=session.project_dir)):
        if gpu in (record.extra.get("gpu_uuids") or [record.gpu_uuid or gpu]):
            return record
    return None


def start_run(session: Session, plan: Plan, *, beside_other_gpus: bool = False) -> RunRecord:
    """Launch the plan's command detached, after removing text-encoder caches made for other settings (sd-scripts
    would read them: core.train.te_cache; said in `plan.cache_line`)."""
    from lorawizard.core.train import te_cache

    command = plan.command
    others = beside_other_gpus and bool(runs.live_runs(session.paths.runs, project_dir=session.project_dir))
    try:
        plan.cache_line = te_cache.refresh(session, command.options, others_running=others)
    except ValueError as exc:
        raise StepFailed(str(exc)) from None
    except OSError as exc:
        raise StepFailed(f"cannot remove the stale text-encoder caches in {session.paths.dataset}: "
                         f"{exc.strerror or exc}") from None
    extra = dict(plan.extra)
    on_finish = session.train.on_finish
    if on_finish:
        extra["on_finish"] = list(on_finish)
    try:
        return runs.launch(
            command.argv, plan.run_dir, env=command.env, cwd=command.cwd, session_text=session.to_text(),
            output_name=str(command.options.get("output_name", session.name)),
            base_step=plan.base_step, base_epoch=plan.base_epoch, resumed_from=plan.resumed_from,
            gpu_uuid=_first(plan.launch.uuids) if plan.launch else session.gpu.uuid,
            extra={**_launch_extra(plan.launch), **extra}, project=session.project_dir,
            beside_other_gpus=beside_other_gpus,
        )
    except RunError as exc:
        raise StepFailed(str(exc)) from None


def _first(items: list[str]) -> str | None:
    return items[0] if items else None


def _launch_extra(launch: Any) -> dict[str, Any]:
    """What the dashboard needs of a run on several GPUs: every GPU (rank order) and the process count."""
    if launch is None:
        return {}
    return {"gpu_uuids": list(launch.uuids), "processes": launch.processes, "cpu": launch.cpu}


def launch_lines(launch: Any) -> list[str]:
    """`2 processes (data-parallel) on GPU-a, GPU-b` and the notes (peer-to-peer, a busy GPU)."""
    if launch is None or not launch.distributed:
        return []
    where = "the CPU (test mode)" if launch.cpu else ", ".join(
        f"GPU {g.index} {g.name}" for g in launch.gpus) or ", ".join(launch.uuids)
    return [f"{launch.processes} processes (data-parallel, one per GPU) on {where}; port {launch.port}",
            *launch.notes]


def expected_steps_lines(session: Session, launch: Any, batch_sizes: dict[str, int] | None = None) -> list[str]:
    """What sd-scripts will count: steps per epoch (shared by the processes) × epochs; its own totals must agree.
    `batch_sizes`: the plan's own (no GPU: set by hand, else 1)."""
    from lorawizard.core.dataset.step import bucket_counts
    from lorawizard.core.launch import multigpu
    from lorawizard.core.launch.command import CommandError, batch_size_for

    try:
        batches = {b: (n, batch_size_for(session, b, batch_sizes)) for b, n in bucket_counts(session).items()}
    except (CommandError, OSError, ValueError):
        return []
    if not batches:
        return []
    processes = launch.processes if launch is not None else 1
    repeats, epochs = session.dataset.num_repeats, session.train.max_train_epochs
    per = multigpu.steps_per_epoch(batches, repeats, processes)
    shared = ""
    if processes > 1:
        shared = (f" ({processes} processes share each epoch's batches: "
                  f"{multigpu.steps_per_epoch(batches, repeats)} steps per epoch on one)")
    return [f"expected: {per} steps per epoch × {epochs} epochs = {per * epochs} steps{shared}"]


def status_line(state: TrainState, *, ended: bool = False, epoch: bool = True) -> str:
    """`epoch 3/16 · step 120/640 (19%) · 1.92 steps/s · loss 0.312 · ETA 4:31`; a run that `ended` (finished,
    stopped, failed) has no ETA; without `epoch` where the line names it already ("epoch 3/16 begins")."""
    parts = []
    if epoch and state.epochs and state.epoch:  # before the first "epoch 1/N" no epoch has begun: no "epoch 0"
        parts.append(f"epoch {state.epoch}/{state.epochs}")
    if state.total_steps:
        parts.append(f"step {state.step}/{state.total_steps} ({state.fraction or 0:.0%})")
    elif state.phase != "training":
        parts.append(state.phase)
    if state.rate:
        parts.append(format_rate(state.rate, "steps"))
    if state.loss is not None:
        parts.append(f"loss {state.loss:.3g}")
    if not ended:
        parts.append(f"ETA {format_duration(state.eta_s)}")
    return " · ".join(parts)


# ------------------------------------------------------------------ the step


class TrainOptions(TypedDict, total=False):
    """What the train step reads from `ctx.options` (all optional)."""

    detach: bool  # start and return
    resume: bool  # continue from the newest state folder
    attach: bool  # only follow a live run, never start one
    only: list[str]  # --variants: which runs of the queue ("base", variant names; core/train/queue.py)
    variant: str  # this run is the queue's variant of that name (kept in run.json's extra)
    beside: bool  # a queue's runs side by side, one per GPU: only a live run on this run's GPU is in the way


def _options(ctx: StepContext) -> TrainOptions:
    return cast(TrainOptions, ctx.options)


def run_step(ctx: StepContext) -> StepResult:
    session = ctx.session
    runs_dir = session.paths.runs
    detach = bool(_options(ctx).get("detach"))
    resume = bool(_options(ctx).get("resume"))

    if not ctx.dry_run:
        claim_project(session)  # before looking for a live run: nobody else can start one after we looked
    problems: list[str] = []
    beside = bool(_options(ctx).get("beside"))
    live = live_run(session, problems, gpu=session.gpu.uuid if beside else None)
    for problem in problems:
        ctx.log(f"train: {one_line(problem)}")
    if session.gpu.machines:
        return _several_machines(ctx, runs_dir)
    if ctx.dry_run:
        # inside the project whatever paths.runs says: a dry run changes nothing outside it
        plan = plan_run(session, resume=resume, run_dir=session.paths.state / DRY_RUN_DIR)
        for line in plan.cpu_lines() + launch_lines(plan.launch) + expected_steps_lines(session, plan.launch,
                                                                                        plan.batch_sizes):
            ctx.log(line)
        ctx.log(f"would start run in {runs_dir}/<run-id> with (config files written to {plan.run_dir}):")
        for path in plan.files:
            ctx.log(f"  {path}")
        for note in plan.notes:
            ctx.log(note)
        from lorawizard.core.train import te_cache

        verdict = te_cache.check(session, plan.command.options)
        if verdict.files:  # removed by a real run (start_run): sd-scripts would read them
            ctx.log(te_cache.describe(verdict, done=False))
        from lorawizard.core.train.forecast import forecast_lines

        for line in forecast_lines(session):  # measured s/step × planned steps + measured phases (issue 26)
            ctx.log(line)
        ctx.log(plan.command.shell_text(multiline=True))
        note = f"; a run is going now: {live.run_id}" if live else ""
        return StepResult(True, f"dry run: command printed, nothing launched{note}",
                          data={"argv": plan.command.argv, "files": [str(p) for p in plan.files]})

    if live is not None:
        return _follow_someone_elses(ctx, live, detach=detach, resume=resume)
    if _options(ctx).get("attach"):
        raise StepFailed(f"no training run is going under {runs_dir}")
    from lorawizard.core.captions.captionset import stale_captions_line
    from lorawizard.core.captions.written import edited_files_line, files_before_training

    stale, edited = files_before_training(session)
    if stale:  # `--steps train` alone after editing captions (a full replay writes them first)
        ctx.log(f"train: warning: {stale_captions_line(stale)}")
    if edited:  # a person's edit of the file: trained on as it is, never called "the old text" (issue 23 A8)
        ctx.log(f"train: {edited_files_line(edited)}")
    plan = plan_run(session, resume=resume)
    if _options(ctx).get("variant"):
        plan.extra["variant"] = _options(ctx)["variant"]
    for line in plan.cpu_lines() + launch_lines(plan.launch):
        ctx.log(f"train: {line}")
    ctx.check_cancelled()  # Ctrl-C before the launch: launch nothing
    record = start_run(session, plan, beside_other_gpus=beside)
    if plan.cache_line:
        ctx.log(f"train: {plan.cache_line}")
    what = f"resumed from {plan.resumed_from.name} at step {plan.base_step}" if plan.resumed_from else "started"
    ctx.log(f"training {what}: run {record.run_id}, pid {record.pid}, log {record.log_path}")
    for note in plan.notes:
        ctx.log(f"train: {note}")

    if detach:
        if ctx.cancel.is_set():  # Ctrl-C while it was being started: --detach means it is left running
            ctx.log(f"train: interrupted; run {record.run_id} (pid {record.pid}) keeps running (--detach). "
                    f"Stop it: lorawizard {session.project_dir} --stop")
            raise Cancelled()
        ctx.log(f"training keeps running in the background. Follow it: lorawizard {session.project_dir}")
        ctx.log(f"  or: tail -f {record.log_path}")
        return StepResult(True, f"run {record.run_id} started in the background (pid {record.pid})",
                          data={"run_id": record.run_id, "pid": record.pid, "log": str(record.log_path)})
    result = follow(ctx, record)
    if result.ok:
        result = _keep(ctx, result, record)
    return result


def _follow_someone_elses(ctx: StepContext, live: RunRecord, *, detach: bool, resume: bool) -> StepResult:
    """A run this process did not start is going: start nothing (never a second trainer). `--resume` refuses (it
    would resume nothing); otherwise follow it and say so: Ctrl-C then stops following, never that run."""
    project = shell_path(ctx.session.project_dir)
    where = f"run {live.run_id} (process group {live.group})"
    if resume:
        raise StepFailed(f"{where} is still going, so --resume would resume nothing: stop it first (lorawizard "
                         f"{project} --stop), then resume; or follow it: lorawizard {project} --follow")
    if detach:
        ctx.log(f"train: {where} is already going (not started by this replay): nothing started")
        return StepResult(True, f"{where} was already going; nothing started. Follow it: lorawizard {project} --follow",
                          data={"run_id": live.run_id, "pid": live.pid, "log": str(live.log_path)})
    ctx.log(f"train: {where} is already going (not started by this replay): following it; Ctrl-C stops following, "
            f"the run goes on (stop it: lorawizard {project} --stop)")
    result = follow(ctx, live, own=False)
    if result.ok:
        result = _keep(ctx, result, live)
    return result


def _keep(ctx: StepContext, result: StepResult, record: RunRecord | None = None) -> StepResult:
    """Copy the chosen epoch (train.keep_epoch, else the final LoRA) of the run just followed (and the runs it
    resumed from) to <project>/loras/ with its sidecar."""
    from lorawizard.core.train.keep import KeepError, keep_epoch

    try:
        kept = keep_epoch(ctx.session, ctx.session.train.keep_epoch, record)
    except KeepError as exc:
        return StepResult(False, f"training finished, but {exc}", result.details, result.data)
    at = f" (step {kept.step})" if kept.step is not None else ""
    ctx.log(f"train: kept epoch {kept.epoch}{at} of run {kept.run_id}: {kept.lora} (+ {kept.sidecar.name})")
    result.details.append(f"kept: {kept.lora}")
    result.data["kept"] = str(kept.lora)
    return result


def _several_machines(ctx: StepContext, runs_dir: Path) -> StepResult:
    """`gpu.machines`: --dry-run writes one accelerate config per machine and prints each one's command; we never
    start anything on other machines (no SSH), so a real run says how to start it."""
    from lorawizard.core.launch import machines
    from lorawizard.core.launch.command import CommandError
    from lorawizard.core.launch.multigpu import SelectionError

    if not ctx.dry_run:
        raise StepFailed("gpu.machines: lorawizard does not start trainers on other machines — run with --dry-run "
                         "and start the printed command on each machine")
    run_dir = runs_dir / "machines" if ctx.may_write(runs_dir) else ctx.session.paths.state / "machines"
    try:
        lines = machines.dry_run_lines(ctx.session, run_dir)
    except (CommandError, SelectionError) as exc:
        raise StepFailed(str(exc)) from None
    except OSError as exc:
        raise StepFailed(f"cannot write the machines' config files in {run_dir}: {exc.strerror or exc}") from None
    for line in lines:
        ctx.log(line)
    return StepResult(True, f"dry run: one accelerate config per machine in {run_dir}; start each printed command on "
                      "its machine (main machine first)")


def follow(ctx: StepContext, record: RunRecord, *, poll_s: float = 0.25, own: bool = True) -> StepResult:
    """Follow `record` to its end. On cancel a run this process started (`own`) is stopped; someone else's is left
    running: only the following stops (Cancelled)."""
    follower = RunFollower(record, use_index=True)  # only what the log gained since it was last read (--follow)
    state = follower.state
    reporter = FollowReporter(follower, ctx.progress, ctx.log)
    warned: set[str] = set()
    ticks = watch(record, poll_s=poll_s, follower=follower)
    try:
        for tick in ticks:
            reporter.report()
            problem = follower.diagnosis(alive=tick.alive) if tick.alive else None
            if problem is not None and problem.kind not in warned:
                warned.add(problem.kind)
                ctx.log(f"train: warning: {problem.line()}")
            if not tick.alive:
                break
            if tick.notice:
                ctx.log(f"train: {tick.notice}")
                continue
            if ctx.cancel.is_set():
                if not own:
                    ctx.log(f"train: stopped following run {record.run_id}; it goes on (it was not started here)")
                    raise Cancelled()
                _stop_on_cancel(ctx, record)
    finally:
        ticks.close()  # reads the rest of the log (also when cancelled)
    ctx.progress(_progress(state, finished=True))
    record = record.reload()
    code = record.returncode()
    problem = follower.diagnosis(alive=False)
    details = [f"log: {record.log_path}", status_line(state, ended=True)]
    if state.checkpoints:
        details.append(f"last checkpoint: {state.checkpoints[-1]}")
    from lorawizard.core.train.suggest import summary_line

    suggested = summary_line(record, state)
    if suggested:
        details.append(suggested)
    if record.status() == "finished":  # from files (exit status, the final LoRA), never the log's tail
        return StepResult(True, f"model saved: run {record.run_id} finished ({status_line(state, ended=True)})", details,
                          data={"run_id": record.run_id})
    summary = problem.line() if problem else f"the trainer ended with status {code} and no `model saved.`"
    return StepResult(False, summary, details, data={"run_id": record.run_id, "returncode": code})


def _stop_on_cancel(ctx: StepContext, record: RunRecord) -> None:
    """Ctrl-C while following (not detached): stop the run as the wizard's s does (same signals, same time limits),
    wait until its whole process group is gone, then raise Cancelled. `ctx.hurry` moves to the next signal at once."""
    ctx.log(f"train: stopping run {record.run_id}: SIGINT to its process group, SIGTERM after "
            f"{runs.STOP_INT_S:g} s, SIGKILL after {runs.STOP_TERM_S:g} s more (Ctrl-C again: the next signal now)…")

    def stage(name: str) -> None:
        if name != "SIGINT":
            ctx.log(f"train: sending {name} to run {record.run_id}")

    try:
        how = runs.stop(record, on_stage=stage, hurry=ctx.hurry)
    except RunError as exc:
        raise StepFailed(str(exc)) from None
    ctx.log(f"train: run {record.run_id} stopped ({how}); resume: lorawizard --replay {shell_path(ctx.session.path)} "
            "--steps train --resume (or r in the wizard)")
    raise Cancelled()


class FollowReporter:
    """What one poll of a followed run tells a person: each epoch that began (one line), then the progress of
    the current phase or of training (the caller's progress callback decides how often it shows), or a line
    when a phase without a bar begins."""

    def __init__(self, follower: RunFollower, progress: ProgressCallback, log: LogCallback) -> None:
        self.follower, self.progress, self.log = follower, progress, log
        self.seen_epochs = 0
        self.last_phase = ""
        self.begun_at: tuple[int, int] | None = None  # (epoch, step) the last "begins" line showed
        self.val_said: set[int] = set()  # epochs whose validation loss was said

    def report(self) -> None:
        state, epochs = self.follower.state, self.follower.epochs_seen
        for validated, value in sorted(state.val_by_epoch.items()):
            if validated not in self.val_said:
                self.val_said.add(validated)
                self.log(f"train: {validation_line(state, validated, value)}")
        while self.seen_epochs < len(epochs):
            epoch = epochs[self.seen_epochs]
            self.seen_epochs += 1
            now = f" · {status_line(state, epoch=False)}" if self.seen_epochs == len(epochs) else ""
            self.log(f"train: epoch {epoch.n}/{epoch.total} begins{now}")
            self.begun_at = (state.epoch, state.step)
        if state.total_steps and (state.epoch, state.step) == self.begun_at and state.phase_bar is None:
            pass  # the "begins" line said where training stands; the next step is news
        elif state.total_steps or state.phase_bar is not None:
            self.progress(_progress(state))
        elif state.phase != self.last_phase:
            self.log(f"train: {state.phase}…")
        self.last_phase = state.phase


def validation_line(state: TrainState, epoch: int, value: float) -> str:
    """`epoch 3 validation loss 0.412 (training 0.398; lowest so far)`."""
    train = state.train_by_epoch.get(epoch)
    earlier = [v for e, v in state.val_by_epoch.items() if e < epoch and math.isfinite(v)]
    notes = [f"training {train:.3g}"] if train is not None else []
    if earlier and math.isfinite(value):
        notes.append("lowest so far" if value < min(earlier) else f"lowest {min(earlier):.3g}")
    return f"epoch {epoch} validation loss {value:.3g}" + (f" ({'; '.join(notes)})" if notes else "")


def stop_surviving_ranks(record: RunRecord, reason: str) -> str:
    """Several processes, one failed and the others still run (stuck in a collective): stop them in a thread, so the
    follower (replay's lines, the wizard's dashboard) keeps reading the log while the signals escalate."""
    threading.Thread(target=_stop_quietly, args=(record,), name=f"stop-ranks-{record.run_id}", daemon=True).start()
    return f"{reason}: stopping the rest of run {record.run_id}"


def _stop_quietly(record: RunRecord) -> None:
    """runs.stop in a thread: a process that outlives SIGKILL is the follower's to see (the run stays running), never a
    thread's traceback on the wizard's screen."""
    try:
        runs.stop(record, int_timeout=10, term_timeout=5, kill_timeout=3)
    except RunError:
        pass


class RankWatch:
    """Several processes: once one rank has failed, the others must not be left hanging. torchrun stops them at once
    when a rank exits; a rank that failed but lives on (stuck in a collective) is caught here after `grace_s`."""

    def __init__(self, grace_s: float = 120.0) -> None:
        self.grace_s = grace_s
        self.failed_at: float | None = None
        self.fired = False

    def check(self, state: TrainState, now: float) -> bool:
        """True once, `grace_s` after the first rank failure was seen while the run is still alive."""
        if self.fired or state.processes < 2:
            return False
        if not any(f.rank is not None and f.kind != "launcher" for f in state.failures):
            return False
        if self.failed_at is None:
            self.failed_at = now
            return False
        if now - self.failed_at >= self.grace_s:
            self.fired = True
            return True
        return False

    @staticmethod
    def reason(state: TrainState) -> str:
        ranks = state.failed_ranks
        return f"rank {ranks[0]} failed and the other processes were still running" if ranks else "a rank failed"


def _progress(state: TrainState, *, finished: bool = False) -> Progress:
    if state.total_steps:
        # sd-scripts draws its step bar (0/N) before it prints "epoch 1/N": no epoch has begun yet, not "epoch 0"
        task = f"epoch {state.epoch}/{state.epochs}" if state.epochs and state.epoch else "training"
        detail = f"loss {state.loss:.3g}" if state.loss is not None else ""
        if state.base_step:
            detail += f" (resumed at step {state.base_step}; steps shown are absolute)"
        return Progress("train", task, state.step, state.total_steps, "steps", state.rate, state.eta_s,
                        detail.strip(), finished)
    bar = state.phase_bar
    if bar is not None:  # labelled by its phase, counted in its own unit ("caching latents 1/4 1.59 images/s")
        phase = state.phase_progress
        return Progress("train", phase.label, bar.n, bar.total or None, phase.unit, bar.rate, phase.left_s, "",
                        finished)
    return Progress("train", state.phase, 0, None, "", None, None, "", finished)
