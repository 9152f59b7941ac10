"""Samples across runs (issue 25 item 5): rows of prompts, columns of (run, epoch) epoch by epoch; r picks the runs,
e shows one epoch across them, , / . step the epoch, k keeps the focused run's epoch (a variant's too)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lorawizard.core.session.document import Session
from lorawizard.core.train.compare import project_runs
from lorawizard.core.train.samples import gallery, read_prompts
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.samples import RunPicker, SamplesScreen
from tests.support.fake_runs import make_run
from tests.support.sessions import save

BASE_ARGV = ["--max_train_epochs", "8"]


@pytest.fixture
def project(home_project: Path) -> Session:
    """base (epochs 0, 4, 8), the variant fp16 (4, 8) and an earlier base run (0, 4)."""
    session = Session.open_project(home_project)
    session.set("name", "mychar")
    session.set("train.max_train_epochs", 8)
    session.set("train.save_every_n_epochs", 4)
    save(session)
    make_run(session, "20261120-090000", epochs=[0, 4], started_ts=100, shade=5, argv=BASE_ARGV)
    make_run(session, "20261125-101500", epochs=[0, 4, 8], started_ts=200, argv=BASE_ARGV)
    make_run(session, "20261125-131500", variant="fp16", epochs=[4, 8], started_ts=300, shade=60, argv=BASE_ARGV)
    return session


def _screen(session: Session) -> SamplesScreen:
    groups = project_runs(session)
    base = groups[0]
    return SamplesScreen(base.run_dirs, "mychar", read_prompts(base.tip.dir), last_epoch=8,
                         gallery=gallery(base.run_dirs, "mychar", list(base.prompts)), live=False, groups=groups)


def _push(screen: SamplesScreen):
    async def run_before(pilot) -> None:  # noqa: ANN001
        await pilot.app.push_screen(screen)
        await pilot.pause(0.3)

    return run_before


def _text(screen: SamplesScreen, widget: str) -> str:
    return str(screen.query_one(widget).render())


def test_snapshot_compare_80x24(snap_compare, project: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lorawizard.tui.screens.samples.suggestions_for", lambda groups: {})  # no validation
    app = LoraWizardApp(Session.open_project(project.project_dir), start_step="train")
    assert snap_compare(app, terminal_size=(80, 24), run_before=_push(_screen(project)))


def test_snapshot_compare_120x40(snap_compare, project: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lorawizard.tui.screens.samples.suggestions_for", lambda groups: {})  # no validation
    app = LoraWizardApp(Session.open_project(project.project_dir), start_step="train")
    assert snap_compare(app, terminal_size=(120, 40), run_before=_push(_screen(project)))


async def test_runs_side_by_side_epoch_by_epoch(project: Session) -> None:
    app = LoraWizardApp(Session.open_project(project.project_dir), start_step="train")
    screen = _screen(project)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(screen)
        await pilot.pause(0.2)
        # the earlier base run is hidden at first; the queue's runs epoch by epoch
        assert screen.grid.columns == [("base", 0), ("base", 4), ("fp16", 4), ("base", 8), ("fp16", 8)]
        assert "2 of 3 runs" in _text(screen, "#samples-title")
        assert screen.query_one("#samples-runs").display
        screen.col = 0
        screen.redraw()
        await pilot.press("right", "right")
        assert screen.focused_group().label == "fp16" and screen.selected()[0] == 4
        assert "fp16 · epoch 4" in _text(screen, "#samples-info")
        await pilot.press("comma")  # the same run's previous epoch: fp16 has none before 4
        assert screen._focused() == ("fp16", 4)
        await pilot.press("full_stop")
        assert screen._focused() == ("fp16", 8)


async def test_one_epoch_across_runs_and_back(project: Session) -> None:
    app = LoraWizardApp(Session.open_project(project.project_dir), start_step="train")
    screen = _screen(project)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(screen)
        await pilot.pause(0.2)
        screen.col = screen.grid.columns.index(("fp16", 8))
        await pilot.press("e")
        assert screen.grid.columns == [("base", 8), ("fp16", 8)] and screen._focused() == ("fp16", 8)
        assert "epoch 8 across runs" in _text(screen, "#samples-title")
        await pilot.press("comma")  # epoch 4 across runs
        assert screen.grid.columns == [("base", 4), ("fp16", 4)] and screen._focused() == ("fp16", 4)
        await pilot.press("comma")  # the baseline: fp16 has none, and says so
        assert screen.grid.columns == [("base", 0)]
        assert "no epoch 0: fp16" in _text(screen, "#samples-info")
        await pilot.press("e")  # every epoch again, the cursor where it was
        assert len(screen.grid.columns) == 5 and screen._focused() == ("base", 0)


async def test_r_picks_the_runs_shown(project: Session) -> None:
    app = LoraWizardApp(Session.open_project(project.project_dir), start_step="train")
    screen = _screen(project)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(screen)
        await pilot.pause(0.2)
        await pilot.press("r")
        assert isinstance(app.screen, RunPicker)
        await pilot.press("down", "down", "space")  # tick the earlier run
        await pilot.press("escape")  # Esc changes nothing
        assert "base@20261120-090000" not in {label for label, _ in screen.grid.columns}
        await pilot.press("r")
        await pilot.press("down", "down", "space", "up", "space")  # tick the earlier run, untick fp16
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.screen is screen
        assert {label for label, _ in screen.grid.columns} == {"base", "base@20261120-090000"}
        assert "2 of 3 runs" in _text(screen, "#samples-title")


async def test_k_keeps_the_focused_variants_epoch_and_publish_takes_it(project: Session) -> None:
    from lorawizard.core.train.keep import kept_lora

    app = LoraWizardApp(Session.open_project(project.project_dir), start_step="train")
    screen = _screen(project)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(screen)
        await pilot.pause(0.2)
        screen.col = screen.grid.columns.index(("fp16", 8))
        screen.redraw()
        await pilot.press("k")
        kept = project.project_dir / "loras" / "mychar-fp16-e8.safetensors"
        deadline = time.monotonic() + 10
        while not kept.is_file() or app.session.get("train.keep_epoch") != 8:
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        assert not (project.project_dir / "loras" / "mychar-e8.safetensors").exists()
    assert kept_lora(Session.load(project.path)) == kept


async def test_one_run_keeps_the_old_look(home_project: Path) -> None:
    """A project with one run: no run labels, no r or e in the footer, e does nothing."""
    session = Session.open_project(home_project)
    session.set("name", "mychar")
    save(session)
    make_run(session, "20261125-101500", epochs=[0, 4], started_ts=200)
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    screen = _screen(session)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(screen)
        await pilot.pause(0.2)
        assert not screen.query_one("#samples-runs").display and "· mychar ·" in _text(screen, "#samples-title")
        assert screen.check_action("across", ()) is False
        await pilot.press("e")
        assert screen.across is None and len(screen.grid.columns) == 2


async def test_the_focused_runs_suggestion_shows_and_K_keeps_it(project: Session,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.tui.screens import samples as samples_screen

    monkeypatch.setattr(samples_screen, "suggestions_for", lambda groups: {
        "fp16": ("suggested: epoch 4 (val 0.412; epoch 8 rises to 0.431)", 4),
        "base": ("no suggested epoch: set train.validation_split", None)})
    app = LoraWizardApp(Session.open_project(project.project_dir), start_step="train")
    screen = _screen(project)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(screen)
        await pilot.pause(0.2)
        screen.col = screen.grid.columns.index(("base", 8))
        screen.redraw()
        assert "base: no suggested epoch" in _text(screen, "#samples-suggest")
        assert screen.check_action("keep_suggested", ()) is False
        screen.col = screen.grid.columns.index(("fp16", 8))
        screen.redraw()
        assert "fp16: suggested: epoch 4 (val 0.412" in _text(screen, "#samples-suggest")
        assert "K keeps it" in _text(screen, "#samples-suggest")
        await pilot.press("K")
        kept = project.project_dir / "loras" / "mychar-fp16-e4.safetensors"
        deadline = time.monotonic() + 10
        while not kept.is_file():
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
