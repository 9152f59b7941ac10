"""How often a run saves a resumable state, so a stop or a crash loses at most ~`train.state_minutes` of training.

sd-scripts has no SIGINT handler: a stop loses everything since the last saved state. We pass
`--save_every_n_steps` computed from the measured seconds per step (the probe's figure for the slowest bucket in
use, else the rate of the newest run), and prune with `--save_last_n_steps_state` (in steps: it deletes the state
`s - M - 1` rounded down to a multiple of N, so M = N keeps the newest two) and `--save_last_n_epochs_state 2`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawizard.core.session.document import Session

KEEP_EPOCH_STATES = 2
_BATCHES_RE = re.compile(rb"num batches per epoch / [^\n:]*: (\d+)")
_RATE_RE = re.compile(rb"(\d+\.\d+)(it/s|s/it)")
_STEP_STATE_RE = re.compile(r"-step\d+-state$")  # sd-scripts' step states: `<name>-step00000123-state`


@dataclass(frozen=True)
class Cadence:
    every_n_steps: int | None  # None: no speed known, states only at the epoch saves
    s_per_step: float | None
    source: str  # where the speed comes from, for people
    minutes: int

    def overrides(self) -> dict[str, Any]:
        if not self.every_n_steps:
            return {"save_last_n_epochs_state": KEEP_EPOCH_STATES}
        return {
            "save_every_n_steps": self.every_n_steps,
            "save_last_n_steps": self.every_n_steps,  # the step LoRA files: the newest two
            "save_last_n_steps_state": self.every_n_steps,  # the step states: the newest two
            "save_last_n_epochs_state": KEEP_EPOCH_STATES,
        }

    def line(self, state_bytes: int | None = None, estimated: bool = True) -> str:
        from lorawizard.core.common.progress import format_bytes

        size = ""
        if state_bytes:
            size = f"; each state takes ≈{format_bytes(state_bytes)}{' (estimate)' if estimated else ''}, newest 2 kept"
        if not self.every_n_steps:
            return ("states at the epoch saves only (no measured speed yet: the probe measures it); a stop loses up to "
                    f"one save interval{size}")
        return (f"a state every {self.every_n_steps} steps (≈{self.minutes} min at {self.s_per_step:.2f} s/step, "
                f"{self.source}): a stop loses at most that{size}")


def steps_for(s_per_step: float | None, minutes: int) -> int | None:
    """Steps in `minutes` at `s_per_step` (at least 1); None when the speed is not known."""
    if not s_per_step or s_per_step <= 0 or not math.isfinite(s_per_step):
        return None
    return max(1, int(minutes * 60 // s_per_step))


def measured_s_per_step(session: Session) -> tuple[float | None, str]:
    """(seconds per step, where from): the probe's slowest bucket in use, else the newest run's log rate."""
    from lorawizard.core.gpu.probe_results import load_results

    buckets = load_results(session).get("buckets", {})
    try:
        from lorawizard.core.dataset.step import bucket_counts

        used = set(bucket_counts(session))
    except Exception:  # noqa: BLE001 - no dataset yet: any probed bucket
        used = set()
    speeds = [b.get("s_per_step") for name, b in buckets.items() if (not used or name in used) and b.get("s_per_step")]
    if speeds:
        return float(max(speeds)), "probe"
    from lorawizard.core.launch import runs

    for record in reversed(runs.list_runs(session.paths.runs)):
        rate = log_s_per_step(record.log_path)
        if rate:
            return rate, f"run {record.run_id}"
    return None, ""


def log_s_per_step(path: Path, tail_bytes: int = 1 << 16) -> float | None:
    """The newest tqdm rate of the `steps` bar in a log, as seconds per step."""
    data = _tail(path, tail_bytes)
    best = None
    for chunk in data.split(b"\r"):
        if not chunk.startswith(b"steps:"):
            continue
        match = _RATE_RE.search(chunk)
        if match:
            value = float(match.group(1))
            best = (1 / value if match.group(2) == b"it/s" else value) if value else None
    return best


def steps_per_epoch(log_path: Path) -> int | None:
    """sd-scripts' `num batches per epoch` from a run's log (the start of it)."""
    try:
        with open(log_path, "rb") as handle:
            head = handle.read(1 << 20)
    except OSError:
        return None
    match = _BATCHES_RE.search(head)
    return int(match.group(1)) if match else None


def cadence(session: Session) -> Cadence:
    minutes = session.train.state_minutes
    speed, source = measured_s_per_step(session)
    return Cadence(steps_for(speed, minutes), speed, source, minutes)


def state_bytes(runs_dir: Path) -> tuple[int | None, bool]:
    """(bytes of the newest saved state, estimated?) — measured from disk when there is one."""
    from lorawizard.core.launch import runs

    state = runs.newest_state(runs_dir)
    if state is None:
        return None, True
    try:
        return sum(p.stat().st_size for p in state.path.iterdir() if p.is_file()), False
    except OSError:
        return None, True


def estimated_state_bytes(network_dim: int, optimizer: str) -> int:
    """LoRA weights (fp32, ≈5.2 M parameters per rank for FLUX all blocks) plus the optimizer's moments."""
    params = 5.2e6 * network_dim
    moments = 2 if "8bit" in optimizer.lower() else 8  # two moments: 1 byte each (8-bit) or 4 bytes each
    return int(params * (4 + moments))


