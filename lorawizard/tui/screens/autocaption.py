"""Auto-captions on the Captions screen: draft with a local vision-language model, then review.

F5 opens the dialog (instruction, model, device; draft the missing captions, overwrite all, accept all drafts),
F6 redrafts the current image (a caption of the person's only when F6 is pressed twice), F7 accepts the current
draft. Drafting runs `core.autocaption.draft` in a worker; each draft arrives on the UI thread and goes into the
caption set and session.toml like an edit, marked auto — unless the person typed into that caption since drafting
began: what they typed stays theirs. While drafting, F5 stops it (the footer and the header say so; the drafts so far
are kept, and the stop is said in one line); Esc only leaves the editor, never stops drafting.

`AutoCaptioner` does all of that for the screen it sits on: it changes the caption set it is handed and says what
changed with its messages; the screen stores those captions and redraws its own widgets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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
from lorawizard.core.contract import Cancelled, StepFailed
from lorawizard.tui.screens.confirm import ConfirmScreen
from lorawizard.tui.text_fit import fit_paths
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.settings_form import SettingsForm

if TYPE_CHECKING:
    from lorawizard.core.captions.captionset import CaptionSet
    from lorawizard.core.captions.tokens import TokenCounter
    from lorawizard.core.session.document import Session

CONFIRM_S = 5.0  # a second F6 within this replaces a person's caption

AUTO_BINDINGS = [  # the screen's check_action shows one F5 at a time: Auto-caption, or Stop drafting while it runs
    Binding("f5", "autocaption", "Auto-caption", priority=True),
    Binding("f5", "stop_drafting", "Stop drafting", priority=True),
    Binding("f6", "redraft", "Redraft", show=False, priority=True),
    Binding("f7", "accept_draft", "Accept", show=False, priority=True),
]


@dataclass
class _Drafted(Message, bubble=False):
    """From the worker: one draft for `file` (a caption set item among the `allowed` indices)."""

    file: str
    text: str
    allowed: set[int]


@dataclass
class _Done(Message, bubble=False):
    """From the worker: drafting ended, `outcome` says how."""

    outcome: str
    severity: SeverityLevel = "information"


class AutoCaptioner(Widget):
    """Drafting captions with the captioner, for the screen it is mounted on (a widget never displayed: its worker
    and messages live and end with that screen).

    The screen hands over its caption set (`captions`), calls the actions (`open_dialog`, `redraft`, `accept`,
    `start`, `stop`) and handles the messages below; `flush` writes what waits for session.toml (before drafting).
    """

    @dataclass
    class Status(Message):
        """The header's drafting segment (DraftingEnded clears it); a newer one replaces one still waiting."""

        text: str

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, AutoCaptioner.Status)

    @dataclass
    class DraftArrived(Message):
        """A draft is in the caption set at `index`, marked auto: to be stored and shown."""

        index: int
        text: str

    @dataclass
    class DraftsAccepted(Message):
        """These drafts are a person's captions now (reviewed): to be stored and shown."""

        indices: list[int]

    class DraftingEnded(Message):
        """Drafting is over (done, stopped or failed; the person was told): the drafts so far are in the set."""

    def __init__(self, session: Session, flush: Callable[[], None],
                 take_typing: Callable[[int], None] = lambda index: None) -> None:
        super().__init__()
        self.display = False
        self.captions: CaptionSet | None = None
        self._session = session
        self._flush = flush
        self._take_typing = take_typing  # the editor's text of that caption into the set now (before its draft)
        self._started: dict[int, tuple[str | None, bool]] = {}  # each caption being drafted as it was at the start
        self._placed = 0  # drafts placed in this run
        self._typed: list[int] = []  # captions the person typed into meanwhile: their text stayed
        self._cancel: threading.Event | None = None
        self._confirm_redraft: tuple[int, float] | None = None
        self._overwritten: dict[int, tuple[str | None, bool]] | None = None  # a person's captions an overwrite replaces
        self.drafts: dict[int, str] = {}  # each caption's latest draft, placed or not (F9 puts it back); the screen seeds it

    @property
    def drafting(self) -> bool:
        return self._cancel is not None

    def open_dialog(self) -> None:
        """F5: what the captioner will do, and the choice of what to draft (or to accept every draft)."""
        captions = self.captions
        if captions is None:
            return
        if self.drafting:
            self.notify("drafting is under way: F5 stops it (drafts so far are kept)")
            return
        self._flush()
        missing = len(ac.targets(captions.items))
        drafts = captions.counts()["auto"]

        def chosen(choice: str | None) -> None:
            if choice == "accept":
                self.accept(None)
            elif choice == "missing":
                self.start([captions.items.index(i) for i in ac.targets(captions.items)])
            elif choice == "all":
                self._confirm_overwrite([captions.items.index(i) for i in ac.targets(captions.items, overwrite=True)])

        self.app.push_screen(AutoCaptionScreen(missing, len(captions), drafts), chosen)

    def _confirm_overwrite(self, indices: list[int]) -> None:
        """"Overwrite all" replaces captions a person wrote: asked first, and F4 gives them back afterwards."""
        captions = self.captions
        if captions is None:
            return
        persons = [i for i in indices if captions.is_persons(i)]
        if not persons:
            self.start(indices)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.start(indices, keep_for_undo=persons)

        count = f"{len(persons)} caption{'s' if len(persons) != 1 else ''}"
        self.app.push_screen(ConfirmScreen(
            f"Replace {count} you wrote with drafts?",
            f"All {len(indices)} images get a draft. F4 (Undo bulk) gives your {count} back afterwards."), answer)

    def redraft(self, index: int | None) -> None:
        """F6 on the caption at `index`: a person's caption only when pressed twice."""
        captions = self.captions
        if captions is None or index is None or self.drafting:
            return
        if captions.is_persons(index):
            now = time.monotonic()
            if self._confirm_redraft is None or self._confirm_redraft[0] != index or now - self._confirm_redraft[1] > CONFIRM_S:
                self._confirm_redraft = (index, now)
                self.notify("this caption is yours: F6 again replaces it with a draft")
                return
        self._confirm_redraft = None
        self._flush()
        self.start([index])

    def accept(self, indices: list[int] | None) -> None:
        """The drafts among `indices` (None: every one) become reviewed captions."""
        captions = self.captions
        if captions is None:
            return
        changed = captions.accept(indices)
        if not changed:
            self.notify("no auto draft here to accept")
            return
        self.post_message(self.DraftsAccepted(changed))
        self.notify(f"accepted {len(changed)} draft{'s' if len(changed) != 1 else ''}: reviewed")

    def stop(self) -> bool:
        """F5 while drafting: stop it (the drafts so far are kept; the end says so). False when nothing is drafting."""
        if self._cancel is None:
            return False
        self._cancel.set()
        self.post_message(self.Status("stopping the captioner…"))
        return True

    def on_unmount(self) -> None:
        if self._cancel is not None:  # quitting never leaves a captioner holding the GPU
            self._cancel.set()

    def start(self, indices: list[int], keep_for_undo: list[int] | None = None) -> None:
        """Draft `indices`; `keep_for_undo`: captions of a person's that drafts replace (F4 restores them)."""
        captions = self.captions
        if captions is None or not indices:
            self.notify("nothing to draft: every image has a caption")
            return
        self._overwritten = {i: (captions.items[i].body, captions.items[i].auto) for i in keep_for_undo or ()} or None
        self._started = {i: (captions.items[i].body, captions.items[i].auto) for i in indices}
        self._placed, self._typed = 0, []
        self._cancel = threading.Event()
        self.post_message(self.Status(f"auto-caption: starting ({len(indices)} images) · F5 stops"))
        images = [(captions.items[i].file, captions.items[i].output) for i in indices]
        self._draft_worker(images, set(indices), self._cancel, captions.counter, captions.trigger)

    @work(thread=True, exclusive=True, group="captions-auto", exit_on_error=False)
    def _draft_worker(self, images: list[tuple[str, Path]], allowed: set[int], cancel: threading.Event,
                      counter: TokenCounter, trigger: str) -> None:
        post = self.post_message
        from lorawizard.core.captions.captionset import compose

        def estimated(estimate: ac.DraftEstimate) -> None:  # a guess until the first images, then measured
            post(self.Status(drafting_line(estimate)))

        def drafted(file: str, text: str) -> None:
            post(_Drafted(file, text, allowed))

        outcome: str
        severity: SeverityLevel = "information"
        try:
            report = ac.draft(
                self._session, images,
                on_draft=drafted,
                cancel=cancel, log=lambda line: None, on_estimate=estimated,
                fits=lambda text: counter.count(compose(trigger, text))[1] <= counter.t5_limit,
                trigger_tokens=counter.count(trigger)[1] if trigger else 0,
            )
            skipped = f"; {len(report.skipped)} not captioned ({next(iter(report.skipped.values()))})" if report.skipped else ""
            outcome = ac.rate_line(report) + skipped + " · F7 accepts, filter “auto drafts”"
        except Cancelled:
            outcome = "auto-caption stopped"  # _done adds how many drafts are kept
        except StepFailed as exc:
            outcome, severity = str(exc), "error"
        except Exception as exc:  # noqa: BLE001 - a worker never takes the app down
            outcome, severity = f"auto-caption failed: {exc}", "error"
        post(_Done(outcome, severity))

    @on(_Drafted)
    def _drafted(self, message: _Drafted) -> None:
        captions = self.captions
        if captions is None:
            return
        index = next((i for i in message.allowed if captions.items[i].file == message.file), None)
        if index is None:
            return
        self._take_typing(index)  # a key typed into it a moment ago counts before the draft is placed
        self.drafts[index] = message.text  # the person's caption may stay: F9 can still use this draft
        item = captions.items[index]
        if captions.is_persons(index) and (item.body, item.auto) != self._started.get(index):
            self._typed.append(index)  # typed (or accepted) since drafting began: the person's, never replaced
            return
        captions.set_body(index, message.text, auto=True)
        self._placed += 1
        self.post_message(self.DraftArrived(index, message.text))

    @on(_Done)
    def _done(self, message: _Done) -> None:
        outcome = message.outcome
        if outcome == "auto-caption stopped":
            outcome += f": {self._placed} draft{'s' if self._placed != 1 else ''} kept"
        if self._typed:
            count = len(self._typed)
            outcome += f" · {count} caption{'s' if count != 1 else ''} you typed meanwhile kept"
        self._cancel = None
        self._started = {}
        if self._overwritten and self.captions is not None:
            replaced = self.captions.record_overwrite("auto-caption overwrite", self._overwritten)
            if replaced:
                outcome += f" · F4 gives back the {replaced} caption{'s' if replaced != 1 else ''} you wrote"
        self._overwritten = None
        self.post_message(self.DraftingEnded())
        self.notify(outcome, severity=message.severity, timeout=10)


