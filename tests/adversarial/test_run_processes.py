"""Issue 23 A2–A5, A7, C17, D: no trainer is ever lost or doubled, whatever happens to the processes around it.

The process group is the truth about a run: kill -9 of its supervisor (A2) or deleting its run folder (A4) leaves the
trainer running, and `--status`, `--stop` and every launch still see it; a stop ends only when the group is gone and
Ctrl-C during it escalates in one line (A3); SIGTERM/SIGHUP to a foreground replay stop what it started (A5); a replay
that finds someone else's run follows it and says so, and its Ctrl-C stops only the following (A7). A project folder
that cannot be written is one line (C17); a session.toml that is not a file is exit 2, not "no run" (D).

Real processes throughout (the stand-in trainer, real kill -9, real process groups); every group a test starts is
SIGKILLed at its end.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorawizard import runctl
from lorawizard.cli import main as cli_main
from lorawizard.core.launch import projectlock, runs
from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train.step import RunFollower, plan_run, start_run
from lorawizard.headless import replay
from tests.support.standin import make_train_project, standin_env
from tests.support.terminal_child import lorawizard_argv
from tests.support.waiting import until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def groups() -> Iterator[list[int]]:
    """Process groups to SIGKILL after the test, whatever happened (nothing is left running)."""
    started: list[int] = []
    yield started
    for pgid in started:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(_not_zombie(pid) for pid in _members(pgid))


def _members(pgid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getpgid(int(name)) == pgid:
                    found.append(int(name))
            except OSError:
                continue
    return found


def _pgid(record: RunRecord) -> int:
    """The run's process group: the supervisor's pid (it leads a session of its own)."""
    return record.pid


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _start_run(session, groups: list[int], **env: object) -> RunRecord:
    """A run started by "someone else" (this process stands in for a wizard or an earlier replay)."""
    saved = dict(os.environ)
    os.environ.update({f"STANDIN_{k}": str(v) for k, v in env.items()})
    try:
        record = start_run(session, plan_run(session))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    groups.append(_pgid(record))
    follower = RunFollower(record)
    deadline = time.monotonic() + 30
    while follower.state.step < 1:  # training has begun: the trainer process is there
        follower.poll()
        assert time.monotonic() < deadline, "the run did not begin"
        time.sleep(0.05)
    follower.close()
    return record


def _kill_9_supervisor(record: RunRecord) -> None:
    os.kill(record.pid, signal.SIGKILL)
    child = runs._children.pop(record.pid, None)  # started by this process: reap it, as a wizard that ended would
    if child is not None:
        child.wait(10)
    until(lambda: not _not_zombie(record.pid), 10, "the supervisor to be gone")


def _lorawizard(args: list[str], folder: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m lorawizard ARGS` as a shell starts a foreground job (its own process group); output to files."""
    env = dict(env or os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "out.txt", "wb") as out, open(folder / "err.txt", "wb") as err:
        return subprocess.Popen(lorawizard_argv(*args), cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)


def _text(folder: Path, name: str) -> str:
    return (folder / name).read_text("utf-8", errors="replace")


def _replay(session, steps: list[str], **train: bool) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = replay(session.path, steps, options={"train": dict(train)}, out=out, err=err, tty=False)  # type: ignore[typeddict-item]
    return code, out.getvalue(), err.getvalue()


def _status(project: Path) -> tuple[int, str]:
    out = io.StringIO()
    return runctl.status(project, out), out.getvalue()


# ---------------------------------------------------------------- A2: kill -9 of the supervisor


