"""A Log that soft-wraps long lines at its width instead of cutting them at the right edge.

Trainer lines are often longer than an 80-column panel (paths, warnings). WrapLog keeps the lines as written
(`lines`, bounded by `max_lines`) and shows each one wrapped to the panel's width, continuation lines indented
(wrap_cells); a resize wraps them again. Lines are written as they are given: '\\r' progress redraws are
collapsed before they get here (core.logparse), so a tqdm bar is one line, as in Log.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.cells import cell_len, get_character_cell_size
from textual import events
from textual.geometry import Size
from textual.widgets import Log

if TYPE_CHECKING:
    from typing import Self


_TOKENS = re.compile(r"\s+|\S+")


def _split_at_cells(word: str, cells: int) -> tuple[str, str]:
    """`word` cut after at most `cells` terminal cells, measured as the Log draws them (rich): (head, rest)."""
    used = 0
    for index, char in enumerate(word):
        used += get_character_cell_size(char)
        if used > cells:
            return word[:index], word[index:]
    return word, ""


def wrap_cells(text: str, width: int, indent: str = "  ") -> list[str]:
    """`text` soft-wrapped into lines of at most `width` terminal cells, for a log panel: breaks at spaces where it
    can, cuts a word longer than a line (a path, a tqdm bar) where the line ends, and starts each continuation line
    with `indent` so it reads as the same log line. A line that fits (and any `width` < 8) comes back as [text]."""
    if width < 8 or (len(text) <= width and text.isascii()) or cell_len(text) <= width:
        return [text]
    text = text.expandtabs()
    lines: list[str] = []
    line = ""
    for token in _TOKENS.findall(text):
        if token.isspace():
            if line.strip() or not lines:  # kept inside a line (and as the first line's indentation)
                line += token
            continue
        size = cell_len(token)
        if size <= width - cell_len(line):
            line += token
            continue
        if line.strip() and size <= width - len(indent):  # the word fits on a line of its own: break before it
            lines.append(line.rstrip())
            line = indent + token
            continue
        while token:  # longer than a line: fill this line, then the next ones
            room = width - cell_len(line)
            head, token = _split_at_cells(token, room) if room > 0 else ("", token)
            if not head and line.strip() == "" and lines:  # a fresh line too narrow for one wide character
                head, token = token[0], token[1:]
            line += head
            if token:
                lines.append(line.rstrip() if line.strip() else line)
                line = indent
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


class WrapLog(Log):
    DEFAULT_CSS = """
    WrapLog { overflow-x: hidden; }
    """

    def __init__(self, *, max_lines: int | None = None, auto_scroll: bool = True, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(max_lines=None, auto_scroll=auto_scroll, id=id, classes=classes)  # pruned here, by line
        self.limit = max_lines
        self._source: deque[str] = deque()  # the lines as written
        self._counts: deque[int] = deque()  # how many shown (wrapped) lines each one takes
        self._wrap_width = 0  # 0: not laid out yet (lines are wrapped on the first resize)

    @property
    def lines(self) -> Sequence[str]:
        """The lines as written (not as wrapped on screen)."""
        return list(self._source)

    def _text_width(self) -> int:
        """Cells a line may take: the content width less a vertical scrollbar's (kept free whether shown or not,
        so a scrollbar appearing never hides the end of a wrapped line)."""
        width = self.size.width
        if self.styles.overflow_y != "hidden":
            width -= self.styles.scrollbar_size_vertical
        return max(0, width)

    def _wrap(self, line: str) -> list[str]:
        return wrap_cells(line, self._wrap_width) if self._wrap_width else [line]

    def write_lines(self, lines: Iterable[str], scroll_end: bool | None = None) -> Self:
        written = [part for line in lines for part in line.splitlines()]  # as Log splits them
        if self.limit is not None:
            written = written[-self.limit :]
        shown: list[str] = []
        for line in written:
            pieces = self._wrap(line)
            self._source.append(line)
            self._counts.append(len(pieces))
            shown += pieces
        dropped = 0
        while self.limit is not None and len(self._source) > self.limit:
            self._source.popleft()
            dropped += self._counts.popleft()
        if dropped:
            dropped_now = min(dropped, len(self._lines))  # the rest were in this batch
            del self._lines[:dropped_now]
            del shown[: dropped - dropped_now]
            self._render_line_cache.clear()
            self.virtual_size = Size(self._width, len(self._lines))
        return super().write_lines(shown, scroll_end)

    def write(self, data: str, scroll_end: bool | None = None) -> Self:
        """Whole lines only (a partial line would not be wrapped again): the text is written as lines."""
        return self.write_lines([data], scroll_end)

    def clear(self) -> Self:
        self._source.clear()
        self._counts.clear()
        return super().clear()

    def on_resize(self, event: events.Resize) -> None:
        width = self._text_width()
        if width != self._wrap_width:
            self._wrap_width = width
            self._rewrap()

    def _rewrap(self) -> None:
        at_end = self.is_vertical_scroll_end
        source = list(self._source)
        self.clear()
        self.write_lines(source, scroll_end=False)
        if at_end:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
