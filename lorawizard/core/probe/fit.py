"""Fastest fit (`gpu.fit`): search the settings that trade GPU memory for speed — block swapping, an fp8 base, the
batch size — and keep the one with the most images per second whose peak stays inside the safety margin.

The search runs on the largest bucket area (the one that needs the most memory per image); the other areas then
get the chosen swap and base precision with their own largest batch (the probe's usual batch search).

Candidates, in order (each a short trial of the real trainer, as the probe always ran):
- per allowed base precision (`quality`: 16-bit only; `fastest`: fp8 first, then 16-bit), walk the swap ladder
  from 0 up (the family's VRAM presets' `blocks_to_swap` values: 0, 8, 16, 22, 28, 35 for FLUX.1);
- on each swap level, a line of batch sizes from 1 up: one more (two peaks give the bytes per image), then straight
  to the largest the measured peaks predict under the limit (one more trial confirms the next does not fit);
  without usable peaks it doubles, then bisects.

Pruning:
- an out-of-memory (or over-margin) candidate rules out every candidate that needs at least as much memory
  (no more swap, no fp8 where it had fp8, a batch at least as large): those are never run;
- a candidate slower per image than one already measured with less peak memory (at no larger batch) ends its line —
  "no larger batch" narrows the rule as the issue first put it: against a larger batch, a line's batch 1 looks slow
  before its own batch pays off (a 48 GB card's 16-bit base at batch 8 beats fp8 at batch 13, but its batch 1 is
  slower than fp8's batch 2);
- a swap level is tried after a fitting one only when that line stopped at the memory limit (more swap only frees
  memory), starting above the largest batch that already fit (the same batch with more swap is only slower);
  the walk stops at the first level that is not faster per image than the one before, after a trial the kernel
  killed for host RAM (swapped blocks live in host RAM: more swap needs more of it) and after a trial that hung
  (its time limit is long); a level the trainer refuses is a row of the table, and the walk goes on.

The bound, said up front: at most F × (S + ⌈log2 B⌉ + 2) trials for the largest area, F = base precisions allowed
(1 or 2), S = swap levels (6), B = the largest batch tried (32): 13 for `quality`, 26 for `fastest`; in practice
3 to 10. Each trial is one short real training run (3 optimizer steps), so the real cost is the trainer's start-up
per trial.

Safety margin: a candidate fits when it trains without CUDA OOM and the GPU's peak (other processes' memory
included) stays under the card's memory less max(5 %, 1 GB).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lorawizard.core.common.progress import format_duration
from lorawizard.core.gpu import probe_results
from lorawizard.core.gpu.nvml import GB
from lorawizard.core.profile import family_for
from lorawizard.core.session.document import Session

FIT_CHOICES = ("preset", "quality", "fastest")
HEADROOM_FRACTION = 0.05
HEADROOM_BYTES = 1 * GB
MAX_BATCH = 32

Status = Literal["ok", "oom", "over-margin", "killed", "timeout", "error", "ruled-out"]
FAILED = ("oom", "over-margin", "ruled-out")  # memory says no
WORDS = {"ok": "ok", "oom": "out of memory", "over-margin": "over margin", "killed": "killed (RAM?)",
         "timeout": "timed out", "error": "refused", "ruled-out": "ruled out"}  # ≤ 14 cells: the screen's column


def limit_bytes(memory_total: int) -> int:
    """The peak a candidate may reach: the card's memory less max(5 %, 1 GB)."""
    return int(memory_total - max(memory_total * HEADROOM_FRACTION, HEADROOM_BYTES))


def margin_text(memory_total: int) -> str:
    headroom = memory_total - limit_bytes(memory_total)
    return f"peak ≤ {limit_bytes(memory_total) / GB:.1f} GB ({memory_total / GB:.1f} GB less {headroom / GB:.1f} GB: " \
           "the larger of 5 % and 1 GB)"


# ---------------------------------------------------------------- what may change


@dataclass(frozen=True)
class Setting:
    """What stays fixed along a line of batch sizes."""

    swap: int
    fp8: bool

    def label(self) -> str:
        return f"swap {self.swap:>2}, {'fp8' if self.fp8 else '16-bit'} base"