def test_kill_9_of_the_supervisor_hides_no_live_trainer(tmp_path: Path, groups: list[int]) -> None:
    session = make_train_project(tmp_path, epochs=200)
    record = _start_run(session, groups, STEP_SECONDS=0.1)
    _kill_9_supervisor(record)
    assert _group_alive(_pgid(record)), "the trainer stays in the supervisor's group"

    code, line = _status(session.project_dir)
    assert code == runctl.EXIT_RUNNING and line.startswith("running"), line  # was: "lost", exit 1
    trainer = record.trainer()  # recorded at launch: the trainer's pid and start time
    assert trainer is not None and runs.process_matches(*trainer) and trainer[0] in _members(_pgid(record))  # type: ignore[arg-type]
    assert f"its supervisor (pid {record.pid}) is gone" in line and f"(pid {trainer[0]})" in line, line
    assert record.reload().is_alive() and record.trainer_pids()

    # --resume --detach and --detach start nothing while any process of the earlier run lives
    code, _out, err = _replay(session, ["train"], resume=True, detach=True)
    assert code == 1 and "--resume would resume nothing" in err and err.count("\n") == 1, err
    code, out, _err = _replay(session, ["train"], detach=True)
    assert code == 0 and "nothing started" in out, out
    assert [r.run_id for r in runs.list_runs(session.paths.runs)] == [record.run_id]
    with pytest.raises(runs.RunError, match="still running"):  # the launch itself refuses too
        runs.launch(["true"], session.paths.runs / "second", project=session.project_dir)

    out = io.StringIO()
    assert runctl.stop(session.project_dir, out) == runctl.EXIT_FINISHED, out.getvalue()  # was: exit 4, "no run"
    assert not _group_alive(_pgid(record))
    assert record.reload().status() == "stopped"


# ---------------------------------------------------------------- A4: the run folder deleted mid-run


def test_deleting_the_run_folder_hides_no_live_trainer(tmp_path: Path, groups: list[int]) -> None:
    session = make_train_project(tmp_path, epochs=200, save_every=1000)
    record = _start_run(session, groups, STEP_SECONDS=0.1)
    shutil.rmtree(record.dir)

    code, line = _status(session.project_dir)
    assert code == runctl.EXIT_RUNNING and "run.json is gone" in line and record.run_id in line, line
    code, out, _err = _replay(session, ["train"], detach=True)
    assert code == 0 and "nothing started" in out, out  # was: a second trainer
    assert len(runs.project_processes(session.project_dir)) == 1

    out_text = io.StringIO()
    assert runctl.stop(session.project_dir, out_text) == runctl.EXIT_FINISHED, out_text.getvalue()  # was: exit 4
    assert not _group_alive(_pgid(record))
    assert runs.project_processes(session.project_dir) == {}
    assert _status(session.project_dir)[0] == runctl.EXIT_NO_RUN


# ---------------------------------------------------------------- A3: Ctrl-C during a slow --stop


@pytest.mark.parametrize(("ignored", "ended_by"), [({"IGNORE_SIGINT": 1}, "SIGTERM"),
                                                  ({"IGNORE_SIGINT": 1, "IGNORE_SIGTERM": 1}, "SIGKILL")])
def test_ctrl_c_during_a_slow_stop_escalates_in_one_line(
        tmp_path: Path, groups: list[int], ignored: dict[str, int], ended_by: str) -> None:
    session = make_train_project(tmp_path, epochs=200)
    record = _start_run(session, groups, STEP_SECONDS=0.1, **ignored)  # SIGINT alone never ends it
    logs = tmp_path / "stop"
    stopper = _lorawizard([str(session.project_dir), "--stop"], logs)
    groups.append(stopper.pid)
    until(lambda: "stopping run" in _text(logs, "out.txt"), 30, "--stop to send SIGINT")
    time.sleep(0.5)  # the trainer ignores it; --stop would wait 60 s before SIGTERM
    for name in ("SIGTERM", "SIGKILL")[: 1 + (ended_by == "SIGKILL")]:
        assert _group_alive(_pgid(record))
        os.killpg(stopper.pid, signal.SIGINT)  # Ctrl-C in the terminal that runs --stop
        until(lambda name=name: f"  Ctrl-C: sending {name}" in _text(logs, "out.txt"), 20, f"--stop to send {name}")
    assert stopper.wait(30) == 0, _text(logs, "err.txt")
    out, err = _text(logs, "out.txt"), _text(logs, "err.txt")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err  # was: a raw traceback
    assert f"run {record.run_id} stopped ({ended_by})" in out, out
    assert not _group_alive(_pgid(record))  # was: the trainer kept running, recorded as "stopped"
    assert record.reload().status() == "stopped"


