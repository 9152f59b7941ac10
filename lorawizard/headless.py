"""`lorawizard --replay SESSION.toml`: the wizard's steps without the wizard.

Calls the same core step functions as the screens. Plain progress lines when stdout is not a TTY
(no '\r' spam in logs), a live one-line bar when it is. Never imports Textual, never rewrites the
user's session file: decisions it had to take are written beside the outputs instead.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lorawizard.core.common.progress import Progress, format_duration, format_progress
from lorawizard.core.common.text import one_line
from lorawizard.core.contract import Cancelled, StepContext, StepFailed, StepResult
from lorawizard.core.profile import family_for
from lorawizard.core.registry import STEP_TITLES, OptionsByStep, load_step, options_for
from lorawizard.core.session.document import Session, SessionError

EXIT_OK, EXIT_STEP_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DECISIONS_FILE = "replay-decisions.toml"
MAX_WARNINGS = 20  # session.toml warnings printed; more are counted in one line


class ProgressPrinter:
    """Progress events → a live bar on a TTY, or plain lines otherwise.

    Plain lines: one when the task begins, one when it finishes, and in between one when something a person
    reads changed (the count or the task: not the rate or ETA), at most every `every` seconds. A task whose
    count stands still gets a heartbeat every `unchanged_every` seconds that says how long it has not moved.
    """

    def __init__(self, out: TextIO, *, tty: bool | None = None, every: float = 2.0, unchanged_every: float = 30.0) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.every = every
        self.unchanged_every = unchanged_every  # a line that says nothing new is only a heartbeat
        self._printed: dict[tuple[str, str], tuple[float, str]] = {}  # task → when it last printed, its news
        self._since: dict[tuple[str, str], float] = {}  # task → when its news last changed
        self._last_line = ""
        self._live = False
        self._lock = threading.Lock()

    def __call__(self, event: Progress) -> None:
        with self._lock:
            line = format_progress(event)
            if self.tty:
                self._draw(line, final=event.finished)
                return
            key = (event.step, event.task)
            now = time.monotonic()
            news = _news(event)
            previous = self._printed.get(key)
            if previous is None or event.finished:
                due = True
            elif news != previous[1]:
                due = now - previous[0] >= self.every
            else:
                due = now - previous[0] >= self.unchanged_every
                if due:
                    line += f" · no change for {format_duration(now - self._since.get(key, previous[0]))}"
            if due and line != self._last_line:
                if previous is None or news != previous[1]:
                    self._since[key] = now
                self._printed[key] = (now, news)
                self._write(line)
            if event.finished:
                self._printed.pop(key, None)
                self._since.pop(key, None)

    def _write(self, line: str) -> None:
        self._last_line = line
        try:  # a terminal that hung up (SIGHUP) must not keep replay from stopping what it started
            self.out.write(line + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass

    def line(self, text: str) -> None:
        with self._lock:
            if self._live:
                self._live = False
                try:
                    self.out.write("\r\x1b[2K")
                except (OSError, ValueError):
                    pass
            self._write(text)

    def _draw(self, line: str, *, final: bool) -> None:
        fraction = _fraction(line)
        bar = ""
        if fraction is not None:
            filled = int(fraction * 20)
            bar = "█" * filled + "░" * (20 - filled) + " "
        # within one row: a wrapped line leaves its first row behind at each redraw (\r goes to the last row)
        width = shutil.get_terminal_size((80, 24)).columns - 1
        if len(bar) >= width // 2:
            bar = ""
        room = width - len(bar)
        text = line if len(line) <= room else line[: max(0, room - 1)] + "…"
        self._live = not final
        try:
            self.out.write("\r\x1b[2K" + bar + text + ("\n" if final else ""))
            self.out.flush()
        except (OSError, ValueError):
            pass


def _news(event: Progress) -> str:
    """What a person reads in a progress line, less what moves on its own (rate, ETA, the current file)."""
    return format_progress(Progress(event.step, event.task, event.done, event.total, event.unit))


def _fraction(line: str) -> float | None:
    start = line.find("(")
    end = line.find("%)", start)
    if start < 0 or end < 0:
        return None
    try:
        return float(line[start + 1 : end]) / 100
    except ValueError:
        return None


@dataclass
class ReplayReport:
    results: list[tuple[str, StepResult | None, float]] = field(default_factory=list)


def check_inputs(session: Session, steps: list[str], *, dry_run: bool = False, detach: bool = False) -> str | None:
    """Inputs the user named must exist (outputs are created). Returns a one-line problem or None."""
    wanted: list[tuple[str, Any]] = []
    if {"dataset", "captions"} & set(steps):
        wanted.append(("dataset.source", session.dataset.source))
    if session.is_set("paths.python") and "env" not in steps:  # the env step reports a missing Python itself
        wanted.append(("paths.python", session.path_settings.python))
    if session.is_set("paths.sd_scripts") and "env" not in steps:
        wanted.append(("paths.sd_scripts", session.path_settings.sd_scripts))
    for role in family_for(session).role_names:
        if session.is_set(f"models.{role}"):
            wanted.append((f"models.{role}", session.get(f"models.{role}")))
    if {"probe", "train"} & set(steps):  # the options reach the trainer's argv: bad ones are bad usage (exit 2)
        from lorawizard.core.launch.command import CommandError, parse_extra_args

        try:
            parse_extra_args(session.train.extra_args)
        except CommandError as exc:
            return f"{session.path}: {exc}"
    if "train" in steps and session.train.keep_epoch:
        from lorawizard.core.train.keep import epoch_exists_in_plan

        problem = epoch_exists_in_plan(session, session.train.keep_epoch)
        if problem:
            return f"{session.path}: {problem}"
    if "publish" in steps:  # a missing repo or token is a setup problem: said before any step runs (exit 2)
        from lorawizard.core.publish.step import problem as publish_problem

        blocked = publish_problem(session, need_token=not dry_run)
        if blocked:
            return f"{session.path}: {blocked}" if "[publish]" in blocked else blocked
        if "train" in steps and detach:
            return "--detach leaves training running, so there is nothing to publish yet: drop --detach or publish later"
    for key, value in wanted:
        if value is None:
            return f"{session.path}: {key} is not set (the {key.split('.')[0]} step needs it)"
        path = session.resolve(value)
        if path is None or not path.exists():
            return f"{session.path}: {key}: {path} does not exist"
    return None


def replay(
    session_path: Path,
    steps: list[str],
    *,
    dry_run: bool = False,
    options: OptionsByStep | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    tty: bool | None = None,
    all_steps: bool = False,
) -> int:
    """Run `steps`; `all_steps` (no --steps given) adds publish when the session has `[publish] repo`."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        session = Session.load(session_path, read_only=True)
    except SessionError as exc:
        err.write(f"lorawizard: {one_line(str(exc))}\n")
        return EXIT_USAGE
    for warning in session.warnings[:MAX_WARNINGS]:
        err.write(f"lorawizard: warning: {one_line(warning)}\n")
    if len(session.warnings) > MAX_WARNINGS:  # bounded output whatever the file holds
        err.write(f"lorawizard: warning: ... and {len(session.warnings) - MAX_WARNINGS:,} more warnings about {session.path}\n")
    if all_steps and session.is_set("publish.repo") and "publish" not in steps:
        steps = [*steps, "publish"]
    problem = check_inputs(session, steps, dry_run=dry_run, detach=bool((options or {}).get("train", {}).get("detach")))
    if problem:
        err.write(f"lorawizard: {one_line(problem)}\n")
        return EXIT_USAGE

    if "train" in steps and not dry_run:  # refuse before doing any step, not after an hour of captions
        from lorawizard.core.train.step import claim_project

        try:
            claim_project(session)
        except StepFailed as exc:
            err.write(f"lorawizard: {exc}\n")
            return EXIT_STEP_FAILED
    printer = ProgressPrinter(out, tty=tty)
    ctx = StepContext(session=session, progress=printer, log=printer.line, dry_run=dry_run)
    report = ReplayReport()
    mode = " (dry run: nothing outside the project changes)" if dry_run else ""
    printer.line(f"lorawizard replay of {session.path}{mode}: {', '.join(steps)}")
    code = EXIT_OK
    with CtrlC(ctx) as ctrl_c:
        for name in steps:
            if ctx.cancel.is_set():  # Ctrl-C between two steps: the next one does not start
                printer.line(f"interrupted before {name}")
                code = ctrl_c.exit_code
                break
            printer.line(f"== {STEP_TITLES[name]} ({name}) ==")
            started = time.monotonic()
            ctx.options = options_for(options or {}, name)  # each step sees its own options only
            try:
                result = _run_interruptible(name, ctx, ctrl_c, printer)
            except Cancelled:
                printer.line(f"{name}: interrupted")
                report.results.append((name, None, time.monotonic() - started))
                code = ctrl_c.exit_code
                break
            except StepFailed as exc:
                result = StepResult(ok=False, summary=str(exc))
            elapsed = time.monotonic() - started
            report.results.append((name, result, elapsed))
            for detail in result.details:
                printer.line(f"  {detail}")
            printer.line(f"{name}: {'ok' if result.ok else 'FAILED'} - {result.summary}")
            if not result.ok:
                err.write(f"lorawizard: step {name} failed: {one_line(result.summary)}\n")
                code = EXIT_STEP_FAILED
                break
        code = _late_signal(code, ctx, ctrl_c, printer)
        _write_decisions(session, ctx.decisions)
    printer.line(_summary(report, steps))
    return code