def drafting_line(estimate: ac.DraftEstimate) -> str:
    """The header's drafting segment: `drafting 3/40 · 6.10 s/image (measured) · ETA 3:42 · F5 stops` (before the
    model is ready: `loading the captioner · 0/40 · ~2.0 min/image (a guess) · …`)."""
    doing = "drafting" if estimate.loaded or estimate.done else "loading the captioner ·"
    return f"{doing} {estimate.done}/{estimate.total} · {estimate.line()} · F5 stops"


class AutoCaptionScreen(ModalScreen["str | None"]):
    """What the captioner will do: model, where it runs, the instruction; draft missing / overwrite all / accept."""

    BINDINGS = [Binding("escape", "close", "Close")]
    CSS_PATH = "autocaption.tcss"

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
                placement = ac.place(session, max(self.missing, 1), spec, model=model.name)
                if placement.device == "cpu":  # the note says where ("on the CPU this is slow…"): not "runs on on"
                    about.append(placement.note, style=tone("warning"))
                else:
                    about.append(f"runs on {placement.note}")
            except StepFailed as exc:
                about.append(str(exc), style=tone("error"))
        about_static = self.query_one("#auto-about", Static)
        width = about_static.content_region.width or max(20, self.app.size.width - 10)  # before layout: about it
        about_static.update(fit_paths(about, width))  # ~/… and cut in the middle: a path never runs over its line
        custom = session.captions.instruction
        shown = "(your instruction above)" if custom else f"default instruction: {ac.instruction_for(session)}"
        self.query_one("#auto-instruction", Static).update(shown)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        choice = {"auto-missing": "missing", "auto-all": "all", "auto-accept": "accept"}.get(event.button.id or "")
        self.dismiss(choice)

    def action_close(self) -> None:
        self.dismiss(None)