def test_a_stop_ends_only_when_the_group_is_gone(tmp_path: Path, groups: list[int]) -> None:
    """The launcher dies of SIGINT and the supervisor writes exit.json, but the trainer ignores SIGINT: the run is
    still running (was: "stopped" at once, and --detach started a second one)."""
    session = make_train_project(tmp_path, epochs=200)
    record = _start_run(session, groups, STEP_SECONDS=0.1, IGNORE_SIGINT=1)
    os.killpg(_pgid(record), signal.SIGINT)
    until(lambda: record.exit_info() is not None, 20, "the supervisor to write exit.json")
    assert _group_alive(_pgid(record))
    assert record.reload().status() == "running" and runs.live_run(session.paths.runs) is not None
    stages: list[str] = []
    assert runs.stop(record, int_timeout=0.5, term_timeout=10, on_stage=stages.append) == "SIGTERM"
    assert stages == ["SIGINT", "SIGTERM"] and not _group_alive(_pgid(record))


# ---------------------------------------------------------------- A5: SIGTERM / SIGHUP to a foreground replay


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_to_a_foreground_replay_stops_its_run(
        tmp_path: Path, groups: list[int], signum: signal.Signals) -> None:
    session = make_train_project(tmp_path, epochs=200)
    logs = tmp_path / "replay"
    child = _lorawizard(["--replay", str(session.path), "--steps", "train"], logs, standin_env(STEP_SECONDS=0.1))
    groups.append(child.pid)
    until(lambda: "training started" in _text(logs, "out.txt"), 30, "the run to start")
    record = runs.list_runs(session.paths.runs)[0]
    groups.append(_pgid(record))
    os.kill(child.pid, signum)  # as `timeout` does (the replay alone, not its group), or a terminal that closed
    assert child.wait(40) == 128 + signum, _text(logs, "err.txt")  # was: killed at once, the trainer left running
    assert not _group_alive(_pgid(record))
    out = _text(logs, "out.txt")
    assert f"train: {signal.Signals(signum).name}: stopping" in out and f"run {record.run_id} stopped" in out, out
    assert record.reload().status() == "stopped"


def test_a_terminal_that_hung_up_does_not_keep_replay_from_stopping_its_run() -> None:
    """After SIGHUP the terminal is gone: writing a line raises EIO. Replay's lines must not raise then, or the train
    step dies before it has stopped the run it started."""
    from lorawizard.core.common.progress import Progress
    from lorawizard.headless import ProgressPrinter

    class HungUp(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    for tty in (False, True):
        printer = ProgressPrinter(HungUp(), tty=tty)
        printer.line("train: stopping run x")  # was: OSError out of ctx.log, before runs.stop was called
        printer(Progress("train", "epoch 1/2", 1, 4, "steps"))


DETACH_THEN_SIGTERM = """
import os, signal, sys, time
from lorawizard.core.train import step
from lorawizard.headless import replay
real = step.start_run
def start_then_sigterm(*args, **kwargs):
    record = real(*args, **kwargs)
    print(f"GROUP {record.pid}", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # lands just after the launch...
    time.sleep(0.5)  # ...and is handled (by the main thread) before the step goes on
    return record
step.start_run = start_then_sigterm
sys.exit(replay(sys.argv[1], ["train"], options={"train": {"detach": True}}))
"""


def test_sigterm_to_a_detached_replay_leaves_its_run_and_says_so(tmp_path: Path, groups: list[int]) -> None:
    session = make_train_project(tmp_path, epochs=200)
    env = standin_env(STEP_SECONDS=0.1)
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(DETACH_THEN_SIGTERM), str(session.path)],
                          env=env, capture_output=True, text=True, timeout=60, start_new_session=True)
    pgid = int(done.stdout.split("GROUP ", 1)[1].split()[0])
    groups.append(pgid)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "keeps running (--detach)" in done.stdout and "--stop" in done.stdout, done.stdout
    records = runs.list_runs(session.paths.runs)
    assert len(records) == 1 and _pgid(records[0]) == pgid, records
    live = records[0]
    assert live.status() == "running" and live.stop_requested is None, live.log_path.read_text(errors="replace")[-2000:]
    runs.stop(live, int_timeout=5)


# ---------------------------------------------------------------- A7: someone else's run


