"""What the wizard's Train dashboard shows, computed off the UI thread from the one follow loop
(`core.steps.training.watch`): the screen only renders the `TrainView`s this module yields.

Fast readings (log, progress, loss) come every tick; slow ones (GPU through NVML, the process tree's CPU and
memory, the checkpoint folder, the newest sample image) at most once a second and once more when the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lorawizard.core.launch import runs
from lorawizard.core.launch.runs import RunRecord, RunStatus
from lorawizard.core.train.logparse import PhaseProgress, downsample
from lorawizard.core.train.step import INDEX_FILE, RunFollower, Tick, index_losses, watch
from lorawizard.core.train.suggest import EPOCH_LOSSES, Suggestion, index_epoch_losses, suggest, validates

UPDATE_EVERY_S = 0.25
SLOW_EVERY_S = 1.0  # GPU, process tree, checkpoint folder


@dataclass(frozen=True, eq=False)
class TrainView:
    """Everything the dashboard shows, computed off the UI thread (or built by hand in tests).

    One immutable snapshot per tick: the Train screen assigns it to a reactive its panels are bound to. Compared by
    identity (eq=False), so every new view reaches the panels, even one equal to the last (its log lines are new)."""

    name: str = ""
    run_id: str = ""
    status: RunStatus | Literal["no run"] = "no run"
    phase: str = ""
    epoch: int = 0
    epochs: int | None = None
    step: int = 0
    total_steps: int | None = None
    rate: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    loss: float | None = None
    base_step: int = 0
    losses: list[float] = field(default_factory=list)
    bar_line: str = ""
    new_lines: list[Any] = field(default_factory=list)  # logparse.Line
    reset_lines: bool = False
    checkpoints: list[tuple[str, int | None, int]] = field(default_factory=list)  # name, epoch, bytes
    states: int = 0
    newest_state: str = ""
    sample: Path | None = None
    gpu: Any = None  # core.gpu.GpuInfo
    gpus: list[Any] = field(default_factory=list)  # every GPU of a run on several (rank order); empty for one
    gpu_note: str = ""
    cpu_pct: float | None = None
    rss: int | None = None
    procs: int = 0
    diagnosis: Any = None  # core.diagnosis.Diagnosis
    log_path: str = ""
    notice: str = ""  # once, for a pop-up: e.g. the surviving ranks of a failed run are being stopped
    progress: PhaseProgress | None = None  # what the trainer does now: its label, own count, rate and time left
    chain: int = 1  # runs in this run's chain (it and the runs it resumed from)
    # per epoch, the chain's: training loss at each epoch's end, validation loss (train.validation_split)
    train_by_epoch: dict[int, float] = field(default_factory=dict)
    val_by_epoch: dict[int, float] = field(default_factory=dict)
    validating: bool = False  # the run's command asked for a validation loss
    suggestion: Suggestion | None = None  # core.train.suggest: the epoch to keep, live


@dataclass(frozen=True)
class ChainHistory:
    """What the runs a resumed run continues (oldest first) leave to its dashboard: their folders (checkpoints,
    samples) and their loss history up to the step the resume started at."""

    dirs: tuple[Path, ...] = ()
    losses: tuple[tuple[int, float], ...] = ()
    epochs: tuple[int | None, ...] = ()  # the epoch each earlier run ended at: its final LoRA is that epoch's
    train_by_epoch: dict[int, float] = field(default_factory=dict)  # the earlier runs' per-epoch losses
    val_by_epoch: dict[int, float] = field(default_factory=dict)

    def checkpoints(self, name: str) -> list[tuple[str, int | None, int]]:
        """The earlier runs' LoRA files, oldest run first (an earlier run's "final" one named by its epoch)."""
        found = []
        for folder, ended in zip(self.dirs, self.epochs, strict=True):
            found += [(p.stem, ended if e is None else e, size) for p, e, size in runs.checkpoints(folder, name)]
        return found


def chain_history(record: RunRecord) -> ChainHistory:
    """The earlier runs of `record`'s chain (keep.run_chain: run.json's resumed_from). Each run's loss history comes
    from its log index (log-index.json); a run without one is read once, bounded (head and tail), and indexed."""
    from lorawizard.core.train.keep import run_chain

    if not getattr(record, "resumed_from", None):  # a fresh run is a chain of one
        return ChainHistory()
    earlier = run_chain(record)[:-1]
    losses: list[tuple[int, float]] = []
    epochs: list[int | None] = []
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for run in earlier:
        points, epoch, curves = _indexed(run)
        losses += points
        epochs.append(epoch)
        train.update(curves[0])
        val.update(curves[1])
    limit = record.base_step or None
    kept = sorted({step: loss for step, loss in losses if limit is None or step <= limit}.items())
    upto = record.base_epoch or None  # the resume starts after this epoch: a later one is this run's to say
    train = {e: v for e, v in train.items() if upto is None or e <= upto}
    val = {e: v for e, v in val.items() if upto is None or e <= upto}
    return ChainHistory(tuple(run.dir for run in earlier), tuple(kept), tuple(epochs), train, val)


def _indexed(run: RunRecord) -> tuple[list[tuple[int, float]], int | None, tuple[dict[int, float], dict[int, float]]]:
    """An ended run's loss history, last epoch and per-epoch losses, from its index (or its log read once, bounded,
    then indexed)."""
    import json

    try:
        saved = json.loads((run.dir / INDEX_FILE).read_text(encoding="utf-8"))["state"]
        if isinstance(saved, dict) and "losses" in saved:
            epoch = saved.get("epoch")
            return (index_losses(saved), epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
                    (index_epoch_losses(saved, EPOCH_LOSSES[0]), index_epoch_losses(saved, EPOCH_LOSSES[1])))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    follower = RunFollower(run, use_index=True)
    follower.finish()  # reads at most the head and tail of its log, then writes the index
    state = follower.state
    return list(state.losses.points), state.epoch or None, (dict(state.train_by_epoch), dict(state.val_by_epoch))


class ProcessSampler:
    """CPU % and RSS of a run's process tree; keeps psutil.Process objects so cpu_percent has a baseline."""

    def __init__(self) -> None:
        self._procs: dict[int, Any] = {}

    def sample(self, tree: list[Any]) -> tuple[float | None, int | None, int]:
        import psutil

        if not tree:
            self._procs.clear()
            return None, None, 0
        cpu, rss, alive = 0.0, 0, 0
        current = {}
        for proc in tree:
            known = self._procs.get(proc.pid, proc)
            current[proc.pid] = known
            try:
                with known.oneshot():
                    cpu += known.cpu_percent(None)
                    rss += known.memory_info().rss
                alive += 1
            except psutil.Error:
                continue
        self._procs = current
        return cpu, rss, alive


