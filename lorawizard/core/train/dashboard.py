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
from lorawizard.core.train.step import Tick, watch

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


def slow_readings(record: RunRecord, sampler: ProcessSampler, alive: bool, name: str) -> dict[str, Any]:
    """CPU/RSS of the process tree, checkpoints, the newest sample, and the run's GPU(s) through NVML."""
    readings: dict[str, Any] = {}
    cpu, rss, procs = sampler.sample(record.process_tree() if alive else [])
    readings.update(cpu_pct=cpu, rss=rss, procs=procs)
    readings["checkpoints"] = [(p.stem, e, s) for p, e, s in runs.checkpoints(record.dir, name)]
    readings["sample"] = runs.newest_sample(record.dir)
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


def view_from(tick: Tick, name: str, extra: dict[str, Any]) -> TrainView:
    """The dashboard's view of one tick, with the latest slow readings."""
    state, record, alive, follower = tick.follower.state, tick.record, tick.alive, tick.follower
    states = list(state.states)
    elapsed = None
    if record.started_ts:
        info = record.exit_info() if not alive else None
        end = info.get("ended") if info else None
        elapsed = (end or time.time()) - record.started_ts if (alive or end) else state.elapsed_s
    return TrainView(
        name=name, run_id=record.run_id, status="running" if alive else record.status(), phase=state.phase,
        epoch=state.epoch, epochs=state.epochs, step=state.step, total_steps=state.total_steps, rate=state.rate,
        elapsed_s=elapsed, eta_s=state.eta_s, loss=state.loss, base_step=record.base_step,
        losses=state.losses.values(400), bar_line=state.bar_line, new_lines=tick.new_lines, reset_lines=tick.first,
        checkpoints=extra.get("checkpoints", []), states=len(states),
        newest_state=Path(states[-1].path).name if states else "", sample=extra.get("sample"), gpu=extra.get("gpu"),
        gpus=extra.get("gpus", []), gpu_note=extra.get("gpu_note", ""), cpu_pct=extra.get("cpu_pct"),
        rss=extra.get("rss"), procs=extra.get("procs", 0), diagnosis=follower.diagnosis(alive=alive),
        log_path=str(record.log_path), notice=tick.notice,
    )


def views(record: RunRecord, name: str, *, wait: Callable[[float], bool | None],
          poll_s: float = UPDATE_EVERY_S, slow_s: float = SLOW_EVERY_S,
          rank_grace_s: float = 120.0) -> Iterator[TrainView]:
    """One `TrainView` per tick of `watch` until the run ends or `wait` returns True (the screen leaves)."""
    sampler = ProcessSampler()
    slow_at = 0.0
    extra: dict[str, Any] = {}
    for tick in watch(record, poll_s=poll_s, wait=wait, rank_grace_s=rank_grace_s):
        now = time.monotonic()
        if now >= slow_at or not tick.alive:
            slow_at = now + slow_s
            extra = slow_readings(tick.record, sampler, tick.alive, name)
        yield view_from(tick, name, extra)
