"""What went wrong with a run, in one line, and what to do about it (no Textual)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lorawizard.core.logparse import TrainState

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


def state_batch(state: TrainState) -> str:
    for line in state.lines:
        if line.text.startswith("  batch size per device"):
            return line.text.rsplit(":", 1)[-1].strip()
    return ""


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
    if "oom" in kinds:
        return Diagnosis(
            "oom", f"CUDA ran out of GPU memory{_bucket_hint(state)}",
            "lower the batch size or choose a smaller VRAM preset: run the probe (step 5, GPU & batch size) to find "
            "what fits, then resume (r)",
        )
    if "missing_model" in kinds:
        text = kinds["missing_model"].text
        match = re.search(r"['\"]([^'\"]+)['\"]", text)
        name = match.group(1) if match else text.split(":", 1)[-1].strip()
        return Diagnosis("missing_model", f"a model file is missing or unreadable: {name}",
                         "run the models step (2) to download or point at the files")
    if "dataset_config" in kinds:
        return Diagnosis("dataset_config", "sd-scripts rejected the dataset config",
                         "re-run the dataset step (3); the exact complaint is in the log (l)")
    if "no_data" in kinds:
        return Diagnosis("no_data", "sd-scripts found no training images and quit without a model",
                         "run the dataset step (3) so the prepared images exist")
    if "resume_missing" in kinds:
        return Diagnosis("resume_missing", "the state folder to resume from is gone",
                         "start a new run, or resume from another state")
    if state.nan_since is not None:
        return Diagnosis("nan", f"the loss became NaN at step {state.nan_since}",
                         "lower train.learning_rate (halve it) and resume (r) from a state saved before that step")
    if alive:
        if quiet_s >= stall_after_s:
            return Diagnosis("stalled", f"no output for {int(quiet_s // 60)} min while the trainer is running",
                             "it may be stuck: check the GPU panel; stop (s) and resume (r) from the newest state")
        return None
    if stopped:
        return None
    launcher = kinds.get("launcher")
    code = launcher.code if launcher is not None and launcher.code is not None else returncode
    if code is not None and code in (-9, 137) or (launcher is not None and "SIGKILL" in launcher.text):
        return Diagnosis("host_oom", "the trainer was killed (SIGKILL), most likely by the kernel when host RAM ran out",
                         "use fewer blocks_to_swap or a smaller preset, close other programs, or add RAM/swap; "
                         "then resume (r)")
    if "exception" in kinds:
        text = kinds["exception"].text
        return Diagnosis("crash", f"the trainer crashed: {text[:160]}", "see the full log (l) for the traceback")
    if "interrupted" in kinds:
        return Diagnosis("interrupted", "the trainer was interrupted", "resume (r) from the newest state")
    if state.model_saved and (returncode in (0, None)):
        return None
    if returncode == 0:
        return Diagnosis("no_model", "the trainer exited without `model saved.` (no LoRA was written)",
                         "see the full log (l)")
    if returncode is None:
        return Diagnosis("lost", "the run ended without a record of how (its supervisor was killed)",
                         "see the full log (l); resume (r) from the newest state")
    return Diagnosis("crash", f"the trainer exited with status {returncode}", "see the full log (l)")
