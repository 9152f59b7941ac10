"""What the probe step's flows share (one GPU, several GPUs with the preset, the fastest fit on one or several):
the step's options (`ProbeOptions`), the search over every bucket area with a preset (`Probe`: trials numbered
across areas and presets, a step-down to more block swapping when batch 1 does not fit), an area's result
(`AreaResult`), the report's table and probe.json (`save_results`), the text-encoder cache refresh before the
trials, and the kinds of card among several GPUs with their shared preset.

A module of its own so that each flow (core.probe.several, fit_run, fit_cards) and the entry point
(core.probe.step) import it from below: no import circle between the flows and the step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, cast

from lorawizard.core.common.fsutil import atomic_write_json
from lorawizard.core.common.progress import ProgressMeter
from lorawizard.core.contract import StepContext, StepFailed
from lorawizard.core.gpu.nvml import GB, GpuInfo, NvmlAdapter
from lorawizard.core.gpu.presets import VramPreset, preset_for_memory, preset_named, step_down
from lorawizard.core.gpu.probe_results import RESULTS_FILE
from lorawizard.core.probe.trials import (
    MARGIN,
    PROBE_STEPS,
    STATUS_WORDS,
    BatchSearch,
    ProbeEvent,
    TrialOutcome,
    TrialRunner,
    TrialSpec,
)
from lorawizard.core.session.document import Session


@dataclass
class AreaResult:
    bucket: str
    buckets: list[str]
    batch: int
    preset: str
    peak_bytes: int | None
    s_per_step: float | None
    trials: list[TrialOutcome]


class ProbeOptions(TypedDict, total=False):
    """What the probe step reads from `ctx.options` (all optional); test doubles come in here, never as globals."""

    gpu_uuid: str  # probe this GPU (else the session's; with several chosen, each kind of card)
    preset: str  # start from this preset
    reprobe: bool  # measure buckets that already have a batch size
    max_batch: int
    trial_timeout_s: float
    on_event: Callable[[ProbeEvent], None]  # live trial events (the GPU screen)
    nvml: NvmlAdapter  # tests: a fake NVML
    trial_runner: TrialRunner  # tests: a stand-in for the trainer
    trial_runner_for: Callable[[GpuInfo], TrialRunner]  # tests, several GPUs: a stand-in per card


def probe_options(ctx: StepContext) -> ProbeOptions:
    return cast(ProbeOptions, ctx.options)


def stale_text_encoder_caches(ctx: StepContext) -> None:
    """The trials cache text-encoder outputs beside the images, and training reuses them: caches made for other
    settings (another family's T5 length) go first, as before a run (core.train.te_cache)."""
    from lorawizard.core.launch.command import CommandError, trainer_options
    from lorawizard.core.train import te_cache

    if ctx.dry_run:
        return  # the train step's dry run says what a run would remove
    try:
        line = te_cache.refresh(ctx.session, trainer_options(ctx.session))
    except (CommandError, OSError):
        return  # a trial says what is wrong with the options; a cache that cannot be removed, the run before training
    if line:
        ctx.log(f"probe: {line}")


# ---------------------------------------------------------------- the search over every area


@dataclass
class Probe:
    """The search over every bucket area: trials numbered across areas and presets, events to `on_event`."""

    ctx: StepContext
    runner: TrialRunner
    gpu: GpuInfo
    limit: int  # bytes: a trial fits when its peak stays under this
    max_batch: int
    on_event: Callable[[ProbeEvent], None]
    number: int = 0  # trials run so far

    def every_area(self, groups: list[tuple[str, list[str], int]], preset: VramPreset,
                   presets: list[VramPreset]) -> tuple[VramPreset, list[AreaResult]]:
        """Largest area first, each starting from the previous result; when batch 1 does not fit, the next lower
        preset starts the areas again. Returns the preset that fits and the result per area."""
        meter = ProgressMeter(self.ctx.progress, "probe", "bucket areas", len(groups), "areas", interval=0)
        meter.update(0, force=True)
        while True:  # once per preset: a step-down starts the areas again
            results: list[AreaResult] = []
            stepped: VramPreset | None = None
            previous = 0
            for bucket, members, images in groups:
                search = self.area(bucket, members, images, preset, previous)
                if search.best == 0:
                    stepped = self._step_down(bucket, preset, presets)
                    break
                fitting = [o for o in search.outcomes if o.fits and o.batch == search.best]
                best = fitting[-1] if fitting else None
                results.append(AreaResult(bucket, members, search.best, preset.name, best.peak_bytes if best else None,
                                          best.s_per_step if best else None, list(search.outcomes)))
                previous = search.best
                self.on_event(ProbeEvent("area-done", text=f"{bucket} → {search.best}"))
                meter.update(len(results), f"{bucket} → batch {search.best}")
            if stepped is None:
                meter.finish()
                return preset, results
            preset = stepped
            meter.update(0, f"stepped down to {preset.name}")

    def _step_down(self, bucket: str, preset: VramPreset, presets: list[VramPreset]) -> VramPreset:
        stepped = step_down(preset, presets)
        if stepped is None:
            raise StepFailed(
                f"even batch 1 does not fit {bucket} with the {preset.name} preset "
                f"({preset.blocks_to_swap} blocks swapped): free GPU memory, use an fp8 T5-XXL, or smaller buckets"
            )
        text = (f"batch 1 does not fit {bucket} with preset {preset.name}: stepping down to {stepped.name} "
                f"({stepped.blocks_to_swap} blocks swapped; slower, uses more host RAM)")
        self.ctx.log(text)
        self.on_event(ProbeEvent("step-down", text=text))
        return stepped

    def area(self, bucket: str, members: list[str], images: int, preset: VramPreset, previous: int) -> BatchSearch:
        """Trials for one bucket area until the search settles (`search.best`: 0 when batch 1 does not fit)."""
        search = BatchSearch(max(preset.batch_size, previous, 1), limit_bytes=self.limit, max_batch=self.max_batch)
        also = f" (also {', '.join(m for m in members if m != bucket)})" if len(members) > 1 else ""
        self.ctx.log(f"probing {bucket}{also}: {images} images, preset {preset.name}, starting at batch {search.start}")
        while (batch := search.next()) is not None:
            self.ctx.check_cancelled()
            self.number += 1
            search.add(self.trial(TrialSpec(bucket, batch, preset, images, self.number)))
        return search

    def trial(self, spec: TrialSpec, *, strict: bool = True, label: str = "") -> TrialOutcome:
        """One trial: progress per step, its line in the log; an error (or batch 1 killed / timed out) fails the step
        unless not `strict` (the fit search: a refused candidate is one row of its table)."""
        ctx, bucket, batch = self.ctx, spec.bucket, spec.batch
        self.on_event(ProbeEvent("trial-start", spec, 0, PROBE_STEPS))
        trial_meter = ProgressMeter(ctx.progress, "probe", label or f"{bucket} batch {batch}", PROBE_STEPS, "steps",
                                    interval=0)

        def report(event: ProbeEvent) -> None:
            peak = f", peak {event.peak_bytes / GB:.1f} GB" if event.peak_bytes else ""
            trial_meter.update(event.step, f"{event.text or 'running'}{peak}")
            self.on_event(event)

        outcome = _with_margin(self.runner(spec, report), self.limit, self.gpu)
        word = STATUS_WORDS.get(outcome.status, outcome.status)
        if outcome.fits:
            trial_meter.finish(word)
        else:  # not "3/3 (100%)": the trial stopped where it stopped
            ctx.progress(trial_meter.snapshot(f"→ {word}", finished=True))
        self.on_event(ProbeEvent("trial-end", spec, outcome=outcome))
        ctx.log((f"{label}: " if label else "") + outcome.line(bucket)
                + (f" — {outcome.detail}" if outcome.detail and not outcome.fits else ""))
        if not strict:
            return outcome
        if outcome.status == "error":
            raise StepFailed(f"trial {bucket} batch {batch}: {outcome.detail} (log: {outcome.log})")
        if outcome.status in ("killed", "timeout") and batch == 1:
            what = "was killed (SIGKILL): host RAM ran out? Close other programs or add swap" \
                if outcome.status == "killed" else f"did not finish in time (hung?): see {outcome.log}"
            raise StepFailed(f"trial {bucket} batch 1 {what}")
        return outcome


def _with_margin(outcome: TrialOutcome, limit: int, gpu: GpuInfo) -> TrialOutcome:
    """A trial that trained but peaked above the margin does not fit."""
    if outcome.status != "ok":
        return outcome
    level = outcome.device_peak_bytes
    if level is None and outcome.peak_bytes is not None:
        level = outcome.peak_bytes + gpu.memory_used
    if level is not None and level > limit:
        detail = (f"peak {level / GB:.1f} GB is over {MARGIN:.0%} of {gpu.memory_total / GB:.1f} GB"
                  if limit == int(gpu.memory_total * MARGIN) else f"peak {level / GB:.1f} GB is over {limit / GB:.1f} GB")
        return TrialOutcome(outcome.batch, "over-margin", outcome.peak_bytes, outcome.device_peak_bytes,
                            outcome.s_per_step, outcome.seconds, detail, outcome.log, outcome.start_seconds)
    return outcome


# ---------------------------------------------------------------- results: tables, probe.json


def sampling_note(session: Session, results: list[AreaResult]) -> str:
    """The trials never sample; training does (train.samples): what that adds on top of these figures."""
    from lorawizard.core.train.samples import sampling_cost

    speeds = [r.s_per_step for r in results if r.s_per_step is not None]
    return "note: these figures are without sampling; " + sampling_cost(session, max(speeds) if speeds else None)


def table_lines(results: list[AreaResult], batch_sizes: dict[str, int], buckets: dict[str, int]) -> list[str]:
    by_bucket = {m: r for r in results for m in r.buckets}
    lines = [f"{'bucket':<11}{'images':>7}{'batch':>7}{'peak GB':>9}{'s/step':>8}  trials"]
    for bucket, count in buckets.items():
        result = by_bucket.get(bucket)
        batch = batch_sizes.get(bucket)
        if result is None:
            lines.append(f"{bucket:<11}{count:>7}{batch if batch is not None else '—':>7}{'':>9}{'':>8}  (already set)")
            continue
        peak = f"{result.peak_bytes / GB:.1f}" if result.peak_bytes is not None else "—"
        speed = f"{result.s_per_step:.2f}" if result.s_per_step is not None else "—"
        tried = ", ".join(f"{o.batch}{'' if o.fits else '✗'}" for o in result.trials)
        lines.append(f"{bucket:<11}{count:>7}{result.batch:>7}{peak:>9}{speed:>8}  {tried}")
    trials = [o for r in results for o in r.trials]
    killed = [o for o in trials if o.status == "killed"]
    hung = [o for o in trials if o.status == "timeout"]
    if killed:
        lines.append(f"note: {len(killed)} trial(s) were killed by the system (SIGKILL) — host RAM, not GPU memory, ran out "
                     "at those batch sizes; more RAM or swap could allow larger batches")
    if hung:
        lines.append(f"note: {len(hung)} trial(s) hit the time limit and were stopped (counted as not fitting)")
    return lines


def result_json(result: AreaResult) -> dict[str, Any]:
    return {
        "bucket": result.bucket,
        "buckets": result.buckets,
        "batch_size": result.batch,
        "preset": result.preset,
        "peak_gb": round(result.peak_bytes / GB, 3) if result.peak_bytes is not None else None,
        "s_per_step": round(result.s_per_step, 3) if result.s_per_step is not None else None,
        "trials": [asdict(o) for o in result.trials],
    }


def save_results(session: Session, gpu: GpuInfo, preset: VramPreset, results: list[AreaResult], seconds: float,
                  ctx: StepContext, fit_data: dict[str, Any] | None = None) -> None:
    """Measurements beside the session (session.toml keeps only the batch sizes): what, when, how, on which GPU."""
    path = session.paths.state / RESULTS_FILE
    try:
        previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        previous = {}
    buckets = dict(previous.get("buckets", {})) if previous.get("gpu", {}).get("uuid") == gpu.uuid else {}
    for result in results:
        for member in result.buckets:
            buckets[member] = result_json(result)
    data = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "how": f"real trainer runs of {PROBE_STEPS} optimizer steps; peak GPU memory sampled with NVML; "
               f"fits = no CUDA OOM and peak ≤ {MARGIN:.0%} of the GPU",
        "seconds": round(seconds, 1),
        "gpu": {"uuid": gpu.uuid, "name": gpu.name, "memory_total": gpu.memory_total},
        "preset": preset.name,
        "buckets": buckets,
    }
    if fit_data is not None:
        data["fit"] = fit_data
        data["how"] = (f"fastest fit ({session.gpu.fit}): real trainer runs of {PROBE_STEPS} optimizer steps per "
                       f"candidate; peak GPU memory sampled with NVML; fits = no CUDA OOM and peak ≤ "
                       f"{fit_data['limit_bytes'] / GB:.1f} GB (the card less max(5 %, 1 GB))")
    try:
        atomic_write_json(path, data)
    except OSError as exc:
        ctx.log(f"could not write {path}: {exc.strerror or exc}")


