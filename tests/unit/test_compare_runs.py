"""Issue 25 item 5 in core: every run of the project (base, variants, earlier runs) and their samples side by side;
contact sheets (one PNG per prompt, run × epoch); keeping and publishing from any run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lorawizard.core.session.document import Session
from lorawizard.core.train import compare, contact_sheet, keep
from tests.support.fake_runs import PROMPTS, make_run, write_sample
from tests.support.sessions import save


@pytest.fixture
def session(tmp_path: Path) -> Session:
    session = Session.new(tmp_path / "project" / "session.toml", name="mychar")
    session.set("train.max_train_epochs", 8)
    session.set("train.save_every_n_epochs", 4)
    save(session)
    return session


def _project(session: Session) -> dict[str, object]:
    """base: an earlier run (epochs 0, 4) and the newest (0, 4, 8); fp16 (0, 4, 8, no baseline for prompt 2);
    dim16 (a variant no longer in session.toml), only epoch 4; a half-written PNG and a foreign file."""
    old = make_run(session, "20261120-090000", epochs=[0, 4], started_ts=100, shade=5)
    base = make_run(session, "20261125-101500", epochs=[0, 4, 8], started_ts=200)
    fp16 = make_run(session, "20261125-131500", variant="fp16", epochs=[4, 8], started_ts=300, shade=60,
                    argv=["--network_dim", "32", "--learning_rate", "2e-4"])
    write_sample(fp16.dir / "sample", "mychar-fp16", 0, 0)  # the baseline of prompt 1 only
    dim16 = make_run(session, "20261125-161500", variant="dim16", epochs=[4], started_ts=400)
    (base.dir / "sample" / "mychar_e000012_00_20261125000012_42.png").write_bytes(b"\x89PNG\r\n\x1a\n half")
    (base.dir / "sample" / "notes.png").write_bytes(b"not a sample")
    return {"old": old, "base": base, "fp16": fp16, "dim16": dim16}


def test_project_runs_finds_the_base_every_variant_and_earlier_runs(session: Session) -> None:
    made = _project(session)
    groups = compare.project_runs(session)
    assert [g.label for g in groups] == ["base", "fp16", "dim16", "base@20261120-090000"]
    base, fp16, dim16, old = groups
    assert base.variant is None and base.output_name == "mychar" and base.run_dirs == [made["base"].dir]
    assert fp16.variant == "fp16" and fp16.output_name == "mychar-fp16" and fp16.run_id == "20261125-131500"
    assert base.epochs == [0, 4, 8]  # the half-written epoch 12 is not there yet
    assert fp16.epochs == [0, 4, 8] and dim16.epochs == [4] and old.epochs == [0, 4] and not old.latest
    assert fp16.gallery.image(1, 0) is None and fp16.gallery.image(0, 0) is not None


def test_a_resumed_run_is_one_group_with_its_chain(session: Session) -> None:
    first = make_run(session, "20261125-101500", epochs=[0, 4], started_ts=100)
    second = make_run(session, "20261125-121500", epochs=[8], started_ts=200, resumed_from=first)
    groups = compare.project_runs(session)
    assert [g.label for g in groups] == ["base"]
    assert groups[0].run_dirs == [first.dir, second.dir] and groups[0].epochs == [0, 4, 8]


def test_compare_lays_out_epoch_by_epoch_and_by_prompt_text(session: Session) -> None:
    _project(session)
    groups = compare.project_runs(session)[:2]
    grid = compare.compare(groups)
    assert grid.prompts == PROMPTS
    assert grid.columns == [("base", 0), ("fp16", 0), ("base", 4), ("fp16", 4), ("base", 8), ("fp16", 8)]
    assert grid.image(1, "fp16", 0) is None and grid.image(1, "fp16", 8) is not None
    assert grid.image(0, "fp16", 8).path.name.startswith("mychar-fp16_e000008_00")
    across = compare.compare(groups, epochs=[8])
    assert across.columns == [("base", 8), ("fp16", 8)]


def test_runs_with_other_prompts_get_rows_of_their_own(session: Session) -> None:
    make_run(session, "20261125-101500", epochs=[4], started_ts=100)
    make_run(session, "20261125-131500", variant="v2", epochs=[4], started_ts=200,
             prompts=[PROMPTS[1], "mychar as a watercolour"])
    grid = compare.compare(compare.project_runs(session))
    assert grid.prompts == [*PROMPTS, "mychar as a watercolour"]
    assert grid.image(1, "v2", 4).path.name.startswith("mychar-v2_e000004_00")  # its prompt 1 is the base's 2
    assert grid.image(0, "v2", 4) is None and grid.image(2, "base", 4) is None


# ------------------------------------------------------------------ contact sheets


def test_contact_sheets_one_png_per_prompt_with_every_run_and_epoch(session: Session) -> None:
    from PIL import Image

    _project(session)
    originals = {p: p.stat().st_mtime_ns for p in Path(session.paths.runs).rglob("*.png")}
    paths = contact_sheet.write_contact_sheets(session, thumb=64)
    folder = session.project_dir / "samples-compare"
    assert paths == [folder / "prompt-01.png", folder / "prompt-02.png"]
    with Image.open(paths[0]) as sheet:
        width, height = sheet.size
        # 4 runs (rows) × 3 epochs (0, 4, 8): wider than 3 thumbnails, taller than 4
        assert width >= 3 * 64 + 80 and height >= 4 * 64
        pixels = sheet.convert("RGB")
        # the colours of the samples are in the sheet (base epoch 8: shade 240, fp16 epoch 4: shade 180)
        colours = {c for _, c in pixels.getcolors(maxcolors=1 << 16)}
    assert (240, 0, 120) in colours and (180, 0, 120) in colours
    assert not list(folder.glob(".*tmp"))
    assert {p: p.stat().st_mtime_ns for p in Path(session.paths.runs).rglob("*.png")} == originals


def test_contact_sheet_marks_a_missing_and_an_unreadable_sample(session: Session) -> None:
    from PIL import Image

    base = make_run(session, "20261125-101500", epochs=[4, 8], started_ts=100, prompts=PROMPTS[:1])
    (base.dir / "sample" / "mychar_e000008_00_20261125000008_42.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40 + b"IEND\xaeB`\x82")  # complete by its ends, not an image
    make_run(session, "20261125-131500", variant="fp16", epochs=[4], started_ts=200, prompts=PROMPTS[:1])
    grid = compare.compare(compare.project_runs(session))
    assert grid.image(0, "fp16", 8) is None and grid.image(0, "base", 8) is not None
    sheet = contact_sheet.render_sheet(grid, 0, thumb=64)
    colours = {c for _, c in sheet.getcolors(maxcolors=1 << 16)}
    assert contact_sheet.CELL_EMPTY in colours  # drawn as an empty cell, not an exception
    sheet.close()
    paths = contact_sheet.write_contact_sheets(session, thumb=64)
    with Image.open(paths[0]) as written:
        assert written.size == sheet.size


def test_contact_sheets_replace_old_ones_and_leave_other_files(session: Session, tmp_path: Path) -> None:
    make_run(session, "20261125-101500", epochs=[4], started_ts=100, prompts=PROMPTS[:1])
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "prompt-07.png").write_bytes(b"an old sheet")
    (folder / "mine.png").write_bytes(b"a person's file")
    paths = contact_sheet.write_contact_sheets(session, folder, thumb=64)
    assert [p.name for p in paths] == ["prompt-01.png"]
    assert sorted(p.name for p in folder.iterdir()) == ["mine.png", "prompt-01.png"]


def test_no_samples_no_sheets(session: Session) -> None:
    assert contact_sheet.write_contact_sheets(session) == []
    assert not (session.project_dir / "samples-compare").exists()


def test_thumbnails_keep_memory_bounded(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sample is shrunk as it is read: the sheet never holds a full-size sample (1024 px here)."""
    from PIL import Image

    base = make_run(session, "20261125-101500", epochs=[], started_ts=100, prompts=PROMPTS[:1])
    write_sample(base.dir / "sample", "mychar", 4, 0, size=1024)
    sizes = []
    original = contact_sheet._thumbnail

    def spy(path: Path, side: int):  # noqa: ANN202
        picture = original(path, side)
        sizes.append(picture.size)
        return picture

    monkeypatch.setattr(contact_sheet, "_thumbnail", spy)
    [path] = contact_sheet.write_contact_sheets(session, thumb=64)
    assert sizes == [(64, 64)]
    with Image.open(path) as sheet:
        assert max(sheet.size) < 400


