"""Issue 25 items 3-4 on the Train dashboard: the validation loss per epoch as the loss chart's last row, the suggested
epoch on its border, at 80x24 (inside the chart's border, the training plot still drawn)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lorawizard.core.session.document import Session
from lorawizard.core.train.suggest import suggest
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.widgets.loss_chart import LossChart, spark
from tests.tui.test_train_layout import BORDER, BRAILLE, long_view, svg_cells

VAL = {1: 0.52, 2: 0.47, 3: 0.44, 4: 0.425, 5: 0.415, 6: 0.412, 7: 0.414, 8: 0.42, 9: 0.426}


def test_spark_scales_to_the_range_and_leaves_a_gap_for_nan() -> None:
    assert spark([1.0, 2.0, 3.0], 10) == "▁▅█"
    assert spark([1.0, float("nan"), 3.0], 10) == "▁ █"
    assert spark([0.4, 0.4], 10) == "▁▁"
    assert spark([1.0, 2.0, 3.0], 2) == "▁█"  # the newest that fit
    assert spark([], 5) == ""


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_the_chart_shows_validation_and_the_suggestion(size: tuple[int, int], isolated_home: Path) -> None:
    project = isolated_home / "loras" / "mychar"
    project.mkdir(parents=True)
    found = suggest({}, VAL, saved_epochs=[2, 4, 6, 8])
    assert found is not None and found.epoch == 6
    view = dataclasses.replace(long_view(project), val_by_epoch=VAL, validating=True, suggestion=found)
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        app.screen.apply_view(view)
        await pilot.pause(0.2)
        svg = app.export_screenshot()
        chart = app.screen.query_one(LossChart)
        region, content = app.screen.find_widget(chart).region, chart.content_region
        assert chart.border_subtitle == found.line
    width, height = size
    grid, _elements = svg_cells(svg, width, height)
    rows = ["".join(grid[row][content.x:content.right]) for row in range(content.y, content.bottom)]
    assert rows[-1].lstrip().startswith("val █▅▃▂▁▁▁▂▂"), rows  # epoch 1 the highest, 6 the lowest
    assert "0.426 e9" in rows[-1]
    assert any(BRAILLE.search(row) for row in rows[:-1])  # the training loss is still plotted above it
    bottom = "".join(grid[region.bottom - 1][region.x:region.right])
    assert "suggested: epoch" in bottom and bottom[0] in BORDER and bottom[-1] in BORDER, bottom
