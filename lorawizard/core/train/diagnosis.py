"""What went wrong with a run, in one line, and what to do about it (no Textual)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lorawizard.core.train import ddp_failures
from lorawizard.core.train.logparse import Failure, TrainState

STALL_AFTER_S = 15 * 60.0


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # oom, host_oom, nan, missing_model, dataset_config, no_data, resume_missing, crash, stalled, no_model
    what: str  # one line: what happened
    advice: str  # one line: what to do

    def line(self) -> str:
        return f"{self.what} — {self.advice}"


def _bucket_hint(state: TrainState) -> str:
    return f" (batch sizes {state_batch(state)})" if state_batch(state) else ""


def _ranks_hint(state: TrainState, failure: Failure) -> str:
    ranks = state.failed_ranks or ([failure.rank] if failure.rank is not None else [])
    if not ranks:
        return ""
    return f" (rank {ranks[0]} first)" if len(ranks) > 1 else f" (rank {ranks[0]})"


def state_batch(state: TrainState) -> str:
    for line in state.lines:
        if line.text.startswith("  batch size per device"):
            return line.text.rsplit(":", 1)[-1].strip()
    return ""


Failures = dict[str, Failure]  # the run's failures by kind (the first of each kind)


def diagnose(
    state: TrainState,
    *,
    alive: bool,
    returncode: int | None = None,
    quiet_s: float = 0.0,
    stopped: bool = False,
    stall_after_s: float = STALL_AFTER_S,
) -> Diagnosis | None:
    """A diagnosis for a failed, stalled or sick run; None while it is healthy or when it finished well."""
    kinds = {f.kind: f for f in state.failures}
    for logged in _LOGGED_RULES:  # what the log says is wrong, whether the trainer still runs or not
        found = logged(state, kinds)
        if found is not None:
            return found
    if alive:
        if quiet_s >= stall_after_s:
            return Diagnosis("stalled", f"no output for {int(quiet_s // 60)} min while the trainer is running",
                             "it may be stuck: check the GPU panel; stop (s) and resume (r) from the newest state")
        return None
    if stopped:
        return None
    for ended in _ENDED_RULES:  # how a run that is over went wrong
        found = ended(state, kinds, returncode)
        if found is not None:
            return found
    return _exit_status(state, returncode)


# -- what the log says (tried in this order)


def _oom(state: TrainState, kinds: Failures) -> Diagnosis | None:
    if "oom" not in kinds:
        return None
    rank = kinds["oom"].rank
    if rank is not None:  # several GPUs: one card ran out while the others waited for it
        return Diagnosis(
            "oom", f"rank {rank} ran out of GPU memory{_bucket_hint(state)}; the other processes waited for it",
            "every GPU trains the same batch, so it must fit the smallest card: re-probe (step 5 measures each "
            "kind of card and keeps the smallest batch), then resume (r)",
        )
    return Diagnosis(
        "oom", f"CUDA ran out of GPU memory{_bucket_hint(state)}",
        "lower the batch size or choose a smaller VRAM preset: run the probe (step 5, GPU & batch size) to find "
        "what fits, then resume (r)",
    )


def _several_gpus(state: TrainState, kinds: Failures) -> Diagnosis | None:
    for known in ddp_failures.TABLE:  # several GPUs: NCCL, rendezvous, a busy GPU (texts and sources in the table)
        if known.kind in kinds and "exception" not in kinds:  # a Python error on one rank is the cause, not NCCL
            return Diagnosis(known.kind, f"{known.what}{_ranks_hint(state, kinds[known.kind])}", known.advice)
    return None


def _missing_model(state: TrainState, kinds: Failures) -> Diagnosis | None:
    if "missing_model" not in kinds:
        return None
    text = kinds["missing_model"].text
    match = re.search(r"['\"]([^'\"]+)['\"]", text)
    name = match.group(1) if match else text.split(":", 1)[-1].strip()
    return Diagnosis("missing_model", f"a model file is missing or unreadable: {name}",
                     "run the models step (2) to download or point at the files")


def _dataset_config(state: TrainState, kinds: Failures) -> Diagnosis | None:
    if "dataset_config" not in kinds:
        return None
    return Diagnosis("dataset_config", "sd-scripts rejected the dataset config",
                     "re-run the dataset step (3); the exact complaint is in the log (l)")


def _no_data(state: TrainState, kinds: Failures) -> Diagnosis | None:
    if "no_data" not in kinds:
        return None
    return Diagnosis("no_data", "sd-scripts found no training images and quit without a model",
                     "run the dataset step (3) so the prepared images exist")


def _resume_missing(state: TrainState, kinds: Failures) -> Diagnosis | None:
    if "resume_missing" not in kinds:
        return None
    return Diagnosis("resume_missing", "the state folder to resume from is gone",
                     "start a new run, or resume from another state")


def _nan(state: TrainState, kinds: Failures) -> Diagnosis | None:
    if state.nan_since is None:
        return None
    return Diagnosis("nan", f"the loss became NaN at step {state.nan_since}",
                     "lower train.learning_rate (halve it) and resume (r) from a state saved before that step")


_LOGGED_RULES: tuple[Callable[[TrainState, Failures], Diagnosis | None], ...] = (
    _oom, _several_gpus, _missing_model, _dataset_config, _no_data, _resume_missing, _nan,
)


# -- how an ended run went wrong (tried in this order)


def _rank_killed(state: TrainState, kinds: Failures, returncode: int | None) -> Diagnosis | None:
    root = kinds.get("rank_failed")
    if root is None or root.code is None or root.code not in (-9, 137):
        return None
    return Diagnosis("host_oom", f"rank {root.rank} was killed (SIGKILL), most likely by the kernel when host RAM "
                     "ran out; torchrun stopped the other processes",
                     "each process holds its own copy of the models in RAM: use fewer GPUs, a smaller preset or "
                     "an fp8 T5-XXL, or add RAM/swap; then resume (r)")


def _trainer_killed(state: TrainState, kinds: Failures, returncode: int | None) -> Diagnosis | None:
    launcher = kinds.get("launcher")
    code = launcher.code if launcher is not None and launcher.code is not None else returncode
    if not ((code is not None and code in (-9, 137)) or (launcher is not None and "SIGKILL" in launcher.text)):
        return None
    return Diagnosis("host_oom", "the trainer was killed (SIGKILL), most likely by the kernel when host RAM ran out",
                     "use fewer blocks_to_swap or a smaller preset, close other programs, or add RAM/swap; "
                     "then resume (r)")


def _exception(state: TrainState, kinds: Failures, returncode: int | None) -> Diagnosis | None:
    if "exception" not in kinds:
        return None
    root = kinds.get("rank_failed")
    failure = next((f for f in state.failures if f.kind == "exception" and root is not None and f.rank == root.rank),
                   kinds["exception"])  # the rank torchrun saw fail first
    who = f"rank {failure.rank} of the trainer" if failure.rank is not None else "the trainer"
    others = "; torchrun stopped the other processes" if root is not None else ""
    return Diagnosis("crash", f"{who} crashed: {failure.text[:160]}{others}",
                     "see the full log (l) for the traceback")


def _rank_failed(state: TrainState, kinds: Failures, returncode: int | None) -> Diagnosis | None:
    root = kinds.get("rank_failed")
    if root is None:
        return None
    return Diagnosis("crash", f"{root.text}; torchrun stopped the other processes",
                     "see the full log (l): that rank's lines start with [rank" + f"{root.rank}]:")


def _interrupted(state: TrainState, kinds: Failures, returncode: int | None) -> Diagnosis | None:
    if "interrupted" not in kinds:
        return None
    return Diagnosis("interrupted", "the trainer was interrupted", "resume (r) from the newest state")


_ENDED_RULES: tuple[Callable[[TrainState, Failures, int | None], Diagnosis | None], ...] = (
    _rank_killed, _trainer_killed, _exception, _rank_failed, _interrupted,
)


def _exit_status(state: TrainState, returncode: int | None) -> Diagnosis | None:
    """Nothing in the log explains the end: the exit status and `model saved.` decide."""
    if state.model_saved and (returncode in (0, None)):
        return None
    if returncode == 0:
        return Diagnosis("no_model", "the trainer exited without `model saved.` (no LoRA was written)",
                         "see the full log (l)")
    if returncode is None:
        return Diagnosis("lost", "the run ended without a record of how (its supervisor was killed)",
                         "see the full log (l); resume (r) from the newest state")
    return Diagnosis("crash", f"the trainer exited with status {returncode}", "see the full log (l)")
