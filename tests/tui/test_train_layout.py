"""Train screen at 80x24 and 120x40 with a long loss history and long log lines: every panel keeps its content
inside its border, cell by cell, in the SVG screenshot a person sees (the README's) as well as in the terminal."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from textual.widget import Widget
from textual.widgets import Log

from lorawizard.core.session.document import Session
from lorawizard.core.train.logparse import Line
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.widgets.loss_chart import LossChart
from lorawizard.tui.widgets.train_panels import CheckpointPanel, ResourcePanel, TrainView
from tests.tui.test_train_screen import GPU

CHAR_WIDTH, LINE_HEIGHT, CHAR_HEIGHT = 12.2, 24.4, 20  # rich's export_svg geometry (font aspect 0.61, height 20)
TEXT = re.compile(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)" textLength="([\d.]+)"[^>]*>(.*?)</text>')
BORDER = set("│╭╮╰╯─")
BRAILLE = re.compile("[\u2801-\u28ff]")


def svg_cells(svg: str, width: int, height: int) -> tuple[list[list[str]], list[tuple[int, int, str]]]:
    """The screen as a grid of cells rebuilt from the SVG's text elements, and the elements (row, column, text)."""
    grid = [[" "] * width for _ in range(height)]
    elements = []
    for x, y, length, raw in TEXT.findall(svg):
        text = html.unescape(raw).replace("\xa0", " ")
        row, column = round((float(y) - CHAR_HEIGHT) / LINE_HEIGHT), round(float(x) / CHAR_WIDTH)
        assert round(float(length) / CHAR_WIDTH) == len(text)  # one cell per character here
        elements.append((row, column, text))
        for offset, char in enumerate(text):
            if 0 <= row < height and 0 <= column + offset < width:
                grid[row][column + offset] = char
    return grid, elements


def long_view(project: Path) -> TrainView:
    long_path = project / "runs" / "20261125-101500" / ("nested-folder-" * 12) / "mychar-000008-state" / "model.safetensors"
    lines = [Line(f"model weights saved in {long_path}"), Line("steps: " + "x" * 300), Line("epoch 9/16")]
    losses = [0.25 + 1.2 * 0.999**step + 0.05 * ((step * 7) % 5) / 5 for step in range(5000)]
    return TrainView(
        name="mychar", run_id="20261125-101500", status="running", epoch=9, epochs=16, step=5000, total_steps=8000,
        rate=1.9, elapsed_s=2600, eta_s=1500, loss=losses[-1], losses=losses, bar_line="steps: 5000/8000",
        new_lines=lines, reset_lines=True, gpu=GPU, cpu_pct=104.0, rss=14_200_000_000, procs=3,
        checkpoints=[(f"mychar-{n:06d}", n, 38_200_000) for n in range(1, 9)], states=1,
        newest_state="mychar-000008-state-with-a-rather-long-name", log_path=str(project / "runs" / "train.log"),
    )


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_no_panel_content_crosses_its_border(size: tuple[int, int], isolated_home: Path) -> None:
    project = isolated_home / "loras" / "mychar"
    project.mkdir(parents=True)
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        app.screen.apply_view(long_view(project))
        await pilot.pause(0.2)
        svg = app.export_screenshot()
        screen = app.screen
        log = screen.query_one("#train-log", Log)
        panels: list[Widget] = [screen.query_one(LossChart), screen.query_one(ResourcePanel),
                                screen.query_one(CheckpointPanel), log]
        regions = {panel: screen.find_widget(panel) for panel in panels}
        chart_content = screen.query_one(LossChart).content_region

    width, height = size
    grid, elements = svg_cells(svg, width, height)
    for panel, geometry in regions.items():
        region, visible = geometry.region, geometry.visible_region
        for row in range(visible.y, visible.bottom):
            left, right = grid[row][region.x], grid[row][region.right - 1]
            assert left in BORDER and right in BORDER, (
                f"{panel.id or type(panel).__name__} row {row}: {''.join(grid[row])!r}")
    # the loss line stays inside the chart, and each braille cell is placed at its own column in the SVG (drawn
    # as one run, a font without braille makes it wider than the cells it was given: it ran into the next panel)
    braille = [(row, column, text) for row, column, text in elements if BRAILLE.search(text)]
    assert len(braille) > 20
    for row, column, text in braille:
        assert len(text) == 1, text
        assert chart_content.contains(column, row), (row, column)
    # the log clips long lines: no horizontal scrollbar takes its last row, and paths read as the title's (~)
    assert not log.show_horizontal_scrollbar
    assert any("model weights saved in ~/loras/mychar/runs/" in line for line in log.lines)
