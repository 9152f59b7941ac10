"""App-wide messages. High-frequency ones collapse in the queue (`can_replace`)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from lorawizard.core.progress import Progress
from lorawizard.core.steps import StepResult
from lorawizard.tui.terminal import ProbeResult


@dataclass
class StepProgress(Message):
    step: str
    progress: Progress

    def can_replace(self, message: Message) -> bool:
        return (
            isinstance(message, StepProgress)
            and message.step == self.step
            and message.progress.task == self.progress.task
            and not message.progress.finished
        )


@dataclass
class StepLog(Message):
    step: str
    lines: list[str]


@dataclass
class SessionSaveFailed(Message):
    """The session store's debounced write failed (posted from its timer thread)."""

    problem: str


@dataclass
class StepFinished(Message):
    step: str
    result: StepResult | None  # None: cancelled
    error: str | None = None


@dataclass
class TerminalAnswered(Message):
    """The terminal answered the image question (terminal.ReplyCollector, from the input thread), or gave no DA1 in
    time."""

    result: ProbeResult
