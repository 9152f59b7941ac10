"""Samples view: grid snapshots at 80×24 and 120×40, paging, keys, keep an epoch, live fill from the stand-in."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lorawizard.core.session.document import Session
from lorawizard.core.train import samples
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.samples import SamplesScreen, page_layout
from tests.support.sessions import save
from tests.support.standin import make_train_project

PROMPTS = ["mychar, a photo, plain background", "mychar on a city street at night, neon lights",
           "mychar, an oil painting in the style of an old master"]


def _sample_dir(run_dir: Path, epochs: list[int]) -> None:
    from PIL import Image

    folder = run_dir / "sample"
    folder.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        for index in range(3):
            picture = Image.new("RGB", (32, 32))
            picture.putdata([((x * 8 + epoch * 20) % 256, (y * 8) % 256, 60 * index) for y in range(32) for x in range(32)])
            picture.save(folder / f"mychar_e{epoch:06d}_{index:02d}_20261125{epoch:06d}_42.png")
    (folder / "notes.png").write_bytes(b"not a sample")


def _screen(project: Path, epochs: list[int]) -> SamplesScreen:
    run_dir = project / "runs" / "20261125-101500"
    _sample_dir(run_dir, epochs)
    grid = samples.gallery([run_dir], "mychar", PROMPTS)
    return SamplesScreen([run_dir], "mychar", PROMPTS, last_epoch=16, gallery=grid, live=False)


@pytest.fixture
def home_project(home_project: Path) -> Path:
    """conftest's project under HOME, its name written into session.toml."""
    session = Session.open_project(home_project)
    session.set("name", "mychar")
    save(session)
    return home_project


def _push(screen: SamplesScreen):
    async def run_before(pilot) -> None:  # noqa: ANN001
        await pilot.app.push_screen(screen)
        await pilot.pause(0.3)

    return run_before


def test_snapshot_gallery_80x24(snap_compare, home_project: Path) -> None:
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    screen = _screen(home_project, [0, 4, 8, 12, 16])
    assert snap_compare(app, terminal_size=(80, 24), run_before=_push(screen))


def test_snapshot_gallery_120x40(snap_compare, home_project: Path) -> None:
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    screen = _screen(home_project, [0, 4, 8, 12, 16])
    assert snap_compare(app, terminal_size=(120, 40), run_before=_push(screen))


def test_page_layout_fits_four_epochs_at_80x24() -> None:
    cell_w, cell_h, columns = page_layout(80, 24, 3)
    assert columns == 4 and 14 + columns * (cell_w + 1) <= 80 and 3 * cell_h <= 24 - 3


async def test_keys_move_page_open_and_keep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    session = make_train_project(tmp_path, epochs=6, name="mychar")
    session.set("train.samples.prompts", PROMPTS)
    session.set("train.samples.every_n_epochs", 1)
    save(session)
    from lorawizard.core.train.step import plan_run, start_run

    record = start_run(session, plan_run(session))
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        deadline = time.monotonic() + 30
        while record.is_alive():
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        await pilot.pause(0.3)
        await pilot.press("g")
        screen = app.screen
        assert isinstance(screen, SamplesScreen)
        while screen.gallery.epochs != [0, 1, 2, 3, 4, 5, 6]:  # filled live from the run's sample folder
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        per_page = screen._layout()[2]  # 4 at 80x24; 5 with the suggestion's line (core.train.suggest)
        assert screen.col == 6 and screen.first == 7 - per_page  # follows the newest epoch, on the last page
        await pilot.press("left_square_bracket")
        assert screen.first == 0
        await pilot.press("left", "left", "left", "left", "left", "left")
        await pilot.press("right", "right", "down")
        assert (screen.row, screen.gallery.epochs[screen.col]) == (1, 2)
        await pilot.press("enter")
        assert type(app.screen).__name__ == "LargeSample"
        await pilot.press("escape")
        await pilot.press("k")
        kept = session.project_dir / "loras" / "mychar-e2.safetensors"
        while not kept.is_file():
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        await pilot.pause(0.2)
        assert app.session.get("train.keep_epoch") == 2
    assert Session.load(session.path).get("train.keep_epoch") == 2  # written by the app's store
    assert (session.project_dir / "loras" / "mychar-e2.json").is_file()