def step_now(log_step: int, newest_saved_step: int | None) -> int:
    """Where the run is: the step last read from its log, or a newer saved state's (a log view lags the trainer)."""
    return max(log_step, newest_saved_step or 0)


def steps_lost(current_step: int, newest_saved_step: int | None) -> int:
    """Steps a stop now would lose: those since the newest state (all of them when there is none)."""
    return max(0, current_step - (newest_saved_step or 0))


def steps_text(count: int) -> str:
    """`1 step`, `40 steps`: the lost steps as every stop message writes them."""
    return f"{count} step{'' if count == 1 else 's'}"


def stop_question(current_step: int, total_steps: int | None, newest_saved_step: int | None) -> str:
    """One line before a stop: where the run is (step_now), where a resume starts, and what is lost in between."""
    current_step = step_now(current_step, newest_saved_step)
    lost = steps_lost(current_step, newest_saved_step)
    at = f"{current_step}/{total_steps}" if total_steps else str(current_step)
    steps = f"{steps_text(lost)} lost"
    if newest_saved_step is None:
        return f"Stop the run at step {at}? No state is saved yet: a new run starts over ({steps})."
    return f"Stop the run at step {at}? It resumes from the state saved at step {newest_saved_step} ({steps})."


@dataclass(frozen=True)
class ResumePoint:
    """Where `--resume` (the wizard's r, replay's --resume) would continue, and whether there is training left.

    The one verdict on resumability: the train step (plan_run) acts on it, `--status` and `--stop` report it."""

    state: Any  # runs.SavedState | None: the newest saved state of the project's runs
    base_step: int  # the absolute step the resumed run starts at (the state's)
    base_epoch: int  # epochs already finished at that step
    steps_per_epoch: int | None  # from the state's run log (None: the log is gone or unreadable)
    max_epochs: int | None  # train.max_train_epochs (None: unknown, so not judged)
    reason: str = ""  # one line why there is nothing to resume; "" when there is

    @property
    def resumable(self) -> bool:
        return not self.reason


def resume_point(runs_dir: Path, max_epochs: int | None) -> ResumePoint:
    """The newest saved state under `runs_dir` and what a resume from it would do with `max_epochs` epochs.

    Finished epochs come from the state's step and its run's steps per epoch (a step state is saved mid-epoch: its
    `current_epoch` is the epoch in progress, not a finished one). Without the run's log, a step state's epoch
    counts as unfinished and an epoch state's as finished."""
    from lorawizard.core.common.fsutil import display_path
    from lorawizard.core.launch import runs

    state = runs.newest_state(runs_dir)
    if state is None:
        return ResumePoint(None, 0, 0, None, max_epochs,
                           f"nothing to resume: no saved state under {display_path(runs_dir)}")
    per_epoch = steps_per_epoch(state.path.parent / runs.LOG_FILE)
    if per_epoch:
        done = state.step // per_epoch
    elif _STEP_STATE_RE.search(state.path.name):
        done = max(0, state.epoch - 1)
    else:
        done = state.epoch
    reason = ""
    if max_epochs is not None and done >= max_epochs:
        reason = (f"nothing to resume: the newest saved state ({state.path.name}, run {state.run_id}) is already "
                  f"at epoch {done} of train.max_train_epochs = {max_epochs}; raise train.max_train_epochs to train "
                  "on from it, or start a new run")
    return ResumePoint(state, state.step, done, per_epoch, max_epochs, reason)


def read_state(folder: Path) -> tuple[int, int] | None:
    try:
        data = json.loads((folder / "train_state.json").read_text(encoding="utf-8"))
        return int(data["current_epoch"]), int(data["current_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tail(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            end = handle.tell()
            handle.seek(max(0, end - size))
            return handle.read()
    except OSError:
        return b""
