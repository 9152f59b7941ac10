"""Runs a core step in a thread worker and shows its progress, log lines and result.

Core code reports through callbacks; this widget turns them into coalescing messages (one per task at
a time), so a step that reports thousands of times a second never floods the UI.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Log, ProgressBar
from textual.worker import get_current_worker

from lorawizard.core.common.fsutil import tilde_paths
from lorawizard.core.common.progress import Progress, format_progress
from lorawizard.core.contract import Cancelled, StepContext, StepFailed
from lorawizard.core.registry import load_step, options_for
from lorawizard.core.session.store import SessionStore
from lorawizard.tui.messages import SessionSaveFailed, StepFinished, StepLog, StepProgress
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.wrap_log import WrapLog

if TYPE_CHECKING:
    from lorawizard.core.registry import StepOptions


class StepRunner(Vertical):
    DEFAULT_CSS = """
    StepRunner { height: auto; max-height: 12; }
    StepRunner ProgressBar { width: 1fr; }
    StepRunner Label.runner-status { height: auto; max-width: 100%; }
    StepRunner Log { height: auto; max-height: 8; }  /* long lines wrap (WrapLog): no horizontal bar */
    """

    def __init__(self, step: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.step = step
        self.cancel_event: threading.Event | None = None

    def compose(self) -> ComposeResult:
        yield Label("", classes="runner-status")
        # hidden until a run: set before mounting, so the first frame styles them once (not again on mount)
        bar = ProgressBar(total=None, show_eta=False, id="runner-bar")
        log = WrapLog(max_lines=500, auto_scroll=True)
        bar.display = log.display = False
        yield bar
        yield log

    @property
    def running(self) -> bool:
        return self.cancel_event is not None

    def start(self, options: StepOptions | None = None) -> None:
        """Run the step in a worker with `options`: the step's own TypedDict (e.g. `ProbeOptions`), checked by mypy;
        None: the App's `step_options` for this step (tests pass doubles there), else none."""
        if self.running:
            return
        self.cancel_event = threading.Event()
        self.query_one(Log).clear()
        self.query_one(Log).display = True
        self.query_one(ProgressBar).display = True
        self.query_one(".runner-status", Label).update(f"{self.step}: starting…")
        if options is None:
            options = options_for(wizard_app(self).step_options, self.step)
        self._run(self.cancel_event, options)

    def cancel(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()
            self.query_one(".runner-status", Label).update(f"{self.step}: cancelling…")

    @work(thread=True, exclusive=True, exit_on_error=False, group="step")
    def _run(self, cancel: threading.Event, options: StepOptions) -> None:
        worker = get_current_worker()
        store = wizard_app(self).store
        refused = store.sync()  # session.toml as it is on disk now: a hand edit made meanwhile counts
        if refused is not None:
            self.post_message(StepFinished(self.step, None, error=f"not started: {refused}"))
            return
        ctx = StepContext(
            session=store.session,
            store=store,
            progress=lambda event: self.post_message(StepProgress(self.step, event)),
            log=lambda line: self.post_message(StepLog(self.step, [line])),
            cancel=cancel,
            options=options,
        )
        error: str | None = None
        result = None
        try:
            result = load_step(self.step)(ctx)
        except Cancelled:
            pass
        except StepFailed as exc:
            error = str(exc)
        except Exception as exc:  # a bug: say it in one line, keep the traceback in Textual's log
            self._save_recorded(store)
            self.post_message(StepFinished(self.step, None, error=f"unexpected error: {exc!r}"))
            raise
        self._save_recorded(store)
        if error is not None:
            self.post_message(StepFinished(self.step, None, error=error))
        elif not worker.is_cancelled:
            self.post_message(StepFinished(self.step, result))

    def _save_recorded(self, store: SessionStore) -> None:
        """What the step recorded is on disk when it ends: one write, not one per decision."""
        problem = store.flush()
        if problem is not None:
            self.post_message(SessionSaveFailed(problem))

    @on(StepProgress)
    def _progress(self, message: StepProgress) -> None:
        event: Progress = message.progress
        bar = self.query_one(ProgressBar)
        bar.update(total=event.total, progress=event.done)
        self.query_one(".runner-status", Label).update(format_progress(event))

    @on(StepLog)
    def _log(self, message: StepLog) -> None:
        self.query_one(Log).write_lines([tilde_paths(line) for line in message.lines])  # ~/… as everywhere shown

    @on(StepFinished)
    def _finished(self, message: StepFinished) -> None:
        self.cancel_event = None
        self.query_one(ProgressBar).display = False
        status = self.query_one(".runner-status", Label)
        log = self.query_one(Log)
        if message.error:
            status.update(f"✗ {tilde_paths(message.error)}")
        elif message.result is None:
            status.update("cancelled — see the lines above for what was kept")
        else:
            mark = "✓" if message.result.ok else "✗"
            status.update(f"{mark} {tilde_paths(message.result.summary)}")
            log.write_lines([tilde_paths(line) for line in message.result.details])
        # not stopped: it bubbles on to the screen (its follow-up) and the App (the step bar's state)
