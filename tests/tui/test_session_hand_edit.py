"""A person edits session.toml while the wizard is open: the wizard's writes (the store) keep that edit."""

from __future__ import annotations

from pathlib import Path

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.captions import CaptionsScreen
from tests.support.captions_fixtures import make_project
from tests.support.sessions import assert_hand_edit_kept, edit_by_hand


async def test_a_hand_edit_survives_opening_captions_that_imports_caption_files(project: Path) -> None:
    """QA: Captions imported the .txt files beside the originals and saved session.toml itself, without the store:
    a hand edit made since the wizard opened was written over."""
    make_project(project, ["a.jpg", "b.jpg"], sidecars={"a.txt": b"a red bicycle"}, captions={"b.jpg": "mine"})
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        edit_by_hand(project / "session.toml")
        app.action_goto("captions")
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CaptionsScreen) and screen.captions is not None
        assert screen.captions.items[0].body == "a red bicycle"  # imported
        await pilot.press("ctrl+q")  # quitting writes what is waiting (the store's flush)
    saved = assert_hand_edit_kept(project / "session.toml")
    assert saved.images()["a.jpg"]["caption"] == "a red bicycle"  # and the import is there too
