"""DataTables whose cells start at the column's left edge on every row, cursor or not.

A stock DataTable pads each cell with one blank on either side. The blank before the text takes the row's
style, the text its own: on the cursor row both are one run ("␠probed␠␠…"), on the other rows the blank
and a styled cell are two runs. Terminals place them alike, but SVG screenshots (and so the README's
pictures) lay out each run with its own glyph stretching, and the column visibly shifts on the cursor row.
These tables have no cell padding; each cell and header is followed by a gap of GAP blanks instead, so every
run starts where its column starts. Same widths as before: a column of width w is w + GAP cells wide.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.text import Text, TextType
from textual.widgets import DataTable
from textual.widgets._data_table import CellType, ColumnKey, RowKey, default_cell_formatter

from lorawizard.tui._textual_hacks import require_update_dimensions

GAP = 2  # blanks after each cell: the separation the stock padding (1 + 1) gave


class Gapped:
    """A cell drawn in its column's width less GAP, then GAP blanks. `str()` is the cell's own text."""

    __slots__ = ("content",)

    def __init__(self, content: object) -> None:
        self.content = content

    def __str__(self) -> str:
        return str(self.content)

    def __repr__(self) -> str:
        return f"Gapped({self.content!r})"

    def _renderable(self) -> RenderableType:
        return default_cell_formatter(self.content, wrap=False)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        inner = options.update_width(max(1, options.max_width - GAP))
        lines = console.render_lines(self._renderable(), inner, pad=True, new_lines=False)
        for index, line in enumerate(lines):
            if index:
                yield Segment.line()
            yield from line
            yield Segment(" " * GAP)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        measured = Measurement.get(console, options, self._renderable())
        return Measurement(measured.minimum + GAP, measured.maximum + GAP)


def gapped(value: object) -> object:
    """`value` with the gap after it (None stays an empty cell; already gapped stays as it is)."""
    if value is None or isinstance(value, Gapped):
        return value
    return Gapped(value)


def _label(label: TextType) -> Text:
    text = Text.from_markup(label) if isinstance(label, str) else label.copy()
    text.append(" " * GAP)
    return text


class Table(DataTable[Any]):
    """A DataTable with no cell padding and a gap after each cell (see the module's docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["cell_padding"] = 0
        super().__init__(**kwargs)

    def add_column(self, label: TextType, *, width: int | None = None, key: str | None = None,
                   default: CellType | None = None) -> ColumnKey:
        return super().add_column(_label(label), width=None if width is None else width + GAP, key=key,
                                  default=gapped(default))

    def add_row(self, *cells: CellType, height: int | None = 1, key: str | None = None,
                label: TextType | None = None) -> RowKey:
        return super().add_row(*(gapped(cell) for cell in cells), height=height, key=key, label=label)

    def add_rows(self, rows: Iterable[Iterable[CellType]]) -> list[RowKey]:
        return [self.add_row(*row) for row in rows]

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: CellType, *,
                    update_width: bool = False) -> None:
        super().update_cell(row_key, column_key, gapped(value), update_width=update_width)

    def fill_width(self, key: str, minimum: int, unsized: int = 0) -> None:
        """Column `key` takes what the other columns leave of the table's width (`unsized` before the table
        has a size), at least `minimum` + GAP."""
        column = self.columns.get(ColumnKey(key))
        width = self.size.width or unsized
        if column is None or width <= 0:
            return
        others = sum(c.get_render_width(self) for k, c in self.columns.items() if k != key)
        column.auto_width = False
        column.width = max(minimum + GAP, width - others)
        require_update_dimensions(self)
        self.refresh()
