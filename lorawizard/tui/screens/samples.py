"""Samples view of the Train screen: one row per prompt, one column per epoch (baseline first), filling in live.

A thread worker rescans the run's `sample/` folders (core.samples.gallery: sd-scripts' real names, foreign and
half-written files skipped) and posts the grid only when it changed. Columns page to fit the terminal (80×24:
four epochs a page). Keys: ←/→ epoch, ↑/↓ prompt, [ / ] page, Enter one image large, k keeps the epoch's LoRA,
Esc (or g again) back to the Train screen; ? and q as everywhere (help, quit).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Static

from lorawizard.core.session.document import SessionError
from lorawizard.core.train.samples import Gallery
from lorawizard.tui.messages import Notice
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.fit_footer import FitFooter

LABEL_WIDTH = 14
RESCAN_S = 1.0


@dataclass
class GalleryChanged(Message):
    gallery: Gallery


def page_layout(width: int, height: int, rows: int) -> tuple[int, int, int]:
    """(cell width, cell height, columns per page) for a grid of `rows` prompts in a width×height area."""
    rows = max(1, rows)
    cell_h = max(3, min(12, (height - 3) // rows))
    cell_w = 2 * cell_h  # half-cell blocks: two pixels per row, so 2h columns draw a square image
    columns = max(1, (width - LABEL_WIDTH) // (cell_w + 1))
    return cell_w, cell_h, columns


def epoch_label(epoch: int, last: int | None, width: int | None = None) -> str:
    """`epoch 8 (final)`, shortened to fit `width` cells without losing "final" (80x24: "epoch 8 (final" was cut)."""
    if epoch == 0:
        return "baseline"
    if not (last and epoch == last):
        return f"epoch {epoch}"
    for label in (f"epoch {epoch} (final)", f"epoch {epoch} final", f"final ({epoch})", f"final {epoch}"):
        if width is None or len(label) <= width:
            return label
    return f"e{epoch} final"


class SampleCell(Vertical):
    """One sample image (or its placeholder) in the gallery grid; the cursor's cell is `-cursor`."""


