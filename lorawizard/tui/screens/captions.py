"""Captions: review every caption beside its image, fix it in place, bulk-edit, and write the files.

Keyboard: Ctrl+N / Ctrl+B next / previous (from the editor too), Tab between list and editor,
Ctrl+F (or / in the list) cycles the filter; in the list a/m/e/o/t/i pick one (all, missing,
edited, over budget, trigger, import notes); Ctrl+R find/replace · prefix/suffix, F4 undoes the last bulk change,
Ctrl+T trigger word, Ctrl+G writes the caption files; F5 auto-captions (F5 again stops drafting, F6 redraft this
one, F7 accept this draft; in the list d/r filter auto drafts / reviewed), F9 puts this image's draft back (shown
while it has one that differs). In the editor Ctrl+A selects all (typing then replaces it), Ctrl+L clears the caption
(Ctrl+Z undoes either); the cursor starts at the end of the caption. Esc leaves the editor (never stops
drafting). A caption file edited by hand in the dataset folder is taken in as the person's caption when loading. Every edit goes into session.toml (saved half a
second after the last keystroke, and at once when leaving the screen or quitting).
"""

from __future__ import annotations

import gc
import io
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol, cast

from rich.console import Console
from rich.segment import Segment
from rich.style import Style as RichStyle
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.geometry import Size
from textual.message import Message
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.style import Style as VisualStyle
from textual.widgets import Button, Input, Label, Select, Static, TextArea
from textual.worker import get_current_worker

from lorawizard.core.captions import captionset as core
from lorawizard.core.captions.captionset import CaptionSet
from lorawizard.core.captions.written import find_hand_edits, store_hand_edits
from lorawizard.core.contract import StepFailed
from lorawizard.core.dataset.manifest import MANIFEST_FILE
from lorawizard.core.dataset.thumbnails import ThumbnailCache, letterboxed
from lorawizard.core.session.document import Session, SessionError
from lorawizard.tui._textual_hacks import (
    clear_dirty_regions,
    refresh_scrollbars,
    renderable_class,
    set_virtual_size,
    shown_image,
)
from lorawizard.tui.images import image_widget_class
from lorawizard.tui.messages import StepFinished
from lorawizard.tui.screens.autocaption import AUTO_BINDINGS, AutoCaptioner
from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.tones import Tone, tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.caption_list import CaptionList, status_of
from lorawizard.tui.widgets.settings_form import SettingsForm

_KIND_TONES: dict[str, Tone] = {"ok": "success", "warn": "warning", "bad": "error", "edit": "other", "auto": "info"}
GUIDE = (
    "Describe what the LoRA should NOT learn: for a subject LoRA the clothing, setting, light, style; "
    "for a style LoRA the subject."
)
FILTER_ORDER = list(core.FILTERS)
FILTER_KEYS = {"a": "all", "m": "missing", "e": "edited", "o": "over", "t": "trigger", "i": "imported", "d": "auto", "r": "reviewed"}  # list focused
THUMB_PIXELS = 192
THUMBS_KEPT = 96  # decoded thumbnails (a few objects each)
DRAWN_KEPT = 10  # of those, drawn as cells (the current one and its prefetched neighbours)
FREEZE_FROM = 1000  # images
RECOUNT_IN_WORKER_FROM = 1000  # captions: a new trigger's token counts are made off the UI thread (~1 s at 20,000)


@dataclass
class CaptionsLoaded(Message):
    """Posted by the loading worker: the caption set (None: no prepared images yet) and what was imported."""

    captions: CaptionSet | None
    imported: int
    noted: int
    hand_edited: int = 0  # caption files in the dataset folder edited by hand, taken in as the person's


@dataclass
class CaptionsLoadFailed(Message):
    problem: str


@dataclass
class BulkDone(Message):
    """Posted by the bulk worker: a bulk change (or its undo) computed and in the session, for the UI to commit."""

    captions: CaptionSet
    result: core.BulkResult | None  # None: it failed (`problem` says why)
    problem: str | None = None  # a save that failed (the change is kept in memory and saved with the next one)


@dataclass
class FilesReread(Message):
    """Posted by the worker that reread the caption files after writing them (`contents` per item)."""

    captions: CaptionSet
    contents: list[bytes | None]


@dataclass
class TriggerCounted(Message):
    """Posted by the worker that counted every caption's tokens under a new trigger (they are in the cache now)."""

    captions: CaptionSet
    trigger: str