@dataclass(frozen=True)
class Candidate:
    setting: Setting
    batch: int

    def label(self) -> str:
        return f"{self.setting.label()}, batch {self.batch}"


@dataclass(frozen=True)
class FitPolicy:
    """The candidates the search may use: the swap ladder (ascending), the base precisions (fp8 first), the largest
    batch, and what the person fixed (each said in a note)."""

    choice: str  # "quality" or "fastest"
    swaps: tuple[int, ...]
    fp8: tuple[bool, ...]
    max_batch: int = MAX_BATCH
    notes: tuple[str, ...] = ()

    @property
    def budget(self) -> int:
        """The promised bound on trials: F × (S + ⌈log2 B⌉ + 2)."""
        return len(self.fp8) * (len(self.swaps) + math.ceil(math.log2(max(2, self.max_batch))) + 2)

    def line(self) -> str:
        precisions = " and ".join("fp8" if f else "16-bit" for f in self.fp8)
        return (f"fit: {self.choice} — swap {', '.join(map(str, self.swaps))}; {precisions} base; batch 1 to "
                f"{self.max_batch}; at most {self.budget} trials")


def swap_ladder(session: Session) -> tuple[int, ...]:
    """0 and every block-swap level of the family's VRAM presets, ascending."""
    family = family_for(session)
    return tuple(sorted({0} | {p.blocks_to_swap for p in family.vram_presets}))


def policy_for(session: Session, extra: dict[str, Any], *, max_batch: int = MAX_BATCH) -> FitPolicy:
    """What the search may change for this session: `gpu.fit`, narrowed by what the person fixed (train.extra_args,
    an explicit train.base_precision, fp32 training) — respected, and said in the notes."""
    choice = session.gpu.fit if session.gpu.fit in ("quality", "fastest") else "fastest"
    swaps = swap_ladder(session)
    fp8: tuple[bool, ...] = (False,) if choice == "quality" else (True, False)
    notes: list[str] = []
    if "blocks_to_swap" in extra:
        value = extra["blocks_to_swap"]
        try:
            swaps = (int(value),)
        except (TypeError, ValueError):
            swaps = (0,)
        notes.append(f"--blocks_to_swap {value} in train.extra_args: kept, not searched")
    elif extra.get("cpu_offload_checkpointing"):
        swaps = (0,)
        notes.append("--cpu_offload_checkpointing in train.extra_args: sd-scripts refuses block swap with it, "
                     "so swap stays 0")
    if "fp8_base" in extra:
        fp8 = (bool(extra["fp8_base"]),)
        notes.append("--fp8_base in train.extra_args: kept, not searched")
    elif session.train.mixed_precision == "no":
        fp8 = (False,)
        notes.append("train.mixed_precision = no: sd-scripts needs mixed precision for an fp8 base, so 16-bit")
    elif session.is_set("train.base_precision"):
        wanted = session.train.base_precision == "fp8"
        if fp8 != (wanted,):
            notes.append(f"train.base_precision = {session.train.base_precision} (set by you): kept")
        fp8 = (wanted,)
    return FitPolicy(choice, swaps, fp8, max_batch, tuple(notes))


# ---------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Measured:
    candidate: Candidate
    status: Status
    peak_bytes: int | None = None  # the GPU's peak during the trial (other processes included)
    s_per_step: float | None = None
    detail: str = ""
    trial: int = 0  # its number among the probe's trials (0: ruled out, never run)

    @property
    def fits(self) -> bool:
        return self.status == "ok"

    @property
    def images_per_s(self) -> float | None:
        if not self.fits or not self.s_per_step:
            return None
        return self.candidate.batch / self.s_per_step

    def needs_at_least(self, other: Candidate) -> bool:
        """This candidate needs at least as much memory as `other`: no more swap, fp8 only where `other` has it,
        and a batch at least as large."""
        mine, theirs = self.candidate.setting, other.setting
        return (mine.swap <= theirs.swap and (mine.fp8 == theirs.fp8 or theirs.fp8)
                and self.candidate.batch >= other.batch)


Trial = Callable[[Candidate], Measured]