def test_replay_follows_someone_elses_run_and_its_ctrl_c_leaves_it(tmp_path: Path, groups: list[int]) -> None:
    session = make_train_project(tmp_path, epochs=200)
    record = _start_run(session, groups, STEP_SECONDS=0.1)  # a detached run this replay did not start
    env = standin_env(STEP_SECONDS=0.1)

    logs = tmp_path / "resume"
    resume = _lorawizard(["--replay", str(session.path), "--steps", "train", "--resume"], logs, env)
    groups.append(resume.pid)
    assert resume.wait(30) == 1, _text(logs, "out.txt")  # was: followed the run silently, resuming nothing
    assert "--resume would resume nothing" in _text(logs, "err.txt")

    logs = tmp_path / "follow"
    follower = _lorawizard(["--replay", str(session.path), "--steps", "train"], logs, env)
    groups.append(follower.pid)
    until(lambda: "not started by this replay" in _text(logs, "out.txt"), 30, "replay to say whose run it follows")
    assert "Ctrl-C stops following, the run goes on" in _text(logs, "out.txt")
    os.killpg(follower.pid, signal.SIGINT)
    assert follower.wait(30) == 130, _text(logs, "err.txt")
    assert f"stopped following run {record.run_id}" in _text(logs, "out.txt")
    again = record.reload()
    assert again.status() == "running" and again.stop_requested is None  # was: the run was stopped
    assert [r.run_id for r in runs.list_runs(session.paths.runs)] == [record.run_id]
    runs.stop(again, int_timeout=5)


# ---------------------------------------------------------------- C17: a project folder that cannot be written


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
@pytest.mark.parametrize("train", [{}, {"detach": True}, {"resume": True}])
def test_a_read_only_or_full_project_folder_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, train: dict[str, bool]) -> None:
    session = make_train_project(tmp_path)
    real_open = os.open

    def refusing_open(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path).endswith(projectlock.LOCK_NAME):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(projectlock.os, "open", refusing_open)  # root ignores chmod: the kernel's answer, simulated
    exit_code, _out, err = _replay(session, ["train"], **train)  # was: OSError 30/28, a traceback
    assert exit_code == 1 and err.count("\n") == 1, err
    assert "cannot take the project lock" in err and os.strerror(code) in err
    assert runs.list_runs(session.paths.runs) == []


def test_a_runs_folder_that_cannot_be_written_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = make_train_project(tmp_path)

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(runs, "new_run_id", refuse)
    exit_code, _out, err = _replay(session, ["train"])
    assert exit_code == 1 and err.count("\n") == 1 and "Read-only file system" in err, err


# ---------------------------------------------------------------- D: a session.toml that is not a file


@pytest.mark.parametrize("kind", ["folder", "device", "loop", "dangling"])
@pytest.mark.parametrize("control", ["--status", "--stop"])
def test_a_session_toml_that_is_not_a_file_is_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, control: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    path = project / "session.toml"
    if kind == "folder":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "loop":
        path.symlink_to(path)
    else:
        path.symlink_to(tmp_path / "nowhere.toml")
    assert cli_main([str(project), control]) == 2  # was: "no session.toml", exit 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "session.toml" in err and "Traceback" not in err, err


# ---------------------------------------------------------------- A2 in the wizard


@pytest.mark.extra  # ~7 s: the wizard's start-up and a run
async def test_the_wizard_finds_and_stops_a_run_whose_supervisor_was_killed(tmp_path: Path, groups: list[int]) -> None:
    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.screens.confirm import ConfirmScreen
    from lorawizard.tui.widgets.train_panels import TrainHeader
    from tests.support.waiting import pilot_until

    session = make_train_project(tmp_path, epochs=200)
    record = _start_run(session, groups, STEP_SECONDS=0.2)
    _kill_9_supervisor(record)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        header = app.screen.query_one(TrainHeader)
        await pilot_until(pilot, lambda: getattr(header, "view", None) is not None and header.view.step >= 2)
        assert header.view.status == "running" and header.view.run_id == record.run_id  # was: "lost"
        await pilot.press("s")  # was: "no run is going"
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("enter")
        await pilot_until(pilot, lambda: header.view.status == "stopped")
    assert not _group_alive(_pgid(record))
