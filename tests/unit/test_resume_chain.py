"""Issue 24 item 7: a run and its resumptions are one chain. The resumed run's dashboard shows the chain's checkpoints,
loss history and epoch (it started empty: `checkpoints (0)`, no loss, "epoch 1/2" though epoch 1 was done, the line
under the chart `6/12` while the header said `12/12`), and a resume makes no second baseline sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train.dashboard import TrainView, chain_history, views
from lorawizard.core.train.logparse import TrainState
from lorawizard.core.train.step import INDEX_FILE, plan_run
from tests.support.run_chain import make_chain
from tests.support.standin import make_train_project

pytestmark = pytest.mark.unit


def _view(record: RunRecord) -> TrainView:
    return list(views(record, "tiny", wait=lambda _: True))[-1]


def test_the_resumed_runs_dashboard_shows_the_chain(tmp_path: Path) -> None:
    _, second = make_chain(tmp_path / "runs")
    view = _view(second)
    # checkpoints: the first run's epoch-1 and epoch-2 LoRAs (its "final" one is its epoch 2), then the resumed run's
    assert [(name, epoch) for name, epoch, _ in view.checkpoints] == [("tiny-000001", 1), ("tiny", 2), ("tiny", None)]
    # loss history: the first run's 4 steps, then the resumed run's steps 5 and 6 (absolute)
    assert view.losses == [1.47, 1.5, 1.53, 1.52, 1.53, 1.52]
    assert (view.epoch, view.epochs, view.step, view.total_steps, view.chain) == (3, 3, 6, 6, 2)
    assert view.bar_line.startswith("steps: 6/6")  # sd-scripts' own bar says 2/6: the line says what the header says


def test_the_earlier_runs_are_read_once_then_from_their_index(tmp_path: Path) -> None:
    """Bounded reads: the first run's log is read once (head and tail), its loss history kept in log-index.json."""
    first, second = make_chain(tmp_path / "runs")
    assert chain_history(second).losses == ((1, 1.47), (2, 1.5), (3, 1.53), (4, 1.52))
    assert json.loads((first.dir / INDEX_FILE).read_text())["state"]["losses"] == [[1, 1.47], [2, 1.5], [3, 1.53],
                                                                                  [4, 1.52]]
    (first.dir / "train.log").write_bytes(b"")  # the log is not read again
    assert _view(second).losses[:4] == [1.47, 1.5, 1.53, 1.52]


def test_a_resumed_run_is_in_the_epoch_after_those_its_state_finished() -> None:
    """Before sd-scripts prints "epoch 2/2" (minutes of loading and caching), the header said "epoch 1/2"."""
    state = TrainState(base_step=2, base_epoch=1)
    assert (state.step, state.epoch) == (2, 2)


def test_a_resume_makes_no_second_baseline_sample(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=3)
    assert session.train.samples.at_first
    fresh_plan = plan_run(session, run_dir=tmp_path / "fresh")
    fresh = fresh_plan.command.argv
    assert "--sample_at_first" in fresh and "--sample_prompts" in fresh
    make_chain(session.paths.runs)
    resumed_plan = plan_run(session, resume=True, run_dir=tmp_path / "resumed")
    resumed = resumed_plan.command.argv
    assert "--resume" in resumed and "--sample_prompts" in resumed  # it samples at epoch ends, as the chain does
    assert "--sample_at_first" not in resumed
    # the plan's note counts the images the run makes: 3 epoch ends, plus the baseline on a fresh run only
    assert "× 4 times" in " ".join(fresh_plan.notes) and "× 3 times" in " ".join(resumed_plan.notes)