@dataclass
class _Line:
    """One swap level's batch sizes: lo fits, hi does not; why it ended."""

    setting: Setting
    measured: list[Measured] = field(default_factory=list)
    ended: str = ""  # "memory", "speed", "cap", "host-ram", "refused", "hung", "budget"

    @property
    def best(self) -> Measured | None:
        fitting = [m for m in self.measured if m.images_per_s is not None]
        return max(fitting, key=lambda m: (m.images_per_s, -m.candidate.batch)) if fitting else None

    @property
    def largest_fit(self) -> int:
        return max((m.candidate.batch for m in self.measured if m.fits), default=0)

    @property
    def lowest_fail(self) -> int | None:
        return min((m.candidate.batch for m in self.measured if m.status in FAILED), default=None)


@dataclass
class FitSearch:
    """The search over one bucket area. `run(trial)` calls `trial` per candidate; `measured` keeps every result
    (also when a trial raises: Ctrl-C keeps the partial table)."""

    policy: FitPolicy
    limit: int  # bytes
    measured: list[Measured] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trials: int = 0
    _slope: float | None = None  # bytes per image in the batch, from the last line with two peaks

    def run(self, trial: Trial) -> Measured | None:
        for fp8 in self.policy.fp8:
            self._walk(fp8, trial)
        return self.best

    @property
    def best(self) -> Measured | None:
        fitting = [m for m in self.measured if m.images_per_s is not None]
        if not fitting:
            return None
        return max(fitting, key=lambda m: (m.images_per_s, -(m.peak_bytes or 0)))

    def _walk(self, fp8: bool, trial: Trial) -> None:
        previous: Measured | None = None  # the best of the walk so far
        floor = 1
        for swap in self.policy.swaps:
            line = self._line(Setting(swap, fp8), floor, trial)
            best = line.best
            if line.ended in ("budget", "host-ram"):
                return
            if best is None:
                if line.ended == "hung" or (previous is not None and line.ended not in ("memory", "refused")):
                    return
                continue  # nothing fit from `floor` up (or the trainer refused this level): try more swap
            if previous is not None and (best.images_per_s or 0) <= (previous.images_per_s or 0):
                self.notes.append(f"{line.setting.label()}: not faster than with less swap; more swap is slower")
                return
            previous = best
            if line.ended != "memory":
                return  # the batch stopped growing for speed or the cap: more swap cannot help
            floor = line.largest_fit + 1
            if floor > self.policy.max_batch:
                return

    def _ruled_out(self, candidate: Candidate) -> Measured | None:
        for m in self.measured:
            if m.status in ("oom", "over-margin") and Measured(candidate, "ok").needs_at_least(m.candidate):
                return m
        return None

    def _slower_than_leaner(self, m: Measured) -> Measured | None:
        """A measured candidate with less peak memory, no larger batch and more images/s than `m`, if any."""
        if m.images_per_s is None or m.peak_bytes is None:
            return None
        for other in self.measured:
            if (other is not m and other.images_per_s is not None and other.peak_bytes is not None
                    and other.candidate.batch <= m.candidate.batch
                    and other.peak_bytes < m.peak_bytes and other.images_per_s > m.images_per_s):
                return other
        return None

    def _line(self, setting: Setting, floor: int, trial: Trial) -> _Line:
        line = _Line(setting)
        batch: int | None = floor
        while batch is not None:
            candidate = Candidate(setting, batch)
            blocker = self._ruled_out(candidate)
            if blocker is not None:
                m = Measured(candidate, "ruled-out", detail=f"needs at least the memory of {blocker.candidate.label()}")
            elif self.trials >= self.policy.budget:
                self.notes.append(f"the trial budget ({self.policy.budget}) is spent: the search stopped there")
                line.ended = "budget"
                return line
            else:
                self.trials += 1
                m = trial(candidate)
            self.measured.append(m)
            line.measured.append(m)
            if m.status == "killed":
                line.ended = "host-ram"
                self.notes.append(f"{candidate.label()}: killed by the system — host RAM ran out (not GPU memory); "
                                  "more swap needs more host RAM, so the search stops swapping more")
                return line
            if m.status in ("error", "timeout"):
                line.ended = "refused" if m.status == "error" else "hung"
                what = "refused by the trainer" if m.status == "error" else "timed out"
                self.notes.append(f"{candidate.label()}: {what}{': ' + m.detail if m.detail else ''}")
                return line
            if m.fits:
                leaner = self._slower_than_leaner(m)
                if leaner is not None:
                    line.ended = "speed"
                    return line
            batch = self._next_batch(line)
        return line

    def _next_batch(self, line: _Line) -> int | None:
        lo, hi = line.largest_fit, line.lowest_fail
        if lo >= self.policy.max_batch:
            line.ended = "cap"
            return None
        if hi is not None and hi <= lo + 1:
            line.ended = "memory"
            return None
        ceiling = min(self.policy.max_batch, hi - 1) if hi is not None else self.policy.max_batch
        if lo == 0:  # the first batch of the line did not fit (hi == floor): memory
            line.ended = "memory"
            return None
        predicted = self._predict(line)
        if predicted is not None:
            candidate = min(max(predicted, lo + 1), ceiling, max(lo * 4, lo + 1))
        elif hi is None:  # one point and no bytes per image known yet: the next batch gives both
            candidate = min(lo + 1 if sum(m.fits for m in line.measured) == 1 else lo * 2, ceiling)
        else:
            candidate = (lo + hi) // 2
        return max(candidate, lo + 1)

    def _predict(self, line: _Line) -> int | None:
        """The largest batch predicted under the limit: this line's peaks (two points), else its one point and the
        bytes per image of the last line that had two; None after a prediction failed in this line."""
        points = sorted({m.candidate.batch: m.peak_bytes for m in line.measured
                         if m.status in ("ok", "over-margin") and m.peak_bytes is not None}.items())
        fails = [m for m in line.measured if m.status in ("oom", "over-margin")]
        if len(points) >= 2:
            (b1, m1), (b2, m2) = points[-2], points[-1]
            slope = (m2 - m1) / (b2 - b1)
            if slope > 0:
                self._slope = slope
        else:
            slope = self._slope or 0.0
        if not points or slope <= 0 or fails:
            return None  # after a failure in this line: bisect
        batch, peak = points[-1]
        return max(0, math.floor((self.limit - peak) / slope + 1e-9) + batch)


