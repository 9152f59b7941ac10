"""Dataset step: the user's photos → upright, power-of-two buckets, written beside nothing they own.

`<paths.dataset>/<W>x<H>/<NNNN>.png` (lossless 8-bit RGB) for every usable image, and
`<paths.dataset>/lorawizard-manifest.json` mapping each output to its source (path, sha256, bucket, crop).
Re-runs do only what changed; removed or skipped images leave together with their sd-scripts caches.
Decisions per image come from `[[dataset.images]]` (bucket, crop, skip); images without an entry get defaults.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

from lorawizard.core.common.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, storage_problem
from lorawizard.core.common.procs import parent_identity, pool_worker_init
from lorawizard.core.common.progress import ProgressMeter
from lorawizard.core.common.text import first_few, one_line
from lorawizard.core.contract import Cancelled, StepContext, StepFailed, StepResult
from lorawizard.core.dataset.imaging import (
    RECIPE,
    Crop,
    Probe,
    RenderJob,
    RenderOutcome,
    bucket_name,
    buckets_for,
    center_crop,
    choose_bucket,
    crop_ok,
    fit_crop,
    render,
)
from lorawizard.core.dataset.manifest import MANIFEST_FILE, MANIFEST_VERSION, as_crop, load_manifest, read_manifest
from lorawizard.core.dataset.scan import ScanResult, pseudo_filesystem, scan_source
from lorawizard.core.profile import DEFAULT_FAMILY
from lorawizard.core.session.document import BUCKET_RE, Session, bucket_area, parse_bucket

REPORT_FILE = "lorawizard-report.txt"
# Files of ours inside a bucket folder: the image, its caption, and sd-scripts' caches (sd-scripts.md §7).
_TE_CACHE = re.escape(DEFAULT_FAMILY.backend.text_encoder_cache_suffix)  # _flux_te.npz
_LATENTS = r"_\d+x\d+" + re.escape(DEFAULT_FAMILY.backend.latent_cache_suffix)  # _1024x768_flux.npz
OWN_FILE_RE = re.compile(rf"^(\d+)(\.png|\.txt|\.caption|{_TE_CACHE}|{_LATENTS})$")
LATENT_RE = re.compile(rf"^\d+{_LATENTS}$")
FLUSH_EVERY_S = 2.0
# A crop up to this many times smaller than its bucket is used, upscaled, with a note ("upscaled 1.14×": a 900×1200
# phone photo in a 1024 bucket); a smaller one is skipped unless the person keeps it (`skip = false`). How much
# upscaling a photo stands is a matter of pictures, not of the base model: a dataset constant, not a profile fact.
UPSCALE_LIMIT = 1.25


ImageStatus = Literal["use", "small", "skip", "duplicate", "bad"]  # small: flagged, skipped unless the user said use


@dataclass
class PlanItem:
    """One image of the source folder and what the step will do with it."""

    source: str
    path: Path
    sha256: str
    probe: Probe
    status: ImageStatus
    width: int = 0  # upright
    height: int = 0
    bucket: tuple[int, int] | None = None
    crop: Crop | None = None
    default_bucket: tuple[int, int] | None = None
    upscale: float = 1.0  # > 1 when the crop is smaller than its bucket
    crop_moved: bool = False  # the crop was set by hand (`crop` in its [[dataset.images]] entry), not centred
    reason: str = ""  # why it is not used
    notes: list[str] = field(default_factory=list)
    sidecar: str | None = None
    output: str | None = None  # relative to paths.dataset, when used
    base_notes: list[str] = field(default_factory=list)  # notes that do not depend on the decision

    @property
    def used(self) -> bool:
        return self.status == "use"

    @property
    def bucket_text(self) -> str:
        return bucket_name(self.bucket) if self.bucket else ""


@dataclass
class Plan:
    source: Path
    dataset: Path
    max_side: int
    items: list[PlanItem]
    ignored: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # session.toml entries for files not in the source folder
    checked: dict[str, str] = field(default_factory=dict)  # sha256 → "" decodes / reason it does not

    @property
    def used(self) -> list[PlanItem]:
        return [item for item in self.items if item.used]

    def by_bucket(self) -> dict[str, int]:
        counts = Counter(item.bucket_text for item in self.used)
        return {bucket_name(b): counts.get(bucket_name(b), 0) for b in buckets_for(self.max_side)}

    def summary_line(self) -> str:
        counts = self.by_bucket()
        skipped = sum(1 for item in self.items if item.status in ("skip", "small", "duplicate"))
        bad = sum(1 for item in self.items if item.status == "bad")
        parts = [f"{len(self.used)} images"] + [f"{b}: {n}" for b, n in counts.items()]
        parts.append(f"skipped {skipped}")
        if bad:
            parts.append(f"bad {bad}")
        return " · ".join(parts)


# ---------------------------------------------------------------- manifest


def bucket_counts(session: Session) -> dict[str, int]:
    """{bucket: prepared PNGs in its folder}, largest area first; the manifest's buckets, else every `<W>x<H>/`."""
    root = session.paths.dataset
    buckets = {image.bucket for image in load_manifest(session) if BUCKET_RE.match(image.bucket)}
    if not buckets and root.is_dir():
        buckets = {p.name for p in root.iterdir() if p.is_dir() and BUCKET_RE.match(p.name)}
    counts = {}
    for bucket in buckets:
        folder = root / bucket
        count = sum(1 for p in folder.iterdir() if p.suffix.lower() == ".png") if folder.is_dir() else 0
        if count:
            counts[bucket] = count
    return dict(sorted(counts.items(), key=lambda item: (-bucket_area(item[0]), item[0])))


