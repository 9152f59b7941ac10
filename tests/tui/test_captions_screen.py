"""The Captions screen: review and edit beside the image, filters, bulk edit with undo, nothing lost on quit."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, TextArea

from lorawizard.core.session.document import Session
from lorawizard.core.session.store import SAVE_DELAY
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.captions import CaptionsScreen
from lorawizard.tui.widgets.caption_list import CaptionList
from tests.support.captions_fixtures import bulk_replace_preview, make_project, save_in_flight, txt_of

SOURCES = [f"IMG_{n:04d}.jpg" for n in range(1, 9)]
CAPTIONS = {
    "IMG_0001.jpg": "a woman in a red raincoat standing on a pier, overcast light, film grain",
    "IMG_0002.jpg": "a photo of ohwx wearing a blue scarf in a cafe, warm window light",
    "IMG_0003.jpg": "a close-up portrait, red lipstick, studio backdrop",
    "IMG_0004.jpg": " ".join(["a very long caption with many many words"] * 12),
    "IMG_0005.jpg": "",
}


def demo_project(home: Path) -> Path:
    """Under HOME so the step bar shows `~/caption-demo` in every run (snapshots)."""
    project = home / "caption-demo"
    project.mkdir()
    make_project(project, SOURCES, captions=CAPTIONS, trigger="ohwx", image_size=48)
    txt_of(project, 1).write_text("ohwx, a woman in a red raincoat standing on a pier, overcast light, film grain\n")
    return project


async def ready(pilot) -> None:  # noqa: ANN001
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def screen_of(app: LoraWizardApp) -> CaptionsScreen:
    screen = app.screen
    assert isinstance(screen, CaptionsScreen)
    return screen


# ---------------------------------------------------------------- snapshots


def test_captions_screen_80x24(snap_compare, isolated_home: Path) -> None:
    app = LoraWizardApp(Session.open_project(demo_project(isolated_home)), start_step="captions")
    assert snap_compare(app, terminal_size=(80, 24), press=["down"], run_before=ready)


def test_captions_screen_120x40(snap_compare, isolated_home: Path) -> None:
    app = LoraWizardApp(Session.open_project(demo_project(isolated_home)), start_step="captions")
    assert snap_compare(app, terminal_size=(120, 40), press=["down", "down", "down"], run_before=ready)


# ---------------------------------------------------------------- behaviour


async def test_typing_is_saved_even_when_quitting_at_once(isolated_home: Path) -> None:
    project = demo_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        await pilot.press("ctrl+n", "ctrl+n", "ctrl+n", "ctrl+n", "ctrl+n")  # IMG_0006: missing
        await pilot.press("tab")
        assert isinstance(app.focused, TextArea)
        await pilot.press(*"a dog", "enter", *"on grass")
        assert screen.captions is not None and screen.captions.items[5].body == "a dog\non grass"
        await pilot.press("ctrl+q")  # before the save timer fires
    saved = Session.load(project / "session.toml").images()
    assert saved["IMG_0006.jpg"]["caption"] == "a dog\non grass"


async def test_the_debounced_save_runs_in_a_worker_and_edits_made_meanwhile_are_kept(isolated_home: Path) -> None:
    project = demo_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        screen_of(app)
        await pilot.press("tab")
        editor = app.screen.query_one("#cap-editor", TextArea)
        editor.move_cursor(editor.document.end)
        await pilot.press(*" and a hat")
        await pilot.pause(SAVE_DELAY)
        for _ in range(100):  # the window closes, the store's timer thread writes (no flush: the screen is still open)
            await pilot.pause(0.1)
            saved = Session.load(project / "session.toml").images()
            if saved["IMG_0001.jpg"]["caption"].endswith("and a hat"):
                break
        assert saved["IMG_0001.jpg"]["caption"].endswith("film grain and a hat")

        # a save in flight holds the session (another thread): typing goes on, the edit waits, nothing is lost
        with save_in_flight(app.store):
            await pilot.press(*" and gloves")
            assert app.store.queued == ["IMG_0001.jpg"]  # waits, by file
            assert not str(app.session.images()["IMG_0001.jpg"]["caption"]).endswith("gloves")  # not touched meanwhile
        await pilot.press("ctrl+q")  # flush stores the waiting edit and writes
    saved = Session.load(project / "session.toml").images()
    assert saved["IMG_0001.jpg"]["caption"].endswith("film grain and a hat and gloves")


async def test_leaving_the_screen_saves(isolated_home: Path) -> None:
    project = demo_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("tab")
        editor = app.screen.query_one("#cap-editor", TextArea)
        editor.move_cursor(editor.document.end)
        await pilot.press(*" and a hat")
        app.action_goto("train")
        await pilot.pause()
        saved = Session.load(project / "session.toml").images()
        assert saved["IMG_0001.jpg"]["caption"].endswith("film grain and a hat")


async def test_next_previous_and_filters(isolated_home: Path) -> None:
    app = LoraWizardApp(Session.open_project(demo_project(isolated_home)), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        editor = app.screen.query_one("#cap-editor", TextArea)
        await pilot.press("ctrl+n", "ctrl+n")
        assert editor.text == CAPTIONS["IMG_0003.jpg"]
        await pilot.press("ctrl+b")
        assert editor.text == CAPTIONS["IMG_0002.jpg"]
        await pilot.press("ctrl+f")  # missing (and empty)
        rows = app.screen.query_one(CaptionList).rows
        assert [screen.captions.items[i].file for i in rows] == ["IMG_0005.jpg", "IMG_0006.jpg", "IMG_0007.jpg", "IMG_0008.jpg"]
        assert editor.text == ""
        await pilot.press("ctrl+f")  # edited: not written yet (IMG_0001's file matches)
        assert 0 not in app.screen.query_one(CaptionList).rows
        await pilot.press("ctrl+f")  # over budget
        assert [screen.captions.items[i].file for i in app.screen.query_one(CaptionList).rows] == ["IMG_0004.jpg"]
        assert "CLIP" in str(app.screen.query_one("#cap-tokens").render())
        await pilot.press("ctrl+f")  # trigger issues: IMG_0002 has "ohwx" again after the one written first
        assert [screen.captions.items[i].file for i in app.screen.query_one(CaptionList).rows] == ["IMG_0002.jpg"]
        app.screen.query_one(CaptionList).focus()
        await pilot.press("m")  # straight to a filter from the list
        assert screen.filter == "missing" and len(app.screen.query_one(CaptionList).rows) == 4
        await pilot.press("a")
        assert len(app.screen.query_one(CaptionList).rows) == 8


async def test_bulk_replace_preview_apply_and_undo(isolated_home: Path) -> None:
    project = demo_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        preview = await bulk_replace_preview(pilot, "red", "green")
        assert "2 of 8 captions change" in preview and "+ a woman in a green raincoat" in preview
        await pilot.press("ctrl+s")
        await ready(pilot)  # the bulk worker computes, saves, and the screen commits
        screen = screen_of(app)
        assert "green raincoat" in (screen.captions.items[0].body or "")
        assert app.screen.query_one("#cap-editor", TextArea).text.startswith("a woman in a green raincoat")
        saved = Session.load(project / "session.toml").images()
        assert saved["IMG_0003.jpg"]["caption"] == "a close-up portrait, green lipstick, studio backdrop"
        await pilot.press("f4")
        await ready(pilot)
        saved = Session.load(project / "session.toml").images()
        assert saved["IMG_0003.jpg"]["caption"] == CAPTIONS["IMG_0003.jpg"]
        assert app.screen.query_one("#cap-editor", TextArea).text == CAPTIONS["IMG_0001.jpg"]


async def test_trigger_dialog_and_writing_the_files(isolated_home: Path) -> None:
    project = demo_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        await pilot.pause()
        field = app.screen.query_one("#set-dataset-trigger", Input)
        field.value = ""
        field.focus()
        await pilot.press(*"sks", "enter")  # Enter keeps the word and closes the dialog (Esc would undo it)
        await pilot.pause()
        screen = screen_of(app)
        assert screen.captions is not None and screen.captions.trigger == "sks"
        assert "“sks”" in str(app.screen.query_one("#cap-header").render())
        await pilot.press("ctrl+g")
        await ready(pilot)
        await ready(pilot)
        assert txt_of(project, 1).read_text() == "sks, a woman in a red raincoat standing on a pier, overcast light, film grain\n"
        assert txt_of(project, 6).read_text() == "sks\n"  # no caption yet: the trigger alone, never an empty file
        assert app.step_states["captions"] == "attention"  # 4 images have no caption
        assert screen.captions.filtered("edited") == []  # the list follows the files just written


async def test_without_prepared_images_the_screen_says_what_to_do(project: Path) -> None:
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert "run the Dataset step (3) first" in str(app.screen.query_one("#cap-header").render())
        assert app.screen.query_one("#cap-editor", TextArea).disabled
        await pilot.press("ctrl+f", "ctrl+r", "f4", "ctrl+n")  # nothing to act on: nothing breaks
        assert isinstance(app.screen, CaptionsScreen)


async def test_coming_back_after_a_new_dataset_run_reloads(isolated_home: Path) -> None:
    import json
    import os

    project = demo_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        screen = screen_of(app)
        app.action_goto("train")
        await pilot.pause()
        manifest = project / "dataset" / "lorawizard-manifest.json"
        data = json.loads(manifest.read_text())
        data["images"] = data["images"][:3]  # the dataset step ran again and kept three images
        manifest.write_text(json.dumps(data))
        os.utime(manifest, ns=(1, 1))
        app.action_goto("captions")
        await ready(pilot)
        assert screen.captions is not None and len(screen.captions) == 3


async def test_image_drawn_in_the_worker_equals_textuals_own_render(tmp_path: Path) -> None:
    from PIL import Image
    from textual.app import App, ComposeResult

    from lorawizard.tui import images
    from lorawizard.tui.screens.captions import caption_image_class, draw_cells, make_thumbnail

    assert images._chosen == "halfcell"  # tests force it
    picture = tmp_path / "noise.png"
    Image.effect_noise((80, 50), 60).convert("RGB").save(picture)
    thumb = make_thumbnail(picture)

    class Box(App[None]):
        CSS = "#img { width: 32; height: 16; }"

        def compose(self) -> ComposeResult:
            yield caption_image_class()(None, id="img")

    async with Box().run_test(size=(80, 24)) as pilot:
        widget = pilot.app.query_one("#img")
        widget.show(thumb)
        await pilot.pause()
        rendered = [list(widget.render_line(y)) for y in range(16)]
        drawn = draw_cells(thumb, widget.size, widget.visual_style.rich_style)
        assert drawn is not None and len(drawn.lines) == 16
        widget.show(thumb, drawn)
        await pilot.pause()
        assert [list(widget.render_line(y)) for y in range(16)] == rendered
        assert all(widget.render_line(y) is drawn.lines[y] for y in range(16))  # no render: the drawn cells


async def test_the_guide_stays_out_of_the_editors_way_when_narrow(isolated_home: Path) -> None:
    app = LoraWizardApp(Session.open_project(demo_project(isolated_home)), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        info = app.screen.query_one("#cap-info")
        assert "IMG_0001.jpg" in str(info.render()) and "should NOT learn: for a" not in str(info.render())
        assert "NOT learn" in str(app.screen.query_one("#cap-editor", TextArea).border_title)
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert "should NOT learn: for a" in str(info.render())


async def test_trigger_dialog_at_80x24_enter_closes_and_labels_sit_beside_their_fields(isolated_home: Path) -> None:
    """A person types the word and presses Enter: the dialog closes with the word saved. Each label is on the row
    of its field (a margin meant for the dialog's intro once pushed every label a row below its field)."""
    from textual.widgets import Switch

    from lorawizard.tui.screens.captions import TriggerScreen
    from lorawizard.tui.widgets.settings_form import SettingsForm

    project = demo_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, TriggerScreen)
        form = dialog.query_one(SettingsForm)
        for row, field in zip(form.query("Horizontal"), (Input, Switch), strict=True):
            label = row.query_one(".setting-label")
            assert label.region.y == row.query_one(field).region.y, label.render()
        intro = dialog.query_one("Vertical > Label")
        assert intro.region.height >= 2  # wraps inside the dialog instead of being cut at its edge
        field = dialog.query_one("#set-dataset-trigger", Input)
        assert app.focused is field
        await pilot.press("ctrl+a", "ctrl+k", *"sks", "enter")
        await pilot.pause()
        assert isinstance(app.screen, CaptionsScreen)
        assert screen_of(app).captions.trigger == "sks"
        assert app.session.get("dataset.trigger") == "sks"
