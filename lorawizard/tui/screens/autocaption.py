"""Auto-captions on the Captions screen: draft with a local vision-language model, then review.

F5 opens the dialog (instruction, model, device; draft the missing captions, overwrite all, accept all drafts),
F6 redrafts the current image (a caption of the person's only when F6 is pressed twice), F7 accepts the current
draft. Drafting runs `core.autocaption.draft` in a worker; each draft arrives on the UI thread and goes into the
caption set and session.toml like an edit, marked auto. Esc cancels; the drafts so far are kept.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Static

from lorawizard.core.captions import autocaption as ac
from lorawizard.core.common.progress import Progress, ProgressMeter, format_duration, format_rate
from lorawizard.core.contract import Cancelled, StepFailed
from lorawizard.tui.screens.confirm import ConfirmScreen
from lorawizard.tui.text_fit import fit_paths
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.settings_form import SettingsForm

if TYPE_CHECKING:
    from textual.widgets import TextArea

    from lorawizard.core.captions.captionset import CaptionSet
    from lorawizard.core.captions.tokens import TokenCounter
    from lorawizard.tui.screens.base import StepScreen
    from lorawizard.tui.widgets.caption_list import CaptionList

    _ScreenBase = StepScreen  # for the type checker: the mixin only ever sits on the Captions screen
else:
    _ScreenBase = object

CONFIRM_S = 5.0  # a second F6 within this replaces a person's caption

AUTO_BINDINGS = [
    Binding("f5", "autocaption", "Auto-caption", priority=True),
    Binding("f6", "redraft", "Redraft", show=False, priority=True),
    Binding("f7", "accept_draft", "Accept", show=False, priority=True),
]


@dataclass
class DraftStatus(Message):
    """The drafting worker's progress line for the header (a newer one replaces one still waiting)."""

    text: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DraftStatus)


@dataclass
class Drafted(Message):
    """One draft from the captioner, for `file` (a caption set item among the `allowed` indices)."""

    file: str
    text: str
    allowed: set[int]


@dataclass
class DraftingDone(Message):
    outcome: str
    severity: SeverityLevel = "information"


