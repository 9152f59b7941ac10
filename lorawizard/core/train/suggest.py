"""A suggested epoch from the validation loss per epoch, with its evidence (issue 25, item 4).

`suggest(train_by_epoch, val_by_epoch, saved_epochs=None)` judges one run's curves (its resume chain's, from
`for_run(record)`) and says, e.g., `suggested: epoch 6 (val 0.412; epochs 8–10 rise to 0.431)`.

The rule (tests/unit/test_suggest.py plays known curves through it):

1. Only validated epochs with a finite loss count, in epoch order. None at all: no suggestion
   (`line_without_validation()` says what would give one).
2. Noise. With 5 or more validated epochs the noise is the median distance of each inner value from the median of it
   and its two neighbours (0 for a curve that falls, then rises: only a zigzag counts, not the bend); with fewer it is
   0. A curve whose noise exceeds 1% of its lowest value is smoothed: each value becomes the mean of it and its
   neighbours (of 2 at the ends). The tolerance is the larger of 1% of the lowest (smoothed) value and twice the
   noise.
3. Flat: the smoothed curve stays within the tolerance of its minimum throughout. Then there is no clear minimum, and
   the suggestion is the earliest epoch within the tolerance of it (more epochs bought nothing).
4. Otherwise the suggestion is the epoch with the lowest smoothed value (the earliest of equals); its own (raw)
   validation loss is quoted.
5. The turn: after the suggested epoch, the first epoch from which every later validated epoch stays above the minimum
   by more than the tolerance; when that is 2 or more validated epochs, they are the rise
   (`epochs 8–10 rise to 0.431`, the raw loss of the last). Where the training loss is known at the minimum and at the
   end of the rise, the evidence says whether it still fell meanwhile (overfitting) or rose too.
6. Only epochs with a LoRA file can be kept (a checkpoint every `save_every_n_epochs`, and the final one): given
   `saved_epochs`, `keep_epoch` is the suggested epoch when it has a file, else the saved epoch nearest to it (of two
   as near, the one with the lower validation loss, else the earlier), and the line says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SMOOTH_FROM = 5  # validated epochs from which the curve is smoothed (fewer: each value as it is)
RELATIVE_TOLERANCE = 0.01  # of the lowest (smoothed) validation loss
NOISE_FACTOR = 2.0  # the tolerance is at least this many times the noise
MIN_RISE = 2  # validated epochs above the band after the minimum that make a turn
INDEX_FILE = "log-index.json"  # = core.train.step.INDEX_FILE (step imports this module; a test keeps them equal)
EPOCH_LOSSES = ("train_by_epoch", "val_by_epoch")  # TrainState's per-epoch losses, kept in the index as [epoch, loss]
TAIL_BYTES = 8 << 20  # a run without a log index: its log's last bytes are read for the curves


@dataclass(frozen=True)
class Suggestion:
    """The suggested epoch and its evidence. `line` is the one line people read (`str(suggestion)` too)."""

    epoch: int
    val_loss: float
    line: str
    keep_epoch: int | None = None  # the epoch to keep: `epoch` when it has a LoRA file, else the nearest saved one
    has_file: bool | None = None  # whether `epoch` has a LoRA file (None: the saved epochs were not given)
    flat: bool = False
    rise: tuple[int, int, float] | None = None  # (first, last epoch of the rise after the minimum, the loss reached)
    train_falling: bool | None = None  # over the rise: the training loss still fell (True), rose too (False)
    tolerance: float = 0.0
    validated: int = 0  # validated epochs it was judged on
    notes: tuple[str, ...] = field(default_factory=tuple)  # more evidence, a line each

    def __str__(self) -> str:
        return self.line


def line_without_validation() -> str:
    """What a run without validation would need for a suggested epoch."""
    return ("no suggested epoch: this run measured no validation loss; set train.validation_split (e.g. 0.1) "
            "to get a suggested epoch")


def _num(value: float) -> str:
    return f"{value:.3g}"


def _noise(values: list[float]) -> float:
    if len(values) < SMOOTH_FROM:
        return 0.0
    return _median([abs(values[i] - _median(values[i - 1 : i + 2])) for i in range(1, len(values) - 1)])


def _smoothed(values: list[float]) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - 1) : i + 2]
        out.append(sum(window) / len(window))
    return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _finite(by_epoch: Mapping[int, float]) -> list[tuple[int, float]]:
    return sorted((int(e), float(v)) for e, v in by_epoch.items()
                  if isinstance(v, (int, float)) and math.isfinite(v))


def suggest(train_by_epoch: Mapping[int, float], val_by_epoch: Mapping[int, float], *,
            saved_epochs: Iterable[int] | None = None) -> Suggestion | None:
    """The epoch to keep by the validation loss (the rule in the module's docstring); None without validation."""
    points = _finite(val_by_epoch)
    if not points:
        return None
    epochs = [e for e, _ in points]
    raw = [v for _, v in points]
    noise = _noise(raw)
    smooth = _smoothed(raw) if noise > RELATIVE_TOLERANCE * abs(min(raw)) else list(raw)
    low = min(smooth)
    tolerance = max(RELATIVE_TOLERANCE * abs(low), NOISE_FACTOR * noise)
    flat = len(points) >= 3 and max(smooth) - low <= tolerance
    best = next(i for i, s in enumerate(smooth) if s - low <= tolerance) if flat else smooth.index(low)
    epoch, value = epochs[best], raw[best]
    rise = None if flat else _rise(epochs, raw, smooth, best, low + tolerance)
    details: list[str] = []
    if flat:
        details.append(f"flat: no clear minimum, the earliest within {_num(tolerance)} of the lowest")
    elif len(points) == 1:
        details.append("1 validated epoch so far")
    train_falling: bool | None = None
    notes: list[str] = []
    if rise is not None:
        first, last, reached = rise
        details.append(f"epochs {first}–{last} rise to {_num(reached)}" if first != last
                       else f"epoch {first} rises to {_num(reached)}")
        train_falling, notes = _over_the_rise(dict(_finite(train_by_epoch)), epoch, last, first_validated=best == 0)
    elif not flat and best == len(points) - 1 and len(points) > 1:
        details.append("still falling at the last validated epoch: more epochs may help")
    keep, has_file = None, None
    if saved_epochs is not None:
        keep, has_file, said = _keepable(epoch, sorted(set(saved_epochs)), dict(points))
        details += said
    line = f"suggested: epoch {epoch} (val {_num(value)}" + "".join(f"; {d}" for d in details) + ")"
    return Suggestion(epoch=epoch, val_loss=value, line=line, keep_epoch=keep, has_file=has_file, flat=flat,
                      rise=rise, train_falling=train_falling, tolerance=tolerance, validated=len(points),
                      notes=tuple(notes))


def _rise(epochs: list[int], raw: list[float], smooth: list[float], best: int,
          ceiling: float) -> tuple[int, int, float] | None:
    """(first, last epoch, loss reached) of the validated epochs after `best` that all stay above `ceiling` to the
    end, when there are MIN_RISE or more of them."""
    start = None
    for i in range(len(smooth) - 1, best, -1):  # back from the end while every epoch stays above the band
        if smooth[i] <= ceiling:
            break
        start = i
    if start is None or len(smooth) - start < MIN_RISE:
        return None
    return epochs[start], epochs[-1], raw[-1]


def _over_the_rise(train: dict[int, float], best: int, last: int, *,
                   first_validated: bool) -> tuple[bool | None, list[str]]:
    """Whether the training loss still fell from the minimum to the end of the rise, and what that says."""
    notes = []
    falling = None
    if best in train and last in train:
        falling = train[last] < train[best]
        if falling:
            notes.append(f"training loss still falls over the rise ({_num(train[best])} → {_num(train[last])}): "
                         "the LoRA starts to learn its images rather than the subject (overfitting)")
        else:
            notes.append(f"training loss rose too ({_num(train[best])} → {_num(train[last])}): "
                         "training may be unstable (a lower learning rate may help)")
    if first_validated:
        notes.append("validation loss rose from the first validated epoch: fewer repeats per epoch or a lower "
                     "learning rate would show the minimum")
    return falling, notes


def _keepable(epoch: int, saved: list[int], values: dict[int, float]) -> tuple[int | None, bool, list[str]]:
    """(the epoch to keep, whether `epoch` has a LoRA file, what to say): the nearest saved epoch when it has none
    (of two as near, the lower validation loss, else the earlier)."""
    if epoch in saved:
        return epoch, True, []
    if not saved:
        return None, False, [f"no LoRA saved yet at epoch {epoch}"]
    keep = min(saved, key=lambda e: (abs(e - epoch), values.get(e, math.inf), e))
    known = f" (val {_num(values[keep])})" if keep in values else ""
    return keep, False, [f"no LoRA saved at epoch {epoch}: the nearest saved is epoch {keep}{known}"]


# ------------------------------------------------------------------ a run's curves


def validates(record: Any) -> bool:
    """Whether the run's command asked sd-scripts for a validation loss (lorawizard passes --validate_every_n_epochs
    with train.validation_split)."""
    argv = list(getattr(record, "argv", None) or [])
    return "--validate_every_n_epochs" in argv or "--validation_split" in argv


def index_epoch_losses(saved: dict[str, Any], key: str) -> dict[int, float]:
    """A per-epoch loss a log index kept (`train_by_epoch`, `val_by_epoch`: [epoch, loss] pairs; anything else is
    skipped)."""
    pairs = saved.get(key)
    if not isinstance(pairs, list):
        return {}
    return {int(p[0]): float(p[1]) for p in pairs[-100_000:]
            if isinstance(p, list) and len(p) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) and float(p[0]).is_integer()}


