"""The upscale rule (issue 24 item 8): a crop a little smaller than its bucket is used with a note saying the factor
with two decimals; above UPSCALE_LIMIT (1.25×) it is skipped unless the person keeps it; a hand-moved crop says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext
from lorawizard.core.dataset import imaging
from lorawizard.core.dataset import step as dataset
from lorawizard.core.session.document import Session
from tests.support import dataset_fixtures as fx


def planned(width: int, height: int, decision: dict | None = None, max_side: int = 1024) -> dataset.PlanItem:
    item = dataset.PlanItem("a.jpg", Path("a.jpg"), "0" * 64, imaging.Probe(True), "bad", width, height)
    dataset.plan_item(item, decision or {}, max_side)
    return item


@pytest.mark.parametrize(("size", "note"), [((1000, 1000), "upscaled 1.02×"), ((900, 1200), "upscaled 1.14×")])
def test_a_photo_a_little_small_for_its_bucket_is_used_with_a_note(size: tuple[int, int], note: str) -> None:
    """The person's phone photo was skipped at max_side 1024: "would upscale 1.1×"."""
    item = planned(*size)
    assert item.bucket == (1024, 1024)
    assert item.status == "use" and item.reason == ""
    assert note in item.notes, item.notes
    assert not any("your choice" in n for n in item.notes)


def test_a_photo_far_too_small_is_skipped_with_the_choice_to_keep_it() -> None:
    item = planned(700, 700)
    assert item.status == "small" and not item.used
    assert "would upscale 1.46× (over 1.25×)" in item.reason and "use-anyway" in item.reason
    kept = planned(700, 700, {"skip": False})  # use anyway: upscaled, and said so
    assert kept.used and "upscaled 1.46× (your choice)" in kept.notes


def test_the_limit_is_the_dataset_constant_and_inclusive() -> None:
    assert dataset.UPSCALE_LIMIT == 1.25
    assert planned(820, 820).used  # 1024 / 820 = 1.249
    assert planned(819, 819).status == "small"  # 1.2503


def test_the_factor_has_two_decimals_and_never_reads_one() -> None:
    assert dataset.upscale_text(1.6) == "1.60×"
    assert dataset.upscale_text(1024 / 1000) == "1.02×"
    assert dataset.upscale_text(1024 / 1020) == "1.004×"  # two decimals would say 1.00×: no upscale, which is wrong
    assert "upscaled 1.004×" in planned(1020, 1020).notes


def test_the_step_writes_the_slightly_small_photo_and_skips_the_tiny_one(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "phone.jpg", 900, 1200)
    fx.photo(source / "tiny.jpg", 700, 700, seed=1)
    session = Session.load(fx.write_session(tmp_path / "project", source, max_side=1024))
    result = dataset.run_step(StepContext(session=session, options={"workers": 1}))
    plan = result.data["plan"]
    by_source = {item.source: item for item in plan.items}
    assert by_source["phone.jpg"].used and by_source["tiny.jpg"].status == "small"
    written = sorted(p.relative_to(tmp_path / "project" / "dataset").as_posix()
                     for p in (tmp_path / "project" / "dataset").rglob("*.png"))
    assert written == ["1024x1024/0001.png"]
    report = (tmp_path / "project" / "dataset" / dataset.REPORT_FILE).read_text()
    assert "upscaled 1.14×" in report and "would upscale 1.46×" in report


def test_a_crop_moved_by_hand_says_so() -> None:
    centred = planned(1600, 1200, max_side=512)
    assert centred.crop == (200, 0, 1400, 1200) and "crop 75%" in centred.notes and not centred.crop_moved
    moved = planned(1600, 1200, {"crop": [320, 0, 1520, 1200]}, max_side=512)
    assert moved.crop_moved and "crop moved (75%)" in moved.notes and "crop 75%" not in moved.notes
    back = planned(1600, 1200, {"crop": [200, 0, 1400, 1200]}, max_side=512)  # moved there and back: the centred one
    assert not back.crop_moved and "crop 75%" in back.notes