# ---------------------------------------------------------------- planning


def resolve_folders(session: Session) -> tuple[Path, Path]:
    """(source, dataset) folders, checked; StepFailed with a one-line reason otherwise."""
    value = session.dataset.source
    if not value:
        raise StepFailed("dataset.source is not set: choose the folder with your photos")
    source = session.resolve(value)
    assert source is not None
    try:
        return _checked_folders(session, source)
    except OSError as exc:  # a name too long (errno 36), a link loop, an unreadable parent: one line, not a traceback
        raise StepFailed(f"dataset.source: cannot use {_short_path(source)}: {exc.strerror or exc}") from None


def _short_path(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}…{text[-40:]} ({len(text):,} characters)"


def _checked_folders(session: Session, source: Path) -> tuple[Path, Path]:
    if not source.is_dir():
        raise StepFailed(f"dataset.source: {source} is not a folder" if source.exists() else f"dataset.source: {source} does not exist")
    pseudo = pseudo_filesystem(source)
    if pseudo:
        raise StepFailed(f"dataset.source: {source} is on {pseudo}, not a folder of photos: choose the folder with your photos")
    dataset = session.paths.dataset
    src, dst = source.resolve(), dataset.resolve()
    if dst == src or src in dst.parents:
        raise StepFailed(f"paths.dataset ({dataset}) is inside dataset.source; nothing may be written there: choose another folder")
    if dst in src.parents:
        raise StepFailed(f"dataset.source ({source}) is inside paths.dataset ({dataset}): keep your originals elsewhere")
    state = session.paths.state.resolve()
    if state == src or src in state.parents:  # our bookkeeping (scan cache, logs) would land among the photos
        raise StepFailed(f"dataset.source ({source}) holds the project folder {session.project_dir}, where lorawizard "
                         "writes session.toml and .lorawizard/: move the photos into a folder of their own "
                         "(e.g. photos/) and set dataset.source to it")
    return source, dataset


def _session_bucket(value: str, max_side: int) -> tuple[tuple[int, int] | None, str]:
    try:
        width, height = parse_bucket(value)
    except ValueError:
        return None, f"bucket {value!r} is not a bucket"
    allowed = buckets_for(max_side)
    if (width, height) in allowed:
        return (width, height), ""
    for bucket in allowed:  # same shape at another max_side
        if width * bucket[1] == height * bucket[0]:
            return bucket, f"bucket {value} → {bucket_name(bucket)} (max_side is {max_side})"
    return None, f"bucket {value} is not one of {', '.join(bucket_name(b) for b in allowed)}: default used"


def plan_item(item: PlanItem, decision: dict[str, Any], max_side: int) -> None:
    """Fill bucket, crop and status of one identified image from its decision (or the defaults)."""
    width, height = item.width, item.height
    item.default_bucket = choose_bucket(width, height, max_side)
    bucket = item.default_bucket
    if "bucket" in decision:
        chosen, note = _session_bucket(str(decision["bucket"]), max_side)
        if note:
            item.notes.append(note)
        if chosen is not None:
            bucket = chosen
    crop = centred = center_crop(width, height, bucket)
    if "crop" in decision:
        wanted = as_crop(decision["crop"])  # session.toml's reader checked: 4 integers
        if crop_ok(wanted, width, height, bucket):
            crop = wanted
        else:
            crop = fit_crop(wanted, width, height, bucket)
            item.notes.append("crop adjusted to fit the image and the bucket")
    item.bucket, item.crop = bucket, crop
    item.crop_moved = crop != centred
    crop_w = crop[2] - crop[0]
    item.upscale = bucket[0] / crop_w if crop_w < bucket[0] else 1.0
    _decide_status(item, decision.get("skip"))  # its note first: "upscaled 1.14×" matters more than the crop's share
    kept = (crop[2] - crop[0]) * (crop[3] - crop[1]) / (width * height)
    if item.crop_moved:  # the table says so: a hand-moved crop looked like the centred one ("crop 75%")
        item.notes.append(f"crop moved ({kept:.0%})" if kept < 0.995 else "crop moved")
    elif kept < 0.995:
        item.notes.append(f"crop {kept:.0%}")


