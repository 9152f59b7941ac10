"""The Dataset screen: table, preview with the crop box, keys that decide per image, filter, apply."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from textual.geometry import Region
from textual.widgets import Input

from lorawizard.core.dataset import imaging
from lorawizard.core.dataset import step as core
from lorawizard.core.dataset.imaging import Probe
from lorawizard.core.dataset.manifest import load_manifest
from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.dataset import DatasetScreen
from tests.support import dataset_fixtures as fx
from tests.support.waiting import pilot_until

pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning"),  # inside textual-image
]


def demo_project(home: Path) -> Path:
    """Under HOME so the step bar shows `~/dataset-demo` in every run (snapshots)."""
    project = home / "dataset-demo"
    photos = project / "photos"
    photos.mkdir(parents=True)
    fx.oriented_jpeg(photos / "IMG_0001.jpg", 6, 900, 1200)
    fx.photo(photos / "IMG_0002.jpg", 1600, 1200, seed=1)
    fx.photo(photos / "pano_03.jpg", 2400, 600, seed=2)
    fx.photo(photos / "thumb.jpg", 120, 90, seed=3)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "IMG_0002.txt").write_text("a caption")
    fx.write_session(project, Path("photos"), max_side=512)
    return project


def screen_of(app: LoraWizardApp) -> DatasetScreen:
    screen = app.screen
    assert isinstance(screen, DatasetScreen)
    return screen


async def settle(pilot) -> None:  # noqa: ANN001
    """Until the scan is shown and the current row's thumbnail is loaded (or known to fail); fails after 30 s instead
    of going on as if it were."""

    def shown() -> bool:
        screen = pilot.app.screen
        if not isinstance(screen, DatasetScreen) or screen.plan is None:
            return False
        item = screen.items.get(screen.current or "")
        return (item is None or item.source in screen._thumbs or item.status == "bad"
                or screen._thumbs.problem(item.source) is not None)

    deadline = time.monotonic() + 30
    while True:
        await pilot.pause(0.02)
        await pilot.app.workers.wait_for_complete()
        if shown():
            break
        assert time.monotonic() < deadline, "the scan and the current thumbnail were not shown within 30 s"
    await pilot.pause()


def make_app(home: Path) -> LoraWizardApp:
    return LoraWizardApp(Session.open_project(demo_project(home)), start_step="dataset")


# ---------------------------------------------------------------- snapshots


def test_dataset_screen_80x24(snap_compare, isolated_home: Path) -> None:
    async def ready(pilot) -> None:  # noqa: ANN001
        await settle(pilot)
        await pilot.press("down", "down", "down")  # pano_03.jpg: a 2:1 crop out of 4:1
        await settle(pilot)

    assert snap_compare(make_app(isolated_home), terminal_size=(80, 24), run_before=ready)


async def test_key_hints_fit_80_columns(isolated_home: Path) -> None:
    """The hint line is the only place that says s shows the settings (source, max side) once a scan is shown; at
    80 columns it was cut at "s"."""
    from textual.widgets import Static

    app = make_app(isolated_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        keys = app.screen.query_one("#ds-keys", Static)
        text = str(keys.render())
        assert text.rstrip().endswith("s settings") and len(text.rstrip()) <= keys.content_region.width


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_a_portrait_photos_crop_note_is_shown_whole(size: tuple[int, int], isolated_home: Path) -> None:
    """A portrait preview is tall: at 80x24 it pushed the note under it (bucket, crop, EXIF) off the screen, leaving
    the file name. The note stays whole, above the picture, and the picture fits below it."""
    from textual.widgets import Static

    from tests.tui.test_train_layout import svg_cells

    app = make_app(isolated_home)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        screen = screen_of(app)
        assert screen.current == "IMG_0001.jpg"  # 900×1200 upright (stored turned, EXIF 6)
        info = screen.query_one("#ds-info", Static)
        note = [line for line in str(info.render()).splitlines() if line.strip()]
        assert note[0] == "IMG_0001.jpg" and note[1].startswith("900×1200 → ") and note[2].startswith("crop ")
        assert any("EXIF 6" in line for line in note)
        placed = screen.find_widget(info)
        image = screen.find_widget(screen.query_one("#ds-image"))
        preview = screen.find_widget(screen.query_one("#ds-preview")).region
        assert placed.visible_region == placed.region and placed.region.bottom <= preview.bottom
        assert placed.region.bottom <= image.region.y and image.region.bottom <= preview.bottom
        assert image.region.height >= 6  # the picture still shows, below the note
        rows = ["".join(row) for row in svg_cells(app.export_screenshot(), *size)[0]]
    for line in note:
        assert any(line in row for row in rows), (line, rows)


def test_dataset_screen_120x40(snap_compare, isolated_home: Path) -> None:
    async def ready(pilot) -> None:  # noqa: ANN001
        await settle(pilot)
        await pilot.press("down")  # IMG_0002.jpg, its crop moved right twice
        await settle(pilot)
        await pilot.press("right", "right")
        await settle(pilot)

    assert snap_compare(make_app(isolated_home), terminal_size=(120, 40), run_before=ready)


# ---------------------------------------------------------------- behaviour


async def test_keys_decide_crop_bucket_and_skip(isolated_home: Path) -> None:
    app = make_app(isolated_home)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = screen_of(app)
        assert [item.source for item in screen.plan.items] == ["IMG_0001.jpg", "IMG_0002.jpg", "empty.jpg", "pano_03.jpg", "thumb.jpg"]
        assert screen.table.row_count == 5

        await pilot.press("down")  # IMG_0002.jpg 1600×1200 → 512x512, centred crop (200, 0, 1400, 1200)
        item = screen.items["IMG_0002.jpg"]
        assert item.crop == (200, 0, 1400, 1200)
        await pilot.press("right")
        assert item.crop == (320, 0, 1520, 1200)
        await pilot.press("minus")
        assert item.crop[2] - item.crop[0] == 1080 and item.bucket == (512, 512)
        await pilot.press("b")  # next bucket: 512x256, crop back to centred for it
        assert item.bucket == (512, 256) and item.crop == (0, 200, 1600, 1000)
        await pilot.press("space")
        assert item.status == "skip"
        await pilot.press("space")
        assert item.status == "use"

        await pilot.press("end")  # thumb.jpg: small → flagged; Space = use anyway
        assert screen.current == "thumb.jpg" and screen.items["thumb.jpg"].status == "small"
        await pilot.press("space")
        assert screen.items["thumb.jpg"].status == "use"

        await pilot.press("up", "up")  # empty.jpg: bad input, keys only explain
        assert screen.current == "empty.jpg"
        await pilot.press("space")
        assert screen.items["empty.jpg"].status == "bad"
    # (no wait: leaving the app writes what its session store holds)
    saved = Session.load(isolated_home / "dataset-demo" / "session.toml").images()
    assert saved["IMG_0002.jpg"] == {"file": "IMG_0002.jpg", "bucket": "512x256"}
    assert saved["thumb.jpg"] == {"file": "thumb.jpg", "skip": False}
    assert "empty.jpg" not in saved


async def test_filter_and_apply_with_progress(isolated_home: Path) -> None:
    app = make_app(isolated_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = screen_of(app)
        await pilot.press("slash", "s", "m", "a", "l", "l")
        assert screen.table.row_count == 1 and screen.current == "thumb.jpg"
        await pilot.press("escape")
        assert screen.table.row_count == 5
        await pilot.press("ctrl+g")
        await settle(pilot)
        for _ in range(200):
            if not screen.runner.running:
                break
            await pilot.pause(0.05)
        await pilot.pause()
        status = str(screen.runner.query_one(".runner-status").render())
        assert app.step_states["dataset"] == "done", status
        # QA: a crop moved after Apply is not in dataset/ yet; the step bar kept Dataset ✓ (also after a restart)
        await pilot.press("home", "down", "right")
        assert screen.current == "IMG_0002.jpg" and app.step_states["dataset"] == "todo"
    from lorawizard.core.registry import session_step_states
    from lorawizard.core.step_states import dataset_decisions_pending

    session = Session.load(isolated_home / "dataset-demo" / "session.toml")
    prepared = load_manifest(session)
    assert sorted(p.source for p in prepared) == ["IMG_0001.jpg", "IMG_0002.jpg", "pano_03.jpg"]
    assert all(p.output.exists() for p in prepared)
    assert dataset_decisions_pending(session, prepared) == ["IMG_0002.jpg"]
    assert "dataset" not in session_step_states(session)


async def test_no_image_is_decoded_on_the_ui_thread(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = imaging.load_upright

    def spy(path: Path, **kwargs: object):  # noqa: ANN202
        threads.append(threading.current_thread().name)
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(imaging, "load_upright", spy)
    app = make_app(isolated_home)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for _ in range(4):
            await pilot.press("down")
            await settle(pilot)
    assert threads and threading.main_thread().name not in threads


async def test_two_thousand_images_stay_responsive(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 rows; holding ↓ does not start a decode per row (thumbnails wait for the cursor to rest)."""
    app = make_app(isolated_home)
    decoded: list[Path] = []
    real = imaging.preview
    monkeypatch.setattr(imaging, "preview", lambda path, size=320: decoded.append(path) or real(path, size))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = screen_of(app)
        photo = isolated_home / "dataset-demo" / "photos" / "IMG_0002.jpg"
        probe = Probe(True, "", "JPEG", "RGB", 1600, 1200)
        items = []
        for n in range(2000):
            item = core.PlanItem(f"many/IMG_{n:04d}.jpg", photo, f"{n:064x}", probe, "bad", 1600, 1200)
            core.plan_item(item, {}, 512)
            items.append(item)
        screen.show_plan(core.Plan(photo.parent, isolated_home / "out", 512, items, []))
        await pilot.pause()
        assert screen.table.row_count == 2000
        decoded.clear()
        for _ in range(40):  # key repeat: faster than the thumbnail's pause
            screen.table.action_cursor_down()
        await settle(pilot)
        assert screen.current == "many/IMG_0040.jpg"
        assert len(decoded) < 10  # not one per row passed
        await pilot.press("end")
        await settle(pilot)
        assert screen.current == "many/IMG_1999.jpg" and "many/IMG_1999.jpg" in screen._thumbs


