"""core.probe.trial_rows: the GPU screen's trials table folded from the probe's live events, one tuple per event."""

from __future__ import annotations

from lorawizard.core.gpu.nvml import GB
from lorawizard.core.gpu.presets import load_presets
from lorawizard.core.probe.trial_rows import TrialRow, with_event
from lorawizard.core.probe.trials import ProbeEvent, TrialOutcome, TrialSpec


def spec(number: int, bucket: str = "1024x1024", batch: int = 4) -> TrialSpec:
    return TrialSpec(bucket, batch, load_presets(None)[0], images=12, number=number)


def fold(*events: ProbeEvent) -> tuple[TrialRow, ...]:
    rows: tuple[TrialRow, ...] = ()
    for event in events:
        rows = with_event(rows, event)
    return rows


def test_a_trial_starts_advances_and_ends() -> None:
    first = spec(1)
    rows = fold(ProbeEvent("trial-start", first))
    assert rows == (TrialRow(1, "1024x1024", 4, "…", "starting", "dim", ""),)
    rows = with_event(rows, ProbeEvent("trial-step", first, text="loading models"))
    assert rows[0].result == "loading models…" and rows[0].tone == "info" and rows[0].peak_gb == "…"
    rows = with_event(rows, ProbeEvent("trial-step", first, step=2, steps=5, peak_bytes=int(21.34 * GB)))
    assert (rows[0].result, rows[0].peak_gb) == ("step 2/5…", "21.3")
    rows = with_event(rows, ProbeEvent("trial-step", first, step=3, steps=5))
    assert rows[0].peak_gb == "21.3"  # a step without a reading keeps the last peak
    rows = with_event(rows, ProbeEvent("trial-end", first, outcome=TrialOutcome(4, "ok", peak_bytes=int(22.06 * GB),
                                                                                   s_per_step=1.234)))
    assert rows == (TrialRow(1, "1024x1024", 4, "22.1", "✓ ok", "good", "1.23"),)


def test_failed_trials_say_why_and_a_new_trial_adds_a_row() -> None:
    rows = fold(ProbeEvent("trial-end", spec(1), outcome=TrialOutcome(4, "oom")),
                ProbeEvent("trial-end", spec(2, batch=2), outcome=TrialOutcome(2, "killed")),
                ProbeEvent("trial-start", spec(3, batch=1)))
    assert [(r.number, r.batch, r.peak_gb, r.result, r.tone) for r in rows] == [
        (1, 4, "—", "✗ out of memory", "error"), (2, 2, "—", "✗ killed (host RAM?)", "other"),
        (3, 1, "…", "starting", "dim")]


def test_events_about_no_trial_leave_the_rows_as_they_were() -> None:
    rows = fold(ProbeEvent("trial-start", spec(1)))
    assert with_event(rows, ProbeEvent("step-down", text="24gb → 16gb")) is rows
