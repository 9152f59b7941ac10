"""Captions step: import sidecar captions into session.toml, draft missing ones when asked, write the caption files
sd-scripts reads (the caption set itself: captionset.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

from lorawizard.core.captions.captionset import (
    AUTO,
    EMPTY,
    OVER_CLIP,
    OVER_T5,
    TRIGGER_TWICE,
    Caption,
    CaptionSet,
    Prepared,
    WriteReport,
    find_imports,
    prepared_images,
    store_imports,
    write_captions,
)
from lorawizard.core.captions.written import find_hand_edits, remember_written, session_captions, store_hand_edits
from lorawizard.core.common.progress import ProgressMeter
from lorawizard.core.common.text import one_line as escaped
from lorawizard.core.contract import StepContext, StepFailed, StepResult


def _listing(title: str, items: Sequence[Caption], describe: Callable[[Caption], str], limit: int = 15) -> list[str]:
    if not items:
        return []
    lines = [f"{title} ({len(items)}):"]
    lines += [f"  {describe(item)}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  … and {len(items) - limit} more")
    return lines


class CaptionsOptions(TypedDict, total=False):
    """What the captions step reads from `ctx.options` (all optional)."""

    autocaption: bool  # draft missing captions when `captions.auto` (default: in replay only; the screen drafts itself)


def _options(ctx: StepContext) -> CaptionsOptions:
    return cast(CaptionsOptions, ctx.options)


def run_step(ctx: StepContext) -> StepResult:
    session = ctx.session
    images = prepared_images(session)
    if not images:
        raise StepFailed(f"no prepared images in {session.paths.dataset}: run the dataset step first")

    # the person's session.toml as it is (replay applies this run's decisions to the session in memory only)
    base = session_captions(session) if session.read_only else None
    hand_edited, seen = _take_hand_edits(ctx, images)
    imports = find_imports(session, images)
    if imports.captions:
        if session.read_only:
            store_imports(session, imports, record=ctx.record)
        else:
            store_imports(session, imports, store=ctx.store)
        ctx.log(f"imported {len(imports.captions)} captions from .txt/.caption files next to the originals")
    for file, note in imports.notes.items():
        ctx.log(escaped(f"import note: {file}: {note}"))
    drafted = None
    if session.captions.auto and _options(ctx).get("autocaption", session.read_only):  # the screen drafts itself
        from lorawizard.core.captions.autocaption import draft_missing

        drafted = draft_missing(ctx)  # StepFailed with the reason when the model cannot run
        if drafted is not None:  # drafting takes a while: a caption file edited meanwhile is the person's too
            again, seen = _take_hand_edits(ctx, images)
            hand_edited += again

    captions = CaptionSet.from_session(session, on_disk=seen)  # the caption files as just read
    ctx.check_cancelled()
    try:
        report, dry_run = _write_files(ctx, captions)
    finally:  # a write cut short too: the files written so far are ours, not a person's edits
        if ctx.may_write(session.paths.dataset):
            remember_written(session, captions, base if base is not None else session_captions(session))
    found = _Findings.of(captions)
    details = _detail_lines(captions, found)
    parts = _summary_parts(captions, report, found, drafted=len(drafted.drafted) if drafted is not None else 0,
                           dry_run=dry_run)
    if hand_edited:
        parts.insert(1, f"{len(hand_edited)} edited by hand taken in as yours")
    data = {**_result_data(captions, report, found), "hand_edited": hand_edited}
    if found.uncaptioned and not captions.captionless:
        summary = (
            f"{len(found.uncaptioned)} of {len(captions)} images have no caption — write them, or set "
            f"dataset.captionless = true to train without ({'; '.join(parts)})"
        )
        return StepResult(False, summary, details, data)
    if found.uncaptioned:
        parts.append(f"{len(found.uncaptioned)} without caption (captionless training intended)")
    return StepResult(True, "; ".join(parts), details, data)


def _take_hand_edits(ctx: StepContext, images: list[Prepared]) -> tuple[list[str], dict[Path, bytes | None]]:
    """Caption files changed by hand since lorawizard wrote them: taken in as the person's captions (written.py).
    Returns the sources whose caption changed that way, and the caption files as read."""
    session = ctx.session
    edits = find_hand_edits(session, images)
    remember = ctx.may_write(session.paths.dataset)
    if session.read_only:
        store_hand_edits(session, edits, record=ctx.record, remember=remember)
    else:
        store_hand_edits(session, edits, store=ctx.store, remember=remember)
    changed = [source for source in edits.edited if source in edits.captions]
    if changed:
        ctx.log(escaped(f"took in {len(changed)} caption file{'s' if len(changed) != 1 else ''} edited by hand as your "
                        f"caption{'s' if len(changed) != 1 else ''} (e.g. {changed[0]}): never redrafted or overwritten"))
    return changed, edits.contents


def _write_files(ctx: StepContext, captions: CaptionSet) -> tuple[WriteReport, bool]:
    """The caption files sd-scripts reads, written (or only counted in a dry run); and whether it was a dry run."""
    meter = ProgressMeter(ctx.progress, "captions", "writing caption files", len(captions), "captions")
    dry_run = not ctx.may_write(ctx.session.paths.dataset)  # a dry run still writes inside the project
    report = write_captions(captions, dry_run=dry_run, progress=meter, check_cancelled=ctx.check_cancelled)
    meter.finish()
    if report.missing_images:
        first = report.missing_images[0]
        raise StepFailed(
            f"{len(report.missing_images)} prepared images are gone (e.g. {first}): run the dataset step again"
        )
    return report, dry_run


@dataclass(frozen=True)
class _Findings:
    """The captions the step reports on."""

    estimate: str  # said after token counts that are estimates
    uncaptioned: list[Caption]
    over_clip: list[Caption]
    over_t5: list[Caption]
    twice: list[Caption]  # the trigger word appears again later
    noted: list[Caption]  # import notes

    @classmethod
    def of(cls, captions: CaptionSet) -> _Findings:
        return cls(
            estimate="" if captions.counter.exact else " (estimate: tokenizers not fetched)",
            uncaptioned=captions.uncaptioned(),
            over_clip=[i for i in captions.items if i.flags & OVER_CLIP],
            over_t5=[i for i in captions.items if i.flags & OVER_T5],
            twice=[i for i in captions.items if i.flags & TRIGGER_TWICE],
            noted=[i for i in captions.items if i.note],
        )


def _detail_lines(captions: CaptionSet, found: _Findings) -> list[str]:
    estimate = found.estimate
    details = [
        *_listing("no caption", found.uncaptioned, lambda i: f"{i.file} ({'empty' if i.flags & EMPTY else 'missing'})"),
        *_listing(f"over {captions.counter.clip_limit} CLIP tokens, the rest is cut off{estimate}", found.over_clip,
                  lambda i: f"{i.file}: {i.clip}"),
        *_listing(f"over {captions.counter.t5_limit} T5 tokens{estimate}", found.over_t5, lambda i: f"{i.file}: {i.t5}"),
        *_listing("trigger word also appears later in the caption", found.twice, lambda i: i.file),
        *_listing("import notes", found.noted, lambda i: f"{i.file}: {i.note}"),
    ]
    if not captions.trigger:
        details.append("no trigger word set (dataset.trigger): captions are written without one")
    return details


def _summary_parts(captions: CaptionSet, report: WriteReport, found: _Findings, *, drafted: int,
                   dry_run: bool) -> list[str]:
    """The summary's clauses: files written, drafts to review, stale files removed, captions over the CLIP budget."""
    verb = "would write" if dry_run else "wrote"
    parts = [f"{verb} {len(report.written)} caption files ({report.unchanged} unchanged)"]
    unreviewed = [i for i in captions.items if i.flags & AUTO]
    if drafted:
        parts.append(f"{drafted} auto drafts to review")
    elif unreviewed:  # QA: drafts nobody accepted went into the files unmentioned
        parts.append(f"{len(unreviewed)} auto draft{'s' if len(unreviewed) != 1 else ''} not reviewed yet (F7 accepts)")
    if report.removed:
        parts.append(f"{'would remove' if dry_run else 'removed'} {len(report.removed)} stale ones")
    if report.caches_deleted:
        parts.append(f"{'would delete' if dry_run else 'deleted'} {len(report.caches_deleted)} stale text-encoder caches")
    if found.over_clip:
        parts.append(f"{len(found.over_clip)} over the CLIP budget{found.estimate}")
    return parts


def _result_data(captions: CaptionSet, report: WriteReport, found: _Findings) -> dict[str, Any]:
    return {
        "written": len(report.written),
        "unchanged": report.unchanged,
        "removed": len(report.removed),
        "caches_deleted": [str(p) for p in report.caches_deleted],
        "uncaptioned": [i.file for i in found.uncaptioned],
        "over_clip": [i.file for i in found.over_clip],
        "over_t5": [i.file for i in found.over_t5],
        "exact_tokens": captions.counter.exact,
        "auto": [i.file for i in captions.items if i.flags & AUTO],
    }
