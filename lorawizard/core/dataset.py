"""Dataset step — not built yet; the foundation only wires it into the wizard and replay."""

from __future__ import annotations

from lorawizard.core.steps import StepContext, StepFailed, StepResult


def run_step(ctx: StepContext) -> StepResult:
    raise StepFailed("the dataset step is not built yet in this version of lorawizard")
