"""Run control from the shell: `lorawizard DIR --status | --follow | --stop` (for SSH, scripts, cron). No Textual.

Exit codes: 0 the newest run finished ok, 1 it failed (or was stopped / lost), 3 it is running, 4 no run.
`--stop` exits 0 once the run has stopped (every process of its group gone), 4 when none was running, 1 when some
survived SIGKILL, 130 when Ctrl-C gave up waiting after SIGKILL. An invalid session.toml (also one that is a folder, a
device or a link loop): one line, exit 2. A live run is found by its process group, also after kill -9 of its
supervisor or with its run folder deleted.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any, NoReturn, TextIO

EXIT_FINISHED, EXIT_FAILED, EXIT_BAD_SESSION, EXIT_RUNNING, EXIT_NO_RUN = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
_CODES = {"finished": EXIT_FINISHED, "running": EXIT_RUNNING}


def _bad_session(line: str) -> NoReturn:
    """As replay and the wizard: one line, exit 2, not 1 ("the run failed") as a bare SystemExit would say."""
    from lorawizard.core.common.text import one_line

    print(f"lorawizard: {one_line(line)}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_SESSION)


def session_file_problem(path: Path) -> str | None:
    """Why `path` (a session.toml that is there in some form) is not a file to read; None when it is one or is
    missing altogether (no session.toml: no run)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path}: a link to nothing ({os.readlink(path)})" if path.is_symlink() else None
    except OSError as exc:  # a link loop, a name too long, no permission
        return f"{path}: cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return f"{path} is a folder, not a session file"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file (a device, pipe or socket): not a session file"
    return None


def _session(project: Path):  # -> Session | None
    from lorawizard.core.session.document import SESSION_FILE, Session, SessionError

    path = Path(project).expanduser() / SESSION_FILE
    problem = session_file_problem(path)
    if problem:
        _bad_session(problem)
    if not path.is_file():
        return None
    try:
        return Session.load(path, read_only=True)
    except SessionError as exc:
        _bad_session(str(exc))


def _newest(project: Path):  # -> RunRecord | None
    from lorawizard.core.launch import runs

    session = _session(project)
    if session is None:
        return None
    live = runs.live_run(session.paths.runs, project_dir=session.project_dir)  # the group is the truth
    if live is not None:
        return live
    records = runs.list_runs(session.paths.runs, variants=True)
    return records[-1] if records else None


def _queue_lines(project: Path) -> list[str]:
    """The project's queue (base run and variants), one line per run; [] without one."""
    from lorawizard.core.train.queue import status_lines

    session = _session(project)
    return status_lines(session) if session is not None else []


def _tool_lines(project: Path) -> list[str]:
    """What the LoRA tools made (resize, convert, merge) and whether each loads; [] when nothing."""
    from lorawizard.core.loratools.results import status_lines

    session = _session(project)
    return status_lines(session) if session is not None else []


def _session_facts(project: Path) -> tuple[str, int | None]:
    """The session file as a shell argument, and train.max_train_epochs (None when unreadable)."""
    from lorawizard.core.common.fsutil import shell_path
    from lorawizard.core.session.document import SESSION_FILE, Session, SessionError

    path = Path(project).expanduser().absolute() / SESSION_FILE
    try:
        epochs: int | None = Session.load(path, read_only=True).train.max_train_epochs
    except (SessionError, OSError, TypeError, ValueError):
        epochs = None
    return shell_path(path), epochs


def resume_hint(record, session_arg: str, max_epochs: int | None) -> str:  # record: RunRecord
    """What `--resume` would do after this (stopped, failed or lost) run, in a few words; "" when nothing.

    `--resume` continues from the newest saved state of the project's runs: this run's own (or the state it was itself
    resumed from), or, when it saved none, an older run's, which may already be at the last epoch (then nothing)."""
    from lorawizard.core.train import statesave

    point = statesave.resume_point(record.dir.parent, max_epochs)  # the verdict --resume itself acts on
    newest = point.state
    if newest is not None and not point.resumable and newest.run_id == record.run_id:
        # its own state, at the end: "saved no state" would be untrue
        return (f"its newest state is at the last epoch ({point.base_epoch} of train.max_train_epochs = {max_epochs}): "
                "nothing left to resume; raise train.max_train_epochs to train on from it")
    if newest is None or not point.resumable:
        return "saved no state to resume from: a new run starts from the beginning"
    command = f"lorawizard --replay {session_arg} --steps train --resume"
    if newest.run_id == record.run_id or record.base_step > 0:
        return f"resumable from step {point.base_step}: {command}"
    return f"saved no state; {command} would continue the older run {newest.run_id} (epoch {newest.epoch})"


