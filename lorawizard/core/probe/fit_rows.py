"""The GPU screen's fit table as data (issue 26): one row per candidate of the fastest-fit search — live from the
probe's events while it runs, then from probe.json (the ruled-out candidates and the chosen one marked).

The screen keeps the rows as one snapshot (a tuple of frozen rows) and renders it; each event gives a new tuple.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from lorawizard.core.common.progress import format_duration
from lorawizard.core.gpu.nvml import GB
from lorawizard.core.probe.fit import WORDS, state_word
from lorawizard.core.probe.trials import STATUS_WORDS, ProbeEvent

FitTone = Literal["dim", "info", "good", "chosen", "other", "error"]


@dataclass(frozen=True)
class FitRow:
    number: str  # the trial's number, "–" for a candidate ruled out without a trial
    swap: int
    base: str  # "fp8" or "16-bit"
    ckpt: str  # gradient checkpointing: "on" or "off"
    state: str  # the optimizer's state: "own" (the person's optimizer) or "8-bit" (its twin)
    batch: int
    peak_gb: str
    images_per_s: str
    s_per_step: str
    run: str  # the whole run's time at that speed
    result: str
    tone: FitTone


def setting_of(preset_name: str) -> tuple[int, str, str, str] | None:
    """(swap, base, ckpt, state) of a fit trial's preset name (`fit-swap8-fp8`, `fit-swap0-16bit-nockpt`,
    `fit-swap0-fp8-opt:AdamW8bit`: core.probe.fit_run.candidate_preset names them), None for the preset probe's
    trials."""
    if not preset_name.startswith("fit-swap"):
        return None
    swap, _, rest = preset_name.removeprefix("fit-swap").partition("-")
    base, *flags = rest.split("-")
    return (int(swap), "fp8" if base == "fp8" else "16-bit", "off" if "nockpt" in flags else "on",
            state_word(next((flag for flag in flags if flag.startswith("opt:")), "")))


def with_event(rows: tuple[FitRow, ...], event: ProbeEvent) -> tuple[FitRow, ...]:
    """The fit table after a live event: a fit trial's start adds its row, its steps and end change it; the other
    areas' trials (the usual batch search) are not candidates and leave it alone."""
    spec = event.spec
    if spec is None or (setting := setting_of(spec.preset.name)) is None:
        return rows
    key = str(spec.number)
    index = next((i for i, row in enumerate(rows) if row.number == key), None)
    if index is None:
        rows = (*rows, FitRow(key, *setting, spec.batch, "…", "", "", "", "starting", "dim"))
        index = len(rows) - 1
    row = rows[index]
    if event.kind == "trial-step":
        doing = f"step {event.step}/{event.steps}" if event.step else (event.text or "starting")
        peak = f"{event.peak_bytes / GB:.1f}" if event.peak_bytes is not None else row.peak_gb
        row = replace(row, result=f"{doing}…", tone="info", peak_gb=peak)
    elif event.kind == "trial-end" and event.outcome is not None:
        outcome = event.outcome
        ips = spec.batch / outcome.s_per_step if outcome.fits and outcome.s_per_step else None
        level = outcome.device_peak_bytes or outcome.peak_bytes
        tone: FitTone = "good" if outcome.fits else "other" if outcome.status in ("killed", "timeout") else "error"
        row = replace(row, peak_gb=f"{level / GB:.1f}" if level is not None else "—",
                      images_per_s=f"{ips:.2f}" if ips else "", s_per_step=f"{outcome.s_per_step:.2f}"
                      if outcome.s_per_step else "", result=STATUS_WORDS.get(outcome.status, outcome.status), tone=tone)
    return (*rows[:index], row, *rows[index + 1 :])


def saved_rows(fit_data: dict[str, Any] | None, visits: int) -> tuple[FitRow, ...]:
    """The last search's candidates from probe.json (`fit`), the chosen one marked; () when none was saved or the file
    was edited into something else (it is our bookkeeping: the next probe writes it again)."""
    if not isinstance(fit_data, dict):
        return ()
    try:
        return _rows(fit_data, visits)
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
        return ()


def _rows(fit_data: dict[str, Any], visits: int) -> tuple[FitRow, ...]:
    chosen = fit_data.get("chosen") or {}
    rows = []
    for c in fit_data.get("candidates", []):
        ips = c.get("images_per_s")
        keys = ("swap", "fp8", "batch", "checkpointing", "optimizer")
        defaults = {"checkpointing": True, "optimizer": ""}  # probe.json from before these were searched
        is_chosen = bool(chosen) and c["status"] == "ok" and all(
            c.get(k, defaults.get(k)) == chosen.get(k, defaults.get(k)) for k in keys)
        tone: FitTone = "chosen" if is_chosen else "good" if c["status"] == "ok" else \
            "dim" if c["status"] == "ruled-out" else "other" if c["status"] in ("killed", "timeout") else "error"
        rows.append(FitRow(
            str(c["trial"]) if c.get("trial") else "–", int(c["swap"]), "fp8" if c["fp8"] else "16-bit",
            "on" if c.get("checkpointing", True) else "off", state_word(c.get("optimizer") or ""), int(c["batch"]),
            f"{c['peak_bytes'] / GB:.1f}" if c.get("peak_bytes") else "—",
            f"{ips:.2f}" if ips else "", f"{c['s_per_step']:.2f}" if c.get("s_per_step") else "",
            format_duration(visits / ips) if ips else "", "◀ chosen" if is_chosen else WORDS.get(c["status"], c["status"]),
            tone))
    return tuple(rows)
