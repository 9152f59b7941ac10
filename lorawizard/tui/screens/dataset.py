"""Dataset: every photo with its bucket and crop, a preview with the crop box, per-image decisions, apply.

Keys: ↑/↓ choose an image · ←/→ and Shift+↑/↓ (or Shift+arrows) move the crop · + / - crop size ·
b next bucket · r reset the crop · Space skip / use · / filter · s settings (Esc hides them) · Ctrl+R rescan ·
Ctrl+G apply. Enter scans from any settings field, and from the table until there is a scan (then it applies).
The scan and every thumbnail run in thread workers; the UI thread never decodes an image. Decisions go
into `[[dataset.images]]` at once (session.toml is written half a second after the last key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import DataTable, Input, Static

from lorawizard.core.common.fsutil import tilde_paths
from lorawizard.core.common.progress import Progress, format_progress
from lorawizard.core.dataset import step as core
from lorawizard.core.dataset.imaging import bucket_name, buckets_for, center_crop, move_crop, scale_crop
from lorawizard.core.dataset.thumbnails import ThumbnailCache, upright_preview
from lorawizard.core.session.document import SessionError
from lorawizard.tui.images import image_view, image_widget_class
from lorawizard.tui.messages import ScanProgress, StepFinished
from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.text_fit import FitName
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.settings_form import FitInput, SettingInput, SettingsForm
from lorawizard.tui.widgets.tables import Table

if TYPE_CHECKING:
    from PIL import Image  # imported where used: PIL stays off the start-up path

PREVIEW_PIXELS = 320  # longest side of a thumbnail (drawn with the crop box on top)
THUMB_CACHE = 200
MOVE_STEP = 0.1  # of the crop's own size
STATUS_WORDS = {"use": "", "small": "too small", "skip": "skipped", "duplicate": "duplicate", "bad": ""}
SETTINGS = ["dataset.source", "dataset.max_side", "dataset.num_repeats", "paths.dataset"]
# The line of keys under the table, by what has focus: the settings hidden, shown, or a settings field being edited
KEYS = "←→ ⇧↑↓ crop  +/- size  b bucket  r reset  Space skip/use  / filter  s settings"
KEYS_SETTINGS_SHOWN = "←→ ⇧↑↓ crop  +/- size  b bucket  Space skip/use  / filter  Esc hides settings"
KEYS_IN_FIELD = "Enter scans  Tab next field  Esc back to the table"


def note_of(item: core.PlanItem) -> str:
    """The short note shown in the table."""
    if item.status == "bad":
        return item.reason
    parts = [STATUS_WORDS[item.status]] if STATUS_WORDS[item.status] else []
    if item.status == "small":
        parts.append(f"{core.upscale_text(item.upscale)} up: skip")
    elif item.used and item.upscale > 1.0:  # short, first: "upscaled 1.14×" was cut to "upscaled 1.1…" at 80 columns
        parts.append(f"{core.upscale_text(item.upscale)} up" + (" (kept)" if item.upscale > core.UPSCALE_LIMIT else ""))
    parts += [n for n in item.notes if n != "crop 100%" and not n.startswith("upscaled ")]
    return " · ".join(parts)


def draw_crop(thumb: Any, item: core.PlanItem) -> Any:
    """The thumbnail with everything outside the crop dimmed and a yellow frame (a small image: cheap)."""
    from PIL import Image, ImageDraw

    if item.crop is None or not item.width:
        return thumb
    sx, sy = thumb.width / item.width, thumb.height / item.height
    left, top, right, bottom = item.crop
    box = (round(left * sx), round(top * sy), max(round(left * sx) + 1, round(right * sx) - 1), max(round(top * sy) + 1, round(bottom * sy) - 1))
    shaded = Image.blend(thumb, Image.new("RGB", thumb.size, (0, 0, 0)), 0.6)
    shaded.paste(thumb.crop(box), box[:2])
    colour = (255, 210, 0) if item.used else (200, 60, 60)
    ImageDraw.Draw(shaded).rectangle(box, outline=colour, width=max(1, thumb.width // 100))
    return shaded


@dataclass
class ScanDone(Message):
    """Posted by the scan worker: the plan for every photo."""

    plan: core.Plan


@dataclass
class ScanFailed(Message):
    """Posted by the scan worker: why there is no plan (one line)."""

    reason: str


@dataclass
class PreviewLoaded(Message):
    """Posted by the preview worker: the upright picture of `source`, or None and why it cannot be shown."""

    source: str
    thumb: Image.Image | None
    problem: str


class ImageTable(Table, inherit_bindings=False):
    """A row table whose ←/→ are free for moving the crop."""

    BINDINGS = [
        Binding("enter", "select_cursor", "Select", show=False),
        Binding("up", "cursor_up", "Cursor up", show=False),
        Binding("down", "cursor_down", "Cursor down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("ctrl+home,home", "scroll_top", "Top", show=False),
        Binding("ctrl+end,end", "scroll_bottom", "Bottom", show=False),
    ]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Enter on the empty table (nothing scanned yet) goes on to the screen's Enter, which scans: a table
        without rows took it and did nothing."""
        if action == "select_cursor" and self.row_count == 0:
            return False
        return super().check_action(action, parameters)