class AutoCaptionMixin(_ScreenBase):
    """The Captions screen's auto-caption actions (a mixin: the screen keeps its own size)."""

    if TYPE_CHECKING:  # what the Captions screen provides
        captions: CaptionSet | None
        current: int | None

        @property
        def editor(self) -> TextArea: ...
        @property
        def caption_list(self) -> CaptionList: ...
        def flush(self) -> None: ...
        def _store(self, indices: list[int]) -> None: ...
        def _apply_filter(self, keep: int | None = None) -> None: ...
        def _update_details(self) -> None: ...
        def _update_header(self) -> None: ...

    _auto_cancel: threading.Event | None = None
    _auto_status: str = ""
    _confirm_redraft: tuple[int, float] | None = None
    _overwritten: dict[int, tuple[str | None, bool]] | None = None  # a person's captions an overwrite replaces

    @property
    def drafting(self) -> bool:
        return self._auto_cancel is not None

    def auto_status(self) -> Text | None:
        """The header's drafting segment while drafts come in."""
        return Text(self._auto_status, style=tone("info")) if self._auto_status else None

    def action_autocaption(self) -> None:
        captions = self.captions
        if captions is None:
            return
        if self.drafting:
            self.notify("drafting is under way: Esc stops it (drafts so far are kept)")
            return
        self.flush()
        missing = len(ac.targets(captions.items))
        drafts = captions.counts()["auto"]

        def chosen(choice: str | None) -> None:
            if choice == "accept":
                self.accept_drafts(None)
            elif choice == "missing":
                self.start_drafting([captions.items.index(i) for i in ac.targets(captions.items)])
            elif choice == "all":
                self.confirm_overwrite([captions.items.index(i) for i in ac.targets(captions.items, overwrite=True)])

        self.app.push_screen(AutoCaptionScreen(missing, len(captions), drafts), chosen)

    def confirm_overwrite(self, indices: list[int]) -> None:
        """"Overwrite all" replaces captions a person wrote: asked first, and F4 gives them back afterwards."""
        captions = self.captions
        if captions is None:
            return
        persons = [i for i in indices if captions.is_persons(i)]
        if not persons:
            self.start_drafting(indices)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.start_drafting(indices, keep_for_undo=persons)

        count = f"{len(persons)} caption{'s' if len(persons) != 1 else ''}"
        self.app.push_screen(ConfirmScreen(
            f"Replace {count} you wrote with drafts?",
            f"All {len(indices)} images get a draft. F4 (Undo bulk) gives your {count} back afterwards."), answer)

    def action_redraft(self) -> None:
        captions, index = self.captions, self.current
        if captions is None or index is None or self.drafting:
            return
        if captions.is_persons(index):
            now = time.monotonic()
            if self._confirm_redraft is None or self._confirm_redraft[0] != index or now - self._confirm_redraft[1] > CONFIRM_S:
                self._confirm_redraft = (index, now)
                self.notify("this caption is yours: F6 again replaces it with a draft")
                return
        self._confirm_redraft = None
        self.flush()
        self.start_drafting([index])

    def action_accept_draft(self) -> None:
        if self.current is not None:
            self.accept_drafts([self.current])

    def accept_drafts(self, indices: list[int] | None) -> None:
        captions = self.captions
        if captions is None:
            return
        changed = captions.accept(indices)
        if not changed:
            self.notify("no auto draft here to accept")
            return
        self._store(changed)
        self._apply_filter(self.current)
        self._update_details()
        self.notify(f"accepted {len(changed)} draft{'s' if len(changed) != 1 else ''}: reviewed")

    def stop_drafting(self) -> None:
        if self._auto_cancel is not None:
            self._auto_cancel.set()

    def action_cancel(self) -> None:
        """Esc: stop drafting first (the drafts so far are kept); else what the step screen does."""
        if self._auto_cancel is not None:
            self._auto_cancel.set()
            self._set_auto_status("stopping the captioner…")
            return
        super().action_cancel()

    def start_drafting(self, indices: list[int], keep_for_undo: list[int] | None = None) -> None:
        """Draft `indices`; `keep_for_undo`: captions of a person's that drafts replace (F4 restores them)."""
        captions = self.captions
        if captions is None or not indices:
            self.notify("nothing to draft: every image has a caption")
            return
        self._overwritten = {i: (captions.items[i].body, captions.items[i].auto) for i in keep_for_undo or ()} or None
        self._auto_cancel = threading.Event()
        self._auto_status = f"auto-caption: starting ({len(indices)} images) · Esc stops"
        self._update_header()
        images = [(captions.items[i].file, captions.items[i].output) for i in indices]
        counter, trigger = captions.counter, captions.trigger
        self._draft_worker(images, set(indices), self._auto_cancel, counter, trigger)

    @work(thread=True, exclusive=True, group="captions-auto", exit_on_error=False)
    def _draft_worker(self, images: list[tuple[str, Path]], allowed: set[int], cancel: threading.Event,
                      counter: TokenCounter, trigger: str) -> None:
        post = self.post_message
        from lorawizard.core.captions.captionset import compose
        from lorawizard.core.captions.tokens import T5_LIMIT

        def progress(event: Progress) -> None:
            rate = f" · {format_rate(event.rate, 'images')}" if event.rate else ""
            eta = f" · ETA {format_duration(event.eta_s)}" if event.eta_s is not None else ""
            post(DraftStatus(f"drafting {event.done:g}/{event.total:g}{rate}{eta} · Esc stops"))

        def drafted(file: str, text: str) -> None:
            post(Drafted(file, text, allowed))

        meter = ProgressMeter(progress, "captions", "drafting captions", len(images), "images", interval=0.3)
        outcome: str
        severity: SeverityLevel = "information"
        try:
            report = ac.draft(
                self.session, images,
                on_draft=drafted,
                cancel=cancel, log=lambda line: None, meter=meter,
                fits=lambda text: counter.count(compose(trigger, text))[1] <= T5_LIMIT,
                trigger_tokens=counter.count(trigger)[1] if trigger else 0,
            )
            skipped = f"; {len(report.skipped)} not captioned ({next(iter(report.skipped.values()))})" if report.skipped else ""
            outcome = ac.rate_line(report) + skipped + " · F7 accepts, filter “auto drafts”"
        except Cancelled:
            outcome = "auto-caption stopped: the drafts so far are kept"
        except StepFailed as exc:
            outcome, severity = str(exc), "error"
        except Exception as exc:  # noqa: BLE001 - a worker never takes the app down
            outcome, severity = f"auto-caption failed: {exc}", "error"
        post(DraftingDone(outcome, severity))

    # Handlers by name (on_<message>): Textual collects @on handlers only from a MessagePump class's own body.

    def on_draft_status(self, message: DraftStatus) -> None:
        self._set_auto_status(message.text)

    def _set_auto_status(self, text: str) -> None:
        if self.drafting:
            self._auto_status = text
            self._update_header()

    def on_drafted(self, message: Drafted) -> None:
        captions = self.captions
        if captions is None:
            return
        file, text = message.file, message.text
        index = next((i for i in message.allowed if captions.items[i].file == file), None)
        if index is None:
            return
        captions.set_body(index, text, auto=True)
        self._store([index])
        self.caption_list.refresh_item(index)
        if index == self.current:
            self.editor.load_text(text)
            self._update_details()

    def on_drafting_done(self, message: DraftingDone) -> None:
        outcome, severity = message.outcome, message.severity
        self._auto_cancel = None
        self._auto_status = ""
        if self._overwritten and self.captions is not None:
            replaced = self.captions.record_overwrite("auto-caption overwrite", self._overwritten)
            if replaced:
                outcome += f" · F4 gives back the {replaced} caption{'s' if replaced != 1 else ''} you wrote"
        self._overwritten = None
        self.flush()
        self._apply_filter(self.current)
        self._update_details()
        self.notify(outcome, severity=severity, timeout=10)


