"""Progress reports shared by every step: one event type, one ETA calculator.

Core code calls a `ProgressCallback`; the TUI turns events into progress bars, headless into lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

from lorawizard.core.common.text import one_line


class Progress(NamedTuple):
    step: str  # "dataset", "models", ...
    task: str  # what is being done, e.g. "scanning photos" or a file name
    done: float
    total: float | None  # None when unknown
    unit: str = ""  # "images", "B", "steps", ...
    rate: float | None = None  # units per second
    eta_s: float | None = None
    detail: str = ""  # a short note: current file, speed, ...
    finished: bool = False

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


ProgressCallback = Callable[[Progress], object]  # what it returns is ignored (post_message returns a bool)
LogCallback = Callable[[str], object]  # one line for a person; result ignored


def ignore_progress(_: Progress) -> None:
    """A callback for callers that don't show progress."""


class ProgressMeter:
    """Tracks one task and reports it with rate and ETA, at most every `interval` seconds.

    The rate is an exponential moving average so the ETA neither jumps on one slow item nor trusts a
    stale start-up rate.
    """

    def __init__(
        self,
        callback: ProgressCallback,
        step: str,
        task: str,
        total: float | None,
        unit: str = "",
        *,
        interval: float = 0.1,
        start: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.callback, self.step, self.task, self.total, self.unit = callback, step, task, total, unit
        self.interval, self.clock = interval, clock
        self.done = start
        self._started = self._last_sample = clock()
        self._last_done = start
        self._last_emit = float("-inf")
        self.rate: float | None = None

    def advance(self, amount: float = 1, detail: str = "") -> None:
        self.update(self.done + amount, detail)

    def update(self, done: float, detail: str = "", *, force: bool = False) -> None:
        self.done = done
        now = self.clock()
        elapsed = now - self._last_sample
        if elapsed >= 0.25 or (self.rate is None and now > self._started):
            instant = (done - self._last_done) / max(elapsed, 1e-9)
            self.rate = instant if self.rate is None else 0.7 * self.rate + 0.3 * instant
            self._last_sample, self._last_done = now, done
        if force or now - self._last_emit >= self.interval:
            self._last_emit = now
            self.callback(self.snapshot(detail))

    def finish(self, detail: str = "") -> None:
        if self.total is not None:
            self.done = max(self.done, self.total)
        self.callback(self.snapshot(detail, finished=True))

    def snapshot(self, detail: str = "", *, finished: bool = False) -> Progress:
        eta = None
        if self.total is not None and self.rate and self.rate > 0:
            eta = max(0.0, (self.total - self.done) / self.rate)
        return Progress(
            self.step, self.task, self.done, self.total, self.unit, self.rate, 0.0 if finished else eta, detail, finished
        )


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bytes(amount: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(amount) < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


def _figure(value: float) -> str:
    """Three significant figures, chosen after rounding (9.999 is `10.0`, not `10.00`; 99.99 is `100`)."""
    if float(f"{value:.1f}") >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if float(f"{value:.2f}") >= 10 else f"{value:.2f}"


def format_rate(rate: float | None, unit: str = "it") -> str:
    """A speed a person can read at any size: `3.10 images/s` when units come faster than one a second, else the
    time one takes, `28.8 s/step`, `4.7 min/latent`, `1.2 h/epoch` (never `0.0 steps/s`). "" when unknown."""
    if rate is None or not math.isfinite(rate) or rate <= 0:
        return ""
    if unit == "B":
        return f"{format_bytes(rate)}/s"
    unit = unit or "it"
    if rate >= 1:
        return f"{_figure(rate)} {unit}/s"
    one = unit[:-2] if unit.endswith("ches") else (  # batches → batch
        unit[:-1] if unit.endswith("s") and not unit.endswith("ss") and len(unit) > 1 else unit)
    seconds = 1 / rate
    if float(_figure(seconds)) < 60:  # by the figure shown: 59.99 s is `1.0 min`, never `60.0 s`
        return f"{_figure(seconds)} s/{one}"
    if float(f"{seconds / 60:.1f}") < 60:
        return f"{seconds / 60:.1f} min/{one}"
    return f"{seconds / 3600:.1f} h/{one}"


def format_progress(event: Progress) -> str:
    """One plain line: `dataset: resizing 12/48 (25%) 3.1 images/s ETA 0:12 IMG_0001.jpg`."""
    if event.unit == "B":
        amount = f"{format_bytes(event.done)}" + (f"/{format_bytes(event.total)}" if event.total else "")
    else:
        amount = f"{event.done:g}" + (f"/{event.total:g}" if event.total is not None else "")
    rate = format_rate(event.rate, event.unit)
    rate = f" {rate}" if rate else ""
    percent = f" ({event.fraction:.0%})" if event.fraction is not None else ""
    eta = f" ETA {format_duration(event.eta_s)}" if event.eta_s is not None and not event.finished else ""
    done = " done" if event.finished else ""
    detail = f" {one_line(event.detail)}" if event.detail else ""  # often a file name: may hold a line break
    return f"{event.step}: {event.task} {amount}{percent}{rate}{eta}{done}{detail}"