def _decide_status(item: PlanItem, skip: object) -> None:
    """Used, skipped by the person, or too small: upscaled up to UPSCALE_LIMIT with a note, skipped above it unless
    the person keeps it (`skip = false`)."""
    assert item.crop is not None and item.bucket is not None
    left, top, right, bottom = item.crop
    if skip is True:
        item.status, item.reason = "skip", "skipped (your choice)"
    elif item.upscale > UPSCALE_LIMIT and skip is not False:
        item.status = "small"
        item.reason = (
            f"too small: {right - left}×{bottom - top} for {bucket_name(item.bucket)} would upscale "
            f"{upscale_text(item.upscale)} (over {upscale_text(UPSCALE_LIMIT)}); skipped (choose use-anyway to keep it)"
        )
    else:
        item.status = "use"
        if item.upscale > UPSCALE_LIMIT:
            item.notes.append(f"upscaled {upscale_text(item.upscale)} (your choice)")
        elif item.upscale > 1.0:
            item.notes.append(f"upscaled {upscale_text(item.upscale)}")


def upscale_text(factor: float) -> str:
    """`1.14×`: two decimals, or as many as it takes not to read 1.00× (a 1020 px crop in a 1024 bucket is `1.004×`)."""
    digits = 2
    while digits < 4 and round(factor, digits) <= 1.0:
        digits += 1
    return f"{factor:.{digits}f}×"


def replan(item: PlanItem, decision: dict[str, Any], max_side: int) -> None:
    """Recompute one usable image after its decision changed (the wizard's keys)."""
    if item.status in ("bad", "duplicate"):
        return
    item.notes = list(item.base_notes)
    item.reason = ""
    plan_item(item, decision, max_side)


def build_plan(session: Session, scan: ScanResult, *, dataset_dir: Path | None = None, previous: dict[str, Any] | None = None) -> Plan:
    max_side = session.dataset.max_side
    dataset_dir = dataset_dir or session.paths.dataset
    decisions = session.images()
    sidecar_of = {image: sidecar for sidecar, image in scan.sidecars.items()}
    plan = Plan(scan.root, dataset_dir, max_side, [], list(scan.ignored))

    stems: dict[str, list[str]] = {}
    for source in scan.images:
        folder, _, name = source.rel.rpartition("/")
        stems.setdefault(f"{folder}/{name.rsplit('.', 1)[0]}".lower(), []).append(source.rel)

    previous = previous if previous is not None else read_manifest(dataset_dir)
    checked = previous.get("checked", {}) if previous.get("recipe") == RECIPE else {}
    first_by_hash: dict[str, str] = {}
    for source in scan.images:
        probe = source.probe or Probe(False, "not examined (cancelled)")
        item = PlanItem(source.rel, source.path, source.sha256, probe, "bad", probe.width, probe.height)
        item.notes.extend(probe.notes)
        item.sidecar = sidecar_of.get(source.rel)
        plan.items.append(item)
        if not probe.ok:
            item.reason = probe.reason
            continue
        if isinstance(checked, dict) and checked.get(source.sha256):
            item.reason = str(checked[source.sha256])  # it failed to decode before: no need to try again
            continue
        folder, _, name = source.rel.rpartition("/")
        twins = stems.get(f"{folder}/{name.rsplit('.', 1)[0]}".lower(), [])
        if len(twins) > 1:
            others = ", ".join(t.rpartition("/")[2] for t in twins if t != source.rel)
            item.notes.append(f"name collision with {others}")
        original = first_by_hash.get(source.sha256)
        if original is not None and decisions.get(original, {}).get("skip") is not True:
            item.status, item.reason = "duplicate", f"duplicate of {original} (same content; trained once)"
            continue
        first_by_hash[source.sha256] = source.rel
        item.base_notes = list(item.notes)
        plan_item(item, decisions.get(source.rel, {}), max_side)

    known = {item.source for item in plan.items} | {rel for rel, _ in plan.ignored}
    plan.missing = [file for file in decisions if file not in known]
    assign_outputs(plan, previous)
    present = {source.sha256 for source in scan.images}
    plan.checked = {sha: reason for sha, reason in checked.items() if sha in present} if isinstance(checked, dict) else {}
    return plan


