"""A bulk caption edit over a large set runs off the UI thread: keys keep working meanwhile, one at a time, undoable.

Deterministic: the bulk worker is held at the SessionStore's lock (a save in flight, as the store's own timer thread
would hold it) while keys are pressed, then let go. No timing is asserted; bench/bench_bulk_captions.py measures.
"""

from __future__ import annotations

import threading
from pathlib import Path

from textual.widgets import Input, TextArea

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.captions import BulkEditScreen, CaptionsScreen
from lorawizard.tui.widgets.caption_list import CaptionList
from tests.support.captions_fixtures import bulk_replace_preview, make_project, save_in_flight

COUNT = 2000


def big_project(home: Path) -> Path:
    project = home / "big"
    project.mkdir()
    sources = [f"IMG_{n:05d}.jpg" for n in range(1, COUNT + 1)]
    make_project(project, sources, captions={s: f"a photo of thing {n}" for n, s in enumerate(sources, 1)},
                 trigger="ohwx", image_size=8)
    return project


async def ready(pilot) -> None:  # noqa: ANN001
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def notes(app: LoraWizardApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_bulk_edit_of_2000_captions_keeps_keys_working_and_is_undoable(isolated_home: Path) -> None:
    project = big_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        screen = app.screen
        assert isinstance(screen, CaptionsScreen) and screen.captions is not None
        captions = screen.captions
        listing = screen.query_one(CaptionList)
        editor = screen.query_one("#cap-editor", TextArea)
        assert len(captions) == COUNT

        assert f"{COUNT} of {COUNT} captions change" in await bulk_replace_preview(pilot, "photo", "picture")

        with save_in_flight(app.store):  # the bulk worker computes, then waits here for the session
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert app.screen is screen and screen._bulk is not None
            assert "applying" in str(screen.query_one("#cap-header").render())
            assert captions.items[0].body == "a photo of thing 1"  # not committed yet

            # keys are handled meanwhile: the list moves, the editor shows that caption, typing edits it
            listing.focus()
            await pilot.press("down", "down")
            assert listing.cursor == 2 and screen.current == 2 and editor.text == "a photo of thing 3"
            await pilot.press("tab")
            assert app.focused is editor
            editor.move_cursor(editor.document.end)
            await pilot.press(*", by hand")
            assert captions.items[2].body == "a photo of thing 3, by hand"

            # a second bulk change, its undo or writing the files must wait: refused with one line each
            await pilot.press("ctrl+r", "f4", "ctrl+g")
            assert app.screen is screen  # no dialog opened
            refused = [n for n in notes(app) if n.startswith("still applying")]
            assert len(refused) == 3 and all("\n" not in n for n in refused)
            assert screen._bulk is not None and all(c.body == f"a photo of thing {n}"
                                                    for n, c in enumerate(captions.items, 1) if n != 3)

        await ready(pilot)  # the worker gets the lock, saves, and the screen commits in one batch
        assert screen._bulk is None
        assert [c.body for c in captions.items] == [
            "a photo of thing 3, by hand" if n == 3 else f"a picture of thing {n}" for n in range(1, COUNT + 1)]
        assert "changed 1999 captions; 1 edited meanwhile were kept · F4 undoes it" in notes(app)
        assert editor.text == "a photo of thing 3, by hand"
        listing.focus()
        await pilot.press("down")
        assert editor.text == "a picture of thing 4"  # the list shows the committed captions
        saved = Session.load(project / "session.toml").images()
        assert saved["IMG_00001.jpg"]["caption"] == "a picture of thing 1"
        assert saved["IMG_02000.jpg"]["caption"] == "a picture of thing 2000"
        assert saved["IMG_00003.jpg"]["caption"] == "a photo of thing 3, by hand"  # the typed edit won
        assert all(c.line.startswith("ohwx, a ") for c in captions.items)  # lines and counts follow the new text
        assert captions.counts()["edited"] == COUNT

        await pilot.press("f4")
        await ready(pilot)
        assert [c.body for c in captions.items] == [
            "a photo of thing 3, by hand" if n == 3 else f"a photo of thing {n}" for n in range(1, COUNT + 1)]
        assert any(n.startswith("undid “replace 'photo' with 'picture'”: 1999 captions restored") for n in notes(app))
        assert captions.undo_stack == []
        saved = Session.load(project / "session.toml").images()
        assert saved["IMG_00001.jpg"]["caption"] == "a photo of thing 1"
        assert saved["IMG_00003.jpg"]["caption"] == "a photo of thing 3, by hand"
        assert captions.counts()["edited"] == 1
        await pilot.press("f4")
        assert "no bulk change to undo" in notes(app)


async def test_the_bulk_dialog_previews_in_a_worker_and_applies_what_the_fields_say(isolated_home: Path) -> None:
    """Typing in the dialog never waits for a preview of 2,000 captions; Ctrl+S before the preview caught up applies
    the plan for what the fields say then, never an older one."""
    project = big_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        screen = app.screen
        assert isinstance(screen, CaptionsScreen) and screen.captions is not None
        assert f"{COUNT} of {COUNT} captions change" in await bulk_replace_preview(pilot, "thing", "item")
        dialog = app.screen
        assert isinstance(dialog, BulkEditScreen)
        assert dialog.plan is not None and dialog.plan.changes[0] == ("a photo of thing 1", "a photo of item 1")

        dialog.query_one("#bulk-second", Input).value = "object"  # Input.Changed comes at the next await
        dialog._update()
        dialog.action_apply()  # before the worker's plan for "object" arrived: it waits for that plan
        assert dialog._apply_when_planned
        assert app.screen is dialog
        await ready(pilot)
        await ready(pilot)
        assert isinstance(app.screen, CaptionsScreen)
        assert [c.body for c in screen.captions.items[:2]] == ["a photo of object 1", "a photo of object 2"]
        assert all((c.body or "").startswith("a photo of object ") for c in screen.captions.items)


async def test_a_new_trigger_is_counted_in_a_worker_for_a_large_set(isolated_home: Path) -> None:
    """2,000 captions under a new trigger: the token counting runs off the UI thread (the cache it fills makes the
    set's own recount a lookup); then every caption carries the new trigger."""
    project = big_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        screen = app.screen
        assert isinstance(screen, CaptionsScreen) and screen.captions is not None
        captions = screen.captions
        counted_on: list[str] = []
        count_many = captions.counter.count_many

        def spying(texts):  # noqa: ANN001, ANN202
            texts = list(texts)
            if any(text.startswith("sks,") for text in texts):  # how many it had to count (not in the cache)
                missing = sum(text not in captions.counter._cache for text in texts)
                counted_on.append(f"{threading.current_thread().name}:{missing}")
            return count_many(texts)

        captions.counter.count_many = spying  # type: ignore[method-assign]
        await pilot.press("ctrl+t")
        await pilot.pause()
        field = app.screen.query_one("#set-dataset-trigger", Input)
        field.value = ""
        field.focus()
        await pilot.press(*"sks", "enter")
        await ready(pilot)
        assert captions.trigger == "sks" and all(item.line.startswith("sks, ") for item in captions.items)
        assert any(entry.endswith(f":{COUNT}") and not entry.startswith("MainThread") for entry in counted_on), counted_on
        assert all(entry.endswith(":0") for entry in counted_on if entry.startswith("MainThread")), counted_on
        assert screen._bulk is None and "“sks”" in str(screen.query_one("#cap-header").render())
