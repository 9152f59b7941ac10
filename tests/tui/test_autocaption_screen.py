"""Auto-captions on the Captions screen (stand-in captioner): drafts arrive marked auto, a person's caption is never
replaced unasked, accept one/all, redraft one, F5 stops drafting and keeps the drafts so far; snapshots with auto
drafts. (A caption typed while drafting runs, and Esc in the editor: tests/adversarial/test_typed_while_drafting.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.containers import VerticalScroll

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.autocaption import AutoCaptionScreen
from lorawizard.tui.screens.captions import CaptionsScreen
from lorawizard.tui.screens.confirm import ConfirmScreen
from tests.support.captions_fixtures import make_project
from tests.support.fake_nvml import FakeNvml, install
from tests.support.sessions import save
from tests.support.standin import make_standin_captioner_python
from tests.support.waiting import pid_gone, pilot_until, until
from tests.unit.test_autocaption import make_model_folder

SOURCES = [f"IMG_{n:04d}.jpg" for n in range(1, 7)]
DRAFT = "A IMG_{n:04d} standing in a garden. Soft light from the left. Shot with a wide lens."


def auto_project(home: Path, *, drafts: bool = False) -> Path:
    project = home / "caption-demo"
    project.mkdir()
    session = make_project(project, SOURCES, captions={"IMG_0001.jpg": "my own words about the coat"}, trigger="ohwx",
                           image_size=48)
    session.set("paths.python", str(make_standin_captioner_python(home)))
    session.set("captions.model", str(make_model_folder(home / "vlm")))
    if drafts:
        for n in (2, 3, 5):
            session.update_image(f"IMG_{n:04d}.jpg", caption=DRAFT.format(n=n), caption_auto=True)
    save(session)
    return project


@pytest.fixture()
def no_gpu(monkeypatch):
    install(monkeypatch, FakeNvml([]))


async def ready(pilot) -> None:  # noqa: ANN001
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def screen_of(app: LoraWizardApp) -> CaptionsScreen:
    assert isinstance(app.screen, CaptionsScreen)
    return app.screen


# ---------------------------------------------------------------- snapshots


def test_captions_screen_with_auto_drafts_80x24(snap_compare, isolated_home: Path) -> None:
    app = LoraWizardApp(Session.open_project(auto_project(isolated_home, drafts=True)), start_step="captions")
    assert snap_compare(app, terminal_size=(80, 24), press=["down"], run_before=ready)


def test_captions_screen_with_auto_drafts_120x40(snap_compare, isolated_home: Path) -> None:
    app = LoraWizardApp(Session.open_project(auto_project(isolated_home, drafts=True)), start_step="captions")
    assert snap_compare(app, terminal_size=(120, 40), press=["d", "down"], run_before=ready)


# ---------------------------------------------------------------- behaviour


async def test_draft_missing_marks_auto_and_keeps_the_persons_caption(isolated_home: Path, no_gpu) -> None:
    project = auto_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f5")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, AutoCaptionScreen)
        about = str(dialog.query_one("#auto-about").render())
        assert "no GPU found" in about and "on the CPU this is slow" in about  # said before starting
        await pilot.click("#auto-missing")
        await ready(pilot)
        screen = screen_of(app)
        captions = screen.captions
        assert captions is not None
        assert captions.items[0].body == "my own words about the coat" and not captions.items[0].auto
        assert [i.auto for i in captions.items[1:]] == [True] * 5
        assert captions.items[1].body == DRAFT.format(n=2)
        assert captions.counts()["auto"] == 5
        await pilot.press("ctrl+q")
    saved = Session.load(project / "session.toml").images()
    assert saved["IMG_0002.jpg"]["caption_auto"] is True and "caption_auto" not in saved["IMG_0001.jpg"]


async def test_accept_one_then_all_and_editing_makes_it_reviewed(isolated_home: Path) -> None:
    project = auto_project(isolated_home, drafts=True)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        captions = screen.captions
        assert captions is not None and captions.filtered("auto") == [1, 2, 4]
        await pilot.press("down", "f7")  # IMG_0002
        assert captions.filtered("auto") == [2, 4] and captions.filtered("reviewed") == [0, 1]
        await pilot.press("down", "tab", "x")  # a person's edit of IMG_0003's draft
        assert not captions.items[2].auto
        screen.accept_drafts(None)  # the dialog's "Accept all drafts"
        assert captions.counts()["auto"] == 0
        await pilot.press("ctrl+q")
    saved = Session.load(project / "session.toml").images()
    assert not any(entry.get("caption_auto") for entry in saved.values())


async def test_overwrite_all_asks_first_and_f4_gives_the_persons_caption_back(isolated_home: Path, no_gpu) -> None:
    project = auto_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        captions = screen.captions
        assert captions is not None
        await pilot.press("f5")
        await pilot.pause()
        await pilot.click("#auto-all")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)  # one caption of the person's: asked first
        assert "Replace 1 caption you wrote" in str(app.screen.query_one(".confirm-question").render())
        await pilot.press("n")
        await ready(pilot)
        assert captions.items[0].body == "my own words about the coat" and captions.counts()["auto"] == 0
        await pilot.press("f5")
        await pilot.pause()
        await pilot.click("#auto-all")
        await pilot.pause()
        await pilot.press("y")
        await ready(pilot)
        assert [i.auto for i in captions.items] == [True] * 6
        assert captions.items[0].body == DRAFT.format(n=1)
        await pilot.press("f4")  # Undo bulk: the person's caption back, as theirs (not a draft); the drafts stay
        await pilot_until(pilot, lambda: captions.items[0].body == "my own words about the coat")
        assert not captions.items[0].auto and captions.items[1].body == DRAFT.format(n=2)
        await pilot.press("ctrl+q")
    saved = Session.load(project / "session.toml").images()
    assert saved["IMG_0001.jpg"]["caption"] == "my own words about the coat"
    assert "caption_auto" not in saved["IMG_0001.jpg"] and saved["IMG_0002.jpg"]["caption_auto"] is True


async def test_every_tab_stop_in_the_dialog_shows_where_focus_is(isolated_home: Path) -> None:
    """The dialog's scrolling body is a Tab stop (↑/↓ scroll it at 80x24): it says so and its border changes."""
    app = LoraWizardApp(Session.open_project(auto_project(isolated_home)), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("f5")
        await pilot.pause()
        body = app.screen.query_one(VerticalScroll)
        unfocused = body.styles.border_top[0]
        for _ in range(12):
            await pilot.press("tab")
            await pilot.pause()
            if app.screen.focused is body:
                break
        assert app.screen.focused is body
        assert body.styles.border_top[0] != unfocused and "scroll" in body.border_subtitle
        await pilot.press("tab")
        await pilot.pause()
        assert app.screen.focused is not body and body.border_subtitle == "" and body.styles.border_top[0] == unfocused


async def test_redraft_needs_a_second_press_for_a_persons_caption(isolated_home: Path, no_gpu) -> None:
    project = auto_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        captions = screen.captions
        assert captions is not None and screen.current == 0
        await pilot.press("f6")
        await ready(pilot)
        assert captions.items[0].body == "my own words about the coat"  # asked, not replaced
        await pilot.press("f6")
        await ready(pilot)
        assert captions.items[0].body == DRAFT.format(n=1) and captions.items[0].auto
        assert captions.items[1].body is None  # only that one image
        assert screen.editor.text == DRAFT.format(n=1)


async def test_f5_stops_drafting_and_keeps_the_drafts_so_far(isolated_home: Path, no_gpu, monkeypatch) -> None:
    monkeypatch.setenv("STANDIN_CAPTION_DELAY", "0.3")
    monkeypatch.setenv("STANDIN_CAPTION_BATCH", "1")
    project = auto_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        captions = screen.captions
        assert captions is not None
        screen.start_drafting([1, 2, 3, 4, 5])
        await pilot_until(pilot, lambda: captions.counts()["auto"] >= 1, 30, "a first draft")
        await pilot.press("f5")  # while drafting, F5 is "Stop drafting" (Esc only leaves the editor)
        await ready(pilot)
        kept = captions.counts()["auto"]
        assert 1 <= kept < 5 and not screen.drafting
        assert [n.message for n in app._notifications if "auto-caption stopped" in n.message] == [
            f"auto-caption stopped: {kept} draft{'s' if kept != 1 else ''} kept"]
        await pilot.press("ctrl+q")
    saved = Session.load(project / "session.toml").images()
    assert sum(1 for entry in saved.values() if entry.get("caption_auto")) == kept


async def test_quitting_while_drafting_stops_the_captioner(isolated_home: Path, no_gpu, monkeypatch,
                                                           tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("STANDIN_CAPTION_DELAY", "0.5")
    monkeypatch.setenv("STANDIN_CAPTION_PIDFILE", str(pidfile))
    project = auto_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        screen.start_drafting([1, 2, 3, 4, 5])
        await pilot_until(pilot, lambda: pidfile.exists() and pidfile.read_text(), 30, "the captioner to start")
        await pilot.press("ctrl+q")
    pid = int(pidfile.read_text())
    until(lambda: pid_gone(pid), 10, "the captioner to end with the app")