def assign_outputs(plan: Plan, previous: dict[str, Any]) -> None:
    """Fixed-width numbers, stable across runs: a source keeps its number (or the number of its content)."""
    by_source: dict[str, int] = {}
    by_hash: dict[str, int] = {}
    for record in previous.get("images", []):
        try:
            number = int(Path(record["output"]).stem)
        except (KeyError, ValueError, TypeError):
            continue
        by_source.setdefault(str(record.get("source")), number)
        by_hash.setdefault(str(record.get("sha256")), number)
    taken: set[int] = set()
    numbers: dict[str, int] = {}
    used = plan.used
    for item in used:
        kept = by_source.get(item.source)
        if kept is not None and kept not in taken:
            numbers[item.source] = kept
            taken.add(kept)
    for item in used:
        if item.source in numbers:
            continue
        kept = by_hash.get(item.sha256)
        if kept is not None and kept not in taken:
            numbers[item.source] = kept
            taken.add(kept)
    next_free = 1
    for item in used:
        if item.source in numbers:
            continue
        while next_free in taken:
            next_free += 1
        numbers[item.source] = next_free
        taken.add(next_free)
    digits = max(4, len(str(max(taken, default=1))))
    for item in used:
        item.output = f"{item.bucket_text}/{numbers[item.source]:0{digits}d}.png"


def scan_and_plan(session: Session, ctx: StepContext | None = None) -> Plan:
    source, dataset = resolve_folders(session)
    paths = session.paths
    try:
        scan = scan_source(
            source,
            cache_dir=paths.state,
            exclude=[dataset, paths.state],
            progress=ctx.progress if ctx else (lambda _: None),
            cancel=ctx.cancel if ctx else None,
        )
    except OSError as exc:
        raise StepFailed(f"dataset.source: cannot read {source}: {exc.strerror or exc}") from None
    if ctx is not None:
        ctx.check_cancelled()
    return build_plan(session, scan, dataset_dir=dataset)


# ---------------------------------------------------------------- applying


@dataclass
class ApplyStats:
    rendered: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    unknown_files: list[str] = field(default_factory=list)


def _record(item: PlanItem, size: int, notes: list[str]) -> dict[str, Any]:
    assert item.output and item.bucket and item.crop
    return {
        "output": item.output,
        "source": item.source,
        "sha256": item.sha256,
        "bucket": item.bucket_text,
        "crop": list(item.crop),
        "source_size": [item.width, item.height],
        "sidecar": item.sidecar,
        "bytes": size,
        "recipe": RECIPE,
        "notes": list(dict.fromkeys(item.notes + notes)),
    }


def _same(record: dict[str, Any] | None, item: PlanItem, dataset_dir: Path) -> bool:
    if record is None or record.get("recipe") != RECIPE:
        return False
    if (record.get("source"), record.get("sha256"), record.get("bucket"), record.get("crop")) != (
        item.source, item.sha256, item.bucket_text, list(item.crop or ()),
    ):
        return False
    if item.output is None:
        return False
    try:
        return (dataset_dir / item.output).stat().st_size == record.get("bytes")
    except OSError:
        return False


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


class _ManifestWriter:
    def __init__(self, dataset_dir: Path, plan: Plan) -> None:
        self.path = dataset_dir / MANIFEST_FILE
        self.plan = plan
        self.records: dict[str, dict[str, Any]] = {}
        self.last = 0.0

    def write(self, *, complete: bool, extra: dict[str, Any] | None = None) -> None:
        data = {
            "version": MANIFEST_VERSION,
            "max_side": self.plan.max_side,
            "source": str(self.plan.source),
            "complete": complete,
            "recipe": RECIPE,
            "checked": self.plan.checked,
            "images": sorted(self.records.values(), key=lambda r: r["output"]),
            **(extra or {}),
        }
        atomic_write_json(self.path, data)
        self.last = time.monotonic()

    def maybe_flush(self) -> None:
        if time.monotonic() - self.last >= FLUSH_EVERY_S:
            self.write(complete=False)


class _PoolBroken(Exception):
    pass


