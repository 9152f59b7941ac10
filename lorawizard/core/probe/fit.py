"""Fastest fit (`gpu.fit`): search the settings that trade GPU memory for speed — gradient checkpointing, the
optimizer's state size, block swapping, an fp8 base, the batch size — and keep the one with the most images per
second whose peak stays inside the safety margin.

The search runs on the largest bucket area (the one that needs the most memory per image); the other areas then
get the chosen swap and base precision with their own largest batch (the probe's usual batch search).

Candidates, in order (each a short trial of the real trainer, as the probe always ran):
- per allowed base precision (`quality`: 16-bit only; `fastest`: fp8 first, then 16-bit), walk a ladder of
  memory savers, each rung needing less memory than the one before and costing more time (`FitPolicy.rungs`):
  1. no gradient checkpointing, no swap — the fastest per image when it fits (no recomputed forward pass: a
     third less compute per step) and by far the hungriest (every block's activations kept); tried unless the
     person fixed checkpointing (`--gradient_checkpointing`/`--cpu_offload_checkpointing` in train.extra_args);
  2. gradient checkpointing, no swap (what every preset does);
  3. the swap ladder from there up (the family's VRAM presets' `blocks_to_swap` values: 8, 16, 22, 28, 35 for
     FLUX.1), with checkpointing;
  and in `fastest`, when the person chose an optimizer with 32-bit state that has an 8-bit twin in sd-scripts
  (AdamW → AdamW8bit, Lion → Lion8bit, …: the same update rule, a quarter of its state), that twin right after
  each of rungs 1 and 2 with the person's optimizer, and on every swap rung — so it replaces theirs only where it
  buys images/s (`quality` keeps theirs; Adafactor and friends change the rule and its learning rate: never);
- on each swap level, a line of batch sizes from 1 up: one more (two peaks give the bytes per image), then straight
  to the largest the measured peaks predict under the limit (one more trial confirms the next does not fit);
  without usable peaks it doubles, then bisects.

Pruning:
- an out-of-memory (or over-margin) candidate rules out every candidate that needs at least as much memory
  (no more swap, no fp8 where it had fp8, no checkpointing where it had none, no 8-bit state where it had 32-bit, a
  batch at least as large): those are never run;
- a candidate slower per image than one already measured with less peak memory (at no larger batch) ends its line —
  "no larger batch" narrows the rule as the issue first put it: against a larger batch, a line's batch 1 looks slow
  before its own batch pays off (a 48 GB card's 16-bit base at batch 8 beats fp8 at batch 13, but its batch 1 is
  slower than fp8's batch 2);
- a rung is tried after a fitting one only when that line stopped at the memory limit (a later rung only frees
  memory), starting above the largest batch that already fit (the same batch on a later rung is only slower);
  a rung where even that batch does not fit costs one trial and the walk goes on to the next;
  the walk stops at the first rung that is not faster per image than the one before, after a trial the kernel
  killed for host RAM (swapped blocks live in host RAM: more swap needs more of it, so no later walk swaps as
  much either) and after a trial that hung
  (its time limit is long); a rung the trainer refuses is a row of the table, and the walk goes on (a refused
  8-bit twin — bitsandbytes missing — is dropped from the later rungs).

The bound, said up front: at most F × (R + ⌈log2 B⌉ + 2) trials for the largest area, F = base precisions allowed
(1 or 2), R = rungs (FLUX.1: 6 swap levels + no checkpointing = 7, + 2 with an 8-bit twin), B = the largest batch
tried (32): 14 for `quality`, 28 for `fastest` (32 with a twin); in practice 5 to 15 — and in `fastest` the fp8
walk's out-of-memory rows rule the 16-bit walk's hungrier rows out without a trial. The bound is a cap: where a
search would need more (1.4 % of random memory/speed models far beyond FLUX.1's, bench/bench_fit.py --fuzz), it
stops there with the best so far and says so; its rules find the grid's best in 97 % of those models. Each trial is one short real training run (3 optimizer steps), so the real cost is the trainer's start-up
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
from lorawizard.core.launch.command import eight_bit_twin
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
class Rung:
    """One rung of the ladder of memory savers (the base precision aside): block swap, gradient checkpointing, and
    the optimizer — "" for the person's, else the 8-bit twin the search may use instead."""

    swap: int
    checkpointing: bool = True
    optimizer: str = ""