class DatasetScreen(StepScreen):
    STEP = "dataset"
    MAIN = "#ds-table"
    AUTO_FOCUS = None  # on_mount: the table, or the source field while there is none
    INTRO = "Turns your photos into upright, power-of-two buckets (originals untouched)."
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    FULL_BODY = True  # its own layout: a table/list and a preview side by side, filling the screen

    BINDINGS = [
        Binding("ctrl+g", "primary", "Apply", show=True, priority=True),
        Binding("shift+left", "move(-1, 0)", "Move crop", show=False),
        Binding("shift+right", "move(1, 0)", "Move crop", show=False),
        Binding("shift+up", "move(0, -1)", "Move crop", show=False),
        Binding("shift+down", "move(0, 1)", "Move crop", show=False),
        Binding("left", "move(-1, 0)", "Move crop", show=False),
        Binding("right", "move(1, 0)", "Move crop", show=False),
        Binding("plus,equals_sign", "zoom(1.1)", "Crop size", show=True, key_display="+/-"),
        Binding("minus", "zoom(0.9)", "Smaller crop", show=False),
        Binding("b", "bucket", "Bucket", show=True),
        Binding("r", "reset", "Reset crop", show=False),
        Binding("space", "toggle_skip", "Skip/use", show=True),
        Binding("slash", "filter", "Filter", show=True),
        Binding("s", "settings", "Settings", show=False),
        Binding("ctrl+r", "rescan", "Rescan", show=False),  # F5 is the GPU step
        Binding("escape", "escape", "Back", show=False),
    ]

    CSS_PATH = "dataset.tcss"

    def __init__(self) -> None:
        super().__init__()
        self.plan: core.Plan | None = None
        self.items: dict[str, core.PlanItem] = {}
        self.filter_text = ""
        self.current: str | None = None
        self._thumbs: ThumbnailCache[str] = ThumbnailCache(THUMB_CACHE)  # by source
        self._preview_timer: Timer | None = None
        self._scanning = False
        self._scanned_settings: tuple[Any, ...] = ()
        self._guess: str | None = None  # the photo folder found in the project, until the person accepts it
        self._columns_wide = False
        self._source_hint: tuple[str, str] | None = None  # the source field's own placeholder and hint, while a guess speaks

    # -- layout

    def compose_body(self) -> ComposeResult:
        yield Static("", id="ds-head")
        with Vertical(id="ds-settings"):
            yield SettingsForm(SETTINGS)
        yield FitInput(placeholder="filter: part of a name or a note (too small, duplicate, rotated, …); Esc clears",
                       id="ds-filter")
        with Horizontal(id="ds-main"):
            yield ImageTable(id="ds-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="ds-preview"):
                yield image_widget_class()(None, id="ds-image")
                yield Static("", id="ds-info")
        yield Static(KEYS, id="ds-keys")

    @property
    def table(self) -> DataTable:
        return self.query_one("#ds-table", DataTable)

    def _add_columns(self) -> None:
        """The file and source columns are wider from 110 columns on (the width the columns were made for)."""
        table = self.table
        wide = self.app.size.width >= 110
        self._columns_wide = wide
        table.add_column("file", key="file", width=24 if wide else 13)
        table.add_column("source", key="source", width=10 if wide else 9)
        table.add_column("bucket", key="bucket", width=9)  # "1024x1024" whole: the bucket is the point
        table.add_column("note", key="note")

    @on(events.Resize)
    def _fit_columns(self) -> None:
        """A terminal resized across 110 columns: the columns follow (from 80 to 120 columns they stayed narrow,
        "thumb_0001.j…" beside an empty half of the screen; from 120 to 80 the notes were cut off)."""
        if (self.app.size.width >= 110) == self._columns_wide:
            self.call_after_refresh(self._fit_note)
            return
        self.table.clear(columns=True)
        self._add_columns()
        self._fill_table()

    def _fit_note(self) -> None:
        """The note column takes what the table leaves (as wide as its longest note, it ran under the preview and
        was cut there without a mark: "rotated (EXIF 6", "too small · 4.3× up: sk"); a longer note ends with …."""
        if isinstance(self.table, Table):
            self.table.fill_width("note", 8)

    def on_mount(self) -> None:
        self._add_columns()
        self.when_mounted(self._open, "set-dataset-source")

    def _open(self) -> None:
        """The source field's guess and focus, or the table and a scan (once the form's field is mounted)."""
        table = self.table
        # saved on Enter (which scans it) or on leaving the field, as its hint says: not each pasted character
        self.query_one("#set-dataset-source", SettingInput).save_each_keystroke = False
        if not self.session.dataset.source:
            self.set_class(True, "-settings")
            field = self.query_one("#set-dataset-source", SettingInput)
            self._guess = self._guess_source()
            self._source_hint = (field.placeholder, field.hint)
            if self._guess:
                field.placeholder = f"{self._guess} (found)"  # short: the line above says what Enter does
                field.hint = "found: Enter scans it and keeps it in session.toml"
                self._set_head(Text(f"Found {self._guess}/: Enter scans it (or type another folder as source).",
                                    style=tone("warning")))
            else:
                self._set_head(Text("Choose the folder with your photos (source) and press Enter: the scan starts.",
                                    style=tone("warning")))
            field.focus()  # the one thing this screen needs first
            return
        table.focus()
        self.rescan()

    # -- scanning (a worker; progress through StepProgress messages)

    def action_rescan(self) -> None:
        self.flush()
        self.rescan()

    def rescan(self) -> None:
        self._scanned_settings = self._settings_now()
        self._scanning = True
        self._set_head(Text("scanning photos…"))
        self._scan()

    @work(thread=True, exclusive=True, group="dataset-scan", exit_on_error=False)
    def _scan(self) -> None:
        from lorawizard.core.contract import StepContext, StepFailed

        refused = wizard_app(self).store.sync()  # a hand edit of dataset.* made meanwhile counts
        if refused is not None:
            self.post_message(ScanFailed(f"not scanned: {refused}"))
            return
        ctx = StepContext(session=self.session, progress=lambda e: self.post_message(ScanProgress(e)))
        try:
            plan = core.scan_and_plan(self.session, ctx)
        except StepFailed as exc:
            self.post_message(ScanFailed(str(exc)))
            return
        except Exception as exc:  # a bug: one line here, the traceback in Textual's log
            self.post_message(ScanFailed(f"unexpected error while scanning: {exc!r}"))
            raise
        self.post_message(ScanDone(plan))

    @on(ScanDone)
    def _scan_done(self, message: ScanDone) -> None:
        self.show_plan(message.plan)

    @on(ScanFailed)
    def _scan_failed(self, message: ScanFailed) -> None:
        self._scanning = False
        self.set_class(True, "-settings")
        self._show_keys()
        # in full (the head grows to three lines), the path as a person reads it
        self._set_head(Text(f"✗ {tilde_paths(message.reason)}", style=tone("error", bold=True), overflow="fold"))

    @on(ScanProgress)
    def _scan_progress(self, message: ScanProgress) -> None:
        event: Progress = message.progress
        if self._scanning and not event.finished:
            self._set_head(Text(format_progress(event)))

    # -- the table

    def show_plan(self, plan: core.Plan) -> None:
        self._scanning = False
        for item in plan.items:  # a photo edited since its thumbnail was made
            before = self.items.get(item.source)
            if before is not None and before.sha256 != item.sha256:
                self._thumbs.forget(item.source)
        self.plan = plan
        self.items = {item.source: item for item in plan.items}
        self._thumbs.clear_failures()
        self._fill_table()
        self._update_head()

    def _visible(self) -> list[core.PlanItem]:
        if self.plan is None:
            return []
        text = self.filter_text.lower()
        if not text:
            return self.plan.items
        return [item for item in self.plan.items if text in item.source.lower() or text in note_of(item).lower()]

    def _row(self, item: core.PlanItem) -> tuple[Any, ...]:
        size = f"{item.width}×{item.height}" if item.width else "—"
        style = {"bad": tone("error"), "small": tone("warning"), "skip": "dim", "duplicate": "dim"}.get(item.status, "")
        note = Text(note_of(item), style=style, no_wrap=True, overflow="ellipsis")
        name = FitName(item.source, style="dim" if not item.used else "")  # cut in the middle, as Captions cuts it
        bucket = item.bucket_text if item.used else "—"
        return (name, size, bucket, note)

    def _fill_table(self) -> None:
        table = self.table
        keep = self.current
        table.clear()
        rows = self._visible()
        for item in rows:
            table.add_row(*self._row(item), key=item.source)
        self.call_after_refresh(self._fit_note)
        if not rows:
            self.current = None
            self._show_preview()
            return
        index = next((i for i, item in enumerate(rows) if item.source == keep), 0)
        table.move_cursor(row=index)
        self.current = rows[index].source
        self._show_preview()

    def _refresh_row(self, item: core.PlanItem) -> None:
        table = self.table
        try:
            for column, value in zip(("file", "source", "bucket", "note"), self._row(item), strict=True):
                table.update_cell(item.source, column, value)
        except Exception:  # the row is filtered out
            pass

    @on(DataTable.RowHighlighted, "#ds-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value if event.row_key is not None else None
        if key is None or key == self.current:
            return
        self.current = str(key)
        self._show_preview()

    def _set_head(self, text: Text) -> None:
        self.query_one("#ds-head", Static).update(text)

    def _update_head(self) -> None:
        if self.plan is None:
            return
        plan = self.plan
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append(f"{len(plan.used)} images", style="bold")
        for bucket, count in plan.by_bucket().items():
            head.append(f" · {bucket.replace('x', '×')}: {count}")
        skipped = sum(1 for item in plan.items if item.status in ("skip", "small", "duplicate"))
        bad = sum(1 for item in plan.items if item.status == "bad")
        head.append(f" · skipped {skipped}")
        if bad:
            head.append(f" · bad {bad}", style=tone("error"))
        if plan.ignored:
            head.append(f" · ignored {len(plan.ignored)}", style="dim")
        if self.filter_text:
            head.append(f" │ filter “{self.filter_text}”: {len(self._visible())}", style="bold")
        self._set_head(head)

    # -- preview (thumbnails decoded in a worker, cached)

    def _item(self) -> core.PlanItem | None:
        return self.items.get(self.current or "")

    def renderer_changed(self) -> None:
        """The terminal answered after this screen was drawn (images.answer): the image widget of the new kind."""
        self.call_later(self._swap_image)

    async def _swap_image(self) -> None:
        await self.query_one("#ds-image").remove()
        await self.query_one("#ds-preview").mount(image_widget_class()(None, id="ds-image"), before=0)
        self._show_preview()

    def _show_preview(self) -> None:
        item = self._item()
        info = self.query_one("#ds-info", Static)
        image = image_view(self.query_one("#ds-image"))
        if item is None:
            image.image = None
            info.update("")
            return
        info.update(self._info_text(item))
        thumb = self._thumbs.get(item.source)
        if thumb is not None:
            image.image = draw_crop(thumb.picture, item)
            return
        image.image = None
        if item.status == "bad" or self._thumbs.problem(item.source) is not None or not item.probe.ok:
            return
        if self._preview_timer is not None:
            self._preview_timer.stop()
        # A short pause first: holding ↓ through 2,000 rows must not start 2,000 decodes.
        self._preview_timer = self.set_timer(0.05, lambda: self._load_preview(item.source, item.path))

    @work(thread=True, exclusive=True, group="dataset-preview", exit_on_error=False)
    def _load_preview(self, source: str, path: Path) -> None:
        thumb, problem = upright_preview(path, PREVIEW_PIXELS)
        self.post_message(PreviewLoaded(source, thumb, problem))

    @on(PreviewLoaded)
    def _preview_loaded(self, message: PreviewLoaded) -> None:
        source, thumb, problem = message.source, message.thumb, message.problem
        if thumb is None:
            self._thumbs.fail(source, problem)
            item = self.items.get(source)
            if item is not None and item.status != "bad":
                item.notes.append(problem)
                self._refresh_row(item)
        else:
            self._thumbs.put(source, thumb)
        if source == self.current:
            self._show_preview()

    def _info_text(self, item: core.PlanItem) -> Text:
        text = Text()
        text.append(item.source.rpartition("/")[2] + "\n", style="bold")
        if item.width:
            text.append(f"{item.width}×{item.height}")
        if item.used or item.status in ("small", "skip"):
            assert item.crop is not None
            left, top, right, bottom = item.crop
            text.append(f" → {item.bucket_text}\ncrop {right - left}×{bottom - top} at {left},{top}")
            if item.crop_moved:
                text.append(" (moved)")
        text.append("\n")
        problem = self._thumbs.problem(item.source) if item.status != "bad" else None
        # the preview's problem is also one of the row's notes (the table shows it): said once, in red, below
        notes = [n for n in item.notes if not n.startswith("crop ") and n != problem]
        if notes:
            text.append("; ".join(notes) + "\n", style="italic")
        if item.status != "use":
            text.append(item.reason + "\n", style=tone("error") if item.status == "bad" else tone("warning"))
        if problem:
            text.append(problem + "\n", style=tone("error"))
        return text

    # -- decisions

    def _editable(self) -> core.PlanItem | None:
        item = self._item()
        if item is None:
            return None
        if item.status in ("bad", "duplicate"):
            self.notify(f"{item.source}: {item.reason}", severity="warning", timeout=4)
            return None
        return item

    def _decide(self, item: core.PlanItem, **values: Any) -> None:
        try:
            wizard_app(self).store.apply(lambda session: session.update_image(item.source, **values))
        except SessionError as exc:
            self.notify(str(exc), severity="error")
            return
        assert self.plan is not None
        core.replan(item, self.session.images().get(item.source, {}), self.plan.max_side)
        app = wizard_app(self)
        if app.step_states.get("dataset") == "done":
            app.set_step_state("dataset", "todo")  # decided after the last Apply: dataset/ has the old one until Apply
        self._refresh_row(item)
        self._update_head()
        self._show_preview()

    def action_move(self, dx: int, dy: int) -> None:
        item = self._editable()
        if item is None or item.crop is None or item.bucket is None:
            return
        crop = move_crop(item.crop, dx * MOVE_STEP, dy * MOVE_STEP, item.width, item.height)
        if crop != item.crop:
            self._decide(item, bucket=item.bucket_text, crop=list(crop))

    def action_zoom(self, factor: float) -> None:
        item = self._editable()
        if item is None or item.crop is None or item.bucket is None:
            return
        crop = scale_crop(item.crop, factor, item.width, item.height, item.bucket)
        if crop != item.crop:
            self._decide(item, bucket=item.bucket_text, crop=list(crop))

    def action_bucket(self) -> None:
        item = self._editable()
        if item is None or item.bucket is None or self.plan is None:
            return
        buckets = buckets_for(self.plan.max_side)
        following = buckets[(buckets.index(item.bucket) + 1) % len(buckets)] if item.bucket in buckets else buckets[0]
        self._decide(item, bucket=bucket_name(following), crop=None)

    def action_reset(self) -> None:
        item = self._editable()
        if item is None or item.bucket is None:
            return
        if item.crop != center_crop(item.width, item.height, item.bucket):
            self._decide(item, crop=None)

    def action_toggle_skip(self) -> None:
        item = self._editable()
        if item is None:
            return
        if item.status == "skip":
            self._decide(item, skip=None)
        elif item.status == "small":
            self._decide(item, skip=False)  # use anyway (upscaled)
        else:
            self._decide(item, skip=True)

    # -- saving: the session now, the file by the app's SessionStore (shortly after, off this thread)

    def flush(self) -> None:
        problem = wizard_app(self).store.flush()
        if problem is not None:
            self.notify(f"could not save: {problem}", severity="error")

    def on_screen_suspend(self) -> None:
        self.flush()

    # -- filter and settings

    def action_filter(self) -> None:
        self.set_class(True, "-filtering")
        self.query_one("#ds-filter", Input).focus()

    @on(Input.Changed, "#ds-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._fill_table()
        self._update_head()

    @on(Input.Submitted, "#ds-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.table.focus()

    def action_escape(self) -> None:
        if self.has_class("-filtering"):
            self.query_one("#ds-filter", Input).value = ""
            self.set_class(False, "-filtering")
            self.table.focus()
        elif self.in_text_field():
            self.focus_main()
        elif self.runner.running:
            self.runner.cancel()
        elif self.has_class("-settings"):
            self.set_class(False, "-settings")
            self._show_keys()

    def action_settings(self) -> None:
        """s shows the settings and puts the cursor in the first (it toggled them: after choosing the source there,
        the fields were still shown and s hid them); Esc leaves the field, Esc again hides them, as the keys say."""
        self.set_class(True, "-settings")
        self.query_one("#set-dataset-source", Input).focus()
        self._show_keys()

    @on(events.DescendantFocus)
    @on(events.DescendantBlur)
    def _show_keys(self) -> None:
        """The line of keys says what applies now: in a settings field Enter scans; shown settings hide with Esc."""
        if not self.is_mounted:
            return
        focused = self.focused
        in_settings = focused is not None and self.query_one("#ds-settings") in focused.ancestors
        keys = KEYS_IN_FIELD if in_settings else KEYS_SETTINGS_SHOWN if self.has_class("-settings") else KEYS
        self.query_one("#ds-keys", Static).update(keys)

    def _settings_now(self) -> tuple[Any, ...]:
        return tuple(self.session.get(key) for key in SETTINGS)

    def _guess_source(self) -> str | None:
        """The project folder's one folder of images, as a person would type it (relative), shown as a guess only:
        session.toml gets it when the person accepts it with Enter."""
        from lorawizard.core.dataset.scan import guess_photo_folder

        session = self.session
        paths = session.paths
        folder = guess_photo_folder(session.project_dir, [paths.dataset, paths.runs, paths.state, paths.models])
        return folder.relative_to(session.project_dir).as_posix() if folder is not None else None

    @on(SettingsForm.Saved)
    def _setting_saved(self, message: SettingsForm.Saved) -> None:
        """Enter in any settings field scans (the head said "Enter scans it" while Enter in max_side did nothing);
        leaving a field rescans once a setting really changed (the value is in the session already)."""
        if message.submitted:
            self._scan_on_enter()
        else:
            self._rescan_if_settings_changed()
        if self._source_hint is not None and self.session.dataset.source:  # "found: Enter scans it" is done with
            field = self.query_one("#set-dataset-source", SettingInput)
            (field.placeholder, field.hint), self._source_hint = self._source_hint, None

    def _scan_on_enter(self) -> None:
        """Scan now, with the guessed photo folder when no source is set (the person accepts it with Enter); with
        neither, the head keeps asking for the folder."""
        if not self.session.dataset.source:
            if not self._guess or wizard_app(self).decide("dataset.source", self._guess) is not None:
                return
            self.query_one("#set-dataset-source", Input).value = self._guess
        self.rescan()

    def _rescan_if_settings_changed(self) -> None:
        if self._settings_now() != self._scanned_settings and self.session.dataset.source:
            self.rescan()

    # -- apply

    def action_primary(self) -> None:
        """Apply; before the first scan, Enter (on the table too) scans instead, as the head line says."""
        if self.plan is None:
            if self._scanning:
                self.notify("still scanning: Apply once the photos are shown", timeout=3)
            elif self.session.dataset.source or self._guess:
                self._scan_on_enter()
            else:
                self.action_settings()  # no folder to scan: the field for it, and the head says what to type
            return
        self.flush()
        self.runner.start()

    def on_step_finished(self, message: StepFinished) -> None:
        result = message.result
        if result is not None and "plan" in result.data:
            self.show_plan(result.data["plan"])