async def test_choosing_the_source_folder_starts_the_scan(isolated_home: Path) -> None:
    project = isolated_home / "fresh"
    photos = isolated_home / "my photos"
    photos.mkdir()
    fx.photo(photos / "a.jpg", 800, 600)
    project.mkdir()
    app = LoraWizardApp(Session.open_project(project), start_step="dataset")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = screen_of(app)
        assert screen.has_class("-settings") and screen.plan is None
        field = app.screen.query_one("#set-dataset-source", Input)
        field.focus()
        field.value = str(photos)
        await pilot.press("enter")
        await settle(pilot)
        assert screen.plan is not None and [item.source for item in screen.plan.items] == ["a.jpg"]
    assert Session.load(project / "session.toml").get("dataset.source") == str(photos)


async def test_a_source_that_is_a_file_says_so_in_full_at_80_columns(isolated_home: Path) -> None:
    """QA: a photo's path typed as the source; at 80 columns the error ended "… IMG_0412.jpg is not a" (the head
    line was one row high): the reason, the part a person needs, was cut off."""
    project = isolated_home / "loras" / "mychar"
    (project / "photos").mkdir(parents=True)
    fx.photo(project / "photos" / "IMG_0412.jpg", 800, 600)
    app = LoraWizardApp(Session.open_project(project), start_step="dataset")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        field = app.screen.query_one("#set-dataset-source", Input)
        field.focus()
        field.value = "photos/IMG_0412.jpg"
        await pilot.press("enter")
        for _ in range(100):
            await pilot.pause(0.05)
            if "✗" in str(app.screen.query_one("#ds-head").render()):
                break
        await pilot.pause()
        head = app.screen.query_one("#ds-head")
        strips = head.render_lines(Region(0, 0, head.size.width, head.size.height))
        shown = " ".join(" ".join(strip.text.split()) for strip in strips)
        assert shown.endswith("~/loras/mychar/photos/IMG_0412.jpg is not a folder"), shown


