"""Reads where each text run of a Textual SVG screenshot starts, in terminal cells.

An SVG screenshot draws each run of equally styled cells as one `<text>` at its x position; a renderer then
stretches the run's glyphs to its `textLength`. Two runs that show the same column must therefore start at
that column (not at a blank before it) to be drawn at the same x.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from rich.cells import cell_len

_TEXT = re.compile(r'<text class="[^"]*" x="([\d.]+)" y="[\d.]+" textLength="([\d.]+)" '
                   r'clip-path="url\(#[\w-]*line-(\d+)\)">([^<]*)</text>')
BLANKS = " \u00a0"


@dataclass(frozen=True)
class Run:
    line: int
    column: int  # the cell where the run starts
    text: str

    @property
    def width(self) -> int:
        return cell_len(self.text)

    def first_glyph(self) -> int | None:
        """The cell of the run's first non-blank character (None: all blank)."""
        stripped = self.text.lstrip(BLANKS)
        return self.column + cell_len(self.text[: len(self.text) - len(stripped)]) if stripped else None


def runs(svg: str) -> list[Run]:
    found = [(float(x), float(length), int(line), html.unescape(text)) for x, length, line, text in _TEXT.findall(svg)]
    widths = [length / cell_len(text) for _, length, _, text in found if cell_len(text)]
    if not widths:
        return []
    cell = min(widths)  # every run is a whole number of cells wide
    return [Run(line, round(x / cell), text) for x, _, line, text in found]


def run_at(all_runs: list[Run], line: int, column: int) -> Run | None:
    for run in all_runs:
        if run.line == line and run.column <= column < run.column + run.width:
            return run
    return None


def first_text(all_runs: list[Run], line: int, start: int, end: int) -> Run | None:
    """The first run on `line` with a non-blank character in the cells [start, end)."""
    for run in sorted((r for r in all_runs if r.line == line), key=lambda r: r.column):
        glyph = run.first_glyph()
        if glyph is not None and start <= glyph < end and run.column < end:
            return run
    return None
