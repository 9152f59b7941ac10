"""Issue 25 item 4: the suggested epoch from known curves (core/train/suggest.py's rule, in its docstring)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lorawizard.core.train import step, suggest
from lorawizard.core.train.suggest import Suggestion, line_without_validation


def curve(values: list[float], first: int = 1) -> dict[int, float]:
    return {first + i: v for i, v in enumerate(values)}


FALLING_TRAIN = curve([0.60 - 0.02 * i for i in range(10)])


def test_a_clean_u_shape_names_the_minimum_and_the_rise_with_numbers() -> None:
    val = curve([0.52, 0.47, 0.44, 0.425, 0.415, 0.412, 0.414, 0.420, 0.426, 0.431])
    found = suggest.suggest(FALLING_TRAIN, val)
    assert found is not None
    assert found.epoch == 6 and found.val_loss == pytest.approx(0.412)
    assert found.rise == (8, 10, pytest.approx(0.431))
    assert found.line == "suggested: epoch 6 (val 0.412; epochs 8–10 rise to 0.431)"
    assert found.train_falling is True
    assert any("overfitting" in note for note in found.notes)
    assert not found.flat


def test_a_flat_curve_says_so_and_takes_the_earliest_within_the_tolerance() -> None:
    val = curve([0.4010, 0.4000, 0.4020, 0.4005, 0.4015, 0.4008, 0.4012, 0.4003])
    found = suggest.suggest(FALLING_TRAIN, val)
    assert found is not None and found.flat
    assert found.epoch == 1  # more epochs bought nothing measurable
    assert found.rise is None
    assert "flat: no clear minimum" in found.line


def test_a_noisy_curve_is_smoothed_so_one_lucky_dip_late_is_not_the_minimum() -> None:
    # a U with its bottom at epochs 5-6 and ±0.01 noise; epoch 9 dips by luck below the bottom's raw values
    base = [0.50, 0.46, 0.43, 0.415, 0.405, 0.405, 0.415, 0.43, 0.445, 0.46, 0.475, 0.49]
    noise = [0.01, -0.01, 0.01, -0.01, 0.01, -0.01, 0.01, -0.01, -0.06, 0.01, -0.01, 0.01]
    val = curve([b + n for b, n in zip(base, noise, strict=True)])
    assert min(val, key=lambda e: val[e]) == 9  # the raw minimum is the lucky dip
    found = suggest.suggest(curve([0.6 - 0.01 * i for i in range(12)]), val)
    assert found is not None
    assert found.epoch in (5, 6)
    assert found.rise is not None and found.rise[1] == 12
    assert found.tolerance > 0.004  # the noise widened the band beyond 1 % of the minimum


def test_a_curve_rising_from_the_start_suggests_the_first_epoch_and_says_why() -> None:
    val = curve([0.40, 0.41, 0.425, 0.44, 0.46, 0.48])
    found = suggest.suggest(FALLING_TRAIN, val)
    assert found is not None
    assert found.epoch == 1 and found.rise is not None and found.rise[0] == 2
    assert found.line.startswith("suggested: epoch 1 (val 0.4; epochs 2–6 rise to 0.48")
    assert any("from the first validated epoch" in note for note in found.notes)


def test_a_curve_still_falling_at_the_end_says_more_epochs_may_help() -> None:
    val = curve([0.50, 0.47, 0.45, 0.43, 0.415, 0.40])
    found = suggest.suggest(FALLING_TRAIN, val)
    assert found is not None and found.epoch == 6 and found.rise is None
    assert "still falling at the last validated epoch" in found.line


def test_no_validation_gives_no_suggestion_and_a_line_saying_what_is_needed() -> None:
    assert suggest.suggest(FALLING_TRAIN, {}) is None
    assert suggest.suggest(FALLING_TRAIN, {1: math.nan, 2: math.inf}) is None
    assert "train.validation_split (e.g. 0.1)" in line_without_validation()


def test_the_training_loss_rising_too_is_not_called_overfitting() -> None:
    val = curve([0.50, 0.45, 0.42, 0.44, 0.47])
    train = curve([0.50, 0.45, 0.40, 0.43, 0.46])
    found = suggest.suggest(train, val)
    assert found is not None and found.epoch == 3 and found.train_falling is False
    assert any("rose too" in note for note in found.notes)


def test_validated_every_other_epoch_counts_validations_not_epochs() -> None:
    val = {2: 0.50, 4: 0.44, 6: 0.42, 8: 0.45, 10: 0.48}
    found = suggest.suggest({}, val)
    assert found is not None and found.epoch == 6 and found.rise == (8, 10, pytest.approx(0.48))


def test_an_epoch_without_a_lora_file_points_at_the_nearest_saved_one() -> None:
    val = curve([0.52, 0.47, 0.44, 0.425, 0.415, 0.412, 0.414, 0.420, 0.426, 0.431])
    found = suggest.suggest(FALLING_TRAIN, val, saved_epochs=[4, 8, 10])
    assert found is not None and found.epoch == 6 and found.has_file is False
    # 4 and 8 are as near; 8's validation loss (0.420) is lower than 4's (0.425)
    assert found.keep_epoch == 8
    assert "no LoRA saved at epoch 6: the nearest saved is epoch 8 (val 0.42)" in found.line
    kept = suggest.suggest(FALLING_TRAIN, val, saved_epochs=[2, 6, 10])
    assert kept is not None and kept.keep_epoch == 6 and kept.has_file is True
    assert "no LoRA" not in kept.line


def test_one_validated_epoch_is_a_suggestion_that_says_so() -> None:
    found = suggest.suggest({1: 0.5}, {1: 0.44})
    assert isinstance(found, Suggestion) and found.epoch == 1 and "1 validated epoch so far" in str(found)


def test_the_index_file_name_is_the_followers() -> None:
    assert suggest.INDEX_FILE == step.INDEX_FILE


def test_index_epoch_losses_skip_what_is_not_an_epoch_and_a_loss() -> None:
    saved = {"val_by_epoch": [[1, 0.5], [2, "x"], ["3", 0.4], [4.0, 0.41], [5.5, 0.3], [True, 0.2], [6]]}
    assert suggest.index_epoch_losses(saved, "val_by_epoch") == {1: 0.5, 4: 0.41}
    assert suggest.index_epoch_losses({"val_by_epoch": "junk"}, "val_by_epoch") == {}


def test_for_run_reads_the_chain_from_the_log_indexes(tmp_path: Path) -> None:
    from lorawizard.core.launch.runs import RunRecord

    def run(run_id: str, val: dict[int, float], *, epoch: int, resumed_from: Path | None = None,
            files: tuple[int, ...] = ()) -> RunRecord:
        folder = tmp_path / run_id
        folder.mkdir()
        for number in files:
            (folder / f"tiny-{number:06d}.safetensors").write_bytes(b"x")
        (folder / step.INDEX_FILE).write_text(json.dumps({"version": 1, "state": {
            "epoch": epoch, "val_by_epoch": [[e, v] for e, v in val.items()],
            "train_by_epoch": [[e, 0.6 - 0.02 * e] for e in val]}}))
        record = RunRecord(run_id=run_id, dir=folder, argv=["--validate_every_n_epochs", "1"], env={}, cwd=str(folder),
                           output_name="tiny", resumed_from=str(resumed_from) if resumed_from else None)
        record.save()
        return record

    first = run("r1", {1: 0.50, 2: 0.46, 3: 0.43, 4: 0.42}, epoch=4, files=(2, 4))
    (first.dir / "tiny-000004-state").mkdir()
    second = run("r2", {5: 0.415, 6: 0.425, 7: 0.44}, epoch=7, resumed_from=first.dir / "tiny-000004-state",
                 files=(6,))
    (second.dir / "tiny.safetensors").write_bytes(b"x")  # the final LoRA: epoch 7
    found = suggest.for_run(second)
    assert found is not None and found.epoch == 5 and found.rise == (6, 7, pytest.approx(0.44))
    assert found.keep_epoch in (4, 6) and "no LoRA saved at epoch 5" in found.line
    assert suggest.saved_epochs(second, 7) == [2, 4, 6, 7]
    status = suggest.status_part(second, finished=True)
    assert status.startswith("val 0.44 at epoch 7 · suggested: epoch 5 (val 0.415")


def test_status_part_without_validation_says_what_is_needed_only_when_finished(tmp_path: Path) -> None:
    from lorawizard.core.launch.runs import RunRecord

    record = RunRecord(run_id="r1", dir=tmp_path, argv=[], env={}, cwd=str(tmp_path), output_name="tiny")
    (tmp_path / step.INDEX_FILE).write_text(json.dumps({"state": {"epoch": 2, "val_by_epoch": []}}))
    assert suggest.status_part(record, finished=False) == ""
    assert "train.validation_split" in suggest.status_part(record, finished=True)
    validating = RunRecord(run_id="r1", dir=tmp_path, argv=["--validate_every_n_epochs", "2"], env={},
                           cwd=str(tmp_path), output_name="tiny")
    assert suggest.status_part(validating, finished=True) == "validation: no epoch validated yet"