class SamplesScreen(Screen[None]):
    HELP_TITLE = "Samples"  # the help's "Keys on …" (it said Train, the screen below)
    BINDINGS = [
        Binding("escape,g", "dismiss", "Back"),  # q quits, as on every screen (the app's action_quit: flushes first)
        Binding("left,h", "move(0, -1)", "Epoch ←", show=False),
        Binding("right,l", "move(0, 1)", "Epoch →", show=False),
        Binding("up", "move(-1, 0)", "Prompt ↑", show=False),
        Binding("down", "move(1, 0)", "Prompt ↓", show=False),
        Binding("left_square_bracket,pageup", "page(-1)", "Page ←"),
        Binding("right_square_bracket,pagedown", "page(1)", "Page →"),
        Binding("enter", "open", "Large"),
        Binding("k", "keep", "Keep epoch"),
    ]
    CSS_PATH = "samples.tcss"

    def __init__(self, run_dirs: list[Path], output_name: str, prompts: list[str], *, last_epoch: int | None = None,
                 gallery: Gallery | None = None, live: bool = True) -> None:
        super().__init__()
        self.run_dirs, self.output_name, self.prompts = run_dirs, output_name, prompts
        self.last_epoch = last_epoch
        self.gallery = gallery or Gallery(prompts=list(prompts), rows=len(prompts))
        self.live = live
        self.row = 0
        self.col = 0  # index into gallery.epochs
        self.first = 0  # first epoch index shown
        self._stop = threading.Event()
        self._chosen = False  # the person moved to, paged to or opened an epoch: new epochs no longer move the cursor
        self._drawn: tuple[Any, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="samples-title")
        yield Static("", id="samples-epochs")
        yield Vertical(id="samples-grid")
        yield Static("", id="samples-info")
        yield FitFooter()  # as on the step screens: ? Help and q Quit kept, the palette hint only when it fits

    def on_mount(self) -> None:
        if self.live:
            self._scan(self._stop)
        self.call_after_refresh(self.redraw)

    def on_unmount(self) -> None:
        self._stop.set()

    def on_resize(self) -> None:
        self.call_after_refresh(self.redraw)

    @work(thread=True, exclusive=True, group="samples-scan", exit_on_error=False)
    def _scan(self, stop: threading.Event) -> None:
        from lorawizard.core.train.samples import gallery

        seen = None
        while not stop.is_set():
            grid = gallery(self.run_dirs, self.output_name, self.prompts)
            signature = tuple(sorted((k, v.path) for k, v in grid.cells.items()))
            if signature != seen:
                seen = signature
                self.post_message(GalleryChanged(grid))
            stop.wait(RESCAN_S)

    @on(GalleryChanged)
    def _changed(self, message: GalleryChanged) -> None:
        following_newest = not self.gallery.epochs or (self.col == len(self.gallery.epochs) - 1 and not self._chosen)
        self.gallery = message.gallery
        if following_newest:
            self.col = max(0, len(self.gallery.epochs) - 1)
        self.redraw()

    # -- drawing

    def _layout(self) -> tuple[int, int, int]:
        return page_layout(self.size.width or 80, self.size.height or 24, self.gallery.rows)

    def redraw(self) -> None:
        grid = self.gallery
        cell_w, cell_h, columns = self._layout()
        epochs = grid.epochs
        self.col = min(self.col, max(0, len(epochs) - 1))
        self.row = min(self.row, max(0, grid.rows - 1))
        if self.col < self.first:
            self.first = self.col
        elif self.col >= self.first + columns:
            self.first = self.col - columns + 1
        shown = epochs[self.first : self.first + columns]
        pages = max(1, -(-len(epochs) // columns))
        # counted from the newest epoch: the window that ends with it is the last page (it opens there)
        page = pages - -(-max(0, len(epochs) - self.first - columns) // columns)
        columns_text = f"{len(epochs)} column" + ("" if len(epochs) == 1 else "s")
        title = Text(f" samples · {self.output_name} · {columns_text}", no_wrap=True, overflow="ellipsis")
        if pages > 1:
            title.append(f" · page {page}/{pages} ([ ])")
        self.query_one("#samples-title", Static).update(title)
        header = Text(" " * LABEL_WIDTH, no_wrap=True, overflow="ellipsis")
        for index, epoch in enumerate(shown):
            label = epoch_label(epoch, self.last_epoch, cell_w)[: cell_w].ljust(cell_w + 1)
            header.append(label, style="bold reverse" if self.first + index == self.col else "bold")
        self.query_one("#samples-epochs", Static).update(header)
        drawn = (tuple(shown), cell_w, cell_h, tuple(sorted((k, v.path) for k, v in grid.cells.items() if k[1] in shown)))
        if drawn != self._drawn:
            self._drawn = drawn
            self._rebuild(shown, cell_w, cell_h)
        for cell in self.query(SampleCell):
            cell.set_class(cell.name == f"{self.row}:{self.col}", "-cursor")
        self._info()

    def _rebuild(self, shown: list[int], cell_w: int, cell_h: int) -> None:
        from lorawizard.tui.images import image_widget_class

        box = self.query_one("#samples-grid", Vertical)
        box.remove_children()
        rows: list[Widget] = []
        for row in range(self.gallery.rows):
            prompt = self.gallery.prompts[row] if row < len(self.gallery.prompts) else ""
            label = Static(Text(f"{row + 1} {' '.join(prompt.split())}", overflow="ellipsis"), classes="samples-label")
            cells = []
            for offset, epoch in enumerate(shown):
                image = self.gallery.image(row, epoch)
                if image is not None:
                    try:
                        inner = image_widget_class()(str(image.path))
                    except Exception:  # noqa: BLE001 - an unreadable image shows as a gap
                        inner = Static("?", classes="empty")
                else:
                    inner = Static("·", classes="empty")
                cell = SampleCell(inner, name=f"{row}:{self.first + offset}")
                cell.styles.width, cell.styles.height = cell_w, cell_h
                cells.append(cell)
            line = Horizontal(label, *cells, classes="samples-row")
            line.styles.height = cell_h
            rows.append(line)
        if not rows or not shown:
            rows = [Static("no samples yet: sd-scripts writes them at the first sampling (baseline) and every "
                           "train.samples.every_n_epochs epochs", classes="samples-label")]
        box.mount_all(rows)

    def _info(self) -> None:
        grid = self.gallery
        info = Text(no_wrap=True, overflow="ellipsis")
        if grid.epochs:
            epoch = grid.epochs[self.col]
            prompt = grid.prompts[self.row] if self.row < len(grid.prompts) else ""
            info.append(f" {epoch_label(epoch, self.last_epoch)} · prompt {self.row + 1}: ")
            info.append(" ".join(prompt.split()), style="italic")
        self.query_one("#samples-info", Static).update(info)

    # -- actions

    def action_move(self, rows: int, cols: int) -> None:
        self._chosen = True
        self.row = max(0, min(self.gallery.rows - 1, self.row + rows))
        self.col = max(0, min(len(self.gallery.epochs) - 1, self.col + cols))
        self.redraw()

    def action_page(self, pages: int) -> None:
        """Moves the window a page of columns, never past either end (so a page is always full: the last one ends
        with the newest epoch, the first one begins with the oldest); the cursor moves along with it."""
        self._chosen = True
        _, _, columns = self._layout()
        count = len(self.gallery.epochs)
        first = max(0, min(count - columns, self.first + pages * columns))
        self.col = max(first, min(first + columns - 1, count - 1, self.col + first - self.first))
        self.first = first
        self.redraw()

    def selected(self) -> tuple[int, Any] | None:
        if not self.gallery.epochs:
            return None
        epoch = self.gallery.epochs[self.col]
        return epoch, self.gallery.image(self.row, epoch)

    def action_open(self) -> None:
        chosen = self.selected()
        if chosen is None or chosen[1] is None:
            self.notify("no image here yet")
            return
        self._chosen = True  # k after the large view keeps this epoch, even if a newer one arrived meanwhile
        epoch, image = chosen
        prompt = self.gallery.prompts[self.row] if self.row < len(self.gallery.prompts) else ""
        self.app.push_screen(LargeSample(image.path, f"{epoch_label(epoch, self.last_epoch)} · {' '.join(prompt.split())}"))

    def action_keep(self) -> None:
        chosen = self.selected()
        if chosen is None:
            self.notify("no epoch to keep yet")
            return
        if chosen[0] == 0:
            self.notify("the baseline is the untrained model: choose an epoch", severity="warning")
            return
        self._keep(chosen[0])

    @work(thread=True, exclusive=True, group="samples-keep", exit_on_error=False)
    def _keep(self, epoch: int) -> None:
        from lorawizard.core.train.keep import KeepError, keep_epoch

        store = wizard_app(self).store
        try:
            kept = keep_epoch(store.session, epoch)
            store.decide("train.keep_epoch", epoch)  # the store is thread-safe: no hop to the UI thread
        except (KeepError, SessionError) as exc:
            self.post_message(Notice(str(exc), "error"))  # shown by the App
            return
        self.post_message(Notice(f"kept epoch {kept.epoch}: {kept.lora} (+ {kept.sidecar.name})"))


class LargeSample(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]
    CSS_PATH = "samples.tcss"

    def __init__(self, path: Path, caption: str) -> None:
        super().__init__()
        self.path, self.caption = path, caption

    def compose(self) -> ComposeResult:
        from lorawizard.tui.images import image_widget_class

        box = Vertical()
        box.border_title = self.caption
        box.border_subtitle = f"{self.path.name} · Esc closes"
        with box:
            yield image_widget_class()(str(self.path))
