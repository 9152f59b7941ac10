"""One verdict on resumability: `--status`/`--stop` (runctl.resume_hint) and `--resume`/r (training.plan_run) both ask
statesave.resume_point, so one never says "resumable" while the other refuses with "nothing to resume"."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from lorawizard import runctl
from lorawizard.core.contract import StepFailed
from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train import statesave
from lorawizard.core.train.step import plan_run
from tests.support.standin import make_train_project

PER_EPOCH = 4


def _stopped_run(session, state: tuple[str, int, int] | None, *, log: bool = True) -> RunRecord:
    """A run stopped by hand: its log says PER_EPOCH batches per epoch (unless `log` is False), and `state` is the
    (folder suffix, current_epoch, current_step) of its one saved state, as sd-scripts writes train_state.json."""
    run_dir = session.paths.runs / "20261203-090000"
    run_dir.mkdir(parents=True)
    record = RunRecord(run_id=run_dir.name, dir=run_dir, argv=["python"], env={}, cwd=str(run_dir),
                       output_name="tiny", stop_requested=time.time())
    record.save()
    (run_dir / "exit.json").write_text(json.dumps({"returncode": -2, "ended": time.time(), "stopped_by": "SIGINT"}))
    if log:
        (run_dir / "train.log").write_text(f"  num batches per epoch / 1epochのバッチ数: {PER_EPOCH}\n")
    if state is not None:
        suffix, epoch, step = state
        folder = run_dir / f"tiny-{suffix}-state"
        folder.mkdir()
        (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
    return record


def _verdicts(session, tmp_path: Path) -> tuple[str, str | None]:
    """(what --status says, plan_run's refusal or None when it plans the resume)."""
    out = io.StringIO()
    assert runctl.status(session.project_dir, out) == 1  # stopped
    try:
        plan_run(session, resume=True, run_dir=tmp_path / "planned")
    except StepFailed as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), None


def test_a_step_state_in_the_last_epoch_is_resumable_for_both(tmp_path: Path) -> None:
    """A step state at step 9 of 12 (3 epochs of 4): sd-scripts writes current_epoch = 3, the epoch in progress.
    --status said "its newest state is at the last epoch: nothing left to resume" while --resume resumed."""
    session = make_train_project(tmp_path, epochs=3)
    _stopped_run(session, ("step00000009", 3, 9))
    point = statesave.resume_point(session.paths.runs, 3)
    assert point.resumable and (point.base_step, point.base_epoch, point.steps_per_epoch) == (9, 2, PER_EPOCH)
    status, refusal = _verdicts(session, tmp_path)
    assert refusal is None
    assert "resumable from step 9: lorawizard --replay" in status and "nothing" not in status, status


def test_a_step_state_whose_log_is_gone_still_counts_its_epoch_as_unfinished(tmp_path: Path) -> None:
    """Without the log (no batches per epoch), a step state's current_epoch is still the epoch in progress: both
    callers refused to resume half an epoch of training."""
    session = make_train_project(tmp_path, epochs=3)
    _stopped_run(session, ("step00000009", 3, 9), log=False)
    point = statesave.resume_point(session.paths.runs, 3)
    assert point.resumable and (point.base_step, point.base_epoch, point.steps_per_epoch) == (9, 2, None)
    status, refusal = _verdicts(session, tmp_path)
    assert refusal is None and "resumable from step 9: lorawizard --replay" in status, (status, refusal)


@pytest.mark.parametrize("state", [("000003", 3, 12), ("step00000012", 3, 12)], ids=["epoch-state", "step-state"])
def test_a_state_at_the_end_of_the_last_epoch_is_refused_by_both(tmp_path: Path, state) -> None:
    session = make_train_project(tmp_path, epochs=3)
    _stopped_run(session, state)
    point = statesave.resume_point(session.paths.runs, 3)
    assert not point.resumable and point.base_epoch == 3
    assert point.reason.startswith("nothing to resume: the newest saved state (tiny-") and "\n" not in point.reason
    status, refusal = _verdicts(session, tmp_path)
    assert refusal == point.reason
    assert "its newest state is at the last epoch (3 of train.max_train_epochs = 3)" in status, status
    assert "resumable" not in status


def test_no_state_is_refused_by_both(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=3)
    _stopped_run(session, None)
    point = statesave.resume_point(session.paths.runs, 3)
    assert point.state is None and not point.resumable and point.reason.startswith("nothing to resume: no saved state")
    status, refusal = _verdicts(session, tmp_path)
    assert refusal == point.reason
    assert "saved no state to resume from" in status and "resumable" not in status, status


def test_an_unknown_epoch_count_is_not_judged(tmp_path: Path) -> None:
    """--status with an unreadable session (max epochs unknown) does not claim there is nothing left."""
    session = make_train_project(tmp_path, epochs=3)
    _stopped_run(session, ("000003", 3, 12))
    assert statesave.resume_point(session.paths.runs, None).resumable


def test_the_wizards_stop_notice_gives_the_same_verdict(tmp_path: Path) -> None:
    """After s, the wizard said "r resumes from the newest state" even where r refuses (no state, or the end)."""
    from lorawizard.tui.screens.train import after_stop

    session = make_train_project(tmp_path / "mid", epochs=3)
    record = _stopped_run(session, ("step00000009", 3, 9))
    assert after_stop(session, record) == "r resumes from step 9"
    session = make_train_project(tmp_path / "none", epochs=3)
    record = _stopped_run(session, None)
    assert after_stop(session, record) == statesave.resume_point(session.paths.runs, 3).reason
    assert after_stop(session, record).startswith("nothing to resume: no saved state under ")


def test_no_run_says_where_with_a_tilde_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "fresh").mkdir()
    out = io.StringIO()
    assert runctl.status(tmp_path / "fresh", out) == 4
    assert out.getvalue() == "no run · ~/fresh (no session.toml there)\n"
    session = make_train_project(tmp_path, epochs=3)
    out = io.StringIO()
    assert runctl.status(session.project_dir, out) == 4 and out.getvalue() == "no run · ~/project\n"