class CaptionsScreen(StepScreen):
    STEP = "captions"
    MAIN = "CaptionList"
    AUTO_FOCUS = MAIN
    INTRO = "One caption per image: the trigger word first, then what the LoRA should NOT learn."
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    FULL_BODY = True  # its own layout: a table/list and a preview side by side, filling the screen
    FOOTER_DROP_FIRST = ("step",)  # at 80 columns: ↑/↓ move too; ? lists them all (FitFooter keeps Filter, Undo bulk)
    FOOTER_KEEP = ("bulk", "autocaption")  # with ^g, ^f Filter and f4 Undo bulk: at 80 columns ^t Trigger goes
    FOOTER_SHORT = {"primary": "Write", "bulk": "Replace"}  # at 80 columns, so that f5 Auto-caption fits too

    BINDINGS = [
        Binding("ctrl+n", "step(1)", "Next", priority=True),
        Binding("ctrl+b", "step(-1)", "Back", priority=True),
        Binding("ctrl+f", "cycle_filter", "Filter", priority=True),
        Binding("slash", "cycle_filter", "Filter", show=False),  # from the list; in the editor it is a character
        *(Binding(key, f"set_filter('{name}')", name, show=False) for key, name in FILTER_KEYS.items()),
        Binding("f9", "use_draft", "Use draft", priority=True),  # shown while this image has a draft to put back
        Binding("ctrl+r", "bulk", "Find/replace", priority=True),
        Binding("f4", "undo_bulk", "Undo bulk", priority=True),
        Binding("ctrl+t", "trigger", "Trigger", priority=True),
        Binding("ctrl+g", "primary", "Write files", show=True, priority=True),
        *AUTO_BINDINGS,
    ]

    CSS_PATH = "captions.tcss"
    HELP_KEYS = [  # the editor's keys (? types a "?" there) and F9, which the footer shows only while it does something
        ("ctrl+a", "in the editor: select all (typing then replaces the whole caption)"),
        ("ctrl+l", "in the editor: clear the caption (ctrl+z undoes it)"),
        ("f9", "Use draft: the caption becomes this image's latest draft again (when it has one that differs)"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.captions: CaptionSet | None = None
        self.filter = "all"
        self.current: int | None = None
        self._thumbs: ThumbnailCache[Path] = ThumbnailCache(THUMBS_KEPT, drawn_kept=DRAWN_KEPT)  # image, its cells
        self._problem = ""
        self._manifest_stamp: tuple[int, int] | None = None
        self._bulk: str | None = None  # the bulk change (or undo) a worker is computing: one at a time
        self._bulk_status = ""  # what the header says meanwhile
        self._drafting_status = ""  # the auto-captioner's progress, for the header ("": not drafting)
        self._draft_offered = False  # whether the footer shows F9 Use draft (its refresh only when that flips)

    # -- layout

    def compose_body(self) -> ComposeResult:
        yield Static("loading captions…", id="cap-header")
        with Horizontal(id="cap-main"):
            yield CaptionList(id="cap-list")
            with Vertical(id="cap-right"):
                with Horizontal(id="cap-top"):
                    yield caption_image_class()(None, id="cap-image")
                    yield Static("", id="cap-info")
                yield CaptionEditor(
                    "",
                    id="cap-editor",
                    soft_wrap=True,
                    placeholder=f"No caption yet. {GUIDE}",
                )
                yield Static("", id="cap-tokens")
        yield AutoCaptioner(self.session, flush=self.flush, take_typing=self._take_typing)

    @property
    def editor(self) -> TextArea:
        return self.query_one("#cap-editor", TextArea)

    @property
    def caption_image(self) -> CaptionImageView:
        return cast(CaptionImageView, self.query_one("#cap-image"))

    @property
    def caption_list(self) -> CaptionList:
        return self.query_one(CaptionList)

    @property
    def auto_captioner(self) -> AutoCaptioner:
        return self.query_one(AutoCaptioner)

    def on_mount(self) -> None:
        self.editor.disabled = True
        self.editor.border_title = "caption: what the LoRA should NOT learn"
        self.caption_list.on_cursor = self._follow  # same frame as the list's repaint
        self.load()

    # -- loading (a worker: 5,000 caption files are read from disk)

    @work(thread=True, exclusive=True, group="captions-load", exit_on_error=False)
    def load(self) -> None:
        session = self.session
        self._manifest_stamp = _stamp(session.paths.dataset / MANIFEST_FILE)
        store = wizard_app(self).store
        try:
            with store.lock:  # the session is not changed meanwhile (a write, a step's record)
                images = core.prepared_images(session)
                if len(images) >= FREEZE_FROM:
                    # now as well as when loaded (see _loaded): the session's entries, already read, stay out of the
                    # full collections this worker's allocations start (each ~0.1 s at 20,000, all threads stopped)
                    gc.freeze()
                hand, seen = 0, None
                if not session.read_only:  # caption files edited by hand are the person's captions (written.py)
                    edits = find_hand_edits(session, images)
                    hand, seen = store_hand_edits(session, edits, store=store), edits.contents
                imported = core.find_imports(session, images)
                count = core.store_imports(session, imported, store=store) if not session.read_only else 0
                captions = CaptionSet.from_session(session, on_disk=seen) if images else None  # files read once
        except (StepFailed, SessionError, OSError) as exc:
            self.post_message(CaptionsLoadFailed(str(exc)))
            return
        self.post_message(CaptionsLoaded(captions, count, len(imported.notes), hand))

    @on(CaptionsLoadFailed)
    def _load_failed(self, message: CaptionsLoadFailed) -> None:
        self._problem = message.problem
        self.query_one("#cap-header", Static).update(Text(f"✗ {message.problem}", style=tone("error", bold=True)))

    @on(CaptionsLoaded)
    def _loaded(self, message: CaptionsLoaded) -> None:
        captions, imported, noted = message.captions, message.imported, message.noted
        if captions is None:
            self._problem = "no prepared images yet: run the Dataset step (3) first"
            self.query_one("#cap-header", Static).update(Text(self._problem, style="bold"))
            return
        keep = self.current
        self.captions = self.auto_captioner.captions = captions
        self.auto_captioner.drafts = {i: item.body for i, item in enumerate(captions.items) if item.auto and item.body}
        if len(captions) >= FREEZE_FROM:
            # session.toml of thousands of images is millions of tomlkit objects that live as long as the
            # app: without this every full garbage collection walks them all (0.3-0.5 s pauses with 5,000).
            gc.freeze()
        self.editor.disabled = False
        self._apply_filter(keep)
        if imported:
            extra = f" ({noted} with notes: filter “import notes”)" if noted else ""
            self.notify(f"imported {imported} captions from .txt/.caption files beside the originals{extra}")
        if message.hand_edited:
            count = message.hand_edited
            self.notify(f"took in {count} caption file{'s' if count != 1 else ''} edited by hand in the dataset folder "
                        "as yours (never redrafted or overwritten)")
        if self.focused is None:
            self.caption_list.focus()

    # -- showing one caption

    def _apply_filter(self, keep: int | None = None) -> None:
        if self.captions is None:
            return
        rows = self.captions.filtered(self.filter)
        self.caption_list.set_rows(self.captions, rows, keep)
        self._update_header()
        if not rows and self.current is not None:
            self._show(None)

    def _follow(self, index: int | None) -> None:
        if index != self.current:
            self._show(index)

    @on(CaptionList.Highlighted)
    def _highlighted(self, message: CaptionList.Highlighted) -> None:
        self._follow(message.index)  # already shown through on_cursor: nothing to do then

    @on(CaptionList.Selected)
    def _selected(self, message: CaptionList.Selected) -> None:
        self.editor.focus()

    def _show(self, index: int | None) -> None:
        self.current = index
        editor = self.editor
        if self.captions is None or index is None:
            editor.load_text("")
            editor.disabled = True
            self.query_one("#cap-tokens", Static).update("", layout=False)
            self.query_one("#cap-info", Static).update("nothing matches this filter (Ctrl+F: next filter)", layout=False)
            self.caption_image.show(None)
            return
        editor.disabled = False
        item = self.captions.items[index]
        if editor.text != (item.body or ""):
            editor.load_text(item.body or "")
        self._update_details()
        self._offer_draft()
        self._request_image(item.output)

    def _update_details(self) -> None:
        if self.captions is None or self.current is None:
            return
        item = self.captions.items[self.current]
        counter = self.captions.counter
        tokens = Text(no_wrap=True, overflow="ellipsis")
        if counter.clip_limit is not None:  # a family without CLIP-L (Chroma) counts T5 only
            tokens.append(f"CLIP {item.clip}/{counter.clip_limit}",
                          style=tone("error", bold=True) if item.flags & core.OVER_CLIP else "")
            tokens.append(" · ")
        tokens.append(f"T5 {item.t5}/{counter.t5_limit}", style=tone("error", bold=True) if item.flags & core.OVER_T5 else "")
        if not counter.exact:
            tokens.append(" · estimated (no tokenizers yet)", style="dim")
        self.query_one("#cap-tokens", Static).update(tokens, layout=False)

        info = Text()
        info.append(f"{item.file}\n", style="bold")
        info.append(f"{item.output.parent.name}/{item.output.name}", style="dim")
        word, kind = status_of(item)
        colour = tone(_KIND_TONES[kind])
        info.append("  ")
        info.append(_status_sentence(item, word), style=colour)
        info.append("\n")
        if item.flags & core.TRIGGER_TWICE:
            info.append(f"“{self.captions.trigger}” also appears later in the caption\n", style=tone("warning"))
        if item.note:
            info.append(f"⚑ {item.note}\n", style=tone("warning"))
        written = item.line if len(item.line) <= 90 else item.line[:89] + "…"
        info.append(f"file: {written or '(none: nothing to write)'}", style="italic")
        if self.has_class("-wide"):  # narrow, it would run under the editor: the editor's title says it there
            info.append(f"\n{GUIDE}", style="dim")
        self.query_one("#cap-info", Static).update(info, layout=False)

    def _update_header(self) -> None:
        if self.captions is None:
            return
        counts = self.captions.counts()
        header = Text(no_wrap=True, overflow="ellipsis")
        if self._bulk is not None:  # first: at 80 columns the end of the line is cut
            header.append(self._bulk_status, style=tone("info", bold=True))
            header.append(" │ ")
        if self._drafting_status:
            header.append(self._drafting_status, style=tone("info"))
            header.append(" │ ")
        header.append(f"{counts['all']} captions", style="bold")
        for name, label in (("missing", "missing"), ("auto", "auto"), ("edited", "edited"), ("over", "over budget"),
                            ("trigger", "trigger?")):
            if counts[name]:
                style = tone("error" if name in ("missing", "over") else "info" if name == "auto" else "warning")
                header.append(" · ")
                header.append(f"{label} {counts[name]}", style=style)
        trigger = self.captions.trigger
        header.append(" │ ")
        header.append(f"“{trigger}”" if trigger else "no trigger (Ctrl+T)", style="bold" if trigger else tone("warning"))
        shown = len(self.caption_list.rows)
        header.append(f" │ filter: {core.FILTERS[self.filter][0]} ({shown})", style="bold" if self.filter != "all" else "dim")
        self.query_one("#cap-header", Static).update(header, layout=False)

    def on_resize(self) -> None:
        self._update_details()  # the guide comes and goes with the width class (set before this handler)

    # -- the image, loaded off the UI thread

    def renderer_changed(self) -> None:
        """The terminal answered after this screen was drawn (images.answer): the image widget of the new kind."""
        self.call_later(self._swap_image)

    async def _swap_image(self) -> None:
        await self.query_one("#cap-image").remove()
        self._thumbs.clear()  # halfcell thumbnails carry pre-drawn cells
        await self.query_one("#cap-top").mount(caption_image_class()(None, id="cap-image"), before=0)
        if self.captions is not None and self.current is not None:
            self.call_after_refresh(self._request_image, self.captions.items[self.current].output)

    def _request_image(self, path: Path) -> None:
        thumb = self._thumbs.get(path)
        widget = self.caption_image
        if thumb is not None:
            widget.show(thumb.picture, thumb.drawn)
        else:
            widget.show(None)
        style = widget.visual_style.rich_style if widget.prerenders else None
        self._load_images(path, self._neighbours(), widget.size, style)

    def _neighbours(self) -> list[Path]:
        """The images a few steps up and down the list: moving on finds them ready."""
        if self.captions is None:
            return []
        cl = self.caption_list
        out = []
        for delta in (1, -1, 2, 3, -2, 4):
            position = cl.cursor + delta
            if 0 <= position < len(cl.rows):
                out.append(self.captions.items[cl.rows[position]].output)
        return out

    @work(thread=True, exclusive=True, group="captions-image", exit_on_error=False)
    def _load_images(self, path: Path, more: list[Path], box: Size, style: RichStyle | None) -> None:
        """Decode (and, for the text renderers, draw) the image and its neighbours off the UI thread."""
        worker = get_current_worker()
        for wanted in [path, *more]:
            if worker.is_cancelled:
                return
            cached = self._thumbs.peek(wanted)
            if cached is not None and (style is None or (cached.drawn is not None and cached.drawn.size == box)):
                continue
            thumb = cached.picture if cached is not None else make_thumbnail(wanted)
            drawn = draw_cells(thumb, box, style) if style is not None and thumb is not None else None
            self.app.call_from_thread(self._image_loaded, wanted, thumb, drawn)

    def _image_loaded(self, path: Path, thumb: Any, drawn: DrawnImage | None = None) -> None:
        if thumb is not None:
            # drawn cells are kept only near the cursor (DRAWN_KEPT): see core.thumbnails
            self._thumbs.put(path, thumb, drawn)
        if self.captions is not None and self.current is not None and self.captions.items[self.current].output == path:
            self.caption_image.show(thumb, drawn)

    # -- editing

    @on(TextArea.Changed, "#cap-editor")
    def _edited(self, event: TextArea.Changed) -> None:
        self._take_editor_text()

    def _take_typing(self, index: int) -> None:
        """Before a draft for `index` is placed: what was typed into its editor, if that is the caption shown."""
        if index == self.current:
            self._take_editor_text()

    def _take_editor_text(self) -> None:
        """The editor's text into the caption set and the session, if it differs (also before a draft is placed:
        a key typed a moment ago, its Changed message not handled yet, is the person's)."""
        if self.captions is None or self.current is None or self.editor.disabled:
            return
        item = self.captions.items[self.current]
        text = self.editor.text
        if text == (item.body or ""):
            return
        self.captions.set_body(self.current, text)
        self._store([self.current])
        self.caption_list.refresh_item(self.current)
        self._update_details()
        self._update_header()
        self._offer_draft()

    # -- F9: this image's draft back (a draft the person edited, or one that arrived after they typed)

    def _draft_to_use(self) -> str | None:
        """The current image's latest draft when the caption is something else now (None: nothing to put back)."""
        if self.captions is None or self.current is None:
            return None
        draft = self.auto_captioner.drafts.get(self.current)
        item = self.captions.items[self.current]
        if not draft or item.body == draft:
            return None
        return draft

    def _offer_draft(self) -> None:
        offered = self._draft_to_use() is not None
        if offered != self._draft_offered:
            self._draft_offered = offered
            self.refresh_bindings()
            self._editor_keys()

    @on(events.DescendantFocus)
    @on(events.DescendantBlur)
    def _editor_keys(self) -> None:
        """The editor's own keys under its box while it has focus (at 80 columns the footer has room for few), and
        F9 whenever this image has a draft to put back."""
        editor = self.editor
        keys = ["^a select all", "^l clear"] if editor.has_focus else []
        if self._draft_offered:
            keys.append("f9 use draft")
        editor.border_subtitle = " · ".join(keys)

    def action_use_draft(self) -> None:
        """F9: the caption becomes this image's draft again (marked auto: F7 accepts it; Ctrl+Z in the editor undoes)."""
        draft = self._draft_to_use()
        if draft is None or self.captions is None or self.current is None:
            self.notify("no draft for this image other than its caption (F6 drafts one)")
            return
        self.captions.set_body(self.current, draft, auto=True)
        self._store([self.current])
        editor = self.editor
        editor.replace(draft, (0, 0), editor.document.end)  # an edit: Ctrl+Z gives the person's text back
        editor.move_cursor(editor.document.end)
        self.caption_list.refresh_item(self.current)
        self._update_details()
        self._update_header()
        self._offer_draft()

    # -- saving: the app's SessionStore writes session.toml (~60 ms for 5,000 images) off the UI thread, debounced.
    # An edit typed while the store's lock is held (a write in flight, the loading worker) waits there by file, the
    # caption set already has it. Leaving the screen, a modal dialog (it suspends this screen), bulk changes and
    # quitting call `flush`, which waits for a write in flight and writes: nothing is lost on quit.

    def _store(self, indices: list[int]) -> None:
        """Put captions into the session now (or queued, never waiting); session.toml is written shortly."""
        if self.captions is None or not indices:
            return
        changes = self.captions.session_changes(indices)
        if not changes:
            return
        key = changes[0][0] if len(changes) == 1 else tuple(file for file, _ in changes)
        try:
            wizard_app(self).store.apply(lambda session: session.update_images(changes), queue_as=key)
        except SessionError as exc:
            self.notify(str(exc), severity="error")

    def flush(self) -> None:
        """Write session.toml now if an edit is waiting (on leave, quit, bulk changes; waits for a write in flight)."""
        problem = wizard_app(self).store.flush()
        if problem is not None:
            self.notify(problem, severity="error")

    def on_screen_suspend(self) -> None:
        # while a worker changes the captions (a bulk change holds the store's lock until it has written; a trigger
        # count does not write), waiting here could freeze keys: the store's own timer writes what is waiting
        if self._bulk is None:
            self.flush()

    def on_screen_resume(self) -> None:
        """Back from another step: a new dataset run means new images; the trigger may have been changed."""
        if self._manifest_stamp is not None and _stamp(self.session.paths.dataset / MANIFEST_FILE) != self._manifest_stamp:
            self.load()
        elif self.captions is not None:
            self.captions.captionless = self.session.dataset.captionless
            self._retrigger_if_changed()

    def on_unmount(self) -> None:
        self.flush()  # (the AutoCaptioner stops a captioner itself: quitting never leaves one holding the GPU)

    # -- auto-captions: the AutoCaptioner drafts into the caption set; here they are stored and shown

    @property
    def drafting(self) -> bool:
        return self.auto_captioner.drafting

    def action_autocaption(self) -> None:
        self.auto_captioner.open_dialog()

    def action_redraft(self) -> None:
        self.auto_captioner.redraft(self.current)

    def action_accept_draft(self) -> None:
        if self.current is not None:
            self.accept_drafts([self.current])

    def accept_drafts(self, indices: list[int] | None) -> None:
        """The drafts among `indices` (None: every one) become reviewed captions."""
        self.auto_captioner.accept(indices)

    def start_drafting(self, indices: list[int]) -> None:
        """Draft the captions at `indices` (as the dialog's "Draft missing" does for the missing ones)."""
        self.auto_captioner.start(indices)

    def action_stop_drafting(self) -> None:
        """F5 while drafting: stop it (the drafts so far are kept; the end is said in one line)."""
        self.auto_captioner.stop()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """One F5 at a time in the footer: Auto-caption, or Stop drafting while drafting runs."""
        if action == "autocaption":
            return not self.drafting
        if action == "stop_drafting":
            return self.drafting
        if action == "use_draft":
            return self._draft_offered
        return True

    def action_cancel(self) -> None:
        """Esc: leave the editor; outside it, stop the step's run. Never stops drafting (F5 does): said when drafting
        is all there is to stop."""
        if self.in_text_field() or not self.drafting or self.runner.running:
            super().action_cancel()
            return
        self.notify("auto-caption goes on: F5 stops it (the drafts so far are kept)")

    def on_auto_captioner_status(self, message: AutoCaptioner.Status) -> None:
        self._drafting_status = message.text
        self._update_header()
        self.refresh_bindings()  # the footer's F5: Stop drafting while it runs

    def on_auto_captioner_draft_arrived(self, message: AutoCaptioner.DraftArrived) -> None:
        self._store([message.index])
        self.caption_list.refresh_item(message.index)
        if message.index == self.current:
            self.editor.load_text(message.text)
            self._update_details()
            self._offer_draft()

    def on_auto_captioner_drafts_accepted(self, message: AutoCaptioner.DraftsAccepted) -> None:
        self._store(message.indices)
        self._apply_filter(self.current)
        self._update_details()

    def on_auto_captioner_drafting_ended(self) -> None:
        self._drafting_status = ""
        self.refresh_bindings()
        self.flush()
        self._apply_filter(self.current)
        self._update_details()

    # -- actions

    def action_step(self, delta: int) -> None:
        self.caption_list.action_move(delta)

    def action_cycle_filter(self) -> None:
        position = FILTER_ORDER.index(self.filter)
        self.filter = FILTER_ORDER[(position + 1) % len(FILTER_ORDER)]
        self._apply_filter(self.current)

    def action_set_filter(self, name: str) -> None:
        self.filter = name
        self._apply_filter(self.current)

    def action_bulk(self) -> None:
        if self.captions is None or self._bulk_refused():
            return
        scope = list(self.caption_list.rows)

        def done(plan: core.BulkPlan | None) -> None:
            if plan is not None:
                self.apply_bulk(plan)

        self.app.push_screen(BulkEditScreen(self.captions, scope, core.FILTERS[self.filter][0]), done)

    # -- bulk changes: computed in a worker (20,000 captions: about a second of recounting and session updates),
    # committed on the UI thread in one pass over the changed captions; keys keep working meanwhile, and a second
    # bulk change (or F4) is refused with a line until the first is in.

    def _bulk_refused(self) -> bool:
        if self._bulk is None:
            return False
        self.notify(f"still applying “{self._bulk}”: try again when it is done", severity="warning")
        return True

    def apply_bulk(self, plan: core.BulkPlan) -> None:
        if self.captions is None or plan.error or not plan.changes or self._bulk_refused():
            return
        self._start_bulk(plan.description, plan, f"applying “{plan.description}” to {len(plan.changes)} captions…")

    def action_undo_bulk(self) -> None:
        if self.captions is None or self._bulk_refused():
            return
        if not self.captions.undo_stack:
            self.notify("no bulk change to undo")
            return
        last = self.captions.undo_stack[-1]
        self._start_bulk(f"undo {last.description}", None, f"undoing “{last.description}”…")

    def _start_bulk(self, what: str, plan: core.BulkPlan | None, status: str) -> None:
        assert self.captions is not None
        self._bulk = what
        self._bulk_status = status
        self._update_header()
        self._bulk_worker(self.captions, plan)

    @work(thread=True, group="captions-bulk", exit_on_error=False)
    def _bulk_worker(self, captions: CaptionSet, plan: core.BulkPlan | None) -> None:
        """Compute the change, put it into the session (under the store's lock), write session.toml; never widgets."""
        store = wizard_app(self).store
        try:
            result = captions.prepare(plan) if plan is not None else captions.prepare_undo()
            problem = None
            if result is not None and result.changes:
                ready = result

                def change(session: Session) -> None:
                    # under the lock: a caption typed meanwhile is either in `captions` already (then left out
                    # here) or waits for the lock and lands after this change (SessionStore.apply, queue_as)
                    session.update_images(captions.session_changes_for(ready))

                try:
                    store.apply(change)
                except SessionError as exc:
                    problem = str(exc)
                problem = problem or store.flush()  # written now, as a bulk change always was
        except Exception as exc:  # noqa: BLE001 - a worker never takes the app down; the screen says what happened
            self.post_message(BulkDone(captions, None, f"bulk edit failed: {exc}"))
            return
        self.post_message(BulkDone(captions, result, problem))

    @on(BulkDone)
    def _bulk_done(self, message: BulkDone) -> None:
        self._bulk = None
        self.call_later(self._retrigger_if_changed)  # a trigger changed elsewhere while the bulk change ran
        result = message.result
        if message.captions is not self.captions or result is None:  # reloaded meanwhile, or failed
            self._update_header()
            if message.problem:
                self.notify(message.problem, severity="error")
            return
        changed, kept = message.captions.commit(result)
        self._after_bulk(changed)
        if len(message.captions) >= FREEZE_FROM:
            gc.freeze()  # as after loading: the new captions and session entries stay out of full collections
        if message.problem:
            self.notify(message.problem, severity="error")
        if result.undoing is not None:
            extra = f"; {kept} edited since were kept" if kept else ""
            self.notify(f"undid “{result.undoing.description}”: {len(changed)} captions restored{extra}")
        elif changed:
            extra = f"; {kept} edited meanwhile were kept" if kept else ""
            self.notify(f"changed {len(changed)} caption{'' if len(changed) == 1 else 's'}{extra} · F4 undoes it")

    def _after_bulk(self, changed: list[int]) -> None:
        """Widgets after a bulk commit: the filter's rows and the header, the visible rows, the current caption."""
        self._apply_filter(self.current)
        if self.current is not None and self.captions is not None and changed:
            body = self.captions.items[self.current].body or ""
            if self.editor.text != body:
                self.editor.load_text(body)
            self._update_details()

    def action_trigger(self) -> None:
        if self._bulk_refused():  # a new trigger recounts every caption, the bulk change's too
            return

        def done(_: object) -> None:
            if self.captions is not None:
                self.captions.captionless = self.session.dataset.captionless
                self._retrigger()

        self.app.push_screen(TriggerScreen(), done)

    def _retrigger(self, counted: str | None = None) -> None:
        """Follow the session's trigger: every caption is recounted. In a large set the counting runs in a worker
        first (keys keep working, a bulk change waits for it); the set takes the trigger when it is `counted`."""
        captions = self.captions
        if captions is None:
            return
        trigger = self.session.dataset.trigger
        if trigger not in (captions.trigger, counted) and len(captions) >= RECOUNT_IN_WORKER_FROM:
            self._bulk = "new trigger"
            self._bulk_status = f"counting tokens for the trigger “{trigger}”…"
            self._update_header()
            self._trigger_worker(captions, trigger)
            return
        captions.set_trigger(trigger)
        self._apply_filter(self.current)
        self._update_details()

    def _retrigger_if_changed(self) -> None:
        """The trigger changed elsewhere (another step, a hand edit): recount, unless a bulk change is computing
        (its end checks again)."""
        captions = self.captions
        if captions is not None and self._bulk is None and self.session.dataset.trigger != captions.trigger:
            self._retrigger()

    @work(thread=True, group="captions-bulk", exit_on_error=False)
    def _trigger_worker(self, captions: CaptionSet, trigger: str) -> None:
        try:
            captions.count_for_trigger(trigger)
        finally:  # a failed count only means the set counts what is missing itself
            self.post_message(TriggerCounted(captions, trigger))

    @on(TriggerCounted)
    def _trigger_counted(self, message: TriggerCounted) -> None:
        self._bulk = None
        if message.captions is self.captions:
            self._retrigger(message.trigger)  # the session's trigger now (changed again meanwhile: counted anew)
        else:
            self._update_header()

    def action_primary(self) -> None:
        if self._bulk_refused():  # the files would be written from captions about to change
            return
        self.flush()
        super().action_primary()

    @on(StepFinished)
    def _step_finished(self, message: StepFinished) -> None:
        if message.step == self.STEP and self.captions is not None:
            if message.result is not None and message.result.data.get("hand_edited"):
                self.load()  # the step took in caption files edited by hand: the set follows the session
            else:
                self._reread_files(self.captions)  # the files on disk changed: statuses follow (undo is kept)

    @work(thread=True, exclusive=True, group="captions-load", exit_on_error=False)
    def _reread_files(self, captions: CaptionSet) -> None:
        contents = captions.read_disk()
        self.post_message(FilesReread(captions, contents))

    @on(FilesReread)
    def _files_reread(self, message: FilesReread) -> None:
        captions = message.captions
        if captions is not self.captions:
            return
        captions.sync_disk(message.contents)
        self._apply_filter(self.current)
        self._update_details()


class CaptionEditor(TextArea):
    """The caption editor: its box is fixed by the screen, so a new caption's height needs no screen layout.

    Ctrl+A selects all (typing replaces it: a long draft is replaced in a key or two; Home still goes to the line's
    start), Ctrl+L clears the caption; both are edits Ctrl+Z undoes. A caption loaded into it puts the cursor at its
    end, where a person adds to it (at once when the editor has focus, else when it gets it)."""

    BINDINGS = [
        Binding("ctrl+a", "select_all", "Select all"),
        Binding("ctrl+l", "clear_caption", "Clear"),
    ]

    _at_end_on_focus = False

    def load_text(self, text: str) -> None:
        super().load_text(text)
        if self.has_focus:
            self.move_cursor(self.document.end)
        else:
            self._at_end_on_focus = True

    def _on_focus(self, event: events.Focus) -> None:
        super()._on_focus(event)
        if self._at_end_on_focus:
            self._at_end_on_focus = False
            self.move_cursor(self.document.end)

    def action_clear_caption(self) -> None:
        self.replace("", (0, 0), self.document.end)

    def _refresh_size(self) -> None:
        if not self.soft_wrap:
            super()._refresh_size()
            return
        set_virtual_size(self, Size(0, self.wrapped_document.height))
        refresh_scrollbars(self)



def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)


def make_thumbnail(path: Path) -> Any:
    """A square thumbnail with the picture centred (letterboxed), or None when it cannot be read.

    Square because the image box is square in pixels (cells are twice as tall as wide): the box keeps
    its size for every picture, so showing the next one repaints it without a layout pass.
    """
    return letterboxed(path, THUMB_PIXELS)


@dataclass(frozen=True)
class DrawnImage:
    """An image already turned into cells (text renderers), for a box of `size`: drawn in a worker."""

    size: Size
    lines: list[Strip]
    style: RichStyle | None = None  # the widget's style, already applied underneath (None: not yet)


def draw_cells(image: Any, box: Size, style: RichStyle | None = None, renderable: Any = None) -> DrawnImage | None:
    """Render `image` with a text renderer (halfcell/unicode) for a `box` of cells; thread-safe (own Console).

    Per image this is ~1,000 Rich styles: 5-10 ms that would otherwise run on the UI thread at every move.
    """
    width, height = box
    if width <= 0 or height <= 0:
        return None
    drawer = renderable or renderable_class(image_widget_class())
    console = Console(file=io.StringIO(), width=width, height=height, color_system="truecolor", force_terminal=True,
                      legacy_windows=False)
    options = console.options.update(width=width, height=height, highlight=False)
    segments = console.render(drawer(image, width, height), options)
    lines = [Strip(line) for line in islice(Segment.split_and_crop_lines(segments, width, include_new_lines=False,
                                                                          pad=False), height)]
    if style is not None:  # as Textual's render does: the widget's style underneath each cell's colours
        lines = [Strip(Segment.apply_style(line, style), line.cell_length) for line in lines]
    return DrawnImage(box, lines, style)


class CaptionImageView(Protocol):
    """The Captions screen's image widget (built on textual-image's untyped widget by caption_image_class)."""

    prerenders: bool  # a text renderer: cells drawn in the loading worker
    size: Size
    visual_style: VisualStyle

    def show(self, image: Any, drawn: DrawnImage | None = None) -> None: ...


def caption_image_class() -> Any:
    """The renderer chosen at start-up (halfcell in tests), in a fixed-size box that repaints without layout.

    With a text renderer (halfcell, unicode) the cells come drawn from the loading worker (`show(image,
    drawn)`): showing the next caption costs a repaint, not a render. Graphics protocols (sixel, kitty)
    render as before.
    """
    base = image_widget_class()
    cached = _IMAGE_CLASSES.get(base)
    if cached is None:
        text_renderer = renderable_class(base).__module__.rsplit(".", 1)[-1] in ("halfcell", "unicode")

        # a class on a base chosen at run time (textual-image's, untyped): the checker cannot follow it
        class CaptionImage(base, Renderable=renderable_class(base)):  # type: ignore[misc, valid-type, call-arg]
            prerenders = text_renderer
            _drawn: DrawnImage | None = None

            def show(self, image: Any, drawn: DrawnImage | None = None) -> None:
                self._drawn = drawn
                self.image = image

            def refresh(self, *regions: Any, repaint: bool = True, layout: bool = False, recompose: bool = False) -> Any:
                return super().refresh(*regions, repaint=repaint, layout=False, recompose=recompose)

            def render_line(self, y: int) -> Strip:
                drawn = self._drawn
                style = self.visual_style.rich_style
                if drawn is None or shown_image(self) is None or drawn.size != self.size or drawn.style != style:
                    return super().render_line(y)  # drawn for another box or style (resize, theme): render
                clear_dirty_regions(self)
                return drawn.lines[y] if 0 <= y < len(drawn.lines) else Strip.blank(self.size.width, style)

        cached = _IMAGE_CLASSES[base] = CaptionImage
    return cached


_IMAGE_CLASSES: dict[Any, Any] = {}


def _status_sentence(item: core.Caption, word: str) -> str:
    if item.flags & core.MISSING:
        return "missing"
    if item.flags & core.EMPTY:
        return "empty"
    if item.flags & core.AUTO:
        return "auto draft: F7 accepts, or edit it"
    if item.flags & core.UNWRITTEN:
        return "not written yet" if word in ("edited", "✓") else f"{word} · not written yet"
    return word


class TriggerScreen(ModalScreen[None]):
    """The trigger word and the captionless switch (saved as you type, like every setting)."""

    BINDINGS = [Binding("escape", "close", "Close")]
    CSS_PATH = "captions.tcss"

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Trigger word: written first in every caption file (keep_tokens = 1 keeps it in place).")
            yield SettingsForm(["dataset.trigger", "dataset.captionless"], {"dataset.trigger": "trigger", "dataset.captionless": "captionless"})
            yield Button("Done", id="trigger-done", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_close()

    @on(SettingsForm.Saved)
    def _saved(self, message: SettingsForm.Saved) -> None:
        """Enter in the trigger field is done (the word is saved; a refused one keeps the dialog open, saying why)."""
        if message.submitted:
            self.action_close()

    def action_close(self) -> None:
        self.dismiss(None)


@dataclass
class PlanReady(Message):
    """Posted by the bulk dialog's preview worker: the plan for `wanted` (mode, first field, second field)."""

    plan: core.BulkPlan
    wanted: tuple[str, str, str]


PREVIEW_PAUSE_FROM = 1000  # captions in scope: from here the preview waits for a pause in the typing
PREVIEW_PAUSE_S = 0.08


class BulkEditScreen(ModalScreen["core.BulkPlan | None"]):
    """Find/replace (plain or regex) or prefix/suffix over the listed captions, with a preview."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "apply", "Apply", priority=True),
    ]
    CSS_PATH = "captions.tcss"
    MODES = [("find / replace", "plain"), ("find / replace (regex)", "regex"), ("add prefix / suffix", "affix")]

    def __init__(self, captions: CaptionSet, scope: list[int], scope_label: str) -> None:
        super().__init__()
        self.captions = captions
        self.scope = scope
        self.scope_label = scope_label
        self.plan: core.BulkPlan | None = None  # the preview's plan, for `self._planned`
        self._planned: tuple[str, str, str] | None = None  # (mode, first, second) that `plan` was computed for
        self._wanted: tuple[str, str, str] | None = None  # what the fields say now
        self._apply_when_planned = False  # Ctrl+S/Enter before the preview caught up with the typing

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Bulk edit · {len(self.scope)} captions (filter: {self.scope_label})", classes="section-title")
            with Horizontal():
                yield Label("mode", classes="bulk-label")
                yield Select(self.MODES, value="plain", allow_blank=False, id="bulk-mode")
            with Horizontal():
                yield Label("find", classes="bulk-label", id="bulk-first-label")
                yield Input(id="bulk-first")
            with Horizontal():
                yield Label("replace", classes="bulk-label", id="bulk-second-label")
                yield Input(id="bulk-second")
            yield Static("", id="bulk-preview")
            with Horizontal(id="bulk-buttons"):
                yield Button("Apply (Ctrl+S)", id="bulk-apply", variant="primary")
                yield Button("Cancel (Esc)", id="bulk-cancel")

    def on_mount(self) -> None:
        self.query_one("#bulk-first", Input).focus()
        self._update()

    @property
    def mode(self) -> str:
        return str(self.query_one("#bulk-mode", Select).value)

    @on(Select.Changed, "#bulk-mode")
    def _mode_changed(self) -> None:
        affix = self.mode == "affix"
        self.query_one("#bulk-first-label", Label).update("prefix" if affix else "find")
        self.query_one("#bulk-second-label", Label).update("suffix" if affix else "replace")
        self._update()

    @on(Input.Changed)
    def _typed(self) -> None:
        self._update()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_apply()

    # The preview looks at every caption in scope (20,000: ~40 ms plain, ~200 ms for a regex): a worker computes
    # it, so typing here never waits for it; a plan for text typed over since is dropped.

    def _update(self) -> None:
        self._wanted = (self.mode, self.query_one("#bulk-first", Input).value, self.query_one("#bulk-second", Input).value)
        self._plan_worker(self._wanted)

    @work(thread=True, exclusive=True, group="bulk-preview", exit_on_error=False)
    def _plan_worker(self, wanted: tuple[str, str, str]) -> None:
        if len(self.scope) >= PREVIEW_PAUSE_FROM:  # while typing: only the last keystroke's plan is computed
            time.sleep(PREVIEW_PAUSE_S)
            if get_current_worker().is_cancelled:
                return
        mode, first, second = wanted
        if mode == "affix":
            plan = self.captions.plan_affix(first, second, indices=self.scope)
        else:
            plan = self.captions.plan_replace(first, second, regex=mode == "regex", indices=self.scope)
        self.post_message(PlanReady(plan, wanted))

    @on(PlanReady)
    def _plan_ready(self, message: PlanReady) -> None:
        if message.wanted != self._wanted:
            return  # typed on since: a newer plan is coming
        self.plan, self._planned = message.plan, message.wanted
        self.query_one("#bulk-preview", Static).update(preview_text(self.plan))
        self.query_one("#bulk-apply", Button).disabled = bool(self.plan.error or not self.plan.changes)
        if self._apply_when_planned:
            self._apply_when_planned = False
            self.action_apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "bulk-apply":
            self.action_apply()
        else:
            self.action_cancel()

    def action_apply(self) -> None:
        if self._planned != self._wanted:  # the preview of what the fields say is still being computed
            self._apply_when_planned = True
            return
        if self.plan is not None and not self.plan.error and self.plan.changes:
            self.dismiss(self.plan)

    def action_cancel(self) -> None:
        self.dismiss(None)


def preview_text(plan: core.BulkPlan, examples: int = 3) -> Text:
    text = Text()
    if plan.error:
        text.append(plan.error, style=tone("warning"))
        return text
    text.append(f"{len(plan.changes)} of {plan.scope} captions change", style="bold")
    for old, new in plan.examples(examples):
        text.append("\n− ", style=tone("error"))
        text.append(_clip(old), style=tone("error"))
        text.append("\n+ ", style=tone("success"))
        text.append(_clip(new), style=tone("success"))
    return text


def _clip(text: str, limit: int = 160) -> str:
    text = core.one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
