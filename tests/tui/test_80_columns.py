"""80×24 (issue 24 item 10): the footer keeps a screen's main keys, paths are cut one way (in the middle), the step
bar leaves a gap after the current step, the help says it scrolls, and the training command's wrapped lines end `\\`."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.containers import VerticalScroll
from textual.widgets import Static

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.widgets.fit_footer import FitFooter
from lorawizard.tui.widgets.step_bar import StepBar
from tests.support.svg_cells import runs
from tests.tui import test_captions_screen as captions_tests
from tests.tui import test_dataset_screen as dataset_tests

pytestmark = pytest.mark.tui
SIZE = (80, 24)


def footer_keys(app: LoraWizardApp) -> dict[str, str]:
    """The keys the footer shows (key → description), each drawn whole inside the 80 columns."""
    from textual.widgets._footer import FooterKey

    footer = app.screen.query_one(FitFooter)
    shown = {}
    for key in footer.query(FooterKey):
        assert key.region.right <= SIZE[0], f"{key.key_display} {key.description} runs past the screen's edge"
        shown[key.key_display] = key.description
    return shown


async def test_the_captions_footer_keeps_filter_undo_bulk_and_its_main_keys(isolated_home: Path) -> None:
    app = LoraWizardApp(Session.open_project(captions_tests.demo_project(isolated_home)), start_step="captions")
    async with app.run_test(size=SIZE) as pilot:
        await captions_tests.ready(pilot)
        shown = footer_keys(app)
    for key in ("^f", "f4", "^g", "^r", "f5", "?", "q"):
        assert key in shown, f"{key} left the footer at 80 columns: {shown}"
    assert shown["^f"] == "Filter" and shown["f4"] == "Undo bulk" and shown["f5"] == "Auto-caption"


async def test_the_dataset_footer_keeps_filter_and_its_main_keys(isolated_home: Path) -> None:
    app = dataset_tests.make_app(isolated_home)
    async with app.run_test(size=SIZE) as pilot:
        await dataset_tests.settle(pilot)
        shown = footer_keys(app)
    for key in ("^g", "/", "?", "q"):
        assert key in shown, f"{key} left the footer at 80 columns: {shown}"
    assert shown["/"] == "Filter"


def svg_line(app: LoraWizardApp, line: int) -> list:
    """The text runs of one screen line as an SVG screenshot draws them (tests/support/svg_cells.py)."""
    return sorted((run for run in runs(app.export_screenshot()) if run.line == line), key=lambda run: run.column)


async def test_the_step_bar_leaves_a_gap_after_the_current_steps_highlight(isolated_home: Path) -> None:
    app = dataset_tests.make_app(isolated_home)
    async with app.run_test(size=SIZE) as pilot:
        await dataset_tests.settle(pilot)
        bar = app.screen.query_one(StepBar)
        assert bar.region.y == 0
        line = svg_line(app, 0)
    current = next(run for run in line if "●" in run.text)
    assert current.text.replace("\xa0", " ").strip() == "3● Dataset"
    after = next(run for run in line if run.column >= current.column + current.width and run.first_glyph() is not None)
    assert after.text.replace("\xa0", " ").startswith("4○ Captions"), f"the next label's run starts with a blank an SVG renderer drops: {after}"
    assert after.column >= current.column + current.width + 1, "no blank between the highlight and the next label"
    for run in line:  # every label's run starts at its glyph, so each is drawn where the terminal shows it
        if any(mark in run.text for mark in "✓●○✗"):
            assert run.first_glyph() == run.column, run


async def test_the_help_says_it_scrolls_when_it_is_cut(isolated_home: Path) -> None:
    app = LoraWizardApp(Session.open_project(captions_tests.demo_project(isolated_home)), start_step="captions")
    async with app.run_test(size=SIZE) as pilot:
        await captions_tests.ready(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        box = app.screen.query_one(VerticalScroll)
        assert box.max_scroll_y > 0  # the help is taller than 24 lines here
        shown = "".join(run.text for run in svg_line(app, box.region.bottom - 1)).replace("\xa0", " ")
        assert "more below" in shown and "scroll" in shown, shown
        await pilot.press("end")
        await pilot.pause(0.2)
        shown = "".join(run.text for run in svg_line(app, box.region.bottom - 1)).replace("\xa0", " ")
        assert "more above" in shown and "more below" not in shown, shown


async def test_the_training_commands_wrapped_lines_each_end_with_a_backslash(home_project: Path) -> None:
    from tests.tui.test_environment_screen import env_app, needs_torch_fix

    app = env_app(needs_torch_fix(home_project))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        command = app.screen.query_one("#command", Static)
        command.scroll_visible(animate=False)
        await pilot.pause(0.2)
        lines = [strip.text.rstrip() for strip in command.render_lines(command.region.reset_offset)]
    lines = [line for line in lines if line]
    assert len(lines) > 3 and "flux_train_network.py" in " ".join(lines)
    for line in lines[:-1]:
        assert line.endswith(" \\"), f"a wrapped line of the command lacks its ` \\`: {line!r}"
    assert not lines[-1].endswith("\\")


def screen_text(app: LoraWizardApp) -> list[str]:
    """The screen's lines as an SVG screenshot draws them, each run at its column (blank runs have no text there)."""
    lines = [[" "] * SIZE[0] for _ in range(SIZE[1])]
    for run in runs(app.export_screenshot()):
        column = run.column
        for char in run.text.replace("\xa0", " ").rstrip("\n"):
            if run.line < SIZE[1] and column < SIZE[0]:
                lines[run.line][column] = char
            column += 1
    return ["".join(line) for line in lines]