async def test_the_columns_follow_a_resize_across_110_columns(isolated_home: Path) -> None:
    """QA: opened at 80 columns, then the terminal made 120 wide: the file column stayed 13 wide ("thumb_0001.j…")."""
    app = make_app(isolated_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = screen_of(app).table
        narrow = [c.width for c in table.ordered_columns][:2]
        current = screen_of(app).current
        await pilot.resize_terminal(120, 40)
        await pilot_until(pilot, lambda: [c.width - n for c, n in zip(table.ordered_columns, narrow, strict=False)] == [11, 1],
                          10, f"the first columns 11 and 1 wider than {narrow} (13 → 24, 9 → 10)")
        assert table.row_count == len(screen_of(app).plan.items) and screen_of(app).current == current
        await pilot.resize_terminal(80, 24)
        await pilot_until(pilot, lambda: [c.width for c in table.ordered_columns][:2] == narrow, 10,
                          f"the first columns back to {narrow}")


async def test_a_preview_that_fails_late_is_named_once(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: a PNG whose header reads fine but whose data does not decode (Pillow's broken_data_stream.png) said
    "corrupt or unsupported: …" twice in the preview note: once from the row's notes and once as the preview's
    problem."""
    from textual.widgets import Static

    from lorawizard.tui.screens import dataset as screen_module

    real = screen_module.upright_preview
    problem = "corrupt or unsupported: unrecognized data stream contents when reading image file"

    def preview(path: Path, pixels: int):  # noqa: ANN202
        return (None, problem) if path.name == "IMG_0002.jpg" else real(path, pixels)

    monkeypatch.setattr(screen_module, "upright_preview", preview)
    app = make_app(isolated_home)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("down")
        await settle(pilot)
        screen = screen_of(app)
        assert screen.current == "IMG_0002.jpg"
        text = str(screen.query_one("#ds-info", Static).render())
        assert text.count("corrupt or unsupported") == 1, text


# ---------------------------------------------------------------- issue 24 item 8: Enter scans, crop moved, s


def found_photos_project(home: Path) -> Path:
    """A new project with its photos in photos/ and no dataset.source yet: the screen offers the folder it found."""
    project = home / "found"
    (project / "photos").mkdir(parents=True)
    fx.photo(project / "photos" / "a.jpg", 1000, 1000)  # 1.02× short of a 1024 bucket: used, with a note
    fx.photo(project / "photos" / "b.jpg", 800, 600, seed=1)
    return project


def keys_line(app: LoraWizardApp) -> str:
    from textual.widgets import Static

    return str(app.screen.query_one("#ds-keys", Static).render()).strip()


async def test_enter_in_max_side_scans_the_found_folder(isolated_home: Path) -> None:
    """The head said "Found photos/: Enter scans it", but Enter in max_side saved the number and scanned nothing."""
    project = found_photos_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="dataset")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = screen_of(app)
        assert screen.plan is None and "Enter scans it" in str(screen.query_one("#ds-head").render())
        field = screen.query_one("#set-dataset-max_side", Input)
        field.focus()
        await pilot.pause()
        assert keys_line(app).startswith("Enter scans")
        field.value = "1024"
        await pilot.press("enter")
        await settle(pilot)
        assert screen.plan is not None and [item.source for item in screen.plan.items] == ["a.jpg", "b.jpg"]
        from lorawizard.tui.screens.dataset import note_of

        assert screen.items["a.jpg"].used and note_of(screen.items["a.jpg"]) == "1.02× up"  # the table's short note
        assert "upscaled 1.02×" in str(screen.query_one("#ds-info").render())  # the preview's note says it whole
    assert Session.load(project / "session.toml").get("dataset.source") == "photos"


async def test_enter_on_the_table_scans_before_the_first_scan(isolated_home: Path) -> None:
    """Enter on the (empty) table said "nothing to apply yet"; before a scan it scans, afterwards it applies."""
    project = found_photos_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="dataset")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = screen_of(app)
        await pilot.press("escape")  # out of the source field, onto the table
        await pilot.pause()
        assert screen.focused is screen.table and screen.plan is None
        await pilot.press("enter")
        await settle(pilot)
        assert screen.plan is not None and screen.table.row_count == 2
        assert app.session.get("dataset.source") == "photos"


async def test_a_hand_moved_crop_shows_in_the_note(isolated_home: Path) -> None:
    from textual.widgets import Static

    app = make_app(isolated_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = screen_of(app)
        await pilot.press("down")
        assert screen.current == "IMG_0002.jpg"

        def note() -> str:
            return str(screen.table.get_cell("IMG_0002.jpg", "note"))

        assert note() == "crop 75%"
        await pilot.press("right")
        await pilot.pause()
        assert note() == "crop moved (75%)"
        assert "(moved)" in str(screen.query_one("#ds-info", Static).render())
        await pilot.press("r")  # reset: the centred crop again
        await pilot.pause()
        assert note() == "crop 75%"
    saved = Session.load(isolated_home / "dataset-demo" / "session.toml").images()
    assert "crop" not in saved.get("IMG_0002.jpg", {})


async def test_s_shows_the_settings_and_esc_hides_them(isolated_home: Path) -> None:
    """After choosing the folder in the source field the settings were still shown, so `s settings` hid them."""
    project = found_photos_project(isolated_home)
    app = LoraWizardApp(Session.open_project(project), start_step="dataset")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = screen_of(app)
        settings = screen.query_one("#ds-settings")
        await pilot.press("enter")  # the found folder, from the source field
        await settle(pilot)
        assert screen.plan is not None and screen.focused is screen.table
        await pilot.press("s")
        await pilot.pause()
        assert settings.display and settings.region.height > 0
        assert screen.focused is screen.query_one("#set-dataset-source", Input)
        assert keys_line(app) == "Enter scans  Tab next field  Esc back to the table"
        await pilot.press("escape")
        await pilot.pause()
        assert settings.display and screen.focused is screen.table
        assert keys_line(app).endswith("Esc hides settings")
        await pilot.press("s", "escape")  # s again: still shown (never hidden by s)
        await pilot.pause()
        assert settings.display
        await pilot.press("escape")
        await pilot.pause()
        assert not settings.display and keys_line(app).endswith("s settings")
        await pilot.press("s")
        await pilot.pause()
        assert settings.display