class AutoCaptionScreen(ModalScreen["str | None"]):
    """What the captioner will do: model, where it runs, the instruction; draft missing / overwrite all / accept."""

    BINDINGS = [Binding("escape", "close", "Close")]
    DEFAULT_CSS = """
    AutoCaptionScreen { align: center middle; }
    AutoCaptionScreen > VerticalScroll { width: 96%; max-width: 110; height: auto; max-height: 96%;
                                   border: round $accent; background: $surface; padding: 0 1; }
    /* Tab stops on the dialog itself (↑/↓ scroll it at 80x24): shown, or that stop looked like focus lost */
    AutoCaptionScreen > VerticalScroll:focus { border: heavy $accent; border-subtitle-color: $accent; }
    AutoCaptionScreen #auto-about { height: auto; }
    AutoCaptionScreen #auto-instruction { height: auto; color: $text-muted; margin: 0 0 1 0; }
    AutoCaptionScreen #auto-buttons { height: auto; margin: 1 0; }
    AutoCaptionScreen #auto-buttons Button { margin: 0 2 0 0; }
    """

    def __init__(self, missing: int, total: int, drafts: int) -> None:
        super().__init__()
        self.missing, self.total, self.drafts = missing, total, drafts

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("", id="auto-about")
            with Horizontal(id="auto-buttons"):  # before the form: at 80x24 the buttons stay on screen
                yield Button(f"Draft missing ({self.missing})", id="auto-missing", variant="primary",
                             disabled=not self.missing, compact=True)
                yield Button(f"Overwrite all ({self.total})", id="auto-all", variant="error", compact=True)
                yield Button(f"Accept all drafts ({self.drafts})", id="auto-accept", disabled=not self.drafts,
                             compact=True)
            yield SettingsForm(["captions.kind", "captions.model", "captions.device", "captions.max_tokens",
                                "captions.instruction"])
            yield Static("", id="auto-instruction")

    def on_mount(self) -> None:
        self.describe()
        self.call_after_refresh(self.describe)  # again at its laid-out width: the paths are cut to it
        self.query_one("#auto-missing" if self.missing else "#auto-all", Button).focus()

    def on_resize(self) -> None:
        self.call_after_refresh(self.describe)

    def watch_focused(self, focused: Widget | None) -> None:
        body = self.query_one(VerticalScroll)
        body.border_subtitle = "↑/↓ scroll · Tab: the buttons" if focused is body else ""

    @on(SettingsForm.Saved)
    def _setting_saved(self) -> None:
        self.describe()  # the value is in the session already: the model, device and instruction follow it

    def describe(self) -> None:
        session = wizard_app(self).session
        about = Text()
        about.append("Auto-captions", style="bold")
        about.append(": drafts stay ")
        about.append("auto", style=tone("info"))
        about.append(" until you accept (F7) or edit them; only “Overwrite all” replaces your own captions. Esc closes.\n")
        try:
            model = ac.choose_model(session)
        except StepFailed as exc:
            about.append(str(exc), style=tone("error"))
        else:
            spec = model.spec
            if spec is not None:
                about.append(f"{spec.title}", style="bold")
                about.append(f" · {spec.approx_gb:g} GB download · needs ~{spec.vram_gb:g} GB VRAM · {spec.license}\n")
            else:
                about.append(f"your model folder {model.folder}\n", style="bold")  # fit_paths shows it ~/…
            problem = ac.folder_problem(model.folder)
            if problem:
                hint = " — the Models step (2) downloads it" if spec is not None else ""
                about.append(f"✗ {problem}{hint}\n", style=tone("error"))
            try:
                placement = ac.place(session, max(self.missing, 1), spec)
                about.append(f"runs on {placement.note}", style=tone("warning") if placement.device == "cpu" else "")
            except StepFailed as exc:
                about.append(str(exc), style=tone("error"))
        about_static = self.query_one("#auto-about", Static)
        width = about_static.content_region.width or max(20, self.app.size.width - 10)  # before layout: about it
        about_static.update(fit_paths(about, width))  # ~/… and cut in the middle: a path never runs over its line
        custom = session.get("captions.instruction")
        shown = "(your instruction above)" if custom else f"default instruction: {ac.instruction_for(session)}"
        self.query_one("#auto-instruction", Static).update(shown)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        choice = {"auto-missing": "missing", "auto-all": "all", "auto-accept": "accept"}.get(event.button.id or "")
        self.dismiss(choice)

    def action_close(self) -> None:
        self.dismiss(None)

