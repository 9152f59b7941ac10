"""Ctrl-C stops what it says it stops (issue 11, item 2).

Replay is started as a terminal would start it (its own process group, which a Ctrl-C signals as a whole: replay
and its pool workers alike; a run's supervisor is in a session of its own). After SIGINT: exit 130, a training run
stopped like the wizard's s (nothing of its process group left), no temp files, no leaked semaphores, no pool worker;
with --detach (or `--follow`) the run is left running and the output says so. kill -9 of replay: pool workers exit.
"""

from __future__ import annotations

import _thread
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from lorawizard import headless
from lorawizard.core.contract import Cancelled, StepContext, StepResult
from lorawizard.core.dataset.manifest import MANIFEST_FILE
from lorawizard.core.launch import runs
from lorawizard.core.train import step as training
from tests.support import dataset_fixtures as fx
from tests.support.standin import make_train_project, standin_env
from tests.support.terminal_child import lorawizard_argv
from tests.support.waiting import until

REPO = Path(__file__).resolve().parents[2]


def _start(args: list[str], folder: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m lorawizard ARGS` in its own process group (as a shell starts a foreground job, SIGINT handled
    whatever this process inherited); output to files."""
    env = dict(env or os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "out.txt", "wb") as out, open(folder / "err.txt", "wb") as err:
        return subprocess.Popen(lorawizard_argv(*args), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)


def _text(folder: Path, name: str) -> str:
    return (folder / name).read_text("utf-8", errors="replace")


def _log(runs_dir: Path) -> bytes:
    records = runs.list_runs(runs_dir)
    try:
        return records[0].log_path.read_bytes() if records else b""
    except OSError:
        return b""


def _group(pgid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (OSError, psutil.Error):
            continue
    return found


def _living(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Process groups to SIGKILL after the test, whatever happened (a failing test leaves nothing running)."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


# ---------------------------------------------------------------- train


def test_ctrl_c_during_train_stops_the_whole_run_and_exits_130(tmp_path: Path, reaper: list[int]) -> None:
    session = make_train_project(tmp_path, epochs=200)
    logs = tmp_path / "replay"
    child = _start(["--replay", str(session.path), "--steps", "train"], logs, standin_env(STEP_SECONDS=0.05))
    reaper.append(child.pid)
    until(lambda: b"epoch 1/200" in _log(session.paths.runs), 20, "training to begin")
    record = runs.list_runs(session.paths.runs)[0]
    reaper.append(record.pid)  # the run's own session: pgid == the supervisor's pid
    assert _group(record.pid), "the run should be going"

    os.killpg(child.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    assert child.wait(30) == 130, _text(logs, "err.txt")
    until(lambda: not _group(record.pid), 10, "the run's process group to be gone")  # (replay already waited)
    out = _text(logs, "out.txt")
    assert f"run {record.run_id} stopped (SIGINT)" in out and "train: interrupted" in out
    assert record.reload().status() == "stopped"
    assert "Traceback" not in _text(logs, "err.txt")


def test_ctrl_c_during_a_queue_stops_its_run_and_starts_no_other(tmp_path: Path, reaper: list[int]) -> None:
    from lorawizard.core.session.document import Session
    from lorawizard.core.session.variants import Variant
    from lorawizard.core.train.queue import QueueRecord
    from tests.support.sessions import save

    session = make_train_project(tmp_path, epochs=200)
    session.set_variants([Variant("dim8", {"train.network_dim": 8})])
    save(session)
    logs = tmp_path / "replay"
    child = _start(["--replay", str(session.path), "--steps", "train"], logs, standin_env(STEP_SECONDS=0.05))
    reaper.append(child.pid)
    until(lambda: b"epoch 1/200" in _log(session.paths.runs), 20, "training to begin")
    record = runs.list_runs(session.paths.runs)[0]
    reaper.append(record.pid)
    os.killpg(child.pid, signal.SIGINT)
    assert child.wait(30) == 130, _text(logs, "err.txt")
    until(lambda: not _group(record.pid), 10, "the run's process group to be gone")
    queue = QueueRecord.load(Session.load(session.path, read_only=True))
    assert queue is not None and queue.state == "stopped"
    assert [e.status for e in queue.entries] == ["stopped", "pending"]
    assert runs.list_runs(session.paths.runs / "variants" / "dim8") == []  # the next run never started
    assert "Traceback" not in _text(logs, "err.txt")


def test_detach_ctrl_c_while_it_is_started_leaves_the_run_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reaper: list[int]) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.1")
    session = make_train_project(tmp_path, epochs=50)
    lines: list[str] = []
    ctx = StepContext(session=session, log=lines.append, options={"detach": True})
    real_start = training.start_run

    def start_then_ctrl_c(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        record = real_start(*args, **kwargs)
        reaper.append(record.pid)
        ctx.cancel.set()  # Ctrl-C lands just after the launch
        return record

    monkeypatch.setattr(training, "start_run", start_then_ctrl_c)
    with pytest.raises(Cancelled):
        training.run_step(ctx)
    live = runs.live_run(session.paths.runs)
    assert live is not None and live.stop_requested is None
    assert any("keeps running (--detach)" in line and "--stop" in line for line in lines), lines
    runs.stop(live, int_timeout=5)


def test_ctrl_c_before_the_launch_launches_nothing(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    ctx = StepContext(session=session)
    ctx.cancel.set()
    with pytest.raises(Cancelled):
        training.run_step(ctx)
    assert runs.list_runs(session.paths.runs) == []


def test_ctrl_c_while_following_a_detached_run_leaves_it_running(tmp_path: Path, reaper: list[int]) -> None:
    session = make_train_project(tmp_path, epochs=200)
    env = standin_env(STEP_SECONDS=0.05)
    started = _start(["--replay", str(session.path), "--steps", "train", "--detach"], tmp_path / "detach", env)
    reaper.append(started.pid)
    assert started.wait(30) == 0, _text(tmp_path / "detach", "err.txt")
    record = runs.list_runs(session.paths.runs)[0]
    reaper.append(record.pid)
    logs = tmp_path / "follow"
    follower = _start([str(session.project_dir), "--follow"], logs, env)
    reaper.append(follower.pid)
    until(lambda: "Ctrl-C leaves it running" in _text(logs, "out.txt"), 20, "--follow to start")
    os.killpg(follower.pid, signal.SIGINT)
    assert follower.wait(20) == 130
    assert "the run goes on" in _text(logs, "out.txt")
    assert record.reload().status() == "running" and record.reload().stop_requested is None
    runs.stop(record, int_timeout=5)


# ---------------------------------------------------------------- dataset (a process pool)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough large photos that preparing them takes a few seconds on two cores."""
    folder = tmp_path_factory.mktemp("photos")
    for n in range(24):
        fx.photo(folder / f"{n:02d}.jpg", 1600, 1000 + 40 * n, seed=n, quality=90)
    return folder


def _dataset_replay(tmp_path: Path, photos: Path, reaper: list[int]) -> tuple[subprocess.Popen[bytes], Path, list[psutil.Process]]:
    """Replay of the dataset step, caught once its pool is at work; returns it, its output folder and its children."""
    session = fx.write_session(tmp_path / "project", photos, max_side=1024)
    dataset = tmp_path / "project" / "dataset"
    child = _start(["--replay", str(session), "--steps", "dataset"], tmp_path / "replay")
    reaper.append(child.pid)
    until(lambda: any(dataset.rglob("*.png")), 30, "the first prepared image")
    children = psutil.Process(child.pid).children(recursive=True)
    assert any("multiprocessing" in " ".join(p.cmdline()) for p in children), "the step should use a process pool"
    return child, dataset, children


def test_ctrl_c_during_the_dataset_step_shuts_the_pool_down_cleanly(tmp_path: Path, photos: Path, reaper: list[int]) -> None:
    child, dataset, children = _dataset_replay(tmp_path, photos, reaper)
    os.killpg(child.pid, signal.SIGINT)  # replay and its workers, as a terminal's Ctrl-C
    assert child.wait(30) == 130
    err = _text(tmp_path / "replay", "err.txt")
    assert "leaked semaphore" not in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "dataset: interrupted" in _text(tmp_path / "replay", "out.txt")
    written = {str(p.relative_to(dataset)) for p in dataset.rglob("*.png")}
    assert len(written) < 24, "Ctrl-C should have landed mid-step"
    manifest = json.loads((dataset / MANIFEST_FILE).read_text())  # the step's own cleanup ran before the exit:
    assert not manifest["complete"] and {r["output"] for r in manifest["images"]} == written  # it kept all it made
    assert not [p for p in (tmp_path / "project").rglob("*") if p.name.endswith(".tmp")]
    until(lambda: not _living(children), 5, "the pool's processes to end")


def test_kill_9_of_replay_leaves_no_pool_worker(tmp_path: Path, photos: Path, reaper: list[int]) -> None:
    child, _, children = _dataset_replay(tmp_path, photos, reaper)
    child.kill()  # replay only: its workers must notice on their own
    child.wait(10)
    until(lambda: not _living(children), 5, "the pool workers to notice their parent is gone")


# ---------------------------------------------------------------- the wait itself


def test_replay_waits_for_the_step_to_finish_its_cleanup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11: a Thread.join cut short by KeyboardInterrupt makes the next join(timeout) return at once. Replay
    must wait for the step's cleanup anyway, and a second Ctrl-C asks it to hurry."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    session = fx.write_session(tmp_path / "project", tmp_path)
    events: list[str] = []

    def slow_to_stop(ctx: StepContext) -> StepResult:
        _thread.interrupt_main(signal.SIGINT)  # Ctrl-C (handled in the main thread, as a real one)
        assert ctx.cancel.wait(5)
        _thread.interrupt_main(signal.SIGINT)  # and again
        assert ctx.hurry.wait(5)
        time.sleep(0.6)  # the step's cleanup (stopping a run, shutting a pool down) takes a while
        events.append("cleaned up")
        raise Cancelled()

    monkeypatch.setattr(headless, "load_step", lambda name: slow_to_stop)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in `python -m lorawizard`
    try:
        out = io.StringIO()
        code = headless.replay(session, ["dataset"], out=out, err=io.StringIO(), tty=False)
        events.append("returned")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # replay put it back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert events == ["cleaned up", "returned"]
    assert "Ctrl-C again: hurrying" in out.getvalue() and "dataset: interrupted" in out.getvalue()
