"""core.runs + core.steps.training with the stand-in trainer: detached launch, reattach, pid reuse, stop, resume, diagnosis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lorawizard.core.launch import runs
from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train.diagnosis import diagnose
from lorawizard.core.train.step import RunFollower, plan_run, start_run
from tests.support.standin import make_train_project
from tests.support.waiting import follow_to_end

REPO = Path(__file__).resolve().parents[2]


def _start(session, **env: object) -> RunRecord:
    for key, value in env.items():
        os.environ[f"STANDIN_{key}"] = str(value)
    try:
        return start_run(session, plan_run(session))
    finally:
        for key in env:
            os.environ.pop(f"STANDIN_{key}", None)


def test_launch_detached_and_follow_to_the_end(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=3)
    record = _start(session, STEP_SECONDS=0.01)
    saved = json.loads((record.dir / "run.json").read_text())
    assert saved["pid"] == record.pid and saved["create_time"] > 0 and "version = 1" in saved["session_text"]
    assert saved["argv"][1:3] == ["-m", "accelerate.commands.launch"] and saved["env"]["PYTHONUNBUFFERED"] == "1"
    assert os.getpgid(record.pid) == record.pid  # its own session/process group: the wizard's signals never reach it
    follower = follow_to_end(record)
    state = follower.state
    assert state.model_saved and (state.step, state.total_steps, state.epoch, state.epochs) == (6, 6, 3, 3)
    assert [Path(p).name for p in state.checkpoints] == ["tiny-000001.safetensors", "tiny-000002.safetensors", "tiny.safetensors"]
    assert record.status() == "finished" and record.returncode() == 0
    assert follower.diagnosis(alive=False) is None
    listed = runs.checkpoints(record.dir, "tiny")
    assert [(p.name, e) for p, e, _ in listed][:2] == [("tiny-000001.safetensors", 1), ("tiny-000002.safetensors", 2)]
    assert listed[0][2] == 3154356


def test_reattach_after_the_wizard_process_is_killed(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=2)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        os.environ["STANDIN_STEP_SECONDS"] = "0.3"
        from lorawizard.core.session.document import Session
        from lorawizard.core.train.step import plan_run, start_run
        session = Session.load({str(session.path)!r})
        record = start_run(session, plan_run(session))
        print(record.run_id, flush=True)
        import time; time.sleep(60)
    """)
    wizard = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    run_id = wizard.stdout.readline().strip()
    wizard.kill()  # kill -9 the "wizard": the run must not notice
    wizard.wait()
    live = runs.live_run(session.paths.runs)
    assert live is not None and live.run_id == run_id and live.status() == "running"
    follower = follow_to_end(live)
    assert follower.state.model_saved and live.status() == "finished"
    assert runs.live_run(session.paths.runs) is None


def test_pid_reuse_is_never_taken_for_the_run(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    record = _start(session, STEP_SECONDS=0.01)
    follow_to_end(record)
    # pretend the recorded pid now belongs to another live process (ours), with its own create time
    forged = RunRecord.load(record.dir)
    forged.pid = os.getpid()
    forged.save()
    assert not runs.process_matches(os.getpid(), forged.create_time)
    assert runs.live_run(session.paths.runs) is None
    assert RunRecord.load(record.dir).status() == "finished"


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"HANG_AT_STEP": 2}, "SIGINT"), ({"HANG_AT_STEP": 2, "IGNORE_SIGINT": 1, "IGNORE_SIGTERM": 1}, "SIGKILL")],
)
def test_stop_escalates(tmp_path: Path, env: dict, expected: str) -> None:
    session = make_train_project(tmp_path, epochs=5)
    record = _start(session, STEP_SECONDS=0.01, **env)
    follower = RunFollower(record)
    deadline = time.monotonic() + 20
    while follower.state.step < 1:
        follower.poll()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    tree = record.process_tree()
    assert len(tree) >= 3  # supervisor, accelerate launcher, trainer
    stages: list[str] = []
    assert runs.stop(record, int_timeout=1.0, term_timeout=0.5, kill_timeout=5, on_stage=stages.append) == expected
    assert stages[-1] == expected
    assert not any(p.is_running() and p.status() != "zombie" for p in tree)
    again = RunRecord.load(record.dir)
    assert again.status() == "stopped" and again.stop_requested is not None
    assert follower.diagnosis(alive=False) is None  # a stop is not a failure


