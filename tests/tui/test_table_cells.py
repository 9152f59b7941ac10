"""Every DataTable in the app: each column's text starts at the column's left edge, on the cursor row as on the
others, in an SVG screenshot (the README's pictures). A stock DataTable's blank cell padding joins the cursor
row's run but not the others', and SVG renderers then draw the column shifted on the cursor row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.widgets import DataTable

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from tests.support import svg_cells
from tests.support.fake_nvml import install
from tests.support.model_files import write_model
from tests.tui.test_dataset_screen import demo_project
from tests.tui.test_dataset_screen import settle as dataset_settle
from tests.tui.test_gpu_screen import settle, with_dataset
from tests.unit.test_probe import PixelBudgetRunner, budget_gpu

TUI = Path(__file__).resolve().parents[2] / "lorawizard" / "tui"


def column_starts(app: LoraWizardApp, table: DataTable) -> dict[int, list[tuple[str, int, int]]]:
    """Per screen line of `table`: (column, where its run starts, where its first glyph is) for each non-empty cell."""
    all_runs = svg_cells.runs(app.export_screenshot())
    region = table.content_region
    shown = region.intersection(table.screen.find_widget(table).clip)  # what scrolling parents leave visible
    lines: dict[int, list[tuple[str, int, int]]] = {}
    rows: list[tuple[int, list[object]]] = []
    if table.show_header:
        rows.append((region.y, [column.label for column in table.ordered_columns]))
    for index in range(table.row_count):
        line = region.y + table.header_height * table.show_header + index - round(table.scroll_y)
        if shown.y <= line < shown.bottom:
            rows.append((line, list(table.get_row_at(index))))
    for line, cells in rows:
        if not shown.y <= line < shown.bottom:
            continue
        x = region.x - round(table.scroll_x)
        for column, cell in zip(table.ordered_columns, cells, strict=True):
            if str(cell).strip() and shown.x <= x < shown.right:
                width = column.get_render_width(table)
                run = svg_cells.first_text(all_runs, line, x, x + width)
                assert run is not None, f"#{table.id}: no text at line {line}, columns {x}-{x + width}"
                glyph = run.first_glyph()
                lines.setdefault(line, []).append((str(column.key.value), run.column, -1 if glyph is None else glyph))
            x += column.get_render_width(table)
    return lines


def assert_columns_aligned(app: LoraWizardApp) -> int:
    """Every cell of every DataTable on the screen starts its own run at its column's left edge; returns how many
    tables were checked."""
    tables = list(app.screen.query(DataTable))
    checked = 0
    for table in tables:
        if not table.display:
            continue
        region = table.content_region
        x, edges = region.x - round(table.scroll_x), {}
        for column in table.ordered_columns:
            edges[str(column.key.value)] = x
            x += column.get_render_width(table)
        lines = column_starts(app, table)
        for line, cells in lines.items():
            for key, run_start, glyph in cells:
                assert (run_start, glyph) == (edges[key], edges[key]), (
                    f"#{table.id} line {line} column {key!r}: run starts at {run_start}, text at {glyph}, "
                    f"column at {edges[key]} (cursor row {table.cursor_row})")
        checked += bool(lines)
    assert checked, "no table on the screen was checked"
    return len(tables)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_gpu_tables_after_a_probe(home_project: Path, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]) -> None:
    install(monkeypatch, budget_gpu(3 * 1024 * 1024))
    session = with_dataset(home_project)
    session.set("gpu.vram_preset", "24gb")
    app = LoraWizardApp(session, start_step="probe",
                        step_options={"probe": {"trial_runner": PixelBudgetRunner(budget=3 * 1024 * 1024)}})
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+g")
        await settle(pilot)
        assert assert_columns_aligned(app) == 3  # buckets, trials, fit candidates


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_models_table(home_project: Path, size: tuple[int, int]) -> None:
    (home_project / "models").mkdir()
    write_model(home_project / "models" / "ae.safetensors", "ae")  # found by name, an AE by its header
    app = LoraWizardApp(Session.open_project(home_project), start_step="models")
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        app.screen.query_one(DataTable).move_cursor(row=1)  # the cursor on the found row
        await pilot.pause()
        assert assert_columns_aligned(app) == 1


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_dataset_table(isolated_home: Path, size: tuple[int, int]) -> None:
    app = LoraWizardApp(Session.open_project(demo_project(isolated_home)), start_step="dataset")
    async with app.run_test(size=size) as pilot:
        await dataset_settle(pilot)
        await pilot.press("down")
        await dataset_settle(pilot)
        assert assert_columns_aligned(app) == 1


def test_every_table_in_the_app_is_one_of_these() -> None:
    """A new stock DataTable would bring the cell padding back: the tables above are all there are."""
    stock = [f"{path.name}:{number}" for path in TUI.rglob("*.py") if path.name != "tables.py"
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\bDataTable\(|class \w+\(DataTable\b", line)]
    assert stock == []
