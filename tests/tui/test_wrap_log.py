"""Log panels wrap long lines (paths, warnings) at 80 columns instead of cutting them at the right edge: the wrapper
(wrap_cells), the widget (WrapLog), and the Train screen's log panel and full log as a person sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.cells import cell_len as cell_width
from textual.app import App, ComposeResult

from lorawizard.core.session.document import Session
from lorawizard.core.train.logparse import Line
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.train import FullLogScreen
from lorawizard.tui.widgets.train_panels import TrainView
from lorawizard.tui.widgets.wrap_log import WrapLog, wrap_cells

LONG = ("WARNING: model weights saved in /home/someone/loras/mychar/runs/20261125-101500/"
        + "nested-folder-" * 6 + "mychar-000008.safetensors (and a warning that goes on for a while after it)")

BARS = [f"steps: {n * 10:3d}%|{'█' * n}{' ' * (10 - n)}| {n}/10 [00:{n:02d}<00:{10 - n:02d},  1.00it/s, avr_loss=0.{n}]"
        for n in (1, 2, 10)]


def unwrap(rows: list[str], indent: str = "  ") -> str:
    """Rows of one wrapped line joined back (continuations lose their indent; a break at a space lost the space)."""
    return "".join(row if n == 0 else row[len(indent):] for n, row in enumerate(rows))


def squeeze(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("width", [8, 20, 39, 76, 119])
def test_wrapped_rows_fit_and_keep_every_character(width: int) -> None:
    rows = wrap_cells(LONG, width)
    assert len(rows) > 1
    assert all(cell_width(row) <= width for row in rows), rows
    assert all(row.startswith("  ") and not row.startswith("   ") for row in rows[1:])
    assert squeeze(unwrap(rows)) == squeeze(LONG)


def test_breaks_at_spaces_and_cuts_only_what_is_longer_than_a_line() -> None:
    assert wrap_cells("short line", 80) == ["short line"]
    assert wrap_cells("alpha beta gamma delta", 12) == ["alpha beta", "  gamma", "  delta"]
    assert wrap_cells("x" * 25, 10) == ["x" * 10, "  " + "x" * 8, "  " + "x" * 7]
    assert wrap_cells("    indented log line goes on", 16) == ["    indented log", "  line goes on"]


def test_wide_characters_count_two_cells() -> None:
    rows = wrap_cells("画像" * 20, 21)
    assert all(cell_width(row) <= 21 for row in rows) and "".join(r.strip() for r in rows) == "画像" * 20


class LogApp(App[None]):
    def compose(self) -> ComposeResult:
        yield WrapLog(max_lines=3)


def shown(log: WrapLog) -> list[str]:
    """The log's rows as drawn (its visible strips)."""
    return [log.render_line(y).text.rstrip() for y in range(log.size.height)]


async def test_the_widget_wraps_to_its_width_rewraps_on_resize_and_bounds_written_lines() -> None:
    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        log = app.query_one(WrapLog)
        log.write_lines(["first", LONG])
        await pilot.pause()
        rows = [row for row in shown(log) if row]
        assert rows[0] == "first" and all(len(row) <= 79 for row in rows)  # one column kept for the scrollbar
        assert squeeze(unwrap(rows[1:])) == squeeze(LONG)
        assert log.lines == ["first", LONG]  # as written
        assert not log.show_horizontal_scrollbar

        await pilot.resize_terminal(50, 24)
        await pilot.pause()
        narrow = [row for row in shown(log) if row]
        assert len(narrow) > len(rows) and all(len(row) <= 49 for row in narrow)
        assert squeeze(unwrap(narrow[1:])) == squeeze(LONG)

        log.write_lines(["a", "b", "c"])  # max_lines counts lines as written, wrapped or not
        await pilot.pause()
        assert log.lines == ["a", "b", "c"]
        assert [row for row in shown(log) if row] == ["a", "b", "c"]


def long_line_view(project: Path) -> TrainView:
    return TrainView(name="mychar", run_id="20261125-101500", status="running", epoch=1, epochs=4, step=10,
                     total_steps=100, new_lines=[Line("epoch 1/4"), Line(LONG)], reset_lines=True,
                     log_path=str(project / "runs" / "train.log"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_train_log_panel_shows_a_long_line_entirely(size: tuple[int, int], isolated_home: Path) -> None:
    project = isolated_home / "loras" / "mychar"
    project.mkdir(parents=True)
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        app.screen.apply_view(long_line_view(project))
        await pilot.pause(0.2)
        log = app.screen.query_one("#train-log", WrapLog)
        rows = [row for row in shown(log) if row]
    start = next(n for n, row in enumerate(rows) if row.startswith("WARNING"))
    assert squeeze(unwrap(rows[start:])) == squeeze(LONG)


async def test_full_log_wraps_and_keeps_carriage_return_redraws_collapsed(tmp_path: Path, isolated_home: Path) -> None:
    log_file = tmp_path / "train.log"
    log_file.write_text("\r".join(BARS) + "\n" + LONG + "\n")
    project = isolated_home / "loras" / "mychar"
    project.mkdir(parents=True)
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.push_screen(FullLogScreen(log_file))
        for _ in range(50):
            await pilot.pause(0.05)
            log = app.screen.query_one(WrapLog)
            if len(log.lines) == 2:
                break
        rows = [row for row in shown(log) if row]
    assert log.lines == [BARS[-1], LONG]  # a bar redrawn with '\r' is one line: its last state
    assert rows[0] == BARS[-1]
    assert squeeze(unwrap(rows[1:])) == squeeze(LONG)


def test_cells_are_counted_as_the_log_draws_them() -> None:
    # a zero-width space takes no cell on screen (rich); counting it as one wrapped this line that fits
    assert wrap_cells("x\u200b" * 15, 20) == ["x\u200b" * 15]
