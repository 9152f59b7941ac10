"""A yes/no question before anything that installs, clones, downloads or deletes: a single letter never does it;
and one short typed answer (AskScreen)."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


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


class AskScreen(ModalScreen[str | None]):
    """One short answer typed in a field (Enter: the text; Esc: None). `check` turns the text into a one-line
    problem, shown under the field while it is wrong; Enter is refused until it reads."""

    CSS_PATH = "confirm.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel", priority=True)]

    def __init__(self, question: str, value: str = "", *, placeholder: str = "",
                 check: Callable[[str], str | None] = lambda text: None) -> None:
        super().__init__()
        self.question, self.value, self.placeholder, self.check = question, value, placeholder, check

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, classes="confirm-question")
            yield Input(self.value, placeholder=self.placeholder, id="ask-answer")
            yield Static("", classes="confirm-detail", id="ask-problem")
            yield Static("Enter: keep    Esc: cancel", classes="confirm-keys")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        problem = self.check(event.value)
        self.query_one("#ask-problem", Static).update(problem or "")
        if problem is None:
            self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