# ---------------------------------------------------------------- the table and the forecast


def image_visits(buckets: dict[str, int], repeats: int, epochs: int) -> int:
    """Images the whole run trains on: Σ images × repeats × epochs."""
    return sum(buckets.values()) * repeats * epochs


def table_lines(measured: list[Measured], chosen: Measured | None, visits: int, *, partial: bool = False) -> list[str]:
    """The candidates as a table: settings, peak GB, images/s, s/step, the whole run's time at that speed."""
    lines = [f"{'#':>2}  {'swap':>4} {'base':<6} {'batch':>5} {'peak GB':>8} {'img/s':>6} {'s/step':>7} "
             f"{'run':>8}  result"]
    for m in measured:
        setting = m.candidate.setting
        peak = f"{m.peak_bytes / GB:.1f}" if m.peak_bytes is not None else "—"
        ips = m.images_per_s
        speed = f"{m.s_per_step:.2f}" if m.s_per_step else "—"
        run = f"{format_duration(visits / ips)}" if ips else "—"
        mark = "◀ chosen" if chosen is not None and m is chosen else WORDS.get(m.status, m.status)
        number = str(m.trial) if m.trial else "–"
        lines.append(f"{number:>2}  {setting.swap:>4} {'fp8' if setting.fp8 else '16-bit':<6} {m.candidate.batch:>5} "
                     f"{peak:>8} {f'{ips:.2f}' if ips else '—':>6} {speed:>7} {run:>8}  {mark}")
    if partial:
        lines.append("partial: the probe was stopped before the search ended; these are the candidates measured so far")
    return lines


def choice_line(chosen: Measured | None, visits: int, trials: int, budget: int) -> str:
    if chosen is None:
        return f"fit: no candidate fits ({trials} trials of at most {budget})"
    ips = chosen.images_per_s or 0.0
    return (f"fit: {chosen.candidate.label()} — {ips:.2f} images/s, {chosen.s_per_step or 0:.2f} s/step, "
            f"the run ≈{format_duration(visits / ips) if ips else '—'} at this speed ({trials} trials of at most {budget})")


# ---------------------------------------------------------------- when to measure again (core.gpu.probe_results)

fingerprint = probe_results.fit_fingerprint
stale_reason = probe_results.fit_stale_reason