def status_text(record, session_arg: str = "SESSION.toml", max_epochs: int | None = None) -> tuple[str, int]:
    """One line (state, step/total, epoch, ETA, last loss, run id, lost steps) and the exit code."""
    from lorawizard.core.launch import runs
    from lorawizard.core.train import statesave, suggest
    from lorawizard.core.train.step import RunFollower, status_line

    status = record.status()
    follower = RunFollower(record, use_index=True)  # the log's new bytes since the last look, at most its tail
    follower.finish()
    line = f"{status} · {status_line(follower.state, ended=status != 'running')} · run {record.run_id}"
    validation = suggest.status_part(record, follower.state, finished=status == "finished")
    if validation:
        line += f" · {validation}"
    if status == "running":
        newest = runs.newest_state_step(record)
        line += f" · a stop now loses {statesave.steps_text(statesave.steps_lost(follower.state.step, newest))}"
    elif status in ("stopped", "lost", "failed"):
        line += " · " + resume_hint(record, session_arg, max_epochs)
    if status == "running" and not record.extra.get("orphan") and not runs.process_matches(record.pid, record.create_time):
        trainer = record.trainer()
        alive = trainer is not None and trainer[1] is not None and runs.process_matches(trainer[0], trainer[1])
        line += (f" · its supervisor (pid {record.pid}) is gone: the trainer runs on in its process group "
                 f"{record.group}" + (f" (pid {trainer[0]})" if alive and trainer else ""))
    if record.extra.get("orphan"):  # its run.json (or the whole run folder) was deleted under the live trainer
        line += f" · its run.json is gone: found by its processes (group {record.group})"
    info = record.exit_info() or {}
    hook = info.get("on_finish")
    if hook and not hook.get("ok"):
        line += f" · on_finish failed: {hook.get('line')}"
    return line, _CODES.get(status, EXIT_FAILED)


def _no_run_where(project: Path) -> str:
    """`~/loras/mychar`, and `(no session.toml yet)` when that is why there is no run."""
    from lorawizard.core.common.fsutil import display_path
    from lorawizard.core.session.document import SESSION_FILE

    folder = Path(project).expanduser().absolute()
    return display_path(folder) + ("" if (folder / SESSION_FILE).is_file() else f" (no {SESSION_FILE} there)")


