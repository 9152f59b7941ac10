"""What every step screen shares: the step bar, a body, the runner for the step's primary action, a footer."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from lorawizard.core.session import Session
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.step_bar import StepBar
from lorawizard.tui.widgets.step_runner import StepRunner


class StepScreen(Screen):
    STEP = ""
    PRIMARY = "run this step"  # what Enter does, shown in the footer
    INTRO = ""

    BINDINGS = [
        Binding("enter", "primary", "Run", show=False),
        Binding("ctrl+g", "primary", "Go (run)", show=True, priority=True),
        Binding("escape", "cancel", "Cancel", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP, wizard_app(self).project_label)
        with VerticalScroll(classes="step-body"):
            if self.INTRO:
                yield Static(self.INTRO, classes="intro")
            yield from self.compose_body()
            yield StepRunner(self.STEP)
        yield Footer()

    def compose_body(self) -> ComposeResult:
        return iter(())

    @property
    def session(self) -> Session:
        return wizard_app(self).session

    @property
    def runner(self) -> StepRunner:
        return self.query_one(StepRunner)

    def action_primary(self) -> None:
        self.runner.start()

    def action_cancel(self) -> None:
        self.runner.cancel()

    def on_screen_resume(self) -> None:
        self._fit_footer()

    def on_resize(self) -> None:
        self._fit_footer()

    def _fit_footer(self) -> None:
        """Below 100 columns the palette hint would cover the screen's last keys (ctrl+p still works)."""
        for footer in self.query(Footer):
            footer.show_command_palette = self.app.size.width >= 100

    def refresh_step_bar(self) -> None:
        self.query_one(StepBar).refresh()
