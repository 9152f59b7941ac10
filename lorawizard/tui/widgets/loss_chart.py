"""A small braille line chart of the loss (bounded: it only ever draws width×2 points); with validation, its last row
is the validation loss per epoch (one block each) and the border's foot the suggested epoch."""

from __future__ import annotations

import math

from rich.text import Text
from textual.reactive import var
from textual.widget import Widget

from lorawizard.core.train.dashboard import TrainView
from lorawizard.tui.tones import tone

_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # braille dot bits by (row 0..3, column 0..1)
BLANK = chr(0x2800)
# The chart is drawn one segment per cell, empty cells as spaces: an SVG screenshot then places every braille
# cell at its own column. Drawn as one run, a renderer whose monospace font has no braille (DejaVu Sans Mono)
# takes wider glyphs from another font and the line runs past the panel's border into the next one.


def braille_plot(values: list[float], width: int, height: int) -> tuple[list[str], float, float] | None:
    """`values` → `height` strings of `width` braille cells (2×4 dots each), with the y range used."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite or width < 1 or height < 1:
        return None
    low, high = min(finite), max(finite)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    columns = width * 2
    if len(values) > columns:  # mean per bin
        size = len(values) / columns
        binned = []
        for i in range(columns):
            chunk = [v for v in values[int(i * size) : max(int(i * size) + 1, int((i + 1) * size))] if math.isfinite(v)]
            binned.append(sum(chunk) / len(chunk) if chunk else float("nan"))
        values = binned
    rows = height * 4
    cells = [[0] * width for _ in range(height)]
    previous: int | None = None
    stretch = (columns - 1) / (len(values) - 1) if 1 < len(values) < columns else 1.0
    last_x = -1
    for index, value in enumerate(values):
        x = round(index * stretch)
        if not math.isfinite(value):
            previous = None
            continue
        y = round((high - value) / (high - low) * (rows - 1))
        if previous is None:
            cells[y // 4][x // 2] |= _DOTS[y % 4][x % 2]
        else:  # connect to the previous point: a line, not scattered dots
            for step_x in range(last_x + 1, x + 1):
                t = (step_x - last_x) / (x - last_x)
                mid = round(previous + (y - previous) * t)
                low_y, high_y = sorted((round(previous + (y - previous) * (step_x - 1 - last_x) / (x - last_x)), mid))
                for dot_y in range(low_y, high_y + 1):
                    cells[dot_y // 4][step_x // 2] |= _DOTS[dot_y % 4][step_x % 2]
        previous, last_x = y, x
    return ["".join(chr(0x2800 + bits) for bits in row) for row in cells], low, high


_BLOCKS = "▁▂▃▄▅▆▇█"


def spark(values: list[float], width: int) -> str:
    """One block per value (its height scaled to the values' range), the newest `width`; a space where not finite."""
    values = values[-width:] if width > 0 else []
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = high - low
    top = len(_BLOCKS) - 1
    return "".join(_BLOCKS[round((v - low) / span * top) if span > 1e-12 else 0] if math.isfinite(v) else " "
                   for v in values)


class LossChart(Widget):
    """The loss history of the Train screen's `view` (bound to it, see train_panels)."""

    DEFAULT_CSS = """
    LossChart { height: 8; border: round $primary 50%; border-title-color: $text-muted; padding: 0 1; }
    """

    view: var[TrainView] = var(TrainView, init=False)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.values: list[float] = []
        self.latest: float | None = None
        self.val_by_epoch: dict[int, float] = {}
        self.suggested: int | None = None
        self.border_title = "loss (avr_loss)"

    def watch_view(self, view: TrainView) -> None:
        self.val_by_epoch = view.val_by_epoch
        suggestion = view.suggestion
        self.suggested = suggestion.epoch if suggestion is not None else None
        if suggestion is not None:
            self.border_subtitle = suggestion.line
        elif view.validating:
            self.border_subtitle = "validation: after the first epoch"
        else:
            self.border_subtitle = ""
        self.set_values(view.losses, view.loss)

    def set_values(self, values: list[float], latest: float | None) -> None:
        self.values, self.latest = values, latest
        latest_text = "nan" if latest is not None and math.isnan(latest) else (f"{latest:.4g}" if latest is not None else "–")
        self.border_title = f"loss (avr_loss) · latest {latest_text}"
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        label_width = 7
        val_row = self._val_row(width) if self.val_by_epoch and height >= 3 else None
        if val_row is not None:
            height -= 1
        plot = braille_plot(self.values, max(1, width - label_width), max(1, height))
        if plot is None:
            return Text("waiting for the first steps…", style="dim")
        rows, low, high = plot
        text = Text(no_wrap=True, overflow="crop")
        line_style = tone("info", bold=True)
        for index, row in enumerate(rows):
            if index == 0:
                label = f"{high:.3g}"
            elif index == len(rows) - 1:
                label = f"{low:.3g}"
            else:
                label = ""
            text.append(label.rjust(label_width - 1)[: label_width - 1] + " ", style="dim")
            for cell in row:  # one segment per cell, see below
                text.append(cell if cell != BLANK else " ", style=line_style)
            if index < len(rows) - 1:
                text.append("\n")
        if val_row is not None:
            text.append("\n")
            text.append_text(val_row)
        return text

    def _val_row(self, width: int) -> Text:
        """`val ▆▄▂▁▂▃▅ 0.431 e10`: the validation loss per validated epoch, the suggested one marked."""
        epochs = sorted(self.val_by_epoch)
        latest_epoch = epochs[-1]
        latest = self.val_by_epoch[latest_epoch]
        tail = f" {latest:.3g} e{latest_epoch}"
        room = max(1, width - 4 - len(tail))
        shown = epochs[-room:]
        blocks = spark([self.val_by_epoch[e] for e in shown], room)
        row = Text(no_wrap=True, overflow="crop")
        row.append("val ", style="dim")
        for epoch, block in zip(shown, blocks, strict=False):
            row.append(block, style=tone("success", bold=True) if epoch == self.suggested else tone("warning"))
        row.append(tail, style="dim")
        return row
