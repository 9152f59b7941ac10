"""LoraWizardApp: the shell around the six step screens (one Textual mode per step)."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.reactive import reactive
from textual.screen import Screen

from lorawizard.core.common.fsutil import display_path, tilde_paths
from lorawizard.core.contract import StepState
from lorawizard.core.registry import SCREENS, STEP_ORDER, STEP_TITLES, OptionsByStep, resolve, session_step_states
from lorawizard.core.session.document import Session, SessionError
from lorawizard.core.session.store import SessionStore
from lorawizard.core.step_states import training_is_live
from lorawizard.tui._textual_hacks import binding_chain
from lorawizard.tui.messages import Notice, SessionSaveFailed, StepFinished, TerminalAnswered


def _screen_factory(step: str):  # noqa: ANN202 - Textual accepts a callable returning a Screen
    def make() -> Screen:
        screen_class = resolve(SCREENS[step])
        assert isinstance(screen_class, type) and issubclass(screen_class, Screen)
        return screen_class()

    return make


class LoraWizardApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "lorawizard"
    MODES = {step: _screen_factory(step) for step in STEP_ORDER}
    BINDINGS = [
        *(Binding(str(n), f"goto('{step}')", STEP_TITLES[step], show=False) for n, step in enumerate(STEP_ORDER, 1)),
        # F1–F6 work from inside a text field too (a key that can't be typed); 1–6 only outside fields
        *(Binding(f"f{n}", f"jump('{step}')", STEP_TITLES[step], show=False,
                  priority=True) for n, step in enumerate(STEP_ORDER, 1)),
        Binding("question_mark", "help", "Help", show=True),
        Binding("q", "quit", "Quit", show=True),
        Binding("f8", "save_screenshot", "Screenshot", show=False),
    ]

    # What the step bar shows per step. Replaced, never changed in place (set_step_state): every StepBar watches it.
    step_states: reactive[dict[str, StepState]] = reactive(dict, init=False)

    def __init__(self, session: Session, *, start_step: str | None = None,
                 step_options: OptionsByStep | None = None, skeleton_first: bool = False) -> None:
        super().__init__()
        self.session = session
        self.start_step = start_step
        # extra options per step for its runs (tests pass their doubles here: a trial runner, a fake NVML, a clone URL)
        self.step_options: OptionsByStep = step_options.copy() if step_options else {}
        self.store = SessionStore(session, on_error=lambda problem: self.post_message(SessionSaveFailed(problem)),
                                  on_notice=lambda line: self.post_message(Notice(line)))
        states: dict[str, StepState] = {step: "todo" for step in STEP_ORDER}
        self.set_reactive(LoraWizardApp.step_states, {**states, **session_step_states(session)})
        # In a terminal the wizard draws the step bar first and the opening step's screen right after it: composing
        # and styling a step screen (~250 ms) is the biggest part of start-up, and a first frame at ~0.3 s says the
        # app is there. It costs the full screen ~30–80 ms (a second screen; bench/bench_cli_startup.py prints both).
        self.skeleton_first = skeleton_first
        self.opening_step = start_step or self._first_open_step()

    def compose(self) -> ComposeResult:
        """The default screen: with skeleton_first, the step bar alone until the opening step's screen replaces it
        (a footer too measured slower: its keys' styles are computed twice)."""
        if self.skeleton_first:
            from lorawizard.tui.widgets.step_bar import StepBar

            yield StepBar(self.opening_step, self.project_label)

    @property
    def project_label(self) -> str:
        return display_path(self.session.project_dir)

    def get_driver_class(self):  # noqa: ANN201 - Textual's own signature
        from lorawizard.tui.terminal import install_reply_filter

        install_reply_filter()  # a terminal's late reply is never typed into a field
        return super().get_driver_class()

    def on_mount(self) -> None:
        warnings = self.session.warnings
        for warning in warnings[:5]:  # toasts pile up: a handful, then a count
            self.notify(warning, severity="warning", timeout=8)
        if len(warnings) > 5:
            self.notify(f"... and {len(warnings) - 5:,} more warnings about {self.session.path.name}", severity="warning", timeout=8)
        if self.skeleton_first:
            self.call_after_refresh(self._open_first_step)
        else:
            self._open_first_step()

    def _open_first_step(self) -> None:
        if self.current_mode == self.DEFAULT_MODE:  # a step key pressed on the skeleton already chose a screen
            self.switch_mode(self.opening_step)
        self.call_after_refresh(self._ask_terminal)

    def _ask_terminal(self) -> None:
        """After the first frame (`--images auto` on a terminal): ask which images the terminal shows, in one round
        trip. The answer comes back through the input thread's reply filter as a TerminalAnswered message."""
        from lorawizard.tui import images, terminal

        if not images.awaiting_terminal() or self._driver is None:
            return
        cell = terminal.cell_size_from_ioctl()
        collector = terminal.ReplyCollector(lambda result: self.post_message(TerminalAnswered(result)), cell)
        terminal.listen(collector)
        self._driver.write(terminal.queries(cell_known=cell is not None))
        self._driver.flush()
        self.set_timer(terminal.TIMEOUT_S, collector.give_up)

    def on_terminal_answered(self, message: TerminalAnswered) -> None:
        from lorawizard.tui import images, terminal

        terminal.listen(None)
        if not images.answer(message.result.renderer, message.result.cell_size):
            return
        # screens drawn before the answer hold a halfcell image widget: they swap it (Textual keeps one screen
        # stack per mode; `_screen_stacks` is private, textual==8.2.8 pinned)
        for stack in self._screen_stacks.values():
            for screen in stack:
                swap = getattr(screen, "renderer_changed", None)
                if swap is not None and screen.is_mounted:
                    swap()

    def _first_open_step(self) -> str:
        if training_is_live(self.session):
            return "train"  # a detached run is going: open its dashboard (it reattaches)
        # every step done (a run finished): its results (samples, keep an epoch, publish), not Environment
        return next((s for s in STEP_ORDER if self.step_states.get(s) != "done"), STEP_ORDER[-1])

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Every toast writes paths under the home folder `~/…`, as the screens do (fsutil.tilde_paths)."""
        super().notify(tilde_paths(message), title=title, severity=severity, timeout=timeout, markup=markup)

    # -- decisions

    def decide(self, key: str, value: object) -> str | None:
        """Validate and store one decision (written within SAVE_DELAY, off this thread). A one-line error, or None."""
        try:
            self.store.decide(key, value)
        except SessionError as exc:
            return str(exc)
        return None

    def on_unmount(self) -> None:
        """However the app ends (quit, ctrl+c, a test leaving run_test): waiting decisions reach the file."""
        problem = self.store.flush()
        if problem is not None:
            self.log.error(problem)

    def on_session_save_failed(self, message: SessionSaveFailed) -> None:
        self.notify(message.problem, severity="error")

    def on_notice(self, message: Notice) -> None:
        """A worker's line (posted to its screen, bubbled up here): a notification."""
        self.notify(message.text, severity=message.severity, timeout=8, markup=False)  # plain text ("[publish] repo")

    def on_step_finished(self, message: StepFinished) -> None:
        """A StepRunner's step ended (the message bubbles up from the runner, through its screen)."""
        ok = message.result is not None and message.result.ok
        self.set_step_state(message.step, "done" if ok else "attention")
        if message.step == "dataset" and ok and self.step_states.get("probe") == "done":
            from lorawizard.core.step_states import probe_covers

            if not probe_covers(self.session):  # other buckets now: their batch sizes are not measured
                self.set_step_state("probe", "todo")

    def set_step_state(self, step: str, state: StepState) -> None:
        self.step_states = {**self.step_states, step: state}  # a new dict: the reactive compares, bars repaint

    def flush_decisions(self) -> None:
        """Write session.toml now (waits for a write in flight): on quit."""
        problem = self.store.flush()
        if problem is not None:
            self.notify(problem, severity="error")

    # -- actions

    async def action_quit(self) -> None:
        self.flush_decisions()
        self.exit()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "help" and self.current_mode == self.DEFAULT_MODE:
            return False  # on the skeleton: the help would stay behind the step screen that replaces it
        if action in ("goto", "jump") and parameters and parameters[0] == self.current_mode:
            return False  # already there: the screen's own use of the key (Captions F4: undo bulk) gets it
        if action == "jump" and parameters and parameters[0] in STEP_ORDER:
            key = f"f{STEP_ORDER.index(str(parameters[0])) + 1}"
            if any(key in bindings.key_to_bindings for node, bindings in binding_chain(self.screen) if node is not self):
                return False  # the screen uses this F-key itself (Captions: F5 auto-caption)
        return True

    def action_jump(self, step: str) -> None:
        self.action_goto(step)

    def action_goto(self, step: str) -> None:
        if step in STEP_ORDER and self.current_mode != step:
            self.switch_mode(step)

    def action_help(self) -> None:
        from lorawizard.tui.screens.help import HelpScreen

        title = getattr(self.screen, "HELP_TITLE", "") or STEP_TITLES.get(self.current_mode, "")  # Samples over Train
        self.push_screen(HelpScreen(self.screen_keys(), title))

    def screen_keys(self) -> list[tuple[str, str]]:
        """The current screen's own keys (not the app's), as the footer knows them, for the help screen."""
        from lorawizard.tui.screens.help import GLOBAL_ACTIONS

        own: dict[str, list[str]] = {}
        for active in self.active_bindings.values():
            binding = active.binding
            if active.node is not self.screen or not binding.description or binding.action in GLOBAL_ACTIONS:
                continue
            own.setdefault(binding.description, []).append(self.get_key_display(binding))
        rows = [(" / ".join(dict.fromkeys(keys)), does) for does, keys in own.items()]
        # keys the footer cannot list from here (a text field's own, one shown only at times): the screen's HELP_KEYS
        return rows + [row for row in getattr(self.screen, "HELP_KEYS", ()) if row[1] not in own]

    def action_save_screenshot(self) -> None:
        path = self.save_screenshot(path=str(self.session.project_dir))
        self.notify(f"screenshot saved: {path}")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for number, step in enumerate(STEP_ORDER, start=1):
            yield SystemCommand(
                f"Go to step {number}: {STEP_TITLES[step]}",
                f"Switch to the {STEP_TITLES[step]} screen",
                lambda step=step: self.action_goto(step),
            )
        yield SystemCommand("Help: keys", "Show every key", self.action_help)
