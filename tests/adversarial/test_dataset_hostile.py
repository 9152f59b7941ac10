"""Issue 23, the dataset step: links out of the source folder, pseudo-filesystems, a full disk, a path too long,
10,000 skipped lines, a rounded upscale factor."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext, StepFailed
from lorawizard.core.dataset import imaging, scan
from lorawizard.core.dataset import step as dataset
from lorawizard.core.session.document import Session
from tests.support import dataset_fixtures as fx


def _run(session_path: Path, **options: object) -> dataset.StepResult:
    ctx = StepContext(session=Session.load(session_path), options={"workers": 1, **options})
    return dataset.run_step(ctx)


def test_a_link_out_of_the_source_folder_is_not_followed(tmp_path: Path) -> None:
    """A11: `photos/everything -> /` scanned the whole machine; a link inside the source folder is still followed."""
    source = tmp_path / "photos"
    (source / "mine").mkdir(parents=True)
    fx.photo(source / "mine" / "a.jpg", 300, 300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fx.photo(elsewhere / "secret.jpg", 300, 300, seed=3)
    os.symlink("..", source / "everything")  # as `everything -> /` (that one scans the machine: not in a test)
    os.symlink(elsewhere, source / "out")
    os.symlink(source / "mine", source / "also-mine")  # stays inside: followed (once)
    found = scan.scan_source(source)
    assert [image.rel for image in found.images] == ["also-mine/a.jpg"]  # the same folder, scanned once
    ignored = dict(found.ignored)
    assert "outside the source folder: not followed" in ignored["everything/"]
    assert "outside the source folder: not followed" in ignored["out/"]


@pytest.mark.parametrize("folder", ["/proc", "/sys", "/dev"])
def test_a_pseudo_filesystem_is_refused_as_source(tmp_path: Path, folder: str) -> None:
    """A11: `source = "/proc"` scanned the kernel's files."""
    assert scan.pseudo_filesystem(Path(folder))  # first, so that without the check this fails at once, not after a scan
    session = fx.write_session(tmp_path / "project", Path(folder))
    with pytest.raises(StepFailed, match="pseudo-filesystem") as caught:
        _run(session)
    assert "\n" not in str(caught.value)


def test_a_link_to_proc_as_source_is_refused(tmp_path: Path) -> None:
    os.symlink("/proc", tmp_path / "photos")
    assert scan.pseudo_filesystem(tmp_path / "photos")
    with pytest.raises(StepFailed, match="pseudo-filesystem"):
        _run(fx.write_session(tmp_path / "project", tmp_path / "photos"))


