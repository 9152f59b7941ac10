"""The Captions editor's own keys (issue 24 item 9): Ctrl+A selects all so typing replaces a long draft in a few keys,
Ctrl+L clears, F9 puts this image's draft back, the cursor starts at the end of the caption, the footer names them,
and the trigger dialog says in words whether captionless is on."""

from __future__ import annotations

import re
from pathlib import Path

from textual.widgets import TextArea

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.captions import TriggerScreen
from lorawizard.tui.screens.help import HelpScreen
from tests.support.captions_fixtures import make_project
from tests.support.sessions import save
from tests.support.svg_cells import runs
from tests.tui.test_captions_screen import ready, screen_of

SOURCES = [f"IMG_{n:04d}.jpg" for n in range(1, 5)]
LONG_DRAFT = " ".join(["A woman in a red raincoat stands on a wet pier under an overcast sky, film grain."] * 15)
MINE = "my own words about the coat"


def project_with_draft(home: Path) -> Path:
    project = home / "caption-demo"
    project.mkdir()
    session = make_project(project, SOURCES, captions={"IMG_0002.jpg": MINE}, trigger="ohwx", image_size=48)
    session.update_image("IMG_0001.jpg", caption=LONG_DRAFT, caption_auto=True)
    save(session)
    return project


def screen_text(app: LoraWizardApp) -> list[str]:
    """The rendered screen, line by line, as the SVG export draws it."""
    lines = [[" "] * app.size.width for _ in range(app.size.height)]
    for run in runs(app.export_screenshot()):
        for offset, char in enumerate(run.text):
            if 0 <= run.line < len(lines) and run.column + offset < app.size.width:
                lines[run.line][run.column + offset] = char
    return ["".join(line).replace("\u00a0", " ") for line in lines]


async def open_editor(pilot) -> TextArea:  # noqa: ANN001
    await pilot.press("enter")  # Enter on the list row: into the editor
    await pilot.pause()
    editor = pilot.app.focused
    assert isinstance(editor, TextArea)
    return editor


async def test_select_all_then_typing_replaces_a_long_draft_in_a_few_keys(isolated_home: Path) -> None:
    project = project_with_draft(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        editor = await open_editor(pilot)
        assert editor.text == LONG_DRAFT and len(LONG_DRAFT) > 1200
        shown = screen_text(app)
        assert "^a Select all" in shown[-1], shown[-1]  # the footer, at 80 columns
        assert any("^a select all · ^l clear" in line for line in shown)  # under the editor's box
        keys = ["ctrl+a", *"a dog"]
        await pilot.press(*keys)
        await pilot.pause()
        assert editor.text == "a dog"
        assert len(keys) == 6  # Enter into the editor, then 6 keys: the ~22 of before, for a 1,200-character draft
        assert screen.captions is not None and screen.captions.items[0].body == "a dog"
        assert not screen.captions.items[0].auto  # the person's caption now


async def test_clear_empties_the_caption_and_ctrl_z_gives_it_back(isolated_home: Path) -> None:
    project = project_with_draft(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        await pilot.press("down")
        editor = await open_editor(pilot)
        assert editor.text == MINE
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert editor.text == ""
        assert screen.captions is not None and not screen.captions.items[1].body
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert editor.text == MINE and screen.captions.items[1].body == MINE


async def test_f9_puts_the_draft_back_and_is_offered_only_when_there_is_one(isolated_home: Path) -> None:
    project = project_with_draft(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        assert not any("f9" in line for line in screen_text(app))  # the caption is the draft itself
        editor = await open_editor(pilot)
        await pilot.press("ctrl+a", *"a dog")
        await pilot.pause()
        assert screen.captions is not None and screen.captions.items[0].body == "a dog"
        assert any("^l clear · f9 use draft" in line for line in screen_text(app))  # under the editor's box
        await pilot.press("f9")
        await pilot.pause()
        assert editor.text == LONG_DRAFT
        assert screen.captions.items[0].body == LONG_DRAFT and screen.captions.items[0].auto  # a draft again: F7 accepts
        assert not any("f9" in line for line in screen_text(app))
        await pilot.press("ctrl+n")  # the person's own caption, never drafted: nothing to put back
        await pilot.pause()
        await pilot.press("f9")
        await pilot.pause()
        assert screen.captions.items[1].body == MINE
    saved = Session.load(project / "session.toml").images()["IMG_0001.jpg"]
    assert saved["caption"] == LONG_DRAFT and saved.get("caption_auto") is True


async def test_the_cursor_starts_at_the_end_of_the_caption(isolated_home: Path) -> None:
    project = project_with_draft(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("down")
        editor = await open_editor(pilot)
        assert editor.cursor_location == editor.document.end
        await pilot.press(*" and boots")
        assert editor.text == MINE + " and boots"
        await pilot.press("ctrl+b")  # to the previous caption from inside the editor: its end too
        await pilot.pause()
        assert editor.text == LONG_DRAFT and editor.cursor_location == editor.document.end


async def test_captionless_is_said_in_words_in_the_trigger_dialog(isolated_home: Path) -> None:
    project = project_with_draft(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert isinstance(app.screen, TriggerScreen)
        line = next(line for line in screen_text(app) if "captionless" in line)
        assert re.search(r"captionless\W+off\b", line), line  # the switch alone is two colours: the word says it
        await pilot.click("#set-dataset-captionless")
        await pilot.pause()
        assert app.session.dataset.captionless is True
        line = next(line for line in screen_text(app) if "captionless" in line)
        assert re.search(r"captionless\W+on\b", line), line


async def test_help_lists_the_editor_keys_and_f9(isolated_home: Path) -> None:
    project = project_with_draft(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        rows = dict(app.screen.screen_keys)  # what its "Keys on Captions" table lists
        assert "select all" in rows["ctrl+a"] and "clear" in rows["ctrl+l"] and "Use draft" in rows["f9"]
