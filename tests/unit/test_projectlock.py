"""One writer per project: the project lock, unique run ids, and two replays racing to start training."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from lorawizard.core.launch import projectlock, runs
from lorawizard.headless import replay
from tests.support.standin import make_train_project

HOLD = "import sys, time; from lorawizard.core.launch import projectlock; projectlock.claim(sys.argv[1], 'replay'); print('held', flush=True); time.sleep(60)"


def _holder(project: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(project)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_process_is_refused_with_the_holders_pid_and_kill_9_frees_it(tmp_path: Path) -> None:
    child = _holder(tmp_path)
    try:
        with pytest.raises(projectlock.ProjectBusy) as caught:
            projectlock.claim(tmp_path, "wizard")
        assert caught.value.pid == child.pid and caught.value.what == "replay"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    projectlock.claim(tmp_path, "wizard")  # the kernel dropped the lock with the process: nothing stale
    try:
        assert projectlock.holds(tmp_path)
        projectlock.claim(tmp_path, "wizard")  # re-entrant within one process
    finally:
        projectlock.release(tmp_path)
    assert not projectlock.holds(tmp_path)


def test_replay_refuses_politely_while_another_process_holds_the_project(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    child = _holder(session.project_dir)
    try:
        out, err = io.StringIO(), io.StringIO()
        code = replay(session.path, ["probe", "train"], out=out, err=err, tty=False)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert code == 1
    assert err.getvalue().count("\n") == 1
    # QA: it said "a run is starting in this project" where the holder was a wizard that had stopped its run
    assert f"pid {child.pid} (replay) holds this project" in err.getvalue() and "no run is going" in err.getvalue()
    assert "a run is starting" not in err.getvalue()
    assert out.getvalue() == ""  # refused before any step ran
    assert runs.list_runs(session.paths.runs) == []


def test_the_refusal_names_a_live_run_to_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.core.train.step import plan_run, start_run

    monkeypatch.setenv("STANDIN_LOAD_SECONDS", "60")  # stays live while replay is refused
    session = make_train_project(tmp_path)
    record = start_run(session, plan_run(session))
    projectlock.release(session.project_dir)  # this process started it; another one holds the project now
    child = _holder(session.project_dir)
    try:
        err = io.StringIO()
        code = replay(session.path, ["train"], out=io.StringIO(), err=err, tty=False)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        runs.stop(record, int_timeout=5, term_timeout=2, kill_timeout=2)
    assert code == 1 and f"run {record.run_id} is going in this project and pid {child.pid}" in err.getvalue()
    assert f"lorawizard {session.project_dir}" in err.getvalue()


def test_run_ids_are_unique_within_one_second(tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5)
    ids = [runs.new_run_id(tmp_path, now) for _ in range(5)]
    assert ids == ["20260102-030405", "20260102-030405-2", "20260102-030405-3", "20260102-030405-4", "20260102-030405-5"]
    assert all((tmp_path / run_id).is_dir() for run_id in ids)  # reserved by mkdir, not just checked


def _racer(session_path: str, go: object, result: object) -> None:
    go.wait(10)  # type: ignore[attr-defined]
    out, err = io.StringIO(), io.StringIO()
    code = replay(Path(session_path), ["train"], options={"train": {"detach": True}}, out=out, err=err, tty=False)
    result.put((os.getpid(), code, err.getvalue()))  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.platform != "linux", reason="fork-based race")
def test_two_replays_racing_start_exactly_one_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_LOAD_SECONDS", "60")  # the run stays live while the loser looks
    session = make_train_project(tmp_path)
    # warm the imports and caches once here, so each forked racer spends its time racing, not importing
    assert replay(session.path, ["train"], dry_run=True, out=io.StringIO(), err=io.StringIO(), tty=False) == 0
    context = multiprocessing.get_context("fork")
    for round_ in range(20):
        go, result = context.Event(), context.SimpleQueue()
        racers = [context.Process(target=_racer, args=(str(session.path), go, result)) for _ in range(2)]
        for racer in racers:
            racer.start()
        go.set()
        for racer in racers:
            racer.join(60)
        outcomes = [result.get() for _ in racers]
        records = runs.list_runs(session.paths.runs)
        live = [r for r in records if r.is_alive()]
        assert len(live) == 1, (round_, outcomes)
        for _, code, err in outcomes:  # the loser either was refused (naming the winner) or followed the run
            assert code == 0 or (code == 1 and "pid " in err and "holds" in err), err
        assert records[-1].run_id == live[0].run_id and len(records) == round_ + 1
        assert runs.stop(live[0], int_timeout=5, term_timeout=2, kill_timeout=2) != "not running"
