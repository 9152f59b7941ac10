"""The bar on top of every screen: where am I, what is done (✓ done · ● current · ○ to do · ✗ attention)."""

from __future__ import annotations

from rich.text import Text
from textual.events import Click
from textual.reactive import reactive
from textual.widget import Widget

from lorawizard.core.steps import STEP_ORDER, STEP_TITLES, StepState
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app

SHORT_TITLES = {"env": "Env", "models": "Models", "dataset": "Dataset", "captions": "Captions", "probe": "GPU", "train": "Train"}
MARKS = {"done": "✓", "current": "●", "todo": "○", "attention": "✗"}


class StepBar(Widget):
    DEFAULT_CSS = """
    StepBar { height: 1; background: $panel; color: $text; }
    """

    states: reactive[dict[str, StepState]] = reactive(dict)  # the App's step_states, followed (repaints)

    def __init__(self, step: str, project_label: str) -> None:
        super().__init__()
        self.step = step
        self.project_label = project_label
        self._spans: list[tuple[int, int, str]] = []

    def on_mount(self) -> None:
        self.watch(wizard_app(self), "step_states", self._follow)  # now, and whenever the App replaces them

    def _follow(self, states: dict[str, StepState]) -> None:
        self.states = states

    def render(self) -> Text:
        states = self.states
        text = Text(no_wrap=True, overflow="ellipsis")
        compact = self.size.width < 100
        text.append(" lorawizard", style="bold")
        if not compact:
            text.append(f" · {self.project_label}", style="dim")
        text.append("  ")
        self._spans = []
        for number, name in enumerate(STEP_ORDER, start=1):
            state = "current" if name == self.step else states.get(name, "todo")
            title = SHORT_TITLES[name] if compact else STEP_TITLES[name]
            style = {"current": "bold reverse", "done": tone("success"), "attention": tone("error", bold=True), "todo": "dim"}[state]
            start = len(text.plain)
            text.append(f" {number}{MARKS[state]} {title} ", style=style)
            self._spans.append((start, len(text.plain), name))
        return text

    def on_click(self, event: Click) -> None:
        for start, end, name in self._spans:
            if start <= event.x < end:
                wizard_app(self).action_goto(name)
