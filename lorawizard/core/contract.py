"""The contract every step follows: `run_step(ctx: StepContext) -> StepResult`, and how a step fails or is cancelled.

The TUI's workers and the headless runner call the very same step functions; a step never prints and never
touches the UI. This module imports no step (the registry, core/registry.py, lists them).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lorawizard.core.common.progress import LogCallback, ProgressCallback, ignore_progress
from lorawizard.core.session.document import Session
from lorawizard.core.session.store import SessionStore, save_change

StepState = Literal["todo", "done", "attention"]  # what the step bar shows for a step (besides "current")


def _no_options() -> Mapping[str, object]:
    return {}


class StepFailed(Exception):
    """A step could not do its job; the message is one line that says why and what to do."""


class Cancelled(Exception):
    """The user asked to stop (Ctrl-C headless, Esc/cancel in the wizard)."""


@dataclass
class StepResult:
    ok: bool
    summary: str  # one line
    details: list[str] = field(default_factory=list)  # report lines (bad inputs, tables, ...)
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable results for the caller


@dataclass
class StepContext:
    session: Session
    progress: ProgressCallback = ignore_progress
    log: LogCallback = lambda line: None  # informational lines for a person
    dry_run: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    # set again while a cancel is under way (a further Ctrl-C in replay): a stop in progress moves to its next,
    # harsher stage now instead of waiting out its time limit (runs.stop: SIGINT → SIGTERM → SIGKILL)
    hurry: threading.Event = field(default_factory=threading.Event)
    # the step's own TypedDict (registry.StepOptions: reprobe, detach, doubles, ...); each step casts it to its own
    options: Mapping[str, object] = field(default_factory=_no_options)
    decisions: dict[str, Any] = field(default_factory=dict)  # what replay decided where the session was silent
    store: SessionStore | None = None  # the wizard's one writer of session.toml (None: record writes at once)

    def may_write(self, path: Path) -> bool:
        """Whether this run may change `path`: always, except that a dry run changes nothing outside the project."""
        if not self.dry_run:
            return True
        return Path(path).resolve().is_relative_to(self.session.project_dir)

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def record(self, key: str, value: Any) -> None:
        """Store a decision: kept beside the outputs in replay, else saved to session.toml through the store (the
        wizard's; without one, written now: a hand edit on disk is merged either way)."""
        if self.session.read_only:
            self.decisions[key] = value
            apply_decision(self.session, key, value)  # later steps of this replay still see it
        else:
            save_change(self.session, lambda session: apply_decision(session, key, value), self.store)


def apply_decision(session: Session, key: str, value: Any) -> None:
    if key.startswith("gpu.batch_size."):
        session.set_batch_size(key.removeprefix("gpu.batch_size."), value)
    elif key.startswith("dataset.images:"):
        session.update_image(key.removeprefix("dataset.images:"), **value)
    else:
        session.set(key, value)
