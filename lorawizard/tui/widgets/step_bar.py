"""The bar on top of every screen: where am I, what is done (✓ done · ● current · ○ to do · ✗ attention)."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.events import Click
from textual.reactive import reactive
from textual.widget import Widget

from lorawizard.core.contract import StepState
from lorawizard.core.registry import SHORT_TITLES, STEP_ORDER, STEP_TITLES
from lorawizard.tui.text_fit import MIN_PATH, cut_middle
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app

MARKS = {"done": "✓", "current": "●", "todo": "○", "attention": "✗"}


class StepBar(Widget):
    DEFAULT_CSS = """
    StepBar { height: 1; background: $panel; color: $text; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    states: reactive[dict[str, StepState]] = reactive(dict)  # the App's step_states, followed (repaints)

    def __init__(self, step: str, project_label: str) -> None:
        super().__init__()
        self.step = step
        self.project_label = project_label
        self._spans: list[tuple[int, int, str]] = []

    def on_mount(self) -> None:
        self.watch(self.app, "step_states", self._follow)  # now, and whenever the App replaces them

    def _follow(self, states: dict[str, StepState]) -> None:
        self.states = states

    def render(self) -> Text:
        states = self.states
        text = Text(no_wrap=True, overflow="ellipsis")
        compact = self.size.width < 100
        steps = []
        for number, name in enumerate(STEP_ORDER, start=1):
            state = "current" if name == self.step else states.get(name, "todo")
            title = SHORT_TITLES[name] if compact else STEP_TITLES[name]
            style = {"current": "bold reverse", "done": tone("success"), "attention": tone("error", bold=True), "todo": "dim"}[state]
            steps.append((f"{number}{MARKS[state]} {title}", style, name, state == "current"))
        # each label takes a blank either side; the current one's are inside its highlight, with one more blank of the
        # bar's either side, which keeps the highlight off its neighbours
        widths = [cell_len(label) + (4 if current else 2) for label, _, _, current in steps]
        text.append(" lorawizard", style="bold")
        # the project's folder in what the steps leave, cut in the middle (a long one pushed "6 Train" off the bar)
        room = (self.size.width or 120) - cell_len(" lorawizard ·   ") - sum(widths)
        if not compact and room >= MIN_PATH:
            text.append(" ")
            text.append(f"· {cut_middle(self.project_label, room)}", style="dim")
        text.append("  ")
        self._spans = []
        for label, style, name, current in steps:
            start = len(text.plain)
            # the blanks around a label are the bar's, not the label's colour, so that each coloured run starts at its
            # glyph: an SVG screenshot drops a run's leading blanks ("3● Dataset 4○" ran together there); the
            # highlight's own blanks are reversed but not bold, a run of their own
            if current:
                text.append(" ").append(" ", style="reverse").append(label, style=style)
                text.append(" ", style="reverse").append(" ")
            else:
                text.append(" ").append(label, style=style).append(" ")
            self._spans.append((start, len(text.plain), name))
        return text

    def on_click(self, event: Click) -> None:
        for start, end, name in self._spans:
            if start <= event.x < end:
                wizard_app(self).action_goto(name)