async def test_the_models_screen_cuts_every_path_in_the_middle(home_project: Path) -> None:
    from textual.widgets import DataTable

    from tests.support.model_files import write_model

    models = home_project / "models"
    models.mkdir()
    write_model(models / "ae.safetensors", "ae")
    app = LoraWizardApp(Session.open_project(home_project), start_step="models")
    async with app.run_test(size=SIZE) as pilot:
        await captions_tests.ready(pilot)
        table = app.screen.query_one(DataTable)
        column = sum(c.get_render_width(table) for c in list(table.columns.values())[:2])
        rows = screen_text(app)[table.region.y + 1 : table.region.y + 1 + table.row_count]
    where = [row[table.region.x + column :].rstrip() for row in rows]
    assert any("…" in cell for cell in where), where  # 80 columns: some are cut
    for cell in where:  # found or missing, a path or a repo's file: cut in its middle, its file's name whole
        for word in cell.split():
            assert "/" not in word or not word.endswith("…"), f"{cell!r}: a path cut at its end (others in the middle)"
    assert any(cell.endswith("flux1-dev-fp8.safetensors") for cell in where), where


LONG_NAME = "holiday/a_very_long_photo_name_from_the_beach_0412.jpg"


async def test_dataset_and_captions_cut_a_long_file_name_the_same_way(isolated_home: Path) -> None:
    from tests.support.captions_fixtures import make_project

    project = isolated_home / "cut-demo"
    make_project(project, [LONG_NAME, "IMG_0001.jpg"], captions={LONG_NAME: "a beach", "IMG_0001.jpg": "a cafe"})
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    shown = {}
    async with app.run_test(size=SIZE) as pilot:
        await captions_tests.ready(pilot)
        shown["captions"] = screen_text(app)
        await pilot.press("3")
        await dataset_tests.settle(pilot)
        shown["dataset"] = screen_text(app)
    for screen, lines in shown.items():
        names = [word for line in lines for word in line.split() if "…" in word and "0412" in word]
        assert names, f"{screen}: the long name is not shown cut in its middle: {lines}"
        head, _, tail = names[0].partition("…")
        assert LONG_NAME.startswith(head) and len(head) >= 4 and LONG_NAME.endswith(tail) and tail.endswith("0412.jpg"), \
            f"{screen}: {names[0]!r} is not the name's start … its end"


async def test_the_train_log_box_shows_its_bottom_border_above_the_footer(isolated_home: Path) -> None:
    """With four checkpoints (all the panel lists) and a state name on one line: a state name that wraps makes the
    side panels taller, and the box's bottom is then reached by scrolling the body."""
    from dataclasses import replace

    from textual.widgets import Log

    from tests.tui.test_train_layout import long_view

    project = isolated_home / "loras" / "mychar"
    project.mkdir(parents=True)
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        view = long_view(project)
        app.screen.apply_view(replace(view, checkpoints=view.checkpoints[:4], newest_state="mychar-000008-state"))
        await pilot.pause(0.2)
        log = app.screen.query_one("#train-log", Log)
        shown = app.screen.find_widget(log)
        footer = app.screen.query_one(FitFooter).region
        lines = screen_text(app)
    assert shown.visible_region == shown.region, f"the log box is cut: {shown.region} shows {shown.visible_region}"
    assert shown.region.bottom <= footer.y
    bottom = lines[shown.region.bottom - 1]
    assert bottom[shown.region.x] == "╰" and bottom[shown.region.right - 1] == "╯", bottom