def test_resume_keeps_absolute_steps_and_epochs(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=4)  # 2 steps per epoch, 8 steps
    first = _start(session, STEP_SECONDS=0.01, KILL_AT_STEP=6)  # killed during epoch 3, states after epochs 1, 2
    follower = follow_to_end(first)
    assert follower.diagnosis(alive=False).kind == "host_oom"
    state = runs.newest_state(session.paths.runs)
    assert (state.epoch, state.step) == (2, 4)

    plan = plan_run(session, resume=True)
    assert (plan.base_step, plan.base_epoch, plan.resumed_from) == (4, 2, state.path)
    argv = plan.command.argv
    # the absolute step, with the batches of a partly trained epoch skipped (sd-scripts' --skip_until_initial_step)
    assert "--resume" in argv and argv[argv.index("--initial_step") + 1] == "4" and "--skip_until_initial_step" in argv
    resumed = follow_to_end(start_run(session, plan)).state
    # sd-scripts' bar stopped at 4/8; the dashboard counts 8/8 and epoch 4/4
    assert resumed.model_saved and (resumed.step, resumed.total_steps, resumed.epoch) == (8, 8, 4)
    assert resumed.losses.points[0][0] == 5
    # the end state written by the resumed run records the within-run step (4); ours is absolute (8)
    newest = runs.newest_state(session.paths.runs)
    assert newest.step == 8 and runs.read_state_step(newest.path) == 4
    assert runs.resume_overrides(newest, 4) == {"initial_step": 8}


def test_resume_after_a_finished_run_says_there_is_nothing_left(tmp_path: Path) -> None:
    """The newest state is the end of training: r (or --resume) refuses in one line instead of launching a run that
    trains nothing; with more epochs asked for, it resumes from that state."""
    from lorawizard.core.contract import StepFailed

    session = make_train_project(tmp_path, epochs=2)  # 2 steps per epoch
    finished = follow_to_end(_start(session, STEP_SECONDS=0.01))
    assert finished.state.model_saved and runs.newest_state(session.paths.runs).epoch == 2
    with pytest.raises(StepFailed, match="nothing to resume: .* already at epoch 2 of train.max_train_epochs = 2"):
        plan_run(session, resume=True)
    assert len(runs.list_runs(session.paths.runs)) == 1  # no run folder left behind
    session.set("train.max_train_epochs", 3)
    plan = plan_run(session, resume=True)
    assert (plan.base_epoch, plan.base_step) == (2, 4)


def test_resume_continues_the_run_started_last_not_an_older_one_further_on(tmp_path: Path) -> None:
    """A finished run (4 steps), then a fresh run killed at step 3 (a state at step 2): r resumes the fresh run, the
    one a person just watched, although the finished run's end state has the higher step."""
    session = make_train_project(tmp_path, epochs=2)  # 2 steps per epoch, a state every epoch
    old = follow_to_end(_start(session, STEP_SECONDS=0.01))
    assert old.state.model_saved
    session.set("train.max_train_epochs", 4)
    fresh = _start(session, STEP_SECONDS=0.01, KILL_AT_STEP=3)
    follow_to_end(fresh)
    newest = runs.newest_state(session.paths.runs)
    assert (newest.run_id, newest.step) == (fresh.run_id, 2)
    plan = plan_run(session, resume=True)
    assert plan.resumed_from is not None and plan.resumed_from.parent == fresh.dir and plan.base_step == 2


