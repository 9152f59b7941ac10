"""Models step — not built yet; the foundation only wires it into the wizard and replay."""

from __future__ import annotations

from pathlib import Path

from lorawizard.core.session import MODEL_ROLES, Session
from lorawizard.core.steps import StepContext, StepFailed, StepResult

# Filenames of the default preset, so the command builder has paths before this step exists.
_DEFAULT_FILES = {
    "flux": "flux1-dev-fp8.safetensors",
    "ae": "ae.safetensors",
    "clip_l": "clip_l.safetensors",
    "t5xxl": "t5xxl_fp8_e4m3fn.safetensors",
}


def resolved_model_paths(session: Session) -> dict[str, Path]:
    """role → the file training will use: the session's override, else <paths.models>/<preset file>."""
    paths = {}
    for role in MODEL_ROLES:
        override = session.resolve(session.get(f"models.{role}"))
        paths[role] = override or session.paths.models / _DEFAULT_FILES[role]
    return paths


def run_step(ctx: StepContext) -> StepResult:
    raise StepFailed("the models step is not built yet in this version of lorawizard")
