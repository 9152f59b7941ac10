"""App-wide messages. High-frequency ones collapse in the queue (`can_replace`).

Workers (thread workers, the session store's timer) only post these or a screen's own typed messages; the
handlers, on the UI thread, change widgets. Screen-specific messages live beside their screen.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from textual.notifications import SeverityLevel

from lorawizard.core.common.progress import Progress
from lorawizard.core.contract import StepResult
from lorawizard.tui.terminal import ProbeResult


@dataclass(eq=False)  # a message is an event, never compared: one generated method less at start-up
class StepProgress(Message):
    """A core step run by a StepRunner reports progress (one waiting per step and task: newer replaces older)."""

    step: str
    progress: Progress

    def can_replace(self, message: Message) -> bool:
        return (
            isinstance(message, StepProgress)
            and message.step == self.step
            and message.progress.task == self.progress.task
            and not message.progress.finished
        )


@dataclass(eq=False)
class ScanProgress(Message):
    """A screen's own background scan (not a step run: the Dataset screen's photo scan) reports progress."""

    progress: Progress

    def can_replace(self, message: Message) -> bool:
        return (
            isinstance(message, ScanProgress)
            and message.progress.task == self.progress.task
            and not message.progress.finished
        )


@dataclass(eq=False)
class StepLog(Message):
    step: str
    lines: list[str]


@dataclass(eq=False)
class SessionSaveFailed(Message):
    """The session store's debounced write failed (posted from its timer thread)."""

    problem: str


@dataclass(eq=False)
class StepFinished(Message):
    """A StepRunner's step ended; bubbles to the screen (its own follow-up) and the App (the step bar's state)."""

    step: str
    result: StepResult | None  # None: cancelled
    error: str | None = None


@dataclass(eq=False)
class TerminalAnswered(Message):
    """The terminal answered the image question (terminal.ReplyCollector, from the input thread), or gave no DA1 in
    time."""

    result: ProbeResult


@dataclass(eq=False)
class Notice(Message):
    """A worker has something to say: the handler shows it as a notification."""

    text: str
    severity: SeverityLevel = "information"