def test_a_full_disk_fails_the_step_instead_of_blaming_the_photos(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A12: ENOSPC while writing was 38 × "bad input … No space left on device" and exit 0."""
    source = tmp_path / "photos"
    source.mkdir()
    for index in range(6):
        fx.photo(source / f"p{index}.jpg", 300, 300, seed=index)
    real = imaging.atomic_write_bytes
    calls = []

    def fill_up(path: Path | str, data: bytes) -> None:
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(imaging, "atomic_write_bytes", fill_up)
    with pytest.raises(StepFailed) as caught:
        _run(fx.write_session(tmp_path / "project", source))
    message = str(caught.value)
    assert "\n" not in message and "disk is full" in message and "No space left on device" in message
    assert "dataset" in message and "more is needed" in message
    assert len(calls) == 3  # it stopped at the first failed write: no image after it was tried
    assert not list((tmp_path / "project" / "dataset").glob("**/.*.tmp"))


@pytest.mark.parametrize("code", [errno.EROFS, errno.EDQUOT])
def test_a_read_only_or_over_quota_disk_fails_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       code: int) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "p.jpg", 300, 300)

    def refuse(path: Path | str, data: bytes) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(imaging, "atomic_write_bytes", refuse)
    with pytest.raises(StepFailed, match="read-only|quota"):
        _run(fx.write_session(tmp_path / "project", source))


def test_a_full_disk_on_the_manifest_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "p.jpg", 300, 300)

    def full(path: Path | str, data: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dataset, "atomic_write_json", full)
    with pytest.raises(StepFailed, match="disk is full"):
        _run(fx.write_session(tmp_path / "project", source))


def test_a_source_path_too_long_is_one_line(tmp_path: Path) -> None:
    """C19: a 5,000-character dataset.source was OSError 36 in the dataset step; refused where the file is read."""
    from lorawizard.core.session.document import SessionError

    path = fx.write_session(tmp_path / "project", tmp_path / ("a" * 5000))
    with pytest.raises(SessionError, match="at most 4096 bytes") as caught:
        Session.load(path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_a_source_name_too_long_in_the_step_is_one_line(tmp_path: Path) -> None:
    """C19: a path the schema lets through (a set() from a screen) that the OS still refuses is a step failure."""
    session = Session.load(fx.write_session(tmp_path / "project", tmp_path / "photos"))
    session._doc["dataset"]["source"] = "/".join(["b" * 250] * 20)  # 5,000 characters, each name allowed
    with pytest.raises(StepFailed, match="name too long|cannot use"):
        dataset.resolve_folders(session)


def test_thousands_of_small_images_are_summarised(tmp_path: Path) -> None:
    """D: 10,000 too-small images printed 10,000 "skipped" lines; the console gets a count, the report every one."""
    from lorawizard.core.dataset.imaging import Probe

    plan = dataset.Plan(tmp_path, tmp_path / "dataset", 1024, [], [])
    for index in range(10_000):
        item = dataset.PlanItem(f"s{index}.jpg", tmp_path / f"s{index}.jpg", f"{index:064x}", Probe(True), "small",
                                100, 100)
        item.reason = "too small: 100×100 for 1024x1024 would upscale 10.24×; skipped (choose use-anyway to keep it)"
        plan.items.append(item)
    short = dataset.report_lines(plan, every_note=False)
    assert len(short) < 10
    assert any("10,000" in line and "too small" in line for line in short)
    assert len(dataset.report_lines(plan)) > 10_000  # the report file still names each one


def test_upscale_factor_is_never_shown_as_one(tmp_path: Path) -> None:
    """D: "would upscale 1.0×" for a crop of 1020 px in a 1024 bucket."""
    item = dataset.PlanItem("a.jpg", tmp_path / "a.jpg", "0" * 64, imaging.Probe(True), "bad", 1020, 1020)
    dataset.plan_item(item, {}, 1024)
    assert item.status == "use"  # within UPSCALE_LIMIT (issue 24 item 8): used, and the note says by how much
    assert "upscaled 1.004×" in item.notes and not any("1.0×" in n or "1.00×" in n for n in item.notes)
    small = dataset.PlanItem("b.jpg", tmp_path / "b.jpg", "1" * 64, imaging.Probe(True), "bad", 800, 800)
    dataset.plan_item(small, {}, 1024)
    assert small.status == "small" and "would upscale 1.28×" in small.reason


def render_onto_a_full_disk(job: imaging.RenderJob) -> imaging.RenderOutcome:
    """A worker's render when the disk is full (module level: the pool's workers import it by name)."""
    if not job.output:
        return imaging.RenderOutcome(True)
    return imaging.RenderOutcome(False, "No space left on device", bytes=1000, storage_errno=errno.ENOSPC)


@pytest.mark.extra  # ~2 s: starts a process pool
def test_a_full_disk_stops_the_worker_pool_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A12 with the process pool: the first full-disk outcome stops the step; no image is blamed."""
    source = tmp_path / "photos"
    source.mkdir()
    for index in range(8):
        fx.photo(source / f"p{index}.jpg", 300, 300, seed=index)
    monkeypatch.setattr(dataset, "render", render_onto_a_full_disk)
    with pytest.raises(StepFailed, match="disk is full") as caught:
        _run(fx.write_session(tmp_path / "project", source), workers=2)
    assert "about 5.5 KB more is needed" in str(caught.value)  # 5 distinct images (seeds repeat by 5) × 1,000 B + 10%
