"""Child process for the kill-and-restart test: run the models step on a session, print the summary."""

from __future__ import annotations

import sys

from lorawizard.core.contract import StepContext
from lorawizard.core.models.step import run_step
from lorawizard.core.session.document import Session

if __name__ == "__main__":
    result = run_step(StepContext(session=Session.load(sys.argv[1])))
    print(result.summary, flush=True)