@dataclass(frozen=True)
class Setting:
    """What stays fixed along a line of batch sizes."""

    swap: int
    fp8: bool
    checkpointing: bool = True
    optimizer: str = ""  # "" = the session's optimizer; else its 8-bit twin

    def label(self) -> str:
        words = f"swap {self.swap}, {'fp8' if self.fp8 else '16-bit'} base"
        if not self.checkpointing:
            words += ", no checkpointing"
        return words + (f", {self.optimizer}" if self.optimizer else "")

    def needs_at_least(self, other: Setting) -> bool:
        """This setting needs at least the memory of `other` at the same batch: no more swap, fp8 only where `other`
        has it, no checkpointing where `other` has none, 32-bit state where `other` has it."""
        return (self.swap <= other.swap and (self.fp8 == other.fp8 or other.fp8)
                and (not self.checkpointing or other.checkpointing) and (not self.optimizer or bool(other.optimizer)))


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
    no_checkpointing: bool = False  # may try training without gradient checkpointing (at swap 0)
    lean_optimizer: str = ""  # the 8-bit twin of the person's optimizer the search may use ("" = none)

    @property
    def rungs(self) -> tuple[Rung, ...]:
        """The ladder of memory savers, hungriest and fastest first (the module's docstring)."""
        first, *more = self.swaps
        rungs = []
        for checkpointing in (False, True) if self.no_checkpointing and first == 0 else (True,):
            rungs.append(Rung(first, checkpointing))
            if self.lean_optimizer:  # right after the person's optimizer reached the memory limit
                rungs.append(Rung(first, checkpointing, self.lean_optimizer))
        rungs += [Rung(swap, optimizer=self.lean_optimizer) for swap in more]
        return tuple(rungs)

    @property
    def budget(self) -> int:
        """The promised bound on trials: F × (R + ⌈log2 B⌉ + 2)."""
        return len(self.fp8) * (len(self.rungs) + math.ceil(math.log2(max(2, self.max_batch))) + 2)

    def line(self) -> str:
        precisions = " and ".join("fp8" if f else "16-bit" for f in self.fp8)
        checkpointing = "checkpointing off, then on" if self.no_checkpointing and self.swaps[0] == 0 else \
            "checkpointing on"
        optimizer = f"; 32-bit then {self.lean_optimizer} optimizer state" if self.lean_optimizer else ""
        return (f"fit: {self.choice} — {checkpointing}{optimizer}; swap {', '.join(map(str, self.swaps))}; "
                f"{precisions} base; batch 1 to {self.max_batch}; at most {self.budget} trials")


def swap_ladder(session: Session) -> tuple[int, ...]:
    """0 and every block-swap level of the family's VRAM presets, ascending."""
    family = family_for(session)
    return tuple(sorted({0} | {p.blocks_to_swap for p in family.vram_presets}))


def policy_for(session: Session, extra: dict[str, Any], *, max_batch: int = MAX_BATCH) -> FitPolicy:
    """What the search may change for this session: `gpu.fit`, narrowed by what the person fixed (train.extra_args,
    an explicit train.base_precision or optimizer, fp32 training) — respected, and said in the notes."""
    choice = session.gpu.fit if session.gpu.fit in ("quality", "fastest") else "fastest"
    swaps = swap_ladder(session)
    fp8: tuple[bool, ...] = (False,) if choice == "quality" else (True, False)
    notes: list[str] = []
    no_checkpointing, checkpointing_note = _checkpointing_policy(extra)
    lean, optimizer_note = _optimizer_policy(session, choice)
    notes += [note for note in (checkpointing_note, optimizer_note) if note]
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
    if swaps[0] != 0:
        no_checkpointing = False  # checkpointing off only without swapping (swapping frees what activations take)
    return FitPolicy(choice, swaps, fp8, max_batch, tuple(notes), no_checkpointing, lean)


def _checkpointing_policy(extra: dict[str, Any]) -> tuple[bool, str]:
    """Whether the search may train without gradient checkpointing, and the note when the person fixed it."""
    for name in ("gradient_checkpointing", "cpu_offload_checkpointing"):
        if extra.get(name):
            return False, f"--{name} in train.extra_args: gradient checkpointing kept on, not searched"
    return True, ""


