"""The probe step on several GPUs with the preset (no `gpu.fit`): each kind of card probed once, the smallest batch
that fits every card kept (DDP: every card trains the same per-process batch).

`run_several` probes one card of each kind (same name and memory) with the single-GPU step — core.probe.step's
`run_step`, passed in by it, so that this module does not import the step (no import circle) — all with the
smallest card's preset (a step-down on one card holds for all), then records per bucket the smallest batch any
kind managed and writes probe.json with every card. With `gpu.fit` set it hands over to core.probe.fit_run.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json
from lorawizard.core.contract import StepContext, StepFailed, StepResult
from lorawizard.core.gpu.nvml import GpuInfo, inventory
from lorawizard.core.gpu.presets import PresetError, VramPreset, load_presets, preset_named
from lorawizard.core.gpu.probe_results import RESULTS_FILE
from lorawizard.core.launch import multigpu
from lorawizard.core.probe.fit_run import run_several_fit
from lorawizard.core.probe.shared import ProbeOptions, kinds_of_card, probe_options, shared_preset
from lorawizard.core.session.document import Session

# ---------------------------------------------------------------- several GPUs


class _Collecting(StepContext):
    """A sub-step's context whose decisions are kept for the caller instead of being saved."""

    def record(self, key: str, value: Any) -> None:
        self.decisions[key] = value


def run_several(ctx: StepContext, uuids: list[str], run_step: Callable[[StepContext], StepResult]) -> StepResult:
    """Several GPUs train the same per-process batch (DDP): probe each kind of card once (same name and memory), all
    with the smallest card's preset, and keep per bucket the smallest batch that fits every card."""
    session = ctx.session
    gpus, presets = _chosen_gpus(ctx, uuids)
    if session.gpu.fit in ("quality", "fastest"):
        return run_several_fit(ctx, gpus, presets)
    kinds = kinds_of_card(gpus)
    smallest = min(gpus, key=lambda gpu: (gpu.memory_total, gpu.index))
    preset = shared_preset(session, smallest, presets)
    ctx.log(f"{len(gpus)} GPUs, {len(kinds)} kind(s) of card; every card trains the same batch, so the smallest "
            f"({smallest.name}, {smallest.total_gb:.1f} GB) sets the preset: {preset.name}")
    preset, per_kind = _probe_each_kind(ctx, kinds, preset, presets, run_step)
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
        gpus = multigpu.training_order(multigpu.present(uuids, inventory(probe_options(ctx).get("nvml"))))
        multigpu.check_architectures(gpus)
        presets = load_presets(ctx.session)
    except (multigpu.SelectionError, PresetError) as exc:
        raise StepFailed(str(exc)) from None
    return gpus, presets


def _probe_each_kind(ctx: StepContext, kinds: dict[tuple[str, int], list[GpuInfo]], preset: VramPreset,
                     presets: list[VramPreset], run_step: Callable[[StepContext], StepResult],
                     ) -> tuple[VramPreset, list[tuple[list[GpuInfo], StepResult]]]:
    """The single-GPU probe (`run_step`, core.probe.step's, passed in: no import circle) on one card of each
    kind, smallest first; a step-down on one card holds for all."""
    per_kind: list[tuple[list[GpuInfo], StepResult]] = []
    for members in sorted(kinds.values(), key=lambda m: (m[0].memory_total, m[0].index)):
        card = members[0]
        ctx.check_cancelled()
        stands = "" if len(members) == 1 else f", stands for {len(members)} cards"
        ctx.log(f"== probing {card.name} (GPU {card.index}{stands})")
        options: ProbeOptions = {**probe_options(ctx), "gpu_uuid": card.uuid, "preset": preset.name, "reprobe": True}
        if probe_options(ctx).get("trial_runner_for"):  # tests: a stand-in runner per card
            options["trial_runner"] = probe_options(ctx)["trial_runner_for"](card)
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