class CtrlC:
    """Ctrl-C during replay, without KeyboardInterrupt: the first press sets `ctx.cancel` (the step stops what it
    started and tidies up), each further one sets `ctx.hurry` (a run being stopped gets the next signal now).
    SIGTERM and SIGHUP (`timeout`, a closed terminal or SSH session) count as presses too: a foreground replay stops
    what it started before it exits (128 + the first signal's number); with --detach a started run is left, and said so.

    The main thread waits for the step's thread on an Event, never on `Thread.join`: on Python 3.11 a join cut short
    by KeyboardInterrupt makes the next `join(timeout)` return at once while the thread still runs, and the process
    then exited with the step (and the trainer it was stopping) half done. A handler is installed only in the main
    thread and only where SIGINT has Python's default handler (an ignored SIGINT, e.g. under nohup, stays ignored).
    """

    GIVE_UP_AFTER = 4  # presses: the 4th leaves a step that does not stop (a run has had SIGINT, SIGTERM, SIGKILL)

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.presses = 0
        self.first_signal = signal.SIGINT  # what the first press was (a Ctrl-C unless a handler saw otherwise)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.SIGNALS:  # an ignored one (nohup's SIGHUP) stays ignored; someone else's handler stays
            default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            if signal.getsignal(signum) is default:
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handler(self, signum: int, frame: Any) -> None:  # only sets flags: the main thread may hold the printer's lock
        if self.presses == 0:
            self.first_signal = signal.Signals(signum)
        self.press()

    def press(self) -> None:
        self.presses += 1
        (self.ctx.cancel if self.presses == 1 else self.ctx.hurry).set()

    @property
    def what(self) -> str:
        return "Ctrl-C" if self.first_signal == signal.SIGINT else signal.Signals(self.first_signal).name

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP (as a shell reports a job ended by that signal)."""
        return 128 + int(self.first_signal)


def _late_signal(code: int, ctx: StepContext, ctrl_c: CtrlC, printer: ProgressPrinter) -> int:
    """A signal that came as the last step ended: nothing was left to stop, but the exit code says it came."""
    if code != EXIT_OK or not ctx.cancel.is_set():
        return code
    printer.line(f"{ctrl_c.what} after the last step: it had ended; nothing left to stop")
    return ctrl_c.exit_code


def _run_interruptible(name: str, ctx: StepContext, ctrl_c: CtrlC, printer: ProgressPrinter) -> StepResult:
    """Run the step in a thread; the main thread waits on an Event (see CtrlC) until the step has ended, including
    its cleanup after a Ctrl-C (a run stopped, a process pool shut down, temp files gone)."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["result"] = load_step(name)(ctx)
        except BaseException as exc:  # carried back to the main thread
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=target, name=f"step-{name}", daemon=True)
    worker.start()
    seen = 0
    while not done.is_set():
        try:
            done.wait(0.2)
        except KeyboardInterrupt:  # no handler of ours (not the main thread): the same, one press
            ctrl_c.press()
        if ctrl_c.presses != seen:
            seen = ctrl_c.presses
            if seen == 1:
                printer.line(f"{name}: {ctrl_c.what}: stopping what it started (Ctrl-C again to hurry)…")
            elif seen < CtrlC.GIVE_UP_AFTER:
                printer.line(f"{name}: Ctrl-C again: hurrying")
            else:
                printer.line(f"{name}: did not stop after {seen} Ctrl-C; leaving it (what it started may still run)")
                raise Cancelled()
    error = outcome.get("error")
    if ctx.cancel.is_set() and (isinstance(error, StepFailed) or (error is None and not outcome["result"].ok)):
        raise Cancelled()  # a step cut short by Ctrl-C failed because of it: that is an interruption
    if error is not None:
        raise error
    result: StepResult = outcome["result"]
    return result


def _write_decisions(session: Session, decisions: dict[str, Any]) -> None:
    if not decisions:
        return
    import tomlkit

    from lorawizard.core.common.fsutil import atomic_write_text

    doc = tomlkit.document()
    doc.add(tomlkit.comment("Decisions replay took where session.toml was silent (your session file is never rewritten)."))
    for key, value in sorted(decisions.items()):
        if value is None:  # a decision that removes a key (TOML has no null)
            doc.add(tomlkit.comment(f"{key}: removed"))
        else:
            doc.add(key, value)
    atomic_write_text(session.paths.state / DECISIONS_FILE, tomlkit.dumps(doc))


def _summary(report: ReplayReport, steps: list[str]) -> str:
    parts = []
    done = {name for name, _, _ in report.results}
    for name, result, elapsed in report.results:
        state = "interrupted" if result is None else ("ok" if result.ok else "failed")
        parts.append(f"{name} {state} ({format_duration(elapsed)})")
    parts += [f"{name} not run" for name in steps if name not in done]
    return "summary: " + ", ".join(parts)
