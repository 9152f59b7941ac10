"""The fastest-fit flow of the probe step (`gpu.fit` = quality | fastest), on one GPU or several.

`run_fit` runs core.probe.fit's search (a ladder of memory savers × base precision × batch) on the largest bucket
area, then the other areas' largest batch with the chosen setting (core.probe.shared's `Probe`), with several GPUs
the checks on the other cards (core.probe.fit_cards); measured again only when the fingerprint says the saved fit
is stale. The chosen setting goes to `gpu.fit_*`, the batch sizes to `gpu.batch_size.*`, the search's table and
phases to probe.json's `fit` (`save_fit`; partial when stopped). `candidate_preset` turns a candidate setting into
the trial's preset. `run_several_fit` is the entry with several GPUs: it picks the binding card and the shared
preset, then runs `run_fit` with the binding card first.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from lorawizard.core.common.progress import ProgressMeter
from lorawizard.core.contract import Cancelled, StepContext, StepFailed, StepResult
from lorawizard.core.dataset.step import bucket_counts
from lorawizard.core.gpu.nvml import GB, GpuInfo
from lorawizard.core.gpu.presets import VramPreset
from lorawizard.core.launch import multigpu
from lorawizard.core.probe import fit
from lorawizard.core.probe.fit_cards import (
    Several,
    binding_card,
    check_cards,
    check_targets,
    checks_line,
    room,
    runner_for,
    with_cards,
)
from lorawizard.core.probe.shared import (
    AreaResult,
    Probe,
    probe_options,
    record_batches,
    result_json,
    sampling_note,
    save_results,
    shared_preset,
    stale_text_encoder_caches,
    table_lines,
)
from lorawizard.core.probe.trials import DRIVER_TEXTS, TrialOutcome, TrialSpec, areas
from lorawizard.core.session.document import Session

# ---------------------------------------------------------------- fastest fit (gpu.fit = quality | fastest)


def candidate_preset(base: VramPreset, setting: fit.Setting, batch: int = 1, *, chosen: bool = False) -> VramPreset:
    """The session's preset (its optimizer, or the candidate's 8-bit twin of it) with the candidate's swap, base
    precision and checkpointing, as trial overrides. Its name says the setting (core.probe.fit_rows reads it): a
    search candidate's starts `fit-`; with `chosen`, the chosen setting's for the other areas and cards starts
    `chosen-`, so their trials are the trial table's rows, not the fit table's."""
    options = {**base.options, "blocks_to_swap": setting.swap or None, "fp8_base": True if setting.fp8 else None}
    if setting.swap == 0 and base.min_gb >= 24:
        options["highvram"] = True
    if not setting.checkpointing:
        options["gradient_checkpointing"] = None
    if setting.optimizer:
        options["optimizer_type"] = setting.optimizer
    name = f"{'chosen' if chosen else 'fit'}-swap{setting.swap}-{'fp8' if setting.fp8 else '16bit'}" \
        + ("" if setting.checkpointing else "-nockpt") + (f"-opt:{setting.optimizer}" if setting.optimizer else "")
    return base._replace(name=name, batch_size=batch, options=options, from_docs=False)


def run_fit(ctx: StepContext, gpus: list[GpuInfo], preset: VramPreset, presets: list[VramPreset],
             buckets: dict[str, int]) -> StepResult:
    """The search over the ladder of memory savers × base precision × batch on the largest area (core.probe.fit),
    then the other areas' largest batch with the chosen setting; measured again only when stale (GPU, buckets or
    settings changed).

    `gpus[0]` is the card searched: the one GPU, or with several (DDP, every card trains the same batch) the binding
    card, the one with the least memory left under its margin. Each other kind of card then checks every area at the
    shared batch (`check_cards`): one trial each, a batch search downward where it does not fit."""
    from lorawizard.core.gpu.probe_results import fit_gpu_key, load_results
    from lorawizard.core.launch.command import CommandError, parse_extra_args

    session = ctx.session
    try:
        extra = parse_extra_args(session.train.extra_args)
    except CommandError as exc:
        raise StepFailed(str(exc)) from None
    policy = fit.policy_for(session, extra, max_batch=int(probe_options(ctx).get("max_batch") or fit.MAX_BATCH))
    gpu = gpus[0]
    now = fit.fingerprint(session, fit_gpu_key(session, [g.uuid for g in gpus]), buckets)
    saved = load_results(session).get("fit")
    reason = fit.stale_reason(saved, now)
    if reason is None and session.gpu.fit_swap is not None and not probe_options(ctx).get("reprobe"):
        these = "this GPU" if len(gpus) == 1 else f"these {len(gpus)} GPUs"
        return StepResult(True, f"the fit is measured for {these}, these buckets and settings (re-probe to measure "
                          "again)", details=list(saved.get("lines", [])) if saved else [],
                          data={"batch_sizes": session.batch_sizes(), "fit": saved})
    ctx.log(f"fit: measuring ({reason})" if reason else "fit: measuring again")
    groups = areas(buckets)
    limit = fit.limit_bytes(gpu.memory_total)
    if ctx.dry_run:
        return _fit_dry_run(ctx, gpu, policy, groups, others=check_targets(gpus) if len(gpus) > 1 else None)
    workdir = session.paths.state / "probe"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    probe = Probe(ctx, runner_for(ctx, gpu, workdir, several=len(gpus) > 1), gpu, limit=limit,
                   max_batch=policy.max_batch,
                   on_event=probe_options(ctx).get("on_event") or (lambda event: None))
    started = time.monotonic()
    search, outcomes = _search_largest(ctx, probe, policy, preset, groups[0], now)
    chosen = search.best
    if chosen is None:
        _save_fit(ctx, gpu, preset, search, outcomes, now, partial=False, results=[], seconds=0.0)
        raise StepFailed(_nothing_fits(search, gpu, groups[0][0], workdir))
    fit_preset = candidate_preset(preset, chosen.candidate.setting, chosen.candidate.batch, chosen=True)
    bucket, members, _ = groups[0]
    first_trials = [outcomes[m.trial] for m in search.measured if m.trial in outcomes]
    first = AreaResult(bucket, members, chosen.candidate.batch, fit_preset.name, chosen.peak_bytes, chosen.s_per_step,
                       first_trials)
    _, rest = probe.every_area(groups[1:], fit_preset, presets) if len(groups) > 1 else (fit_preset, [])
    results = [first, *rest]
    several: Several | None = None
    if len(gpus) > 1:
        try:
            several = check_cards(ctx, probe, gpus, fit_preset, groups, results, workdir)
        except (Cancelled, StepFailed):
            _save_fit(ctx, gpu, preset, search, outcomes, now, partial=True, results=[], seconds=0.0)
            ctx.log("fit: stopped while checking the other cards; the search's candidates are saved, marked partial")
            raise
        results = several.results  # per area: the shared batch and the slowest card's s/step at it
    _record_choice(ctx, chosen.candidate.setting)
    batch_sizes = record_batches(ctx, results)
    lines = _save_fit(ctx, gpu, preset, search, outcomes, now, partial=False, results=results,
                      seconds=time.monotonic() - started, batch_sizes=batch_sizes, buckets=buckets,
                      extra=several.saved if several else None, card_lines=several.lines if several else None)
    return with_cards(several, StepResult(
                      True, fit.choice_line(chosen, _visits(session, buckets), search.trials, policy.budget),
                      details=lines, data={"batch_sizes": batch_sizes, "preset": preset.name, "gpu": gpu.uuid,
                                           "fit_swap": chosen.candidate.setting.swap,
                                           "fit_fp8": chosen.candidate.setting.fp8,
                                           "trials": search.trials, "budget": policy.budget,
                                           "results": [result_json(r) for r in results]}))


def _nothing_fits(search: fit.FitSearch, gpu: GpuInfo, bucket: str, workdir: Path) -> str:
    """The one line when no candidate fits the largest area, with what the search saw."""
    hint = "gpu.fit = fastest allows an fp8 base, " if True not in search.policy.fp8 else ""
    if any(m.status == "timeout" for m in search.measured):
        hint = f"a trial hung (see the trial logs in {workdir}), " + hint
    if any(m.status == "killed" for m in search.measured):
        hint = "a trial was killed for host RAM (swapped blocks live there): add RAM or swap space, " + hint
    return (f"no setting fits {bucket} on {gpu.name} ({search.trials} trials, {fit.margin_text(gpu.memory_total)}): "
            f"{hint}free GPU memory or use smaller buckets")


def _record_choice(ctx: StepContext, setting: fit.Setting) -> None:
    """The fit's chosen setting into the session (`gpu.fit_*`): the training command applies it."""
    ctx.record("gpu.fit_swap", setting.swap)
    ctx.record("gpu.fit_fp8", setting.fp8)
    ctx.record("gpu.fit_checkpointing", setting.checkpointing)
    ctx.record("gpu.fit_optimizer", setting.optimizer or None)