# ---------------------------------------------------------------- the chosen cards


def record_batches(ctx: StepContext, results: list[AreaResult]) -> dict[str, int]:
    """Every area's batch into the session (`gpu.batch_size.*`, each bucket of the area); the session's batch sizes
    after it (the buckets not probed keep theirs)."""
    batch_sizes = dict(ctx.session.batch_sizes())
    for result in results:
        for member in result.buckets:
            ctx.record(f"gpu.batch_size.{member}", result.batch)
            batch_sizes[member] = result.batch
    return batch_sizes


def kinds_of_card(gpus: list[GpuInfo]) -> dict[tuple[str, int], list[GpuInfo]]:
    """The cards grouped by (name, memory): one probe speaks for every card of a kind."""
    kinds: dict[tuple[str, int], list[GpuInfo]] = {}
    for gpu in gpus:
        kinds.setdefault((gpu.name, gpu.memory_total), []).append(gpu)
    return kinds


def shared_preset(session: Session, smallest: GpuInfo, presets: list[VramPreset]) -> VramPreset:
    """The smallest card's preset, or the session's when it swaps as much or more."""
    preset = preset_for_memory(smallest.memory_total, presets)
    chosen = preset_named(session.gpu.vram_preset, presets)
    if chosen is not None and chosen.min_gb <= preset.min_gb:
        preset = chosen  # the person asked for this much swapping or more: keep it
    return preset