def _saved_state(run: Any) -> dict[str, Any] | None:
    try:
        saved = json.loads((run.dir / INDEX_FILE).read_text(encoding="utf-8")).get("state")
    except (OSError, ValueError, AttributeError):
        return None
    return saved if isinstance(saved, dict) else None


def run_curves(record: Any, state: Any = None) -> tuple[dict[int, float], dict[int, float], int | None]:
    """(training loss by epoch, validation loss by epoch, the last epoch) of `record` and the runs it resumed from
    (oldest first; a later run's epoch replaces an earlier's). `state`: the run's TrainState when the caller follows
    it (the dashboard, --status); else its log index (the log read once, bounded, where there is none)."""
    from lorawizard.core.train.keep import run_chain

    train: dict[int, float] = {}
    val: dict[int, float] = {}
    chain = run_chain(record) if getattr(record, "resumed_from", None) else [record]
    last: int | None = None
    for run in chain:
        own = run is chain[-1]
        if own and state is not None:
            curves = (dict(state.train_by_epoch), dict(state.val_by_epoch))
            epoch = state.epoch
        else:
            saved = _saved_state(run)
            if saved is None or EPOCH_LOSSES[1] not in saved:
                read = _read_tail(run)
                curves = (dict(read.train_by_epoch), dict(read.val_by_epoch))
                epoch = read.epoch
            else:
                curves = (index_epoch_losses(saved, EPOCH_LOSSES[0]), index_epoch_losses(saved, EPOCH_LOSSES[1]))
                value = saved.get("epoch")
                epoch = value if isinstance(value, int) and not isinstance(value, bool) else None
        train.update(curves[0])
        val.update(curves[1])
        last = epoch or last
    return train, val, last