# ------------------------------------------------------------------ keep and publish from any run


def test_keep_from_a_variant_names_it_and_publish_takes_it(session: Session) -> None:
    from lorawizard.core.publish.step import plan

    made = _project(session)
    kept = keep.keep_epoch(session, 4, made["fp16"], note=True)
    assert kept.lora == session.project_dir / "loras" / "mychar-fp16-e4.safetensors" and kept.variant == "fp16"
    sidecar = json.loads(kept.sidecar.read_text(encoding="utf-8"))
    assert sidecar["variant"] == "fp16" and sidecar["run_id"] == "20261125-131500"
    assert sidecar["settings"]["network_dim"] == "32"  # the variant's command line, not the base's settings
    assert sidecar["samples"] and all("mychar-fp16_e000004" in s for s in sidecar["samples"])
    base_kept = keep.keep_epoch(session, 8, made["base"], note=True)
    assert base_kept.lora.name == "mychar-e8.safetensors"
    assert keep.kept_lora(session) == base_kept.lora  # the last one kept
    keep.keep_epoch(session, 4, made["fp16"], note=True)
    base_e4 = keep.keep_epoch(session, 4, made["base"])  # the keep at the end of a queue's run: no note
    os.utime(base_e4.lora)  # newer by mtime, but not the one the person kept
    session.set("train.keep_epoch", 4)
    save(session)
    assert keep.kept_lora(session) == kept.lora
    session.set("publish.repo", "someone/mychar")
    the_plan = plan(session)
    names = [f.path_in_repo for f in the_plan.files]
    assert names[0] == "mychar-fp16-e4.safetensors"
    assert any(n.startswith("samples/epoch004-") for n in names)  # the variant's samples, found in variants/
    assert "| variant | fp16 |" in the_plan.card


def test_keep_epoch_of_the_base_stays_as_it_was(session: Session) -> None:
    made = _project(session)
    session.set("train.keep_epoch", 4)
    kept = keep.keep_epoch(session, 4, made["base"])
    assert keep.kept_lora(session) == kept.lora == session.project_dir / "loras" / "mychar-e4.safetensors"
    assert not (session.project_dir / ".lorawizard" / "kept.json").exists()  # no person's choice noted
    (session.project_dir / ".lorawizard").mkdir(exist_ok=True)
    (session.project_dir / ".lorawizard" / "kept.json").write_text('{"lora": "../../elsewhere.safetensors", '
                                                                   '"epoch": 4}')
    assert keep.kept_lora(session) == kept.lora  # a hand-edited note never points outside loras/
