"""The fastest fit on several GPUs (DDP): the binding card, and the check trials on each other kind of card.

Every card trains the same per-process batch, and each step waits for the slowest card. The search runs once, on
the binding card (`binding_card`: the least memory left under its margin), by core.probe.fit_run; then
`check_cards` has one card of each other kind train every area at the shared batch with the chosen setting (one
trial each; where it does not fit, a batch search downward, and every card is measured again at the lower batch).
`Several` is the outcome: per area the shared batch at the slowest card's s/step, the cards' report lines and what
probe.json keeps. `runner_for` gives the trial runner for one card (a test's stand-in, or the real trainer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorawizard.core.common.progress import ProgressMeter
from lorawizard.core.contract import StepContext, StepFailed, StepResult
from lorawizard.core.gpu.nvml import GB, GpuInfo
from lorawizard.core.gpu.presets import VramPreset
from lorawizard.core.launch import multigpu
from lorawizard.core.probe import fit
from lorawizard.core.probe.shared import AreaResult, Probe, kinds_of_card, probe_options
from lorawizard.core.probe.trials import (
    STATUS_WORDS,
    TRIAL_TIMEOUT_S,
    BatchSearch,
    SubprocessTrialRunner,
    TrialOutcome,
    TrialRunner,
    TrialSpec,
)

# ---------------------------------------------------------------- the fit on several GPUs (DDP)
#
# Every card trains the same per-process batch, and each step waits for the slowest card. The search runs once, on
# the binding card (the least memory left under its margin: other processes' memory counts), alone: a trial is one
# process on one GPU. DDP adds the gradient all-reduce's buffers, small for a LoRA's few million parameters, and
# no trial measures them. Each other kind of card then trains every area once at the shared batch with the chosen
# setting: its speed there, or, where it does not fit, its own largest batch below (the batch search), which
# becomes the shared one. Training steps at the slowest card's s/step: that is what probe.json's buckets keep.


def binding_card(gpus: list[GpuInfo]) -> GpuInfo:
    """The card with the least memory left under the fit's margin (other processes' memory counts); ties: the lower
    index."""
    return min(gpus, key=lambda gpu: (fit.limit_bytes(gpu.memory_total) - gpu.memory_used, gpu.index))


def room(gpu: GpuInfo) -> float:
    """GB left under the fit's margin."""
    return max(0, fit.limit_bytes(gpu.memory_total) - gpu.memory_used) / GB


def check_targets(gpus: list[GpuInfo]) -> list[tuple[GpuInfo, int]]:
    """The cards to check and how many cards each speaks for: per kind of card (`kinds_of_card`), the one with the
    least room, the binding card (`gpus[0]`) left out — it speaks only for itself: the search's figures are its own,
    and another card of its kind can differ (another process's memory, a slower PCIe link for swapped blocks)."""
    binding = gpus[0]
    targets = []
    for members in kinds_of_card(gpus).values():
        rest = [gpu for gpu in members if gpu.uuid != binding.uuid]
        if rest:
            targets.append((binding_card(rest), len(rest)))
    return targets


def checks_line(others: list[tuple[GpuInfo, int]], areas_count: int) -> str:
    cards = ", ".join(f"GPU {card.index} ({multigpu.short_name(card.name)}{f' ×{count}' if count > 1 else ''})"
                      for card, count in others)
    more = areas_count * len(others)
    return (f"then one card of each kind (the binding card's too, if it has another) trains the {areas_count} bucket "
            f"area(s) at the shared batch, one trial each — {more} more trial{'' if more == 1 else 's'} when every "
            f"check fits (a batch search downward where one does not): {cards}")


def runner_for(ctx: StepContext, gpu: GpuInfo, workdir: Path, *, several: bool = False) -> TrialRunner:
    """The trial runner for one card: a test's stand-in (`trial_runner`; several GPUs: `trial_runner_for(card)`), else
    the real trainer pinned to that card."""
    options = probe_options(ctx)
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
class Several:
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


def with_cards(several: Several | None, result: StepResult) -> StepResult:
    """The fit's result, with several GPUs the cards' summary and data added."""
    if several is None:
        return result
    return StepResult(result.ok, result.summary + several.summary, details=result.details,
                      data=result.data | several.data)


def check_cards(ctx: StepContext, probe: Probe, gpus: list[GpuInfo], fit_preset: VramPreset,
                 groups: list[tuple[str, list[str], int]], results: list[AreaResult], workdir: Path) -> Several:
    """Each other kind of card trains each area at the shared batch with the chosen setting (one trial); where it
    does not fit, its own largest batch below becomes the shared one, and every card measured at a larger batch is
    measured again at it (one trial). Trials are numbered after the search's."""
    binding = gpus[0]
    targets = check_targets(gpus)
    probes = {card.uuid: Probe(ctx, runner_for(ctx, card, workdir, several=True), card,
                                limit=fit.limit_bytes(card.memory_total), max_batch=probe.max_batch,
                                on_event=probe.on_event) for card, _ in targets}
    probes[binding.uuid] = probe
    ctx.log(checks_line(targets, len(groups)))
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
    return Several(shared_results, per_area, lines, saved, trials)


def _check_trial(ctx: StepContext, main: Probe, card_probe: Probe, bucket: str, images: int, batch: int,
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


def _check_one(ctx: StepContext, main: Probe, card_probe: Probe, count: int, bucket: str, images: int,
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
                         f"{room(card):.1f} GB was left under its margin when the probe began): free its memory, or "
                         "train without it (gpu.uuids)")
    best = [o for o in search.outcomes if o.fits and o.batch == search.best][-1]
    return _CardCheck(card, count, bucket, search.best, best.s_per_step, best.peak_bytes, list(search.outcomes))


def _measure_at(ctx: StepContext, main: Probe, card_probe: Probe, check: _CardCheck, images: int, batch: int,
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