def _optimizer_policy(session: Session, choice: str) -> tuple[str, str]:
    """The 8-bit twin of the person's optimizer `fastest` may use ("" = none), and the note that says why
    (`--optimizer_type` cannot be in train.extra_args: lorawizard sets it from train.optimizer_type)."""
    if not session.is_set("train.optimizer_type"):
        return "", ""  # the presets' AdamW8bit: its state is 8-bit already
    optimizer = session.train.optimizer_type
    twin = eight_bit_twin(optimizer)
    if not twin:
        return "", ""
    if choice == "quality":
        return "", f"train.optimizer_type = {optimizer}: kept (quality first); fastest may try {twin}"
    return twin, f"train.optimizer_type = {optimizer}: {twin} (the same rule, 8-bit state) may replace it where it " \
                 "buys speed"


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
        """This candidate needs at least as much memory as `other`: a setting that needs as much
        (`Setting.needs_at_least`) and a batch at least as large."""
        return self.candidate.setting.needs_at_least(other.setting) and self.candidate.batch >= other.batch


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
    _host_ram_swap: int | None = None  # the least swap whose trial the kernel killed for host RAM (every walk)

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
        twin_refused = False
        for rung in self.policy.rungs:
            if self._swaps_too_much(rung.swap):
                return  # swapped blocks live in host RAM: a level the kernel killed rules out as much or more
            optimizer = "" if twin_refused else rung.optimizer
            setting = Setting(rung.swap, fp8, rung.checkpointing, optimizer)
            line = self._line(setting, floor, trial)
            best = line.best
            if line.ended in ("budget", "host-ram"):
                return
            if line.ended == "refused" and optimizer:
                twin_refused = True  # e.g. bitsandbytes missing: the person's optimizer on the later rungs
            if best is None:
                if line.ended == "hung" or (previous is not None and line.ended not in ("memory", "refused")):
                    return
                continue  # nothing fit from `floor` up (or the trainer refused this rung): the next rung
            if previous is not None and (best.images_per_s or 0) <= (previous.images_per_s or 0):
                self.notes.append(f"{line.setting.label()}: not faster than the rung before; the later rungs only "
                                  "save more memory at more cost")
                return
            previous = best
            if line.ended != "memory":
                return  # the batch stopped growing for speed or the cap: more swap cannot help
            floor = line.largest_fit + 1
            if floor > self.policy.max_batch:
                return

    def _swaps_too_much(self, swap: int) -> bool:
        return self._host_ram_swap is not None and swap >= self._host_ram_swap

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
                self._host_ram_swap = min(setting.swap, self._host_ram_swap if self._host_ram_swap is not None
                                          else setting.swap)
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


def image_visits(buckets: dict[str, int], repeats: int, epochs: int, gpus: int = 1) -> int:
    """Images one card trains on in the whole run: Σ images × repeats × epochs, shared among `gpus` cards (DDP: each
    trains its part, at the binding card's speed — the forecast has the slowest card's)."""
    return math.ceil(sum(buckets.values()) * repeats * epochs / max(1, gpus))


def state_word(optimizer: str) -> str:
    """The optimizer state column: "8-bit" for the twin (`Setting.optimizer`), "own" for the person's optimizer."""
    return "8-bit" if optimizer else "own"


def table_lines(measured: list[Measured], chosen: Measured | None, visits: int, *, partial: bool = False) -> list[str]:
    """The candidates as a table: settings, peak GB, images/s, s/step, the whole run's time at that speed. The
    optimizer-state column only when a candidate used the 8-bit twin."""
    twin = any(m.candidate.setting.optimizer for m in measured)
    lines = [f"{'#':>2}  {'swap':>4} {'base':<6} {'ckpt':<4} " + (f"{'state':<5} " if twin else "")
             + f"{'batch':>5} {'peak GB':>8} {'img/s':>6} {'s/step':>7} {'run':>8}  result"]
    for m in measured:
        setting = m.candidate.setting
        peak = f"{m.peak_bytes / GB:.1f}" if m.peak_bytes is not None else "—"
        ips = m.images_per_s
        speed = f"{m.s_per_step:.2f}" if m.s_per_step else "—"
        run = f"{format_duration(visits / ips)}" if ips else "—"
        mark = "◀ chosen" if chosen is not None and m is chosen else WORDS.get(m.status, m.status)
        number = str(m.trial) if m.trial else "–"
        state = f"{state_word(setting.optimizer):<5} " if twin else ""
        lines.append(f"{number:>2}  {setting.swap:>4} {'fp8' if setting.fp8 else '16-bit':<6} "
                     f"{'on' if setting.checkpointing else 'off':<4} {state}{m.candidate.batch:>5} "
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