class _StorageFailed(Exception):
    """An output could not be written because of the disk (full, read-only, over quota): the step stops."""

    def __init__(self, error: OSError, needed: int) -> None:
        super().__init__(str(error))
        self.error, self.needed = error, needed


def _needed_bytes(outcome: RenderOutcome, written: list[int], remaining: int) -> int:
    """Space the images still to write need: their count × the mean size written so far (or this one's), +10%."""
    sizes = written or [outcome.bytes]
    return int(sum(sizes) / len(sizes) * max(1, remaining) * 1.1)


def _executor(workers: int) -> Executor:
    """Worker processes that do not inherit the wizard's threads (forkserver), where that is possible."""
    import sys

    methods = multiprocessing.get_all_start_methods()
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    importable_main = getattr(getattr(main, "__spec__", None), "name", None) is not None or main_file is None or os.path.isfile(main_file)
    method = "forkserver" if "forkserver" in methods and importable_main else ("fork" if "fork" in methods else "spawn")
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["lorawizard.core.dataset.imaging"])  # workers start with Pillow imported
    _start_resource_tracker()
    # workers leave Ctrl-C to us (we shut the pool down) and exit when this process is gone (kill -9)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=pool_worker_init,
                               initargs=parent_identity())


def _start_resource_tracker() -> None:
    """multiprocessing's resource tracker passes `sys.stderr.fileno()` to its child; inside the wizard
    sys.stderr is Textual's capture (fileno -1), which makes starting it fail. Start it with the real one."""
    import sys
    from multiprocessing import resource_tracker

    try:
        usable = sys.stderr is not None and sys.stderr.fileno() >= 0
    except (AttributeError, OSError, ValueError):
        usable = False
    if usable:
        return
    saved = sys.stderr
    try:
        sys.stderr = sys.__stderr__ if sys.__stderr__ is not None else open(os.devnull, "w")  # noqa: SIM115
        resource_tracker.ensure_running()
    finally:
        sys.stderr = saved


class DatasetOptions(TypedDict, total=False):
    """What the dataset step reads from `ctx.options` (all optional)."""

    workers: int  # render processes (default: CPUs, at most 4)


def _options(ctx: StepContext) -> DatasetOptions:
    return cast(DatasetOptions, ctx.options)


def apply_plan(plan: Plan, ctx: StepContext, previous: dict[str, Any]) -> ApplyStats:
    """Write the plan into the dataset folder: keep what is unchanged, carry captions that move with their image,
    remove what the plan no longer holds, render the rest (a process pool), and write the manifest as it goes."""
    dataset_dir = plan.dataset
    stats = ApplyStats()
    dataset_dir.mkdir(parents=True, exist_ok=True)
    old_records = [r for r in previous.get("images", []) if isinstance(r, dict)]
    old_by_output = {str(r.get("output")): r for r in old_records}
    old_by_source = {str(r.get("source")): r for r in old_records}
    writer = _ManifestWriter(dataset_dir, plan)
    used = plan.used
    jobs = _keep_unchanged(used, old_by_output, writer, dataset_dir, stats)
    # Captions that move with their image (new bucket or number) are carried over before any cleanup.
    carried = _carried_captions(jobs, old_by_source, dataset_dir)
    _remove_stale(dataset_dir, used, jobs, old_by_output, stats)
    for output, data in carried.items():
        target = (dataset_dir / output).with_suffix(".txt")
        if not target.exists():
            atomic_write_bytes(target, data)
    writer.write(complete=False)

    # Images skipped for being small are still decoded once (cheap: they are small), so a broken one says so.
    jobs += [item for item in plan.items if item.status == "small" and item.sha256 not in plan.checked]
    meter = ProgressMeter(ctx.progress, "dataset", "preparing images", len(jobs), "images")
    # Each worker holds one picture at a time (~40 MB for a 12 Mpx JPEG); 4 keep the whole step well under 500 MB.
    workers = int(_options(ctx).get("workers") or min(os.cpu_count() or 1, 4))
    written: list[int] = []

    def finish(item: PlanItem, outcome: RenderOutcome) -> None:
        if outcome.storage_errno:  # the disk's fault: never this image's "bad input"
            remaining = sum(1 for job in jobs if job.used) - len(written)
            error = OSError(outcome.storage_errno, outcome.reason)
            raise _StorageFailed(error, _needed_bytes(outcome, written, remaining))
        if outcome.ok and item.used:
            written.append(outcome.bytes)
        plan.checked[item.sha256] = "" if outcome.ok else outcome.reason
        if item.status == "small":
            if not outcome.ok:
                item.status, item.reason = "bad", outcome.reason
            meter.advance(1, item.source)
            return
        if outcome.ok:
            writer.records[item.output or ""] = _record(item, outcome.bytes, outcome.notes)
            item.notes.extend(n for n in outcome.notes if n not in item.notes)
            stats.rendered += 1
        else:
            item.status, item.reason = "bad", outcome.reason
            _unlink(dataset_dir / (item.output or ""))
            _unlink((dataset_dir / (item.output or "")).with_suffix(".txt"))
            item.output = None
            stats.failed += 1
        meter.advance(1, item.source)
        writer.maybe_flush()

    def job_of(item: PlanItem) -> RenderJob:
        assert item.bucket and item.crop
        output = str(dataset_dir / item.output) if item.used and item.output else ""
        return RenderJob(str(item.path), output, item.bucket, item.crop, item.width, item.height)

    try:
        _render_jobs(jobs, workers, job_of, finish, ctx)
    except Cancelled:
        writer.write(complete=False)
        _remove_temp_files(dataset_dir)  # the pool is shut down: a temp file left now is no one's
        raise
    except _StorageFailed as exc:
        _remove_temp_files(dataset_dir)
        try:
            writer.write(complete=False)  # what was written so far stays usable for the next run
        except OSError:
            pass
        raise StepFailed(storage_problem(exc.error, dataset_dir, exc.needed) or str(exc)) from None
    meter.finish(f"{stats.rendered} written, {stats.unchanged} unchanged")
    writer.write(complete=True, extra={"skipped": _not_used(plan)})
    return stats