def _diagnose_run(tmp_path: Path, session=None, **env: object):
    session = session or make_train_project(tmp_path)
    record = _start(session, STEP_SECONDS=0.01, **env)
    follower = follow_to_end(record)
    return follower.diagnosis(alive=False), follower.state, record


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({"VRAM_BUDGET": 1000}, "oom"),
        ({"KILL_AT_STEP": 2}, "host_oom"),
        ({"FAIL": "missing_model"}, "missing_model"),
        ({"FAIL": "bad_config"}, "dataset_config"),
    ],
)
def test_diagnosis_of_failed_runs(tmp_path: Path, env: dict, kind: str) -> None:
    problem, _state, record = _diagnose_run(tmp_path, **env)
    assert problem is not None and problem.kind == kind and problem.advice
    assert record.status() == "failed"


def test_diagnosis_nan(tmp_path: Path) -> None:
    problem, state, _record = _diagnose_run(tmp_path, NAN_AT_STEP=3)
    assert problem.kind == "nan" and "step 3" in problem.what and "learning_rate" in problem.advice
    assert state.model_saved  # sd-scripts trains on with nan; the diagnosis still flags it


def test_diagnosis_no_data_exit_zero_is_not_success(tmp_path: Path) -> None:
    problem, state, record = _diagnose_run(tmp_path, FAIL="no_data")
    assert record.returncode() == 0 and not state.model_saved
    assert problem.kind == "no_data" and record.status() == "failed"


def test_diagnosis_stalled_while_alive() -> None:
    from lorawizard.core.train.logparse import TrainState

    assert diagnose(TrainState(), alive=True, quiet_s=30) is None
    stalled = diagnose(TrainState(), alive=True, quiet_s=1200)
    assert stalled.kind == "stalled" and "20 min" in stalled.what


def test_second_resume_starts_at_the_right_epoch(tmp_path: Path) -> None:
    """A state written by a resumed run records sd-scripts' within-run step; we pass the absolute one."""
    session = make_train_project(tmp_path, epochs=4)  # 2 steps per epoch, 8 in all
    follow_to_end(_start(session, STEP_SECONDS=0.01, KILL_AT_STEP=5))  # states after epochs 1 and 2 (step 4)
    os.environ.update(STANDIN_STEP_SECONDS="0.01", STANDIN_KILL_AT_STEP="3")
    try:  # resumed at step 4: epoch 3 (its state records within-run step 2), killed in epoch 4
        second = start_run(session, plan_run(session, resume=True))
    finally:
        os.environ.pop("STANDIN_STEP_SECONDS")
        os.environ.pop("STANDIN_KILL_AT_STEP")
    follow_to_end(second)
    newest = runs.newest_state(session.paths.runs)
    assert (newest.path.parent, newest.epoch, newest.step) == (second.dir, 3, 6)
    assert runs.read_state_step(newest.path) == 2  # what sd-scripts wrote

    plan = plan_run(session, resume=True)
    assert plan.command.argv[plan.command.argv.index("--initial_step") + 1] == "6"
    third = follow_to_end(start_run(session, plan)).state
    assert [line.text for line in third.lines if line.text.startswith("epoch ") and "/" in line.text] == ["epoch 4/4"]
    assert third.model_saved and (third.step, third.total_steps, third.epoch) == (8, 8, 4)


@pytest.mark.parametrize(
    ("failures", "returncode", "kind"),
    [
        ([("exception", "RuntimeError: mat1 and mat2 must have the same dtype")], 1, "crash"),
        ([("resume_missing", "ValueError: Tried to find /r/s but folder does not exist")], 1, "resume_missing"),
        ([], None, "lost"),
        ([], 0, "no_model"),
        ([], 3, "crash"),
        ([("launcher", "subprocess.CalledProcessError: … died with <Signals.SIGKILL: 9>.")], 1, "host_oom"),
    ],
)
def test_diagnosis_of_other_endings(failures: list, returncode: int | None, kind: str) -> None:
    from lorawizard.core.train.logparse import Failure, TrainState

    state = TrainState()
    state.apply([Failure(k, text, -9 if "SIGKILL" in text else None) for k, text in failures])
    problem = diagnose(state, alive=False, returncode=returncode)
    assert problem is not None and problem.kind == kind and problem.line().count(" — ") == 1
