"""Where each bucket's batch size comes from (the GPU step's bucket table), decided here and rendered by the screen.

Per bucket, in order: the size set in the session (measured by the probe on this GPU, on another GPU, or set by
hand), a size borrowed from a set bucket of the same area (`~N`), the preset's estimate for the chosen GPU (`~N`),
or nothing yet. Without a GPU (core.gpu.cpu_mode): the size set in the session, else 1, as training uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lorawizard.core.gpu.presets import VramPreset, estimate_batch
from lorawizard.core.gpu.probe_results import load_results
from lorawizard.core.session.document import Session, bucket_area, parse_bucket

Tone = Literal["good", "warning", "dim", "plain"]
"""How the screen colours the source: measured on this GPU, measured elsewhere, a guess, set by hand."""


@dataclass(frozen=True)
class BucketRow:
    bucket: str
    images: int
    batch: str  # "4", "~4" (borrowed or estimated) or "—"
    peak_gb: str  # "21.3" or "—"
    s_per_step: str  # "1.23" or "—"
    source: str  # "probed", "probed on another GPU", "set by hand", "same area as WxH", "estimate", "not probed",
    # "no GPU: 1 (b sets it)"
    tone: Tone


def _number(entry: dict[str, Any], key: str, fmt: str) -> str:
    value = entry.get(key)
    return format(value, fmt) if value is not None else "—"


def _measured_on(results: dict[str, Any]) -> set[str | None]:
    """The cards the probe measured for: every chosen card with several GPUs (`gpus`, or the fit's), else its one."""
    listed = results.get("gpus") or (results.get("fit") or {}).get("gpus") or [results.get("gpu") or {}]
    return {g.get("uuid") if isinstance(g, dict) else g for g in listed if isinstance(g, (dict, str))}


def bucket_rows(session: Session, buckets: dict[str, int], preset: VramPreset | None,
                gpu_memory: int | None, *, no_gpu: bool = False) -> list[BucketRow]:
    """One row per bucket of `buckets` (bucket → image count), in that order.

    `preset` and `gpu_memory` (bytes of the chosen GPU) give the estimate for buckets nothing else sets. `no_gpu`:
    the rule of core.gpu.cpu_mode — a bucket nobody set trains at batch 1 (no borrowing, no estimate)."""
    set_sizes = session.batch_sizes()
    results = load_results(session)
    measured = results.get("buckets", {})
    same_gpu = _measured_on(results) == (set(session.gpu.uuids) if len(session.gpu.uuids) > 1 else {session.gpu.uuid})
    by_area = {bucket_area(b): (b, n) for b, n in set_sizes.items() if b in buckets}
    rows: list[BucketRow] = []
    for bucket, count in buckets.items():
        entry = measured.get(bucket)
        peak = speed = "—"
        tone: Tone
        if bucket in set_sizes:
            batch = str(set_sizes[bucket])
            if entry and entry.get("batch_size") == set_sizes[bucket]:
                peak, speed = _number(entry, "peak_gb", ".1f"), _number(entry, "s_per_step", ".2f")
                source, tone = ("probed", "good") if same_gpu else ("probed on another GPU", "warning")
            else:
                source, tone = "set by hand", "plain"
        elif no_gpu:
            batch, source, tone = "1", "no GPU: 1 (b sets it)", "plain"
        elif bucket_area(bucket) in by_area:
            twin, size = by_area[bucket_area(bucket)]
            batch, source, tone = f"~{size}", f"same area as {twin}", "dim"
        elif preset is not None and gpu_memory is not None:
            width, height = parse_bucket(bucket)
            batch, source, tone = f"~{estimate_batch(preset, width, height, gpu_memory, session=session)}", "estimate", "dim"
        else:
            batch, source, tone = "—", "not probed", "dim"
        rows.append(BucketRow(bucket, count, batch, peak, speed, source, tone))
    return rows
