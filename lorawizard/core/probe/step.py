"""GPU & batch-size step: pick one GPU, then find per bucket area the largest batch size that really trains.

Each trial is a short real run of the trainer, built by the same command builder as training
(`core.command.build_train_command`) with the session's real settings, plus: a dataset config holding only the
bucket under test with enough repeats that every batch is full, `--max_train_steps 3` (the optimizer state is
allocated at the first step; s/step is timed over the later ones), no sampling, no saving but the final file into a
throwaway folder. Latent and text-encoder caches are written beside the prepared images, so they are reused by
the next trials and by training.

Search per bucket area (largest area first): start from the preset's batch size (or the result of the previous,
larger area), double while it fits, then narrow down. Every trial's peak GPU memory is sampled through NVML;
once two trials have run, the peaks give memory ≈ base + batch × per-image and the next trial goes straight to the
largest batch size predicted to stay under the margin (then one trial above it confirms the limit). Without
usable peaks it bisects. "Fits" means: no CUDA OOM, and the GPU's peak stays at or under 95 % of its memory.
If batch 1 does not fit, the next lower preset (more block swapping) is tried, and the step says so.

A trial killed by SIGKILL is reported as host-RAM exhaustion (the kernel's OOM killer), not as a VRAM limit.
Each trial has a time limit; cancel kills the trial's whole process group.

Without a GPU (NVML sees none) the step is skipped with one line and succeeds: the rule of `core.gpu.cpu_mode`
(batch sizes set by hand, else 1; the CPU trains as a test mode).

Where the parts live: one trial, the batch search and the bucket areas in core.probe.trials; this module chooses the
GPU and the preset and runs the search over every area (`run_step`, the registry's entry point).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, cast

from lorawizard.core.common.fsutil import atomic_write_json
from lorawizard.core.common.progress import ProgressMeter
from lorawizard.core.contract import Cancelled, StepContext, StepFailed, StepResult
from lorawizard.core.dataset.step import bucket_counts
from lorawizard.core.gpu import cpu_mode
from lorawizard.core.gpu.nvml import GB, GpuInfo, Inventory, NvmlAdapter, inventory
from lorawizard.core.gpu.presets import (
    PresetError,
    VramPreset,
    load_presets,
    preset_for_memory,
    preset_named,
    session_preset,
    step_down,
)
from lorawizard.core.gpu.probe_results import RESULTS_FILE
from lorawizard.core.launch import multigpu
from lorawizard.core.probe import fit
from lorawizard.core.probe.trials import (
    DRIVER_TEXTS,
    MARGIN,
    MAX_BATCH,
    PROBE_STEPS,
    STATUS_WORDS,
    TRIAL_TIMEOUT_S,
    BatchSearch,
    ProbeEvent,
    SubprocessTrialRunner,
    TrialOutcome,
    TrialRunner,
    TrialSpec,
    areas,
    probe_overrides,
)
from lorawizard.core.session.document import Session

# ---------------------------------------------------------------- the step


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


def _options(ctx: StepContext) -> ProbeOptions:
    return cast(ProbeOptions, ctx.options)


def run_step(ctx: StepContext) -> StepResult:
    session = ctx.session
    nvml: NvmlAdapter | None = _options(ctx).get("nvml")
    if not cpu_mode.gpu_visible(nvml):  # the one rule for "no GPU" (core.gpu.cpu_mode): skipped, never a failure
        return _skipped_without_gpu(session)
    if not _options(ctx).get("gpu_uuid"):
        try:
            uuids = multigpu.chosen_uuids(session)
        except multigpu.SelectionError as exc:
            raise StepFailed(str(exc)) from None
        if len(uuids) > 1:
            return _run_several(ctx, uuids)
    gpu = _choose_gpu(ctx, nvml)
    preset, presets = _choose_preset(ctx, gpu)

    buckets = bucket_counts(session)
    if not buckets:
        raise StepFailed(f"no prepared images in {session.paths.dataset} (no <W>x<H> folder with PNGs): run the dataset step first")
    _stale_text_encoder_caches(ctx)
    if session.gpu.fit in ("quality", "fastest"):
        return _run_fit(ctx, [gpu], preset, presets, buckets)
    known = session.batch_sizes()
    reprobe = bool(_options(ctx).get("reprobe"))
    todo = {b: n for b, n in buckets.items() if reprobe or b not in known}
    skipped = [b for b in buckets if b not in todo]
    if skipped:
        ctx.log(f"already set, not probed again: {', '.join(f'{b} = {known[b]}' for b in skipped)}"
                " (re-probe to measure them)")
    if not todo:
        return StepResult(True, "every bucket already has a batch size (re-probe to measure again)",
                          details=_table_lines([], known, buckets), data={"batch_sizes": known})

    groups = areas(todo)
    workdir = session.paths.state / "probe"
    if ctx.dry_run:
        return _dry_run(ctx, gpu, preset, groups, workdir)

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    runner: TrialRunner = _options(ctx).get("trial_runner") or SubprocessTrialRunner(
        session, gpu, workdir, cancel=ctx.cancel, nvml=nvml,
        timeout_s=float(_options(ctx).get("trial_timeout_s") or TRIAL_TIMEOUT_S),
    )
    probe = _Probe(ctx, runner, gpu, limit=int(gpu.memory_total * MARGIN),
                   max_batch=int(_options(ctx).get("max_batch") or MAX_BATCH),
                   on_event=_options(ctx).get("on_event") or (lambda event: None))
    started = time.monotonic()
    preset, results = probe.every_area(groups, preset, presets)

    if session.gpu.vram_preset != preset.name:
        ctx.record("gpu.vram_preset", preset.name)
    batch_sizes = dict(known)
    for result in results:
        for member in result.buckets:
            ctx.record(f"gpu.batch_size.{member}", result.batch)
            batch_sizes[member] = result.batch
    _save_results(session, gpu, preset, results, time.monotonic() - started, ctx)
    summary = ", ".join(f"{r.bucket} → {r.batch}" for r in results)
    return StepResult(
        True,
        f"{summary} ({probe.number} trials, preset {preset.name}, peak ≤ {MARGIN:.0%} of {gpu.memory_total / GB:.1f} GB)",
        details=[*_table_lines(results, batch_sizes, buckets), _sampling_note(session, results)],
        data={"batch_sizes": batch_sizes, "preset": preset.name, "gpu": gpu.uuid,
              "results": [_result_json(r) for r in results]},
    )


def _stale_text_encoder_caches(ctx: StepContext) -> None:
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


def _skipped_without_gpu(session: Session) -> StepResult:
    """No GPU: nothing to measure. One line; the batch sizes training will use (set by hand, else 1) as details."""
    buckets = bucket_counts(session)
    sizes = cpu_mode.batch_sizes(session, buckets)
    set_sizes = session.batch_sizes()
    details = [f"{bucket:<11}{count:>7} images  batch {sizes[bucket]}"
               f"{' (set by hand)' if bucket in set_sizes else ' (default)'}" for bucket, count in buckets.items()]
    return StepResult(True, cpu_mode.REPLAY_PROBE_SKIPPED, details=details,
                      data={"batch_sizes": sizes, "skipped": "no GPU"})


def _choose_gpu(ctx: StepContext, nvml: NvmlAdapter | None) -> GpuInfo:
    """The GPU asked for (option), else the saved one, else the one with the most free memory; recorded."""
    inv: Inventory = inventory(nvml)
    if not inv.gpus:
        raise StepFailed(inv.message() or "no NVIDIA GPU visible — probing and training need one")
    saved = ctx.session.gpu.uuid
    gpu = inv.choose(_options(ctx).get("gpu_uuid") or saved)
    assert gpu is not None
    if saved and saved != gpu.uuid and inv.by_uuid(saved) is None:
        ctx.log(f"the saved GPU {saved} is not visible now; using GPU {gpu.index} ({gpu.name}, {gpu.uuid})")
    if saved != gpu.uuid:
        ctx.record("gpu.uuid", gpu.uuid)
    ctx.log(f"GPU: {gpu.describe()} ({gpu.uuid})")
    return gpu


def _choose_preset(ctx: StepContext, gpu: GpuInfo) -> tuple[VramPreset, list[VramPreset]]:
    """The preset to start from (option, session, or the one for the GPU's memory), recorded; and every preset."""
    session = ctx.session
    try:
        presets = load_presets(session)
    except PresetError as exc:
        raise StepFailed(str(exc)) from None
    wanted = session.gpu.vram_preset
    if wanted and preset_named(wanted, presets) is None:
        names = ", ".join(p.name for p in presets)
        raise StepFailed(f"gpu.vram_preset: unknown preset {wanted!r} (known: {names})")
    preset = preset_named(_options(ctx).get("preset"), presets) or session_preset(session, gpu.memory_total)
    if session.gpu.vram_preset != preset.name:
        ctx.record("gpu.vram_preset", preset.name)
    ctx.log(f"preset: {preset.title(session.train.optimizer_type if session.is_set('train.optimizer_type') else '')}")
    return preset, presets


@dataclass
class _Probe:
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


def _dry_run(ctx: StepContext, gpu: GpuInfo, preset: VramPreset, groups: list[tuple[str, list[str], int]],
             workdir: Path) -> StepResult:
    from lorawizard.core.launch import command as builder

    bucket, _, images = groups[0]
    spec = TrialSpec(bucket, max(1, preset.batch_size), preset, images, 1)
    details = [f"would probe {b} ({n} images)" + (f", also for {', '.join(m for m in ms if m != b)}" if len(ms) > 1 else "")
               for b, ms, n in groups]
    try:
        argv = builder.build_train_command(
            ctx.session, dataset_config=workdir / "trial-01" / "dataset_config.toml",
            accelerate_config=workdir / "accelerate.yaml", output_dir=workdir / "trial-01" / "out",
            output_name="probe", overrides=probe_overrides(ctx.session, preset),
            launch=builder.plan_launch(ctx.session, uuids=[gpu.uuid]),
        )
        details.append("first trial: " + argv.shell_text())
    except builder.CommandError as exc:
        raise StepFailed(f"cannot build the trial's command: {exc}") from None
    return StepResult(True, f"dry run: {len(groups)} bucket areas to probe on GPU {gpu.index}, starting at batch "
                      f"{spec.batch}; nothing was run", details=details)


def _sampling_note(session: Session, results: list[AreaResult]) -> str:
    """The trials never sample; training does (train.samples): what that adds on top of these figures."""
    from lorawizard.core.train.samples import sampling_cost

    speeds = [r.s_per_step for r in results if r.s_per_step is not None]
    return "note: these figures are without sampling; " + sampling_cost(session, max(speeds) if speeds else None)


def _table_lines(results: list[AreaResult], batch_sizes: dict[str, int], buckets: dict[str, int]) -> list[str]:
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


def _result_json(result: AreaResult) -> dict[str, Any]:
    return {
        "bucket": result.bucket,
        "buckets": result.buckets,
        "batch_size": result.batch,
        "preset": result.preset,
        "peak_gb": round(result.peak_bytes / GB, 3) if result.peak_bytes is not None else None,
        "s_per_step": round(result.s_per_step, 3) if result.s_per_step is not None else None,
        "trials": [asdict(o) for o in result.trials],
    }


def _save_results(session: Session, gpu: GpuInfo, preset: VramPreset, results: list[AreaResult], seconds: float,
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
            buckets[member] = _result_json(result)
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


# ---------------------------------------------------------------- several GPUs


class _Collecting(StepContext):
    """A sub-step's context whose decisions are kept for the caller instead of being saved."""

    def record(self, key: str, value: Any) -> None:
        self.decisions[key] = value


def _run_several(ctx: StepContext, uuids: list[str]) -> StepResult:
    """Several GPUs train the same per-process batch (DDP): probe each kind of card once (same name and memory), all
    with the smallest card's preset, and keep per bucket the smallest batch that fits every card."""
    session = ctx.session
    gpus, presets = _chosen_gpus(ctx, uuids)
    if session.gpu.fit in ("quality", "fastest"):
        return _run_several_fit(ctx, gpus, presets)
    kinds = _kinds_of_card(gpus)
    smallest = min(gpus, key=lambda gpu: (gpu.memory_total, gpu.index))
    preset = _shared_preset(session, smallest, presets)
    ctx.log(f"{len(gpus)} GPUs, {len(kinds)} kind(s) of card; every card trains the same batch, so the smallest "
            f"({smallest.name}, {smallest.total_gb:.1f} GB) sets the preset: {preset.name}")
    preset, per_kind = _probe_each_kind(ctx, kinds, preset, presets)
    if ctx.dry_run:
        details = [line for _, result in per_kind for line in result.details]
        return StepResult(True, f"dry run: {len(kinds)} kind(s) of card to probe, preset {preset.name}; nothing was run",
                          details=details)
    batch_sizes = _smallest_batches(per_kind)
    if session.gpu.vram_preset != preset.name:
        ctx.record("gpu.vram_preset", preset.name)
    for bucket, size in batch_sizes.items():
        ctx.record(f"gpu.batch_size.{bucket}", size)
    lines, speed_lines = _per_card_lines(per_kind, batch_sizes)
    side_by_side = multigpu.side_by_side_line(gpus, len(session.variants()))
    if side_by_side and not session.gpu.parallel_runs:
        speed_lines.append(side_by_side)
    _save_several(session, gpus, smallest, preset, per_kind, batch_sizes, ctx)
    summary = ", ".join(f"{b} → {n}" for b, n in batch_sizes.items())
    return StepResult(True, f"{summary} on {len(gpus)} GPUs (the smallest batch that fits every card; preset "
                      f"{preset.name})", details=lines + speed_lines,
                      data={"batch_sizes": batch_sizes, "preset": preset.name, "gpus": [g.uuid for g in gpus],
                            "speed": speed_lines})


def _chosen_gpus(ctx: StepContext, uuids: list[str]) -> tuple[list[GpuInfo], list[VramPreset]]:
    """The chosen cards in training order (present, one architecture) and every preset; StepFailed otherwise."""
    try:
        gpus = multigpu.training_order(multigpu.present(uuids, inventory(_options(ctx).get("nvml"))))
        multigpu.check_architectures(gpus)
        presets = load_presets(ctx.session)
    except (multigpu.SelectionError, PresetError) as exc:
        raise StepFailed(str(exc)) from None
    return gpus, presets


def _kinds_of_card(gpus: list[GpuInfo]) -> dict[tuple[str, int], list[GpuInfo]]:
    """The cards grouped by (name, memory): one probe speaks for every card of a kind."""
    kinds: dict[tuple[str, int], list[GpuInfo]] = {}
    for gpu in gpus:
        kinds.setdefault((gpu.name, gpu.memory_total), []).append(gpu)
    return kinds


def _shared_preset(session: Session, smallest: GpuInfo, presets: list[VramPreset]) -> VramPreset:
    """The smallest card's preset, or the session's when it swaps as much or more."""
    preset = preset_for_memory(smallest.memory_total, presets)
    chosen = preset_named(session.gpu.vram_preset, presets)
    if chosen is not None and chosen.min_gb <= preset.min_gb:
        preset = chosen  # the person asked for this much swapping or more: keep it
    return preset


def _probe_each_kind(ctx: StepContext, kinds: dict[tuple[str, int], list[GpuInfo]], preset: VramPreset,
                     presets: list[VramPreset]) -> tuple[VramPreset, list[tuple[list[GpuInfo], StepResult]]]:
    """The single-GPU probe on one card of each kind, smallest first; a step-down on one card holds for all."""
    per_kind: list[tuple[list[GpuInfo], StepResult]] = []
    for members in sorted(kinds.values(), key=lambda m: (m[0].memory_total, m[0].index)):
        card = members[0]
        ctx.check_cancelled()
        stands = "" if len(members) == 1 else f", stands for {len(members)} cards"
        ctx.log(f"== probing {card.name} (GPU {card.index}{stands})")
        options: ProbeOptions = {**_options(ctx), "gpu_uuid": card.uuid, "preset": preset.name, "reprobe": True}
        if _options(ctx).get("trial_runner_for"):  # tests: a stand-in runner per card
            options["trial_runner"] = _options(ctx)["trial_runner_for"](card)
        sub = _Collecting(session=ctx.session, progress=ctx.progress, log=ctx.log, dry_run=ctx.dry_run,
                          cancel=ctx.cancel, options=options)
        per_kind.append((members, run_step(sub)))
        stepped = sub.decisions.get("gpu.vram_preset")
        if stepped and stepped != preset.name and (named := preset_named(stepped, presets)) is not None:
            preset = named  # batch 1 did not fit: this card needed more swapping, so every card uses it
    return preset, per_kind


def _smallest_batches(per_kind: list[tuple[list[GpuInfo], StepResult]]) -> dict[str, int]:
    """Per bucket, the smallest batch any kind of card managed: the one every card can train."""
    batch_sizes: dict[str, int] = {}
    for _, result in per_kind:
        for bucket, size in result.data.get("batch_sizes", {}).items():
            batch_sizes[bucket] = min(size, batch_sizes.get(bucket, size))
    return batch_sizes


def _per_card_lines(per_kind: list[tuple[list[GpuInfo], StepResult]],
                    batch_sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """The table (per bucket: the shared batch, each kind's own largest and speed) and the speed summary."""
    lines = [f"{'bucket':<11}{'batch':>6}  per card (own largest batch, s/step)"]
    speed_lines: list[str] = []
    for bucket, size in batch_sizes.items():
        cards = [_card_speed(members, result, bucket, size) for members, result in per_kind]
        lines.append(f"{bucket:<11}{size:>6}  " + " · ".join(
            f"{multigpu.short_name(c.name)}: {c.batch}" + (f", {c.s_per_step:.2f} s/step" if c.s_per_step else "")
            for c in cards))
        if not speed_lines:  # the largest bucket speaks for the run
            speed_lines = [f"{bucket}: " + line for line in multigpu.speed_summary(cards, size)]
    return lines, speed_lines


def _card_speed(members: list[GpuInfo], result: StepResult, bucket: str, size: int) -> multigpu.CardSpeed:
    """What one kind of card measured for `bucket`: its own largest batch and its speed."""
    measured = next((r for r in result.data.get("results", []) if bucket in r["buckets"]), None)
    own = result.data.get("batch_sizes", {}).get(bucket, size)
    return multigpu.CardSpeed(members[0].name, len(members), own, measured.get("s_per_step") if measured else None)


def _save_several(session: Session, gpus: list[GpuInfo], smallest: GpuInfo, preset: VramPreset,
                  per_kind: list[tuple[list[GpuInfo], StepResult]], batch_sizes: dict[str, int],
                  ctx: StepContext) -> None:
    """probe.json for a several-GPU choice: the binding (smallest) card as `gpu`, every card, each kind's results."""
    path = session.paths.state / RESULTS_FILE
    by_bucket = {}
    for members, result in per_kind:
        if members[0].uuid != smallest.uuid:
            continue
        for entry in result.data.get("results", []):
            for bucket in entry["buckets"]:
                by_bucket[bucket] = entry
    data = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "how": "each kind of card probed alone with the smallest card's preset; batch = the smallest that fits every card",
        "gpu": {"uuid": smallest.uuid, "name": smallest.name, "memory_total": smallest.memory_total},
        "gpus": [{"uuid": g.uuid, "name": g.name, "memory_total": g.memory_total} for g in gpus],
        "preset": preset.name,
        "buckets": by_bucket,
        "per_card": {members[0].name: result.data.get("results", []) for members, result in per_kind},
        "batch_sizes": batch_sizes,
    }
    try:
        atomic_write_json(path, data)
    except OSError as exc:
        ctx.log(f"could not write {path}: {exc.strerror or exc}")


# ---------------------------------------------------------------- fastest fit (gpu.fit = quality | fastest)


def _candidate_preset(base: VramPreset, setting: fit.Setting, batch: int = 1) -> VramPreset:
    """The session's preset (its optimizer, or the candidate's 8-bit twin of it) with the candidate's swap, base
    precision and checkpointing, as trial overrides. Its name says the setting (core.probe.fit_rows reads it)."""
    options = {**base.options, "blocks_to_swap": setting.swap or None, "fp8_base": True if setting.fp8 else None}
    if setting.swap == 0 and base.min_gb >= 24:
        options["highvram"] = True
    if not setting.checkpointing:
        options["gradient_checkpointing"] = None
    if setting.optimizer:
        options["optimizer_type"] = setting.optimizer
    name = f"fit-swap{setting.swap}-{'fp8' if setting.fp8 else '16bit'}" + ("" if setting.checkpointing else "-nockpt") \
        + (f"-opt:{setting.optimizer}" if setting.optimizer else "")
    return base._replace(name=name, batch_size=batch, options=options, from_docs=False)


def _run_fit(ctx: StepContext, gpus: list[GpuInfo], preset: VramPreset, presets: list[VramPreset],
             buckets: dict[str, int]) -> StepResult:
    """The search over the ladder of memory savers × base precision × batch on the largest area (core.probe.fit),
    then the other areas' largest batch with the chosen setting; measured again only when stale (GPU, buckets or
    settings changed).

    `gpus[0]` is the card searched: the one GPU, or with several (DDP, every card trains the same batch) the binding
    card, the one with the least memory left under its margin. Each other kind of card then checks every area at the
    shared batch (`_check_cards`): one trial each, a batch search downward where it does not fit."""
    from lorawizard.core.gpu.probe_results import fit_gpu_key, load_results
    from lorawizard.core.launch.command import CommandError, parse_extra_args

    session = ctx.session
    try:
        extra = parse_extra_args(session.train.extra_args)
    except CommandError as exc:
        raise StepFailed(str(exc)) from None
    policy = fit.policy_for(session, extra, max_batch=int(_options(ctx).get("max_batch") or fit.MAX_BATCH))
    gpu = gpus[0]
    now = fit.fingerprint(session, fit_gpu_key(session, [g.uuid for g in gpus]), buckets)
    saved = load_results(session).get("fit")
    reason = fit.stale_reason(saved, now)
    if reason is None and session.gpu.fit_swap is not None and not _options(ctx).get("reprobe"):
        these = "this GPU" if len(gpus) == 1 else f"these {len(gpus)} GPUs"
        return StepResult(True, f"the fit is measured for {these}, these buckets and settings (re-probe to measure "
                          "again)", details=list(saved.get("lines", [])) if saved else [],
                          data={"batch_sizes": session.batch_sizes(), "fit": saved})
    ctx.log(f"fit: measuring ({reason})" if reason else "fit: measuring again")
    groups = areas(buckets)
    limit = fit.limit_bytes(gpu.memory_total)
    if ctx.dry_run:
        return _fit_dry_run(ctx, gpu, policy, groups, others=_check_targets(gpus) if len(gpus) > 1 else None)
    workdir = session.paths.state / "probe"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    probe = _Probe(ctx, _runner_for(ctx, gpu, workdir, several=len(gpus) > 1), gpu, limit=limit,
                   max_batch=policy.max_batch,
                   on_event=_options(ctx).get("on_event") or (lambda event: None))
    started = time.monotonic()
    search, outcomes = _search_largest(ctx, probe, policy, preset, groups[0], now)
    chosen = search.best
    if chosen is None:
        _save_fit(ctx, gpu, preset, search, outcomes, now, partial=False, results=[], seconds=0.0)
        raise StepFailed(_nothing_fits(search, gpu, groups[0][0], workdir))
    # the chosen setting for the other areas and the other cards: named apart from the search's candidates, so their
    # trials are the trial table's rows, not the fit table's (core.probe.fit_rows.setting_of)
    fit_preset = _candidate_preset(preset, chosen.candidate.setting, chosen.candidate.batch)
    fit_preset = fit_preset._replace(name=fit_preset.name.replace("fit-", "chosen-", 1))
    bucket, members, _ = groups[0]
    first_trials = [outcomes[m.trial] for m in search.measured if m.trial in outcomes]
    first = AreaResult(bucket, members, chosen.candidate.batch, fit_preset.name, chosen.peak_bytes, chosen.s_per_step,
                       first_trials)
    _, rest = probe.every_area(groups[1:], fit_preset, presets) if len(groups) > 1 else (fit_preset, [])
    results = [first, *rest]
    several: _Several | None = None
    if len(gpus) > 1:
        try:
            several = _check_cards(ctx, probe, gpus, fit_preset, groups, results, workdir)
        except (Cancelled, StepFailed):
            _save_fit(ctx, gpu, preset, search, outcomes, now, partial=True, results=[], seconds=0.0)
            ctx.log("fit: stopped while checking the other cards; the search's candidates are saved, marked partial")
            raise
        results = several.results  # per area: the shared batch and the slowest card's s/step at it
    _record_choice(ctx, chosen.candidate.setting)
    batch_sizes = _record_batches(ctx, results)
    lines = _save_fit(ctx, gpu, preset, search, outcomes, now, partial=False, results=results,
                      seconds=time.monotonic() - started, batch_sizes=batch_sizes, buckets=buckets,
                      extra=several.saved if several else None, card_lines=several.lines if several else None)
    return _with_cards(several, StepResult(
                      True, fit.choice_line(chosen, _visits(session, buckets), search.trials, policy.budget),
                      details=lines, data={"batch_sizes": batch_sizes, "preset": preset.name, "gpu": gpu.uuid,
                                           "fit_swap": chosen.candidate.setting.swap,
                                           "fit_fp8": chosen.candidate.setting.fp8,
                                           "trials": search.trials, "budget": policy.budget,
                                           "results": [_result_json(r) for r in results]}))


def _nothing_fits(search: fit.FitSearch, gpu: GpuInfo, bucket: str, workdir: Path) -> str:
    """The one line when no candidate fits the largest area, with what the search saw."""
    hint = "gpu.fit = fastest allows an fp8 base, " if True not in search.policy.fp8 else ""
    if any(m.status == "timeout" for m in search.measured):
        hint = f"a trial hung (see the trial logs in {workdir}), " + hint
    if any(m.status == "killed" for m in search.measured):
        hint = "a trial was killed for host RAM (swapped blocks live there): add RAM or swap space, " + hint
    return (f"no setting fits {bucket} on {gpu.name} ({search.trials} trials, {fit.margin_text(gpu.memory_total)}): "
            f"{hint}free GPU memory or use smaller buckets")


def _record_batches(ctx: StepContext, results: list[AreaResult]) -> dict[str, int]:
    """Every area's batch into the session (`gpu.batch_size.*`); the session's batch sizes after it."""
    batch_sizes = dict(ctx.session.batch_sizes())
    for result in results:
        for member in result.buckets:
            ctx.record(f"gpu.batch_size.{member}", result.batch)
            batch_sizes[member] = result.batch
    return batch_sizes


def _record_choice(ctx: StepContext, setting: fit.Setting) -> None:
    """The fit's chosen setting into the session (`gpu.fit_*`): the training command applies it."""
    ctx.record("gpu.fit_swap", setting.swap)
    ctx.record("gpu.fit_fp8", setting.fp8)
    ctx.record("gpu.fit_checkpointing", setting.checkpointing)
    ctx.record("gpu.fit_optimizer", setting.optimizer or None)


def _visits(session: Session, buckets: dict[str, int]) -> int:
    return fit.image_visits(buckets, session.dataset.num_repeats, session.train.max_train_epochs,
                           max(1, len(session.gpu.uuids)))


def _search_largest(ctx: StepContext, probe: _Probe, policy: fit.FitPolicy, preset: VramPreset,
                    group: tuple[str, list[str], int],
                    now: dict[str, str]) -> tuple[fit.FitSearch, dict[int, TrialOutcome]]:
    """The fit search on the largest area; Ctrl-C saves the candidates measured so far (marked partial)."""
    bucket, _, images = group
    search = fit.FitSearch(policy, probe.limit)
    outcomes: dict[int, TrialOutcome] = {}
    ctx.log(policy.line())
    for note in policy.notes:
        ctx.log(f"fit: {note}")
    ctx.log(f"fit: {fit.margin_text(probe.gpu.memory_total)}{_others_text(probe.gpu)}")

    meter = ProgressMeter(ctx.progress, "probe", f"fit search on {bucket} (at most)", policy.budget, "trials",
                          interval=0)
    meter.update(0, force=True)

    def trial(candidate: fit.Candidate) -> fit.Measured:
        probe.number += 1
        spec = TrialSpec(bucket, candidate.batch, _candidate_preset(preset, candidate.setting), images, probe.number)
        outcome = probe.trial(spec, strict=False, label=f"fit: {candidate.setting.label()}")
        outcomes[spec.number] = outcome
        meter.update(len(outcomes), f"{candidate.label()}: {fit.WORDS.get(outcome.status, outcome.status)}")
        if outcome.status == "error" and any(text in outcome.detail for text in DRIVER_TEXTS):
            search.measured.append(fit.Measured(candidate, "error", None, None, outcome.detail, spec.number))
            _save_fit(ctx, probe.gpu, preset, search, outcomes, now, partial=True, results=[], seconds=0.0)
            raise StepFailed(f"the GPU or its driver failed mid-probe ({outcome.detail[:160]}); the candidates measured "
                             f"so far are saved, marked partial — check nvidia-smi, then probe again")
        level = outcome.device_peak_bytes
        if level is None and outcome.peak_bytes is not None:
            level = outcome.peak_bytes + probe.gpu.memory_used
        status = cast(fit.Status, outcome.status)
        return fit.Measured(candidate, status, level, outcome.s_per_step, outcome.detail, spec.number)

    try:
        search.run(trial)
        meter.finish(f"{search.trials} trials")
    except Cancelled:
        _save_fit(ctx, probe.gpu, preset, search, outcomes, now, partial=True, results=[], seconds=0.0)
        ctx.log("fit: stopped; the candidates measured so far are saved, marked partial")
        raise
    return search, outcomes


def _others_text(gpu: GpuInfo) -> str:
    """Memory other processes held when the probe began: the trials get what is free (the limit counts it)."""
    if gpu.memory_used < GB:
        return ""
    return (f"; other processes hold {gpu.memory_used / GB:.1f} GB of this GPU: probed with the "
            f"{max(0, fit.limit_bytes(gpu.memory_total) - gpu.memory_used) / GB:.1f} GB left under the margin")


def _save_fit(ctx: StepContext, gpu: GpuInfo, preset: VramPreset, search: fit.FitSearch,
              outcomes: dict[int, TrialOutcome], now: dict[str, str], *, partial: bool, results: list[AreaResult],
              seconds: float, batch_sizes: dict[str, int] | None = None,
              buckets: dict[str, int] | None = None, extra: dict[str, Any] | None = None,
              card_lines: list[str] | None = None) -> list[str]:
    """probe.json with the fit (its table, choice, fingerprint, phases); returns the report's lines. Several GPUs:
    `extra` (every card, the binding one, each kind's checks) joins the fit's data, `card_lines` the report."""
    from lorawizard.core.train.forecast import forecast_lines

    session = ctx.session
    buckets = buckets if buckets is not None else bucket_counts(session)
    visits = _visits(session, buckets)
    chosen = None if partial else search.best
    lines = [search.policy.line(), *[f"note: {n}" for n in search.policy.notes]]
    others = _others_text(gpu)
    if others:
        lines.append("note: " + others.lstrip("; "))
    lines += fit.table_lines(search.measured, chosen, visits, partial=partial)
    lines += [f"note: {n}" for n in search.notes]
    lines.append(fit.choice_line(chosen, visits, search.trials, search.policy.budget))
    starts = [o.start_seconds for _, o in sorted(outcomes.items()) if o.start_seconds is not None]
    fit_data: dict[str, Any] = {
        "choice": session.gpu.fit, "fingerprint": now, "partial": partial, "trials": search.trials,
        "budget": search.policy.budget, "limit_bytes": search.limit,
        "chosen": asdict(chosen.candidate.setting) | {"batch": chosen.candidate.batch} if chosen else None,
        "candidates": [{**asdict(m.candidate.setting), "batch": m.candidate.batch,
                        "status": m.status, "peak_bytes": m.peak_bytes, "s_per_step": m.s_per_step,
                        "images_per_s": m.images_per_s, "trial": m.trial, "detail": m.detail}
                       for m in search.measured],
        # launch → first step (loading the models; caching too in whichever trial wrote the caches): the longest
        "phases": {"startup_s": round(max(starts), 2) if starts else None,
                   "startup_min_s": round(min(starts), 2) if starts else None},
    }
    if results and batch_sizes is not None:
        lines += _table_lines(results, batch_sizes, buckets)
    fit_data.update(extra or {})
    lines += card_lines or []
    _save_results(session, gpu, preset, results, seconds, ctx, fit_data=fit_data)
    if results:
        lines += forecast_lines(session)
        lines.append(_sampling_note(session, results))
    fit_data["lines"] = lines
    _save_results(session, gpu, preset, results, seconds, ctx, fit_data=fit_data)
    return lines


def _fit_dry_run(ctx: StepContext, gpu: GpuInfo, policy: fit.FitPolicy, groups: list[tuple[str, list[str], int]],
                 others: list[tuple[GpuInfo, int]] | None = None) -> StepResult:
    from lorawizard.core.train.forecast import forecast_lines

    bucket, _, images = groups[0]
    checks = [_checks_line(others, len(groups))] if others is not None else []
    details = [policy.line(), *[f"note: {n}" for n in policy.notes],
               f"would search {bucket} ({images} images) on GPU {gpu.index}, {fit.margin_text(gpu.memory_total)}; "
               f"then the largest batch of {len(groups) - 1} more bucket area(s) with the chosen setting",
               *checks, *forecast_lines(ctx.session)]
    where = f"GPU {gpu.index}" if others is None else f"GPU {gpu.index} ({multigpu.short_name(gpu.name)}, the binding card)"
    return StepResult(True, f"dry run: fit search ({policy.choice}) on {where}, at most {policy.budget} trials "
                      "for the largest area; nothing was run", details=details)


# ---------------------------------------------------------------- the fit on several GPUs (DDP)
#
# Every card trains the same per-process batch, and each step waits for the slowest card. The search runs once, on
# the binding card (the least memory left under its margin: other processes' memory counts), alone: a trial is one
# process on one GPU. DDP adds the gradient all-reduce's buffers, small for a LoRA's few million parameters, and
# no trial measures them. Each other kind of card then trains every area once at the shared batch with the chosen
# setting: its speed there, or, where it does not fit, its own largest batch below (the batch search), which
# becomes the shared one. Training steps at the slowest card's s/step: that is what probe.json's buckets keep.


def _binding_card(gpus: list[GpuInfo]) -> GpuInfo:
    """The card with the least memory left under the fit's margin (other processes' memory counts); ties: the lower
    index."""
    return min(gpus, key=lambda gpu: (fit.limit_bytes(gpu.memory_total) - gpu.memory_used, gpu.index))


def _room(gpu: GpuInfo) -> float:
    """GB left under the fit's margin."""
    return max(0, fit.limit_bytes(gpu.memory_total) - gpu.memory_used) / GB


def _check_targets(gpus: list[GpuInfo]) -> list[tuple[GpuInfo, int]]:
    """The cards to check and how many cards each speaks for: per kind of card (`_kinds_of_card`), the one with the
    least room, the binding card (`gpus[0]`) left out — it speaks only for itself: the search's figures are its own,
    and another card of its kind can differ (another process's memory, a slower PCIe link for swapped blocks)."""
    binding = gpus[0]
    targets = []
    for members in _kinds_of_card(gpus).values():
        rest = [gpu for gpu in members if gpu.uuid != binding.uuid]
        if rest:
            targets.append((_binding_card(rest), len(rest)))
    return targets


def _checks_line(others: list[tuple[GpuInfo, int]], areas_count: int) -> str:
    cards = ", ".join(f"GPU {card.index} ({multigpu.short_name(card.name)}{f' ×{count}' if count > 1 else ''})"
                      for card, count in others)
    more = areas_count * len(others)
    return (f"then one card of each kind (the binding card's too, if it has another) trains the {areas_count} bucket "
            f"area(s) at the shared batch, one trial each — {more} more trial{'' if more == 1 else 's'} when every "
            f"check fits (a batch search downward where one does not): {cards}")


def _run_several_fit(ctx: StepContext, gpus: list[GpuInfo], presets: list[VramPreset]) -> StepResult:
    """gpu.fit = quality | fastest on several GPUs: the fit searched on the binding card, checked on the others."""
    session = ctx.session
    buckets = bucket_counts(session)
    if not buckets:
        raise StepFailed(f"no prepared images in {session.paths.dataset} (no <W>x<H> folder with PNGs): run the dataset "
                         "step first")
    binding = _binding_card(gpus)
    smallest = min(gpus, key=lambda gpu: (gpu.memory_total, gpu.index))
    preset = _shared_preset(session, smallest, presets)
    if session.gpu.vram_preset != preset.name:
        ctx.record("gpu.vram_preset", preset.name)
    ctx.log(f"{len(gpus)} GPUs: every card trains the same batch, so the fit is searched on the binding card, GPU "
            f"{binding.index} ({binding.name}: {_room(binding):.1f} GB left under its margin, the least), then checked "
            f"on the others; the {preset.name} preset (the smallest card's) underneath")
    _stale_text_encoder_caches(ctx)
    return _run_fit(ctx, [binding, *[gpu for gpu in gpus if gpu.uuid != binding.uuid]], preset, presets, buckets)


def _runner_for(ctx: StepContext, gpu: GpuInfo, workdir: Path, *, several: bool = False) -> TrialRunner:
    """The trial runner for one card: a test's stand-in (`trial_runner`; several GPUs: `trial_runner_for(card)`), else
    the real trainer pinned to that card."""
    options = _options(ctx)
    if several and options.get("trial_runner_for"):
        return options["trial_runner_for"](gpu)
    return options.get("trial_runner") or SubprocessTrialRunner(
        ctx.session, gpu, workdir, cancel=ctx.cancel, nvml=options.get("nvml"),
        timeout_s=float(options.get("trial_timeout_s") or TRIAL_TIMEOUT_S))


@dataclass
class _CardCheck:
    """One kind of card on one bucket area: the batch it trained, its s/step and peak there, its trials."""

    card: GpuInfo
    count: int  # cards of its kind
    bucket: str
    batch: int
    s_per_step: float | None
    peak_bytes: int | None
    trials: list[TrialOutcome] = field(default_factory=list)
    searched: bool = False  # the binding card: its figures come from the search

    def cell(self) -> str:
        """`RTX 3090 ×2 (GPU 0): 1.23 s/step, 20.1 GB`."""
        kind = multigpu.short_name(self.card.name) + (f" ×{self.count}" if self.count > 1 else "")
        speed = f"{self.s_per_step:.2f} s/step" if self.s_per_step else "? s/step"
        peak = f", {self.peak_bytes / GB:.1f} GB" if self.peak_bytes is not None else ""
        return f"{kind} (GPU {self.card.index}{', searched' if self.searched else ''}): {speed}{peak}"

    def json(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "gpu": self.card.uuid, "index": self.card.index, "name": self.card.name,
                "count": self.count, "batch": self.batch, "searched": self.searched,
                "s_per_step": round(self.s_per_step, 3) if self.s_per_step is not None else None,
                "peak_bytes": self.peak_bytes, "trials": [asdict(o) for o in self.trials]}


@dataclass
class _Several:
    """The checks' outcome: per area the shared batch at the slowest card's s/step, the report and what is saved."""

    results: list[AreaResult]
    checks: list[list[_CardCheck]]  # per area, the binding card first
    lines: list[str]
    saved: dict[str, Any]
    trials: int

    @property
    def summary(self) -> str:
        first = self.checks[0]
        slowest = max(first, key=lambda c: c.s_per_step or 0.0)
        cards = sum(c.count for c in first)
        return (f"; on {cards} GPUs: batch {first[0].batch if first else '?'} on every card, each step at the slowest "
                f"card's {slowest.s_per_step or 0:.2f} s/step ({multigpu.short_name(slowest.card.name)}; "
                f"{self.trials} check trials)")

    @property
    def data(self) -> dict[str, Any]:
        return {"gpus": [c.card.uuid for c in self.checks[0]], "binding": self.checks[0][0].card.uuid,
                "checks": [c.json() for area in self.checks for c in area], "check_trials": self.trials}


def _with_cards(several: _Several | None, result: StepResult) -> StepResult:
    """The fit's result, with several GPUs the cards' summary and data added."""
    if several is None:
        return result
    return StepResult(result.ok, result.summary + several.summary, details=result.details,
                      data=result.data | several.data)


def _check_cards(ctx: StepContext, probe: _Probe, gpus: list[GpuInfo], fit_preset: VramPreset,
                 groups: list[tuple[str, list[str], int]], results: list[AreaResult], workdir: Path) -> _Several:
    """Each other kind of card trains each area at the shared batch with the chosen setting (one trial); where it
    does not fit, its own largest batch below becomes the shared one, and every card measured at a larger batch is
    measured again at it (one trial). Trials are numbered after the search's."""
    binding = gpus[0]
    targets = _check_targets(gpus)
    probes = {card.uuid: _Probe(ctx, _runner_for(ctx, card, workdir, several=True), card,
                                limit=fit.limit_bytes(card.memory_total), max_batch=probe.max_batch,
                                on_event=probe.on_event) for card, _ in targets}
    probes[binding.uuid] = probe
    ctx.log(_checks_line(targets, len(groups)))
    meter = ProgressMeter(ctx.progress, "probe", "checks on the other cards", len(groups) * len(targets), "checks",
                          interval=0)
    meter.update(0, force=True)
    first_number = probe.number
    shared_results: list[AreaResult] = []
    per_area: list[list[_CardCheck]] = []
    for (bucket, members, images), result in zip(groups, results, strict=True):
        checks = [_CardCheck(binding, 1, bucket, result.batch, result.s_per_step, result.peak_bytes,
                             searched=True)]
        for card, count in targets:
            checks.append(_check_one(ctx, probe, probes[card.uuid], count, bucket, images, result.batch, fit_preset))
            meter.update(sum(len(a) - 1 for a in per_area) + len(checks) - 1,
                         f"{bucket} on GPU {card.index}: batch {checks[-1].batch}")
        shared = min(c.batch for c in checks)
        checks = [c if c.batch == shared else _measure_at(ctx, probe, probes[c.card.uuid], c, images, shared, fit_preset)
                  for c in checks]
        per_area.append(checks)
        slowest = max((c.s_per_step for c in checks if c.s_per_step), default=None)
        binding_check = checks[0]
        shared_results.append(AreaResult(bucket, members, shared, result.preset, binding_check.peak_bytes, slowest,
                                         result.trials))  # the binding card's; the checks are in the cards' lines
    meter.finish()
    trials = probe.number - first_number
    lines = _card_lines(per_area)
    saved = {"gpus": [{"uuid": g.uuid, "index": g.index, "name": g.name, "memory_total": g.memory_total,
                       "memory_used": g.memory_used} for g in gpus],
             "binding": {"uuid": binding.uuid, "index": binding.index, "name": binding.name,
                         "room_bytes": max(0, fit.limit_bytes(binding.memory_total) - binding.memory_used)},
             "checks": [c.json() for area in per_area for c in area],
             "check_trials": trials}
    return _Several(shared_results, per_area, lines, saved, trials)


def _check_trial(ctx: StepContext, main: _Probe, card_probe: _Probe, bucket: str, images: int, batch: int,
                 fit_preset: VramPreset) -> TrialOutcome:
    """One trial of `bucket` at `batch` on the card of `card_probe`, numbered after the others. A trial refused, hung
    or killed stops the probe with one line naming the card."""
    ctx.check_cancelled()
    card = card_probe.gpu
    main.number += 1
    spec = TrialSpec(bucket, batch, fit_preset._replace(batch_size=batch), images, main.number)
    outcome = card_probe.trial(spec, strict=False, label=f"fit check on GPU {card.index} "
                               f"({multigpu.short_name(card.name)})")
    if outcome.status in ("killed", "timeout", "error"):
        detail = f": {outcome.detail}" if outcome.detail else ""
        raise StepFailed(f"the check of {bucket} batch {batch} on GPU {card.index} ({card.name}) "
                         f"{STATUS_WORDS[outcome.status]}{detail[:240]} (log: {outcome.log or '—'})")
    return outcome


def _check_one(ctx: StepContext, main: _Probe, card_probe: _Probe, count: int, bucket: str, images: int,
               batch: int, fit_preset: VramPreset) -> _CardCheck:
    """One kind of card on one area: a trial at the shared batch; if it does not fit, the batch search below it."""
    card = card_probe.gpu
    first = _check_trial(ctx, main, card_probe, bucket, images, batch, fit_preset)
    if first.fits:
        return _CardCheck(card, count, bucket, batch, first.s_per_step, first.peak_bytes, [first])
    ctx.log(f"fit: {bucket} batch {batch} does not fit GPU {card.index} ({card.name}: "
            f"{STATUS_WORDS[first.status]}): searching its largest batch below {batch}; every card trains that")
    search = BatchSearch(max(1, batch - 1), limit_bytes=card_probe.limit, max_batch=max(1, batch - 1))
    search.add(first)
    while (smaller := search.next()) is not None:
        search.add(_check_trial(ctx, main, card_probe, bucket, images, smaller, fit_preset))
    if search.best == 0:
        raise StepFailed(f"batch 1 of {bucket} with the chosen setting does not fit GPU {card.index} ({card.name}; "
                         f"{_room(card):.1f} GB was left under its margin when the probe began): free its memory, or "
                         "train without it (gpu.uuids)")
    best = [o for o in search.outcomes if o.fits and o.batch == search.best][-1]
    return _CardCheck(card, count, bucket, search.best, best.s_per_step, best.peak_bytes, list(search.outcomes))


def _measure_at(ctx: StepContext, main: _Probe, card_probe: _Probe, check: _CardCheck, images: int, batch: int,
                fit_preset: VramPreset) -> _CardCheck:
    """Another card lowered the shared batch: this card's s/step at it (one trial)."""
    ctx.log(f"fit: another card lowered {check.bucket} to batch {batch}: measuring GPU {check.card.index} at it")
    outcome = _check_trial(ctx, main, card_probe, check.bucket, images, batch, fit_preset)
    if not outcome.fits:
        raise StepFailed(f"{check.bucket} batch {batch} does not fit GPU {check.card.index} ({check.card.name}) though "
                         f"batch {check.batch} did a moment ago ({STATUS_WORDS[outcome.status]}): its free memory "
                         "changed mid-probe; free it and probe again")
    return _CardCheck(check.card, check.count, check.bucket, batch, outcome.s_per_step, outcome.peak_bytes,
                      [*check.trials, outcome], check.searched)


def _card_lines(per_area: list[list[_CardCheck]]) -> list[str]:
    """Per area: the shared batch, each kind of card's s/step and peak at it; then what the cards cost and gain."""
    lines = ["cards: every card trains the same batch and each step waits for the slowest (DDP); the search ran on "
             "the binding card, the others trained each area once at that batch (the gradient all-reduce's buffers, "
             "small for a LoRA, are not part of a trial)",
             f"{'bucket':<11}{'batch':>6}  per card (s/step, peak at that batch)"]
    for checks in per_area:
        lines.append(f"{checks[0].bucket:<11}{checks[0].batch:>6}  " + " · ".join(c.cell() for c in checks))
    first = per_area[0]
    lines += [f"note: other processes held {c.card.memory_used / GB:.1f} GB of GPU {c.card.index} when the probe began: "
              "checked with what was free" for c in first[1:] if c.card.memory_used >= GB]
    unread = sorted({f"GPU {c.card.index}" for checks in per_area for c in checks if not c.s_per_step})
    if unread:  # the run steps at the slowest card: one whose speed is unknown may be it
        lines.append(f"note: no s/step could be read on {', '.join(unread)} (see its trial log): the forecast uses the "
                     "slowest card measured and may be optimistic")
    cards = [multigpu.CardSpeed(c.card.name, c.count, c.batch, c.s_per_step) for c in first]
    lines += [f"{first[0].bucket}: {line}" for line in multigpu.speed_summary(cards, first[0].batch)]
    return lines
