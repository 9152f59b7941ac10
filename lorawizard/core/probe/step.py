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

Where the parts live: this module is the step's entry point (`run_step`, named by core.registry): it chooses the
GPU and the preset and runs the preset's search on one GPU, or hands over to a flow. One trial, the batch search
and the bucket areas: core.probe.trials. What the flows share (ProbeOptions, the search over every area, AreaResult,
the tables and probe.json): core.probe.shared. Several GPUs with the preset: core.probe.several. The fastest fit
(`gpu.fit`): core.probe.fit_run, its checks on several GPUs: core.probe.fit_cards.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from lorawizard.core.contract import StepContext, StepFailed, StepResult
from lorawizard.core.dataset.step import bucket_counts
from lorawizard.core.gpu import cpu_mode
from lorawizard.core.gpu.nvml import GB, GpuInfo, Inventory, NvmlAdapter, inventory
from lorawizard.core.gpu.presets import PresetError, VramPreset, load_presets, preset_named, session_preset
from lorawizard.core.launch import multigpu
from lorawizard.core.probe.fit_run import run_fit
from lorawizard.core.probe.several import run_several
from lorawizard.core.probe.shared import (
    Probe,
    probe_options,
    record_batches,
    result_json,
    sampling_note,
    save_results,
    stale_text_encoder_caches,
    table_lines,
)
from lorawizard.core.probe.trials import (
    MARGIN,
    MAX_BATCH,
    TRIAL_TIMEOUT_S,
    SubprocessTrialRunner,
    TrialRunner,
    TrialSpec,
    areas,
    probe_overrides,
)
from lorawizard.core.session.document import Session

# ---------------------------------------------------------------- the step


def run_step(ctx: StepContext) -> StepResult:
    session = ctx.session
    nvml: NvmlAdapter | None = probe_options(ctx).get("nvml")
    if not cpu_mode.gpu_visible(nvml):  # the one rule for "no GPU" (core.gpu.cpu_mode): skipped, never a failure
        return _skipped_without_gpu(session)
    if not probe_options(ctx).get("gpu_uuid"):
        try:
            uuids = multigpu.chosen_uuids(session)
        except multigpu.SelectionError as exc:
            raise StepFailed(str(exc)) from None
        if len(uuids) > 1:
            return run_several(ctx, uuids, run_step)
    gpu = _choose_gpu(ctx, nvml)
    preset, presets = _choose_preset(ctx, gpu)

    buckets = bucket_counts(session)
    if not buckets:
        raise StepFailed(f"no prepared images in {session.paths.dataset} (no <W>x<H> folder with PNGs): run the dataset step first")
    stale_text_encoder_caches(ctx)
    if session.gpu.fit in ("quality", "fastest"):
        return run_fit(ctx, [gpu], preset, presets, buckets)
    known = session.batch_sizes()
    reprobe = bool(probe_options(ctx).get("reprobe"))
    todo = {b: n for b, n in buckets.items() if reprobe or b not in known}
    skipped = [b for b in buckets if b not in todo]
    if skipped:
        ctx.log(f"already set, not probed again: {', '.join(f'{b} = {known[b]}' for b in skipped)}"
                " (re-probe to measure them)")
    if not todo:
        return StepResult(True, "every bucket already has a batch size (re-probe to measure again)",
                          details=table_lines([], known, buckets), data={"batch_sizes": known})

    groups = areas(todo)
    workdir = session.paths.state / "probe"
    if ctx.dry_run:
        return _dry_run(ctx, gpu, preset, groups, workdir)

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    runner: TrialRunner = probe_options(ctx).get("trial_runner") or SubprocessTrialRunner(
        session, gpu, workdir, cancel=ctx.cancel, nvml=nvml,
        timeout_s=float(probe_options(ctx).get("trial_timeout_s") or TRIAL_TIMEOUT_S),
    )
    probe = Probe(ctx, runner, gpu, limit=int(gpu.memory_total * MARGIN),
                   max_batch=int(probe_options(ctx).get("max_batch") or MAX_BATCH),
                   on_event=probe_options(ctx).get("on_event") or (lambda event: None))
    started = time.monotonic()
    preset, results = probe.every_area(groups, preset, presets)

    if session.gpu.vram_preset != preset.name:
        ctx.record("gpu.vram_preset", preset.name)
    batch_sizes = record_batches(ctx, results)
    save_results(session, gpu, preset, results, time.monotonic() - started, ctx)
    summary = ", ".join(f"{r.bucket} → {r.batch}" for r in results)
    return StepResult(
        True,
        f"{summary} ({probe.number} trials, preset {preset.name}, peak ≤ {MARGIN:.0%} of {gpu.memory_total / GB:.1f} GB)",
        details=[*table_lines(results, batch_sizes, buckets), sampling_note(session, results)],
        data={"batch_sizes": batch_sizes, "preset": preset.name, "gpu": gpu.uuid,
              "results": [result_json(r) for r in results]},
    )


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
    gpu = inv.choose(probe_options(ctx).get("gpu_uuid") or saved)
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
    preset = preset_named(probe_options(ctx).get("preset"), presets) or session_preset(session, gpu.memory_total)
    if session.gpu.vram_preset != preset.name:
        ctx.record("gpu.vram_preset", preset.name)
    ctx.log(f"preset: {preset.title(session.train.optimizer_type if session.is_set('train.optimizer_type') else '')}")
    return preset, presets


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