async def test_sample_prompts_are_editable_on_the_train_screen(home_project: Path) -> None:
    from textual.widgets import Input

    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        field = app.screen.query_one("#set-train-samples-prompts", Input)
        field.value = "mychar, a photo | mychar --w 64, \"quoted\""  # sentences, separated by | (issue 24 item 3)
        await pilot.pause(0.1)
        assert app.session.get("train.samples.prompts") == ["mychar, a photo", 'mychar --w 64, "quoted"']


async def test_pages_count_from_the_newest_epoch_and_stay_full(home_project: Path) -> None:
    """Five epochs, four columns at 80x24: the gallery follows the newest epoch (epochs 4-16 shown); that is the
    last page, `]` there changes nothing, `[` shows the baseline. (It used to say page 1/2 there, and `]` showed
    epoch 16 alone as page 2/2.)"""
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    screen = _screen(home_project, [0, 4, 8, 12, 16])

    def title() -> str:
        return str(screen.query_one("#samples-title").render())

    def shown() -> list[int]:
        return screen.gallery.epochs[screen.first : screen.first + page_layout(80, 24, 3)[2]]

    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(screen)
        await pilot.pause(0.2)
        await pilot.press("right", "right", "right", "right")
        assert shown() == [4, 8, 12, 16] and "page 2/2" in title()
        await pilot.press("right_square_bracket")
        assert shown() == [4, 8, 12, 16] and "page 2/2" in title()
        assert screen.gallery.epochs[screen.col] == 16
        await pilot.press("left_square_bracket")
        assert shown() == [0, 4, 8, 12] and "page 1/2" in title()
        await pilot.press("left_square_bracket")
        assert shown() == [0, 4, 8, 12] and screen.first == 0
        await pilot.press("right_square_bracket")
        assert shown() == [4, 8, 12, 16] and "page 2/2" in title()


async def test_a_new_epoch_does_not_move_the_cursor_off_the_epoch_looked_at(home_project: Path) -> None:
    """QA: during a run, Enter on the newest epoch (12), Esc, k: epoch 16 had arrived meanwhile and the cursor,
    following the newest, had moved onto it: k kept epoch 16, not the 12 the person had just looked at."""
    from lorawizard.tui.screens.samples import GalleryChanged

    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        run_dir = home_project / "runs" / "20261125-101500"
        _sample_dir(run_dir, [0, 4, 8])
        screen = SamplesScreen([run_dir], "mychar", PROMPTS, last_epoch=16, live=False)  # as g opens it
        await app.push_screen(screen)
        await pilot.pause(0.2)
        screen.post_message(GalleryChanged(samples.gallery(screen.run_dirs, "mychar", PROMPTS)))
        await pilot.pause()
        assert screen.gallery.epochs[screen.col] == 8  # nothing chosen yet: the cursor follows the newest
        _sample_dir(screen.run_dirs[0], [12])
        screen.post_message(GalleryChanged(samples.gallery(screen.run_dirs, "mychar", PROMPTS)))
        await pilot.pause()
        assert screen.gallery.epochs[screen.col] == 12
        await pilot.press("enter")  # looks at epoch 12, large
        assert type(app.screen).__name__ == "LargeSample"
        await pilot.press("escape")
        _sample_dir(screen.run_dirs[0], [16])  # meanwhile the run saved epoch 16
        screen.post_message(GalleryChanged(samples.gallery(screen.run_dirs, "mychar", PROMPTS)))
        await pilot.pause()
        assert screen.gallery.epochs == [0, 4, 8, 12, 16]
        assert screen.selected() is not None and screen.selected()[0] == 12


async def test_title_counts_one_column_in_the_singular(home_project: Path) -> None:
    """QA: a run's first minutes have only the baseline samples: the title said "1 columns"."""
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    screen = _screen(home_project, [0])
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(screen)
        await pilot.pause(0.2)
        title = str(screen.query_one("#samples-title").render())
        assert "· 1 column" in title and "1 columns" not in title


def test_the_final_epochs_label_fits_its_column() -> None:
    """QA: at 80x24 a column is 14 cells and the header read "epoch 8 (final" (the bracket cut)."""
    from lorawizard.tui.screens.samples import epoch_label

    assert epoch_label(8, 8) == "epoch 8 (final)" and epoch_label(4, 8, 14) == "epoch 4"
    assert epoch_label(8, 8, 14) == "epoch 8 final" and epoch_label(16, 16, 14) == "epoch 16 final"
    assert epoch_label(100, 100, 14) == "final (100)" and epoch_label(0, 8, 4) == "baseline"
    assert all(len(epoch_label(e, e, w)) <= w for e in (1, 16, 100, 1000) for w in (10, 14))
