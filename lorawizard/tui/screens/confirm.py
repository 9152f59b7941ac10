"""A yes/no question before anything that installs, clones, downloads or deletes: a single letter never does it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmScreen(ModalScreen[bool]):
    CSS_PATH = "confirm.tcss"
    BINDINGS = [
        Binding("enter,y", "answer(True)", "Yes", priority=True),
        Binding("escape,n", "answer(False)", "No", priority=True),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question, self.detail = question, detail

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, classes="confirm-question")
            if self.detail:
                yield Static(self.detail, classes="confirm-detail")
            yield Static("Enter / y: yes    Esc / n: no", classes="confirm-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