def _read_tail(run: Any) -> Any:
    """A TrainState of the run's log's last TAIL_BYTES (a run without an index: written before validation was kept)."""
    from lorawizard.core.train.logparse import LogParser, TrainState

    state = TrainState(base_step=getattr(run, "base_step", 0), base_epoch=getattr(run, "base_epoch", 0))
    try:
        with open(run.log_path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read(TAIL_BYTES)
    except (OSError, AttributeError):
        return state
    parser = LogParser()
    state.apply(parser.feed(data) + parser.finish())
    return state


def saved_epochs(record: Any, last_epoch: int | None = None) -> list[int]:
    """The epochs of `record`'s chain that have a LoRA file: `<name>-<epoch>` checkpoints, and the final `<name>`
    (its run's last epoch: `last_epoch` for this run's, else the run's own)."""
    from lorawizard.core.launch import runs
    from lorawizard.core.train.keep import run_chain

    chain = run_chain(record) if getattr(record, "resumed_from", None) else [record]
    found: set[int] = set()
    for run in chain:
        for _path, epoch, _size in runs.checkpoints(run.dir, getattr(run, "output_name", "") or ""):
            if epoch is not None:
                found.add(epoch)
            else:
                saved = _saved_state(run) if run is not chain[-1] else None
                ended = last_epoch if run is chain[-1] else (saved or {}).get("epoch")
                if isinstance(ended, int) and not isinstance(ended, bool) and ended > 0:
                    found.add(ended)
    return sorted(found)


def for_run(record: Any, state: Any = None) -> Suggestion | None:
    """The suggestion for a run (and its resume chain) from its log index, or from `state` where the caller follows
    the run; None when it measured no validation loss (yet)."""
    train, val, last = run_curves(record, state)
    if not val:
        return None
    return suggest(train, val, saved_epochs=saved_epochs(record, last))


def summary_line(record: Any, state: Any = None) -> str:
    """For `--status` and the end of a headless run: the suggestion; without validation what would give one; ""
    while a validating run has no validated epoch yet."""
    found = for_run(record, state)
    if found is not None:
        return found.line
    return "" if validates(record) else line_without_validation()


def status_part(record: Any, state: Any = None, *, finished: bool = False) -> str:
    """`--status`'s words on validation: `val 0.431 at epoch 10 · suggested: epoch 6 (…)`; a `finished` run without
    validation: what would give a suggested epoch; "" otherwise."""
    train, val, last = run_curves(record, state)
    if not val:
        if validates(record):
            return "validation: no epoch validated yet"
        return line_without_validation() if finished else ""
    epoch, value = latest_validation(val) or (0, math.nan)
    found = suggest(train, val, saved_epochs=saved_epochs(record, last))
    return f"val {_num(value)} at epoch {epoch}" + (f" · {found.line}" if found is not None else "")


def latest_validation(val_by_epoch: Mapping[int, float]) -> tuple[int, float] | None:
    """(epoch, loss) of the newest validated epoch."""
    points = _finite(val_by_epoch)
    return points[-1] if points else None
