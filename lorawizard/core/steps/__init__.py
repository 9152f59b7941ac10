"""The six steps, their order, and the contract every step function follows.

A step is `run_step(ctx: StepContext) -> StepResult` in its own core module. The TUI's workers and the
headless runner call the very same functions; a step never prints and never touches the UI.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

from lorawizard.core.progress import LogCallback, ProgressCallback, ignore_progress
from lorawizard.core.session import Session
from lorawizard.core.session_store import SessionStore

if TYPE_CHECKING:  # the step modules are imported lazily at run time (load_step); mypy sees their options here
    from typing import TypeAlias

    from lorawizard.core.steps.captions import CaptionsOptions
    from lorawizard.core.steps.dataset import DatasetOptions
    from lorawizard.core.steps.environment import EnvOptions
    from lorawizard.core.steps.models import ModelsOptions
    from lorawizard.core.steps.probe import ProbeOptions
    from lorawizard.core.steps.training import TrainOptions

    # What `StepContext.options` holds: the running step's own TypedDict (publish reads none). Whoever builds options
    # builds one of these, so a misspelt key or a wrong value type is a mypy error, not a silently ignored option.
    StepOptions: TypeAlias = (
        EnvOptions | ModelsOptions | DatasetOptions | CaptionsOptions | ProbeOptions | TrainOptions
    )

StepState = Literal["todo", "done", "attention"]  # what the step bar shows for a step (besides "current")
STEP_ORDER: tuple[str, ...] = ("env", "models", "dataset", "captions", "probe", "train")
# Steps after the six that only run when asked (`--steps publish`, or a full replay with `[publish] repo` set);
# they have no screen of their own (publish is key p on the Train screen).
EXTRA_STEPS: tuple[str, ...] = ("publish",)
REPLAY_STEPS: tuple[str, ...] = STEP_ORDER + EXTRA_STEPS
STEP_TITLES: dict[str, str] = {
    "env": "Environment",
    "models": "Models",
    "dataset": "Dataset",
    "captions": "Captions",
    "probe": "GPU & batch size",
    "train": "Train",
    "publish": "Publish",
}
# Imported lazily so `--replay --steps dataset` never pays for the other steps' imports.
STEP_FUNCTIONS: dict[str, str] = {
    "env": "lorawizard.core.steps.environment:run_step",
    "models": "lorawizard.core.steps.models:run_step",
    "dataset": "lorawizard.core.steps.dataset:run_step",
    "captions": "lorawizard.core.steps.captions:run_step",
    "probe": "lorawizard.core.steps.probe:run_step",
    "train": "lorawizard.core.steps.training:run_step",
    "publish": "lorawizard.core.steps.publish:run_step",
}


class OptionsByStep(TypedDict, total=False):
    """Options for several steps at once, each under its step's name (replay's flags, the wizard's test doubles)."""

    env: EnvOptions
    models: ModelsOptions
    dataset: DatasetOptions
    captions: CaptionsOptions
    probe: ProbeOptions
    train: TrainOptions


def options_for(by_step: OptionsByStep, name: str) -> StepOptions:
    """The options `by_step` holds for step `name` (a fresh dict, empty when none)."""
    options = by_step.get(name)
    return cast("StepOptions", dict(options) if isinstance(options, dict) else {})


def _no_options() -> StepOptions:
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
    options: StepOptions = field(default_factory=_no_options)  # the step's own TypedDict: reprobe, detach, doubles, ...
    decisions: dict[str, Any] = field(default_factory=dict)  # what replay decided where the session was silent
    store: SessionStore | None = None  # the wizard's one writer of session.toml (None: record saves at once)

    def may_write(self, path: Path) -> bool:
        """Whether this run may change `path`: always, except that a dry run changes nothing outside the project."""
        if not self.dry_run:
            return True
        return Path(path).resolve().is_relative_to(self.session.project_dir)

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def record(self, key: str, value: Any) -> None:
        """Store a decision: saved to session.toml in the wizard, kept beside the outputs in replay."""
        if self.session.read_only:
            self.decisions[key] = value
            _apply(self.session, key, value)  # later steps of this replay still see it
        elif self.store is not None:
            self.store.apply(lambda session: _apply(session, key, value))
        else:
            _apply(self.session, key, value)
            self.session.save()


def _apply(session: Session, key: str, value: Any) -> None:
    if key.startswith("gpu.batch_size."):
        session.set_batch_size(key.removeprefix("gpu.batch_size."), value)
    elif key.startswith("dataset.images:"):
        session.update_image(key.removeprefix("dataset.images:"), **value)
    else:
        session.set(key, value)


def load_step(name: str) -> Callable[[StepContext], StepResult]:
    module_name, _, function = STEP_FUNCTIONS[name].partition(":")
    step: Callable[[StepContext], StepResult] = getattr(importlib.import_module(module_name), function)
    return step


def parse_steps(text: str | None) -> list[str]:
    """`"dataset,captions"` → ["dataset", "captions"] in the canonical order; ValueError names a bad one.

    None (no `--steps`) means the six wizard steps; replay adds publish itself when `[publish] repo` is set.
    """
    if text is None:
        return list(STEP_ORDER)
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    if not wanted:  # `--steps ""` must not mean "all six, training included"
        raise ValueError(f"no step named (steps: {', '.join(REPLAY_STEPS)})")
    unknown = [part for part in wanted if part not in REPLAY_STEPS]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r} (steps: {', '.join(REPLAY_STEPS)})")
    return [step for step in REPLAY_STEPS if step in wanted]
