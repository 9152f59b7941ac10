"""The GPU step's trials table as data: one row per trial of a probe, folded from its live `ProbeEvent`s.

The screen keeps the rows as one snapshot (a tuple of frozen rows) and renders it; each event gives a new tuple.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from lorawizard.core.gpu.nvml import GB
from lorawizard.core.probe.trials import STATUS_WORDS, ProbeEvent, TrialOutcome

TrialTone = Literal["dim", "info", "good", "other", "error"]
"""How the screen colours the result: not started, under way, fits, stopped from outside, failed."""


@dataclass(frozen=True)
class TrialRow:
    number: int  # 1-based, across the whole probe
    bucket: str
    batch: int
    peak_gb: str  # "…" until a peak is read, then "21.3" ("—" for a trial that ended without one)
    result: str  # "starting", "step 2/5…", "loading models…", "✓ ok", "✗ out of memory"
    tone: TrialTone
    s_per_step: str  # "" until the trial ends with a speed


def _advanced(row: TrialRow, event: ProbeEvent) -> TrialRow:
    """`row` after a trial-step event: what the trial does now, and its peak so far."""
    doing = f"step {event.step}/{event.steps}" if event.step else (event.text or "starting")
    peak = f"{event.peak_bytes / GB:.1f}" if event.peak_bytes is not None else row.peak_gb
    return replace(row, result=f"{doing}…", tone="info", peak_gb=peak)


def _ended(row: TrialRow, outcome: TrialOutcome) -> TrialRow:
    """`row` after its trial ended: its peak, verdict and speed."""
    peak = f"{outcome.peak_bytes / GB:.1f}" if outcome.peak_bytes is not None else "—"
    word = STATUS_WORDS.get(outcome.status, outcome.status)
    tone: TrialTone = "good" if outcome.fits else "other" if outcome.status in ("killed", "timeout") else "error"
    speed = f"{outcome.s_per_step:.2f}" if outcome.s_per_step is not None else ""
    return replace(row, peak_gb=peak, result=("✓ " if outcome.fits else "✗ ") + word, tone=tone, s_per_step=speed)


def with_event(rows: tuple[TrialRow, ...], event: ProbeEvent) -> tuple[TrialRow, ...]:
    """The trials table after `event`: a trial's first event adds its row; steps and its end change that row.
    Events about no trial (a preset step-down) leave the rows as they were."""
    spec = event.spec
    if spec is None:
        return rows
    index = next((i for i, row in enumerate(rows) if row.number == spec.number), None)
    if index is None:
        rows = (*rows, TrialRow(spec.number, spec.bucket, spec.batch, "…", "starting", "dim", ""))
        index = len(rows) - 1
    row = rows[index]
    if event.kind == "trial-step":
        row = _advanced(row, event)
    elif event.kind == "trial-end" and event.outcome is not None:
        row = _ended(row, event.outcome)
    return (*rows[:index], row, *rows[index + 1 :])