def _visits(session: Session, buckets: dict[str, int]) -> int:
    return fit.image_visits(buckets, session.dataset.num_repeats, session.train.max_train_epochs,
                           max(1, len(session.gpu.uuids)))


def _search_largest(ctx: StepContext, probe: Probe, policy: fit.FitPolicy, preset: VramPreset,
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
        spec = TrialSpec(bucket, candidate.batch, candidate_preset(preset, candidate.setting), images, probe.number)
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
        lines += table_lines(results, batch_sizes, buckets)
    fit_data.update(extra or {})
    lines += card_lines or []
    save_results(session, gpu, preset, results, seconds, ctx, fit_data=fit_data)
    if results:
        lines += forecast_lines(session)
        lines.append(sampling_note(session, results))
    fit_data["lines"] = lines
    save_results(session, gpu, preset, results, seconds, ctx, fit_data=fit_data)
    return lines


def _fit_dry_run(ctx: StepContext, gpu: GpuInfo, policy: fit.FitPolicy, groups: list[tuple[str, list[str], int]],
                 others: list[tuple[GpuInfo, int]] | None = None) -> StepResult:
    from lorawizard.core.train.forecast import forecast_lines

    bucket, _, images = groups[0]
    checks = [checks_line(others, len(groups))] if others is not None else []
    details = [policy.line(), *[f"note: {n}" for n in policy.notes],
               f"would search {bucket} ({images} images) on GPU {gpu.index}, {fit.margin_text(gpu.memory_total)}; "
               f"then the largest batch of {len(groups) - 1} more bucket area(s) with the chosen setting",
               *checks, *forecast_lines(ctx.session)]
    where = f"GPU {gpu.index}" if others is None else f"GPU {gpu.index} ({multigpu.short_name(gpu.name)}, the binding card)"
    return StepResult(True, f"dry run: fit search ({policy.choice}) on {where}, at most {policy.budget} trials "
                      "for the largest area; nothing was run", details=details)


# ---------------------------------------------------------------- the fit on several GPUs


def run_several_fit(ctx: StepContext, gpus: list[GpuInfo], presets: list[VramPreset]) -> StepResult:
    """gpu.fit = quality | fastest on several GPUs: the fit searched on the binding card, checked on the others."""
    session = ctx.session
    buckets = bucket_counts(session)
    if not buckets:
        raise StepFailed(f"no prepared images in {session.paths.dataset} (no <W>x<H> folder with PNGs): run the dataset "
                         "step first")
    binding = binding_card(gpus)
    smallest = min(gpus, key=lambda gpu: (gpu.memory_total, gpu.index))
    preset = shared_preset(session, smallest, presets)
    if session.gpu.vram_preset != preset.name:
        ctx.record("gpu.vram_preset", preset.name)
    ctx.log(f"{len(gpus)} GPUs: every card trains the same batch, so the fit is searched on the binding card, GPU "
            f"{binding.index} ({binding.name}: {room(binding):.1f} GB left under its margin, the least), then checked "
            f"on the others; the {preset.name} preset (the smallest card's) underneath")
    stale_text_encoder_caches(ctx)
    return run_fit(ctx, [binding, *[gpu for gpu in gpus if gpu.uuid != binding.uuid]], preset, presets, buckets)
