"""A list of thousands of captions that costs the same per frame as a list of ten.

A line-API `ScrollView`: only the visible rows are rendered, the rows are indices into the caption set,
and filtering swaps the index list. No child widget per row (an OptionList of 5,000 entries rebuilds
everything on each filter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.segment import Segment
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from lorawizard.core.captions.captionset import (
    AUTO,
    EDITED,
    EMPTY,
    IMPORT_NOTE,
    MISSING,
    OVER_CLIP,
    OVER_T5,
    TRIGGER_TWICE,
    Caption,
    CaptionSet,
)
from lorawizard.tui._textual_hacks import set_virtual_size
from lorawizard.tui.text_fit import cut_middle


def status_of(item: Caption) -> tuple[str, str]:
    """The one word a row shows, most important first, and its kind: ok, warn or bad."""
    flags = item.flags
    if flags & MISSING:
        return "missing", "bad"
    if flags & EMPTY:
        return "empty", "bad"
    if flags & OVER_T5:
        return f"T5 {item.t5}", "bad"
    if flags & OVER_CLIP:
        return f"long {item.clip}", "warn"
    if flags & TRIGGER_TWICE:
        return "trigger×2", "warn"
    if flags & IMPORT_NOTE:
        return "note", "warn"
    if flags & AUTO:
        return "auto", "auto"  # a captioner's draft: review it (accept or edit)
    if flags & EDITED:
        return "edited", "edit"
    return "✓", "ok"  # NO_TRIGGER is said once, in the header


class CaptionList(ScrollView, can_focus=True):
    COMPONENT_CLASSES = {
        "caption-list--cursor",
        "caption-list--ok",
        "caption-list--warn",
        "caption-list--bad",
        "caption-list--edit",
        "caption-list--auto",
    }
    DEFAULT_CSS = """
    CaptionList { height: 1fr; background: $surface; }
    CaptionList > .caption-list--cursor { background: $boost; text-style: bold; }
    CaptionList:focus > .caption-list--cursor { background: $accent 50%; }
    CaptionList > .caption-list--ok { color: $text-success; }
    CaptionList > .caption-list--warn { color: $text-warning; }
    CaptionList > .caption-list--bad { color: $text-error; }
    CaptionList > .caption-list--edit { color: $text-secondary; }
    CaptionList > .caption-list--auto { color: $text-accent; }
    """
    BINDINGS = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Edit", show=False),
    ]

    @dataclass
    class Highlighted(Message):
        """The cursor is on another caption (`index` into the caption set, or None when the list is empty)."""

        caption_list: CaptionList
        index: int | None

    @dataclass
    class Selected(Message):
        caption_list: CaptionList
        index: int

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.captions: CaptionSet | None = None
        self.rows: list[int] = []
        self.cursor = 0
        # called at once when the cursor lands on another caption, before `Highlighted` is posted: what the
        # owner shows for it is then drawn in the same frame as the list (a message arrives a frame later)
        self.on_cursor: Callable[[int | None], None] | None = None

    # -- data

    def set_rows(self, captions: CaptionSet, rows: list[int], keep: int | None = None) -> None:
        """Show `rows` (indices into `captions`); the cursor stays on `keep` when it is still listed."""
        self.captions = captions
        self.rows = rows
        position = 0
        if keep is not None and rows:
            position = _position(rows, keep)
        self.cursor = position
        set_virtual_size(self, Size(self.size.width, len(rows)))
        self._scroll_cursor_into_view(center=True)
        self.refresh()
        self._announce()

    def _announce(self) -> None:
        if self.on_cursor is not None:
            self.on_cursor(self.current)
        self.post_message(self.Highlighted(self, self.current))

    @property
    def current(self) -> int | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def refresh_item(self, index: int) -> None:
        """One caption changed: repaint its row only (when it is on screen)."""
        if not self.rows:
            return
        position = _position(self.rows, index)
        if position < len(self.rows) and self.rows[position] == index:
            self.refresh_line(position - int(self.scroll_y))

    # -- moving

    def move_to(self, position: int) -> None:
        if not self.rows:
            return
        position = max(0, min(len(self.rows) - 1, position))
        if position == self.cursor:
            return
        old = self.cursor
        self.cursor = position
        self.refresh_line(old - int(self.scroll_y))
        self._scroll_cursor_into_view()
        self.refresh_line(position - int(self.scroll_y))
        self._announce()

    def action_move(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * max(1, self.scrollable_content_region.height - 1))

    def action_jump(self, position: int) -> None:
        self.move_to(len(self.rows) - 1 if position < 0 else position)

    def action_select(self) -> None:
        if self.current is not None:
            self.post_message(self.Selected(self, self.current))

    def _scroll_cursor_into_view(self, center: bool = False) -> None:
        height = self.scrollable_content_region.height or self.size.height
        if height <= 0:
            return
        top = int(self.scroll_y)
        if center and not top <= self.cursor < top + height:
            self.scroll_to(y=max(0, self.cursor - height // 2), animate=False, immediate=True)
        elif self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def on_click(self, event: object) -> None:
        y = getattr(event, "y", None)
        if isinstance(y, int):
            self.move_to(int(self.scroll_y) + y)

    def on_resize(self) -> None:
        set_virtual_size(self, Size(self.size.width, len(self.rows)))
        self._scroll_cursor_into_view(center=True)

    # -- drawing

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width or self.size.width
        position = int(self.scroll_y) + y
        if self.captions is None or not 0 <= position < len(self.rows):
            return Strip.blank(width, self.rich_style)
        item = self.captions.items[self.rows[position]]
        word, kind = status_of(item)
        selected = position == self.cursor
        base = self.rich_style
        if selected:
            base = base + self.get_component_rich_style("caption-list--cursor")
        status_style = base + self.get_component_rich_style(f"caption-list--{kind}", partial=True)
        marker = "▶" if selected else " "
        room = max(1, width - len(word) - 3)
        name = cut_middle(item.file, room)  # as Dataset cuts it: sub/…/a.jpg ≠ other/…/a.jpg, thum…0001.jpg
        left = f"{marker} {name}"
        gap = max(1, width - len(left) - len(word))
        segments = [Segment(left + " " * gap, base), Segment(word, status_style)]
        return Strip(segments, width).crop(0, width).extend_cell_length(width, base)


def _position(rows: list[int], index: int) -> int:
    """Where `index` is (or would be) in the sorted `rows`."""
    from bisect import bisect_left

    return min(bisect_left(rows, index), len(rows) - 1) if rows else 0