def slow_readings(record: RunRecord, sampler: ProcessSampler, alive: bool, name: str,
                  chain: ChainHistory | None = None) -> dict[str, Any]:
    """CPU/RSS of the process tree, the chain's checkpoints and newest sample, and the run's GPU(s) through NVML."""
    readings: dict[str, Any] = {}
    cpu, rss, procs = sampler.sample(record.process_tree() if alive else [])
    readings.update(cpu_pct=cpu, rss=rss, procs=procs)
    chain = chain or ChainHistory()
    folders = [*chain.dirs, record.dir]
    readings["checkpoints"] = chain.checkpoints(name) + [(p.stem, e, s) for p, e, s in runs.checkpoints(record.dir, name)]
    samples = [found for found in map(runs.newest_sample, folders) if found is not None]
    readings["sample"] = max(samples, key=_mtime, default=None)
    gpu, note, gpus = None, "", []
    if record.gpu_uuid:
        try:
            from lorawizard.core.gpu import nvml as gpu_module

            uuids = list(record.extra.get("gpu_uuids") or [record.gpu_uuid])
            inv = gpu_module.inventory()
            gpus = [g for g in (inv.by_uuid(u) for u in uuids) if g is not None]  # every GPU of the run
            gpu = gpus[0] if gpus else None
            note = "" if len(gpus) == len(uuids) else f"{len(uuids) - len(gpus)} GPU(s) not visible to NVML"
        except Exception as exc:  # noqa: BLE001 - the GPU panel must never break the dashboard
            note = f"no GPU reading ({exc.__class__.__name__})"
    else:
        note = "no GPU chosen (step 5)"
    readings.update(gpu=gpu, gpu_note=note, gpus=gpus if len(gpus) > 1 else [])
    return readings


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def view_from(tick: Tick, name: str, extra: dict[str, Any], chain: ChainHistory | None = None) -> TrainView:
    """The dashboard's view of one tick, with the latest slow readings and what the chain's earlier runs left."""
    state, record, alive, follower = tick.follower.state, tick.record, tick.alive, tick.follower
    chain = chain or ChainHistory()
    first_own = state.losses.points[0][0] if state.losses.points else None
    earlier = [loss for step, loss in chain.losses if first_own is None or step < first_own]
    losses = downsample(earlier + state.losses.values(), 400) if earlier else state.losses.values(400)
    states = list(state.states)
    elapsed = None
    if record.started_ts:
        info = record.exit_info() if not alive else None
        end = info.get("ended") if info else None
        elapsed = (end or time.time()) - record.started_ts if (alive or end) else state.elapsed_s
    train_by_epoch = {**chain.train_by_epoch, **state.train_by_epoch}
    val_by_epoch = {**chain.val_by_epoch, **state.val_by_epoch}
    checkpoints = extra.get("checkpoints", [])
    saved = {state.epoch if epoch is None else epoch for _name, epoch, _size in checkpoints} - {0}
    suggestion = suggest(train_by_epoch, val_by_epoch, saved_epochs=saved) if val_by_epoch else None
    return TrainView(
        name=name, run_id=record.run_id, status="running" if alive else record.status(), phase=state.phase,
        epoch=state.epoch, epochs=state.epochs, step=state.step, total_steps=state.total_steps, rate=state.rate,
        elapsed_s=elapsed, eta_s=follower.eta_s() if alive else state.eta_s, loss=state.loss,
        base_step=record.base_step, losses=losses, bar_line=state.bar_line, new_lines=tick.new_lines, reset_lines=tick.first,
        checkpoints=checkpoints, states=len(states),
        newest_state=Path(states[-1].path).name if states else "", sample=extra.get("sample"), gpu=extra.get("gpu"),
        gpus=extra.get("gpus", []), gpu_note=extra.get("gpu_note", ""), cpu_pct=extra.get("cpu_pct"),
        rss=extra.get("rss"), procs=extra.get("procs", 0), diagnosis=follower.diagnosis(alive=alive),
        log_path=str(record.log_path), notice=tick.notice, progress=state.phase_progress, chain=len(chain.dirs) + 1,
        train_by_epoch=train_by_epoch, val_by_epoch=val_by_epoch, validating=validates(record) or bool(val_by_epoch),
        suggestion=suggestion,
    )


def views(record: RunRecord, name: str, *, wait: Callable[[float], bool | None],
          poll_s: float = UPDATE_EVERY_S, slow_s: float = SLOW_EVERY_S,
          rank_grace_s: float = 120.0) -> Iterator[TrainView]:
    """One `TrainView` per tick of `watch` until the run ends or `wait` returns True (the screen leaves)."""
    sampler = ProcessSampler()
    slow_at = 0.0
    extra: dict[str, Any] = {}
    chain = chain_history(record)  # once: the earlier runs have ended
    for tick in watch(record, poll_s=poll_s, wait=wait, rank_grace_s=rank_grace_s):
        now = time.monotonic()
        if now >= slow_at or not tick.alive:
            slow_at = now + slow_s
            extra = slow_readings(tick.record, sampler, tick.alive, name, chain)
        yield view_from(tick, name, extra, chain)
