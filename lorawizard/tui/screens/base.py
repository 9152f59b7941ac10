"""What every step screen shares: the step bar, a body, the runner for the step's primary action, a footer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input, Static

from lorawizard.core.session.document import Session
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.fit_footer import FitFooter
from lorawizard.tui.widgets.step_bar import StepBar
from lorawizard.tui.widgets.step_runner import StepRunner


class StepScreen(Screen):
    """A step's screen: compose_body() is the screen's own part; the options below choose the frame around it."""

    STEP = ""
    INTRO = ""  # a line above the body (a scrolling body only)
    # True: the body fills the width and height between the step bar and the runner, and lays itself out (its
    # own scrolling lists: Dataset, Captions); False: the body scrolls as one column, the runner at its end.
    FULL_BODY: ClassVar[bool] = False
    # False: no StepRunner (the screen runs no core step through one: Train launches a detached run itself).
    RUNNER: ClassVar[bool] = True
    # The screen's main list/table: focused when the screen opens and again after every action, so single-letter
    # keys and 1–6 act on the screen, never type into a field. None: nothing focused (keys act on the screen).
    MAIN: ClassVar[str | None] = None
    AUTO_FOCUS: ClassVar[str | None] = None  # subclasses: = MAIN (Textual focuses it when the screen opens)
    # Actions whose keys leave the footer first when it is too narrow (then from its end); ? Help and q Quit stay.
    FOOTER_DROP_FIRST: ClassVar[tuple[str, ...]] = ()

    BINDINGS = [
        Binding("enter", "primary", "Run", show=False),
        Binding("ctrl+g", "primary", "Go (run)", show=True, priority=True),
        Binding("escape", "cancel", "Cancel", show=False),
        Binding("pageup", "scroll_body(-1)", "Page up", show=False),
        Binding("pagedown", "scroll_body(1)", "Page down", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP, wizard_app(self).project_label)
        if self.FULL_BODY:
            yield from self.compose_body()
            if self.RUNNER:
                yield StepRunner(self.STEP)
        else:
            with VerticalScroll(classes="step-body"):
                if self.INTRO:
                    yield Static(self.INTRO, classes="intro")
                yield from self.compose_body()
                if self.RUNNER:
                    yield StepRunner(self.STEP)
        # the palette hint decided now, not on resume: each change recomposes the footer (one whole restyle)
        yield FitFooter(show_command_palette=self._palette_hint_fits())

    def compose_body(self) -> ComposeResult:
        return iter(())

    def when_mounted(self, callback: Callable[[], None], *ids: str, tries: int = 100) -> None:
        """`callback()` now if every `#id` is mounted, else once they are (a look every 50 ms, 5 s at most). A form's
        fields are its own children, mounted by it: on a loaded machine they can still be missing when the screen
        mounts (a screen's on_mount that queried one crashed the app)."""
        if all(self.query(f"#{widget_id}") for widget_id in ids):
            callback()
        elif tries:
            self.set_timer(0.05, lambda: self.when_mounted(callback, *ids, tries=tries - 1))

    @property
    def session(self) -> Session:
        return wizard_app(self).session

    @property
    def runner(self) -> StepRunner:
        """The step's runner (a screen with RUNNER = False has none: NoMatches)."""
        return self.query_one(StepRunner)

    def action_primary(self) -> None:
        self.runner.start()
        self.focus_main()

    def action_cancel(self) -> None:
        """Esc: leave the text field first; outside fields, cancel what runs."""
        if self.in_text_field():
            self.focus_main()
            return
        self.runner.cancel()

    def in_text_field(self) -> bool:
        # TextArea costs ~17 ms to import and only the Captions screen has one: until some screen imported it,
        # nothing focused can be one (importing it here would put it on every start's first-frame path)
        text_area = sys.modules.get("textual.widgets._text_area")
        fields = (Input,) if text_area is None else (Input, text_area.TextArea)
        return isinstance(self.focused, fields)

    def action_scroll_body(self, pages: int) -> None:
        """PageUp/PageDown scroll the body from anywhere on the screen (Tab no longer stops on the body itself)."""
        body = next(iter(self.query(".step-body")), None)
        if body is not None and pages < 0:
            body.scroll_page_up()
        elif body is not None:
            body.scroll_page_down()

    # The field Enter just left (focus went back to the main list): Tab goes on from it, not from the top (issue 24:
    # Tab, path, Enter, Tab went back to the first field, text selected, and the second path replaced the first).
    _left_field: Widget | None = None

    def focus_next(self, selector: str | type[Widget] = "*") -> Widget | None:
        """Tab skips the scrolling body (it only scrolls: a person pressing Tab to reach a field landed there, out of
        sight, and the path typed next ran the screen's letter keys; a q in it quit the wizard)."""
        focused = self._beside_left_field(+1) or super().focus_next(selector)
        if focused is not None and focused.has_class("step-body"):
            focused = super().focus_next(selector)
        return focused

    def focus_previous(self, selector: str | type[Widget] = "*") -> Widget | None:
        focused = self._beside_left_field(-1) or super().focus_previous(selector)
        if focused is not None and focused.has_class("step-body"):
            focused = super().focus_previous(selector)
        return focused

    def _beside_left_field(self, step: int) -> Widget | None:
        """The widget after (or before) the field Enter left, focused; None when no field was left that way."""
        field, self._left_field = self._left_field, None
        if field is None or self.focused is field or self.in_text_field():
            return None
        chain = self.focus_chain
        if field not in chain:
            return None
        target = chain[(chain.index(field) + step) % len(chain)]
        target.focus()
        return target

    def focus_main(self) -> None:
        main = next(iter(self.query(self.MAIN)), None) if self.MAIN else None
        if main is not None and main.focusable:
            main.focus()
        else:
            self.set_focus(None)

    @on(DataTable.RowSelected)
    def _enter_on_main(self, event: DataTable.RowSelected) -> None:
        """Enter on the screen's main table runs the primary action, as everywhere (a DataTable takes Enter for
        itself: before this, Enter on the Models and GPU screens did nothing)."""
        if self.MAIN and event.data_table.id == self.MAIN.removeprefix("#"):
            event.stop()
            self.action_primary()

    @on(Input.Submitted)
    def _back_to_main(self, event: Input.Submitted) -> None:
        """After Enter in a field, focus returns to the main list (a step key must not type into the field); Tab then
        goes on to the next field."""
        self._left_field = event.input
        self.call_after_refresh(self.focus_main)

    # When the screen was last drawn on being shown (Textual's event clock); None until then. A key typed before
    # (settings_form's TYPED_AHEAD_S) never lands in a field the screen focused by itself.
    shown_at: float | None = None

    def on_screen_resume(self) -> None:
        self.shown_at = None
        self.call_after_refresh(self._drawn)
        self._fit_footer()

    def _drawn(self) -> None:
        from textual._time import get_time

        self.shown_at = get_time()

    def on_resize(self) -> None:
        self._fit_footer()
        # Outside a field, a new size shows the body from its top: scrolled to reach a field in a tiny terminal, it
        # stayed scrolled back at full size with the dashboard's top cut off (issue 23)
        body = next(iter(self.query(".step-body")), None)
        if body is not None and not self.in_text_field():
            self.call_after_refresh(body.scroll_home, animate=False)

    def _fit_footer(self) -> None:
        """Below 100 columns the palette hint would cover the screen's last keys (ctrl+p still works)."""
        for footer in self.query(Footer):
            footer.show_command_palette = self._palette_hint_fits()

    def _palette_hint_fits(self) -> bool:
        return self.app.size.width >= 100
