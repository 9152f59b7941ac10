"""Test doubles for step functions, so CLI/headless tests don't depend on what the real steps do."""

from __future__ import annotations

import os
import signal

from lorawizard.core.common.progress import ProgressMeter
from lorawizard.core.contract import StepContext, StepFailed, StepResult


def succeeds(ctx: StepContext) -> StepResult:
    meter = ProgressMeter(ctx.progress, "env", "counting", 3, "things", interval=0)
    for _ in range(3):
        meter.advance()
    meter.finish()
    ctx.log("a line for a person")
    ctx.record("gpu.batch_size.1024x1024", 3)
    return StepResult(ok=True, summary="all good", details=["detail one"])


def fails(ctx: StepContext) -> StepResult:
    raise StepFailed("the thing is missing: install it with `make thing`")


def returns_failure(ctx: StepContext) -> StepResult:
    return StepResult(ok=False, summary="nothing usable")


def interrupt_me(ctx: StepContext) -> StepResult:
    """Sends Ctrl-C to its own process, then waits to be cancelled like a real step would."""
    os.kill(os.getpid(), signal.SIGINT)
    # The main thread's handler sets ctx.cancel within a fraction of a second; the limit is a generous guard for a
    # heavily loaded box (waiting on the event costs nothing when it comes at once).
    if not ctx.cancel.wait(60):
        return StepResult(ok=True, summary="was never cancelled")
    ctx.check_cancelled()
    return StepResult(ok=True, summary="unreachable")