def status(project: Path, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    record = _newest(project)
    queue = _queue_lines(project)
    tools = _tool_lines(project)
    if record is None:
        out.write(f"no run · {_no_run_where(project)}\n")
        for extra in tools:
            out.write(extra + "\n")
        return EXIT_NO_RUN
    line, code = status_text(record, *_session_facts(project))
    out.write(line + "\n")
    for extra in [*queue, *tools]:
        out.write(extra + "\n")
    return code


def follow(project: Path, out: TextIO | None = None) -> int:
    """Follow the live run (progress lines like replay) and exit with its result; without one, --status."""
    from lorawizard.core.contract import Cancelled, StepContext
    from lorawizard.core.session.document import SESSION_FILE, Session
    from lorawizard.core.train.step import follow as follow_run
    from lorawizard.headless import ProgressPrinter

    out = out or sys.stdout
    record = _newest(project)
    if record is None or record.status() != "running":
        return status(project, out)
    session = Session.load(Path(project).expanduser() / SESSION_FILE, read_only=True)
    printer = ProgressPrinter(out)
    ctx = StepContext(session=session, progress=printer, log=printer.line)
    ok = True
    while record is not None:  # a queue: each of its runs in turn, until the queue has ended
        printer.line(f"following run {record.run_id} (pid {record.pid}); Ctrl-C leaves it running")
        try:
            result = follow_run(ctx, record, own=False)
        except (KeyboardInterrupt, Cancelled):
            printer.line("stopped following; the run goes on")
            return EXIT_INTERRUPTED
        for detail in result.details:
            printer.line(f"  {detail}")
        printer.line(result.summary)
        ok = ok and result.ok
        record = _next_queued_run(project, session, record.run_id)
    return EXIT_FINISHED if ok else EXIT_FAILED


def _next_queued_run(project: Path, session: Any, last: str, wait_s: float = 30.0):  # -> RunRecord | None
    """While the project's queue goes on, its next live run (after `last`): None when no queue is going."""
    import time

    from lorawizard.core.train.queue import QueueRecord

    deadline = time.monotonic() + wait_s
    while True:
        queue = QueueRecord.load(session)
        if queue is None or queue.status() != "running":
            return None
        record = _newest(project)
        if record is not None and record.run_id != last and record.status() == "running":
            return record
        if time.monotonic() > deadline:
            return None
        time.sleep(0.25)


def stop(project: Path, out: TextIO | None = None) -> int:
    """SIGINT → SIGTERM → SIGKILL (as the wizard's s), waiting until every process of the run's group is gone.

    Ctrl-C while it waits never ends the wait with a traceback or leaves a run half stopped: each press sends the next
    signal now (one line says which); a press after SIGKILL stops waiting (exit 130, saying what is still there)."""
    from lorawizard.core.train.queue import request_stop

    out = out or sys.stdout
    session = _session(project)
    queue = request_stop(session) if session is not None else None
    if queue is None:
        return _stop_live(project, out)
    # no further run of the queue starts; its running runs (one per GPU when side by side) are stopped one by one
    out.write(f"queue {queue.queue_id}: asked to stop (pid {queue.pid}); no further run of it starts\n")
    code = EXIT_FINISHED
    for _ in range(64):
        record = _newest(project)
        if record is None or record.status() != "running":
            break
        code = _stop_live(project, out)
        if code != EXIT_FINISHED:
            break
    return code


def _stop_live(project: Path, out: TextIO) -> int:
    """Stop the project's newest live run (the body of `stop`)."""
    import threading

    from lorawizard.core.launch import runs
    from lorawizard.core.train import statesave
    from lorawizard.core.train.step import RunFollower

    record = _newest(project)
    if record is None or record.status() != "running":
        out.write("no run is going" + (f" (newest: {record.run_id}, {record.status()})" if record else "") + "\n")
        return EXIT_NO_RUN
    follower = RunFollower(record, use_index=True)  # the log's new bytes since the last look, at most its tail
    follower.finish()
    newest = runs.newest_state_step(record)
    step = statesave.step_now(follower.state.step, newest)
    lost = statesave.steps_lost(step, newest)
    out.write(f"stopping run {record.run_id} at step {step}: loses {statesave.steps_text(lost)} since the newest "
              f"saved state (SIGINT now, SIGTERM after {runs.STOP_INT_S:g} s, SIGKILL {runs.STOP_TERM_S:g} s later); "
              "Ctrl-C sends the next signal now…\n")
    out.flush()
    hurry, stage_now, asked = threading.Event(), ["SIGINT"], [False]

    def stage(name: str) -> None:
        stage_now[0], hurried, asked[0] = name, asked[0], False
        if name != "SIGINT":  # the line above said SIGINT
            out.write(f"  {'Ctrl-C' if hurried else 'still running'}: sending {name}\n")
            out.flush()

    def on_ctrl_c(signum: int, frame: Any) -> None:
        if stage_now[0] == "SIGKILL":
            raise KeyboardInterrupt  # after SIGKILL there is nothing harsher: stop waiting
        asked[0] = True
        hurry.set()

    with _sigint(on_ctrl_c):
        try:
            how = runs.stop(record, on_stage=stage, hurry=hurry)
        except runs.RunError as exc:
            out.write(f"lorawizard: {exc}\n")
            return EXIT_FAILED
        except KeyboardInterrupt:
            left = record.trainer_pids()
            out.write(f"lorawizard: stopped waiting: run {record.run_id} got SIGKILL"
                      + (f"; still there: pid {', '.join(map(str, left[:5]))}" if left else "") + "\n")
            return EXIT_INTERRUPTED
    out.write(f"run {record.run_id} stopped ({how}); {resume_hint(record, *_session_facts(project))}\n")
    return EXIT_FINISHED


class _sigint:  # noqa: N801 - used as a function
    """SIGINT handled by `handler` inside the block (main thread, default handler only), the previous one after."""

    def __init__(self, handler: Any) -> None:
        self.handler: Any = handler
        self.previous: Any = None
        self.installed = False

    def __enter__(self) -> None:
        import threading

        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self.handler)
            self.installed = True

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)
            self.installed = False