def _remove_temp_files(dataset_dir: Path) -> None:
    """Our atomic writes' `.NAME.*.tmp` files in the dataset folder and its bucket folders."""
    for pattern in (".*.tmp", "*/.*.tmp"):
        for path in dataset_dir.glob(pattern):
            if path.parent == dataset_dir or BUCKET_RE.match(path.parent.name):
                _unlink(path)


def _keep_unchanged(used: list[PlanItem], old_by_output: dict[str, dict[str, Any]], writer: _ManifestWriter,
                    dataset_dir: Path, stats: ApplyStats) -> list[PlanItem]:
    """Images already written as the plan wants them keep their files and manifest record; the rest are returned
    (to render)."""
    jobs: list[PlanItem] = []
    for item in used:
        if _same(old_by_output.get(item.output or ""), item, dataset_dir):
            record = old_by_output[item.output or ""]
            notes = list(dict.fromkeys(item.notes + record.get("notes", [])))
            writer.records[item.output or ""] = {**record, "sidecar": item.sidecar, "notes": notes}
            item.notes[:] = writer.records[item.output or ""]["notes"]
            stats.unchanged += 1
        else:
            jobs.append(item)
    return jobs


def _carried_captions(jobs: list[PlanItem], old_by_source: dict[str, dict[str, Any]],
                      dataset_dir: Path) -> dict[str, bytes]:
    """The caption files of images that move (new bucket or number), by their new output."""
    carried: dict[str, bytes] = {}
    for item in jobs:
        old = old_by_source.get(item.source)
        if old and old.get("output") != item.output:
            try:
                carried[item.output or ""] = (dataset_dir / Path(str(old["output"])).with_suffix(".txt")).read_bytes()
            except OSError:
                pass
    return carried


def _output_key(item: PlanItem) -> tuple[str, str]:
    output = Path(item.output or "")
    return str(output.parent), output.stem


def _remove_stale(dataset_dir: Path, used: list[PlanItem], jobs: list[PlanItem],
                  old_by_output: dict[str, dict[str, Any]], stats: ApplyStats) -> None:
    """Remove what the plan no longer holds: our files of images gone, stale latents and the caption and caches of
    a different image under a reused name, temp files of a write cut short; empty bucket folders go too.
    Files we did not write are counted in `stats.unknown_files`, never removed."""
    for leftover in dataset_dir.glob(".*.tmp"):  # a manifest or report write cut short by a kill
        _unlink(leftover)
    wanted = {_output_key(item): item for item in used}
    redo = {_output_key(item): item for item in jobs}
    folders = sorted(p for p in dataset_dir.iterdir() if p.is_dir() and BUCKET_RE.match(p.name)) \
        if dataset_dir.is_dir() else []
    for folder in folders:
        changed = False
        for path in sorted(folder.iterdir()):
            changed = _remove_if_stale(path, folder, wanted, redo, old_by_output, stats) or changed
        if changed:
            _unlink(folder / "metadata_cache.json")
        if not any(folder.iterdir()):
            folder.rmdir()


def _remove_if_stale(path: Path, folder: Path, wanted: dict[tuple[str, str], PlanItem],
                     redo: dict[tuple[str, str], PlanItem], old_by_output: dict[str, dict[str, Any]],
                     stats: ApplyStats) -> bool:
    """One file of a bucket folder; True when something the trainer's cache describes was removed."""
    name = path.name
    if name.startswith(".") and name.endswith(".tmp"):
        _unlink(path)  # left behind by a kill during a write
        return False
    match = OWN_FILE_RE.match(name)
    if not match:
        if name != "metadata_cache.json":
            stats.unknown_files.append(f"{folder.name}/{name}")
        return False
    key = (folder.name, match.group(1))
    if key not in wanted:
        if _unlink(path) and match.group(2) == ".png":
            stats.removed += 1
        return True
    if key in redo:
        item = redo[key]
        previous_owner = old_by_output.get(item.output or "", {}).get("source")
        if LATENT_RE.match(name) or (previous_owner != item.source and match.group(2) != ".png"):
            _unlink(path)  # stale latents; or caption and caches of a different image
            return True
    return False


def _render_jobs(jobs: list[PlanItem], workers: int, job_of: Callable[[PlanItem], RenderJob],
                 finish: Callable[[PlanItem, RenderOutcome], None], ctx: StepContext) -> None:
    """Render every job, in a process pool when there are enough (a broken pool: the rest in this process)."""
    pending = list(reversed(jobs))
    items_by_future: dict[Future[RenderOutcome], PlanItem] = {}
    if workers > 1 and len(jobs) >= 4:
        with _executor(min(workers, len(jobs))) as pool:
            try:
                while pending or items_by_future:
                    while pending and len(items_by_future) < workers * 2:
                        item = pending.pop()
                        items_by_future[pool.submit(render, job_of(item))] = item
                    done, _ = wait(list(items_by_future), timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        item = items_by_future.pop(future)
                        try:
                            outcome = future.result()
                        except Exception:  # the pool broke (a worker was killed): finish in this process
                            pending.append(item)
                            pending.extend(items_by_future.pop(f) for f in list(items_by_future))
                            raise _PoolBroken() from None
                        finish(item, outcome)
                    ctx.check_cancelled()
            except _StorageFailed:  # the disk is full: no further image can be written either
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            except Cancelled:  # the workers finish the image in hand (they leave Ctrl-C to us), then exit
                pool.shutdown(wait=True, cancel_futures=True)
                for future, item in items_by_future.items():  # keep what they finished: it is on disk
                    if future.done() and not future.cancelled() and future.exception() is None:
                        finish(item, future.result())
                raise
            except _PoolBroken:
                pool.shutdown(wait=False, cancel_futures=True)
    while pending:
        ctx.check_cancelled()
        item = pending.pop()
        finish(item, render(job_of(item)))


def _not_used(plan: Plan) -> list[dict[str, str]]:
    return [{"source": item.source, "status": item.status, "reason": item.reason} for item in plan.items if not item.used]


# ---------------------------------------------------------------- report


ROUTINE_NOTE = re.compile(r"^(rotated \(EXIF \d\)|\d+ frames: first used)$")


MISSING_LISTED = 1000  # the report file names this many stale entries; the console and the wizard's log 3


def missing_note(files: list[str], *, listed: int = 3) -> str:
    """One line for session.toml entries whose files are not in the source folder: the count and the first few."""
    if len(files) == 1:
        return f"note: session.toml has an entry for {files[0]}, which is not in the source folder"
    return (f"note: session.toml has {len(files):,} entries for files that are not in the source folder "
            f"{first_few(files, limit=listed)}")


def report_lines(plan: Plan, stats: ApplyStats | None = None, *, every_note: bool = True) -> list[str]:
    """Report lines. Bad, skipped and ignored files always get a line each; with `every_note=False`
    routine notes (EXIF rotations, animations) are counted instead of listed (the report file lists them)."""
    lines = ["per bucket: " + ", ".join(f"{bucket} {count}" for bucket, count in plan.by_bucket().items())]
    lines += _unused_lines(plan, every_line=every_note)
    lines += _item_note_lines(plan, every_note=every_note)
    lines.extend(f"note: {note}" for note in plan.notes)
    if plan.missing:  # one line however many (a session of 400,000 stale entries must not print 400,000)
        lines.append(missing_note(plan.missing, listed=MISSING_LISTED if every_note else 3))
    if stats is not None:
        lines.extend(f"warning: {name} in the dataset folder was not made by lorawizard (sd-scripts will train on it if it is an image)"
                     for name in stats.unknown_files)
    return [one_line(line) for line in lines]  # a file name with a line break must not split a report line


LISTED_UNUSED = 20  # more bad, skipped or ignored files than this: the console counts them by reason (the report lists)


def _unused_lines(plan: Plan, *, every_line: bool = True) -> list[str]:
    """A line for each bad, skipped and ignored file, in that order; without `every_line`, a kind with more than
    LISTED_UNUSED files is one line per reason (count and the first few): 10,000 small images print one line."""
    groups = [
        ("bad input", [(item.source, item.reason) for item in plan.items if item.status == "bad"]),
        ("skipped", [(item.source, item.reason) for item in plan.items if item.status in ("small", "duplicate", "skip")]),
        ("ignored", list(plan.ignored)),
    ]
    lines: list[str] = []
    for label, entries in groups:
        if every_line or len(entries) <= LISTED_UNUSED:
            lines += [f"{label}: {rel}: {reason}" for rel, reason in entries]
            continue
        by_reason: dict[str, list[str]] = {}
        for rel, reason in entries:
            by_reason.setdefault(_reason_kind(reason), []).append(rel)
        for kind, files in by_reason.items():
            lines.append(f"{label}: {len(files):,} files: {kind} {first_few(files)} (each one is in the report)")
    return lines


def _reason_kind(reason: str) -> str:
    """What a reason says without its particulars: "too small" for "too small: 100×100 for 1024x1024 …"."""
    kind = re.split(r"[:;(]", reason, maxsplit=1)[0].strip()
    return "duplicate (same content; trained once)" if kind.startswith("duplicate of") else kind or reason


def _item_note_lines(plan: Plan, *, every_note: bool) -> list[str]:
    """The notes on used images (crops left out); without `every_note` the routine ones are counted in one line."""
    lines: list[str] = []
    routine: Counter[str] = Counter()
    for item in plan.items:
        if item.used:
            notes = [n for n in item.notes if not n.startswith("crop ")]
            if not every_note:
                routine.update("turned upright (EXIF orientation)" if n.startswith("rotated") else "several frames: first used"
                               for n in notes if ROUTINE_NOTE.match(n))
                notes = [n for n in notes if not ROUTINE_NOTE.match(n)]
            if notes:
                lines.append(f"note: {item.source}: {'; '.join(notes)}")
    if routine:
        lines.append("notes: " + ", ".join(f"{kind}: {count}" for kind, count in sorted(routine.items())) + " (each one is in the report)")
    return lines


def _write_report(plan: Plan, lines: list[str]) -> Path:
    path = plan.dataset / REPORT_FILE
    header = [
        "lorawizard dataset report",
        f"written {time.strftime('%Y-%m-%d %H:%M:%S')}; source {plan.source}; max_side {plan.max_side}",
        plan.summary_line(),
        "",
    ]
    atomic_write_text(path, "\n".join(header + lines) + "\n")
    return path


# ---------------------------------------------------------------- the step


def run_step(ctx: StepContext) -> StepResult:
    session = ctx.session
    plan = scan_and_plan(session, ctx)
    previous = read_manifest(plan.dataset)
    used = plan.used
    if not ctx.may_write(plan.dataset):  # a dry run with the dataset outside the project
        lines = report_lines(plan, every_note=False)
        summary = f"dry run: would prepare {len(used)} images ({plan.summary_line()}) in {plan.dataset}"
        return StepResult(bool(used), summary, lines, {"plan": plan})
    try:
        stats = apply_plan(plan, ctx, previous)
        used = plan.used  # failures found while rendering are bad input now
        report = _write_report(plan, report_lines(plan, stats))
    except OSError as exc:  # the manifest, a carried caption, the report: a full or read-only disk is one line
        problem = storage_problem(exc, plan.dataset)
        if problem is None:
            raise
        raise StepFailed(problem) from None
    lines = report_lines(plan, stats, every_note=False)
    lines.append(f"report: {report}")
    done = f"{stats.rendered} written, {stats.unchanged} unchanged, {stats.removed} removed"
    data = {"plan": plan, "stats": stats, "report": str(report)}
    if not used:
        return StepResult(False, f"no usable image in {plan.source} ({plan.summary_line()}); see {report}", lines, data)
    return StepResult(True, f"{plan.summary_line()} ({done})", lines, data)

