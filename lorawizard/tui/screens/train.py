"""Train step screen: start/attach a detached run and watch it (progress, loss, GPU, resources, checkpoints, log).

A thread worker follows the run through `core.dashboard.views` (the one follow loop, `core.steps.training.watch`) and
posts one `TrainUpdate` a few times a second (never one message per log line). Its handler assigns the view to the
screen's `view` reactive, once; every panel is bound to it (data_bind) and draws its own part. Leaving
the wizard leaves the run running; opening the project again reattaches (pid + create-time). Keys: s stop (asks
first, saying which steps it loses; then SIGINT → SIGTERM → SIGKILL), r resume from the newest state, l the full
log, g the samples, p publish the kept LoRA to the Hugging Face hub (after a confirmation).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import var
from textual.screen import ModalScreen
from textual.widgets import Label, Log, Static

from lorawizard.core.common.fsutil import tilde_paths
from lorawizard.core.common.text import one_line
from lorawizard.core.contract import StepState
from lorawizard.tui.messages import Notice
from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.text_fit import FitPaths
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.loss_chart import LossChart
from lorawizard.tui.widgets.settings_form import SettingsForm
from lorawizard.tui.widgets.train_panels import (
    BarLine,
    CheckpointPanel,
    DiagnosisLine,
    LogTail,
    ResourcePanel,
    SamplePanel,
    TrainHeader,
    TrainView,
)
from lorawizard.tui.widgets.wrap_log import WrapLog

if TYPE_CHECKING:
    from lorawizard.core.gpu.cpu_mode import CpuMode
    from lorawizard.core.launch.runs import RunRecord
    from lorawizard.core.session.document import Session

TAIL_LINES = 300


@dataclass
class TrainUpdate(Message):
    view: TrainView


@dataclass
class RunStarted(Message):
    """Posted by the start worker: the run is launched; the screen follows it."""

    record: RunRecord


@dataclass
class StaleCaptions(Message):
    """Caption files differ from the session's captions: ask before a run trains on the old text."""

    line: str
    resume: bool


@dataclass
class CpuModeRead(Message):
    """Posted by the NVML worker: the rule for "no GPU" (core.gpu.cpu_mode) for this session, None with a GPU."""

    mode: CpuMode | None


@dataclass
class PublishProgress(Message):
    text: str  # one line: what is uploading, bytes, rate, ETA
    done: bool = False


class FullLogScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,l", "dismiss", "Close")]
    CSS_PATH = "train.tcss"

    def __init__(self, path: Path, max_lines: int = 20000) -> None:
        super().__init__()
        self.path, self.max_lines = path, max_lines

    def compose(self) -> ComposeResult:
        box = Vertical()
        box.border_subtitle = f"Esc closes · '\\r' redraws collapsed · last {self.max_lines} lines"
        with box:  # the path on a line of its own, `~/…` and cut in the middle (it wrapped the hint at 80 columns)
            yield Label(FitPaths(Text(str(self.path), no_wrap=True), one_line=True))
            yield WrapLog(max_lines=self.max_lines, auto_scroll=True)

    @dataclass
    class Loaded(Message):
        lines: list[str]

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True)
    def load(self) -> None:
        """Read and parse the whole log off the UI thread; the handler writes the lines into the Log."""
        from lorawizard.core.train.logparse import Line, LogParser

        parser = LogParser()
        lines: list[str] = []
        try:
            with open(self.path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    lines += [tilde_paths(e.text) for e in parser.feed(chunk) if type(e) is Line]
                    del lines[: -self.max_lines]
        except OSError as exc:
            lines = [f"cannot read {self.path}: {exc.strerror}"]
        lines += [tilde_paths(e.text) for e in parser.finish() if type(e) is Line]
        self.post_message(self.Loaded(lines[-self.max_lines :]))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        self.query_one(Log).write_lines(message.lines)


class TrainScreen(StepScreen):
    STEP = "train"
    INTRO = "Training runs detached: quitting or an SSH drop never stops it."
    RUNNER = False  # the run is detached (core.steps.training.start_run); a thread follows its log
    BINDINGS = [
        Binding("s", "stop", "Stop"),
        Binding("r", "resume", "Resume"),
        Binding("l", "full_log", "Full log"),
        Binding("g", "samples", "Samples"),
        Binding("p", "publish", "Publish", show=False),  # in help (?) and said when a run finishes
    ]

    # What the dashboard shows now: one snapshot per tick, assigned once (apply_view); the panels are bound to it.
    view: var[TrainView] = var(TrainView, init=False)

    def __init__(self, *, follow: bool = True) -> None:
        super().__init__()
        self.follow_runs = follow
        self.record: RunRecord | None = None
        self._stop_tail = threading.Event()
        self._stop_asked: str | None = None  # the run this wizard stopped (s): its stop worker says so, once
        self._cpu_mode: CpuMode | None = None  # no GPU visible: the rule of core.gpu.cpu_mode for this session

    def compose_body(self) -> ComposeResult:
        view = TrainScreen.view
        yield TrainHeader(id="train-header").data_bind(view)
        yield Static("", id="train-cpu-mode", markup=False)  # no GPU: "CPU test mode" and its expected speed
        yield DiagnosisLine(id="train-diagnosis").data_bind(view)
        with Horizontal(id="train-panels"):
            yield LossChart(id="train-loss").data_bind(view)
            with Vertical(id="train-side"):
                yield ResourcePanel(id="train-resources").data_bind(view)
                yield CheckpointPanel(id="train-checkpoints").data_bind(view)
            yield SamplePanel(id="train-sample").data_bind(view)
        yield BarLine("", id="train-bar-line").data_bind(view)
        yield Static("", id="train-publish", markup=False)
        yield LogTail(max_lines=TAIL_LINES, auto_scroll=True, id="train-log").data_bind(view)
        yield SettingsForm(
            ["name", "train.network_dim", "train.learning_rate", "train.max_train_epochs",
             "train.save_every_n_epochs", "train.optimizer_type", "train.base_precision", "train.mixed_precision",
             "train.seed", "train.extra_args", "train.samples.prompts", "train.samples.steps",
             "train.samples.width", "train.samples.height"],
            labels={"train.base_precision": "base precision", "train.mixed_precision": "mixed precision",
                    "train.samples.prompts": "sample prompts", "train.samples.steps": "sample steps",
                    "train.samples.width": "sample width", "train.samples.height": "sample height"},
            id="train-settings",
        )

    CSS_PATH = "train.tcss"

    def on_mount(self) -> None:
        self._read_cpu_mode()
        if self.follow_runs:
            self._attach_existing()

    # -- no GPU: the CPU trains, as a test mode (core.gpu.cpu_mode)

    @work(thread=True, exclusive=True, group="train-cpu-mode", exit_on_error=False)
    def _read_cpu_mode(self) -> None:
        from lorawizard.core.dataset.step import bucket_counts
        from lorawizard.core.gpu import cpu_mode

        session = wizard_app(self).session
        mode = None if cpu_mode.gpu_visible() else cpu_mode.cpu_mode(session, bucket_counts(session))
        self.post_message(CpuModeRead(mode))

    @on(CpuModeRead)
    def _cpu_mode_read(self, message: CpuModeRead) -> None:
        self._cpu_mode = message.mode
        self._show_cpu_mode()

    def _show_cpu_mode(self) -> None:
        """The label, shown while no GPU is visible and the run shown (if any) has no GPU either."""
        label = self.query_one("#train-cpu-mode", Static)
        mode = self._cpu_mode
        shown = mode is not None and self.view.gpu is None
        if mode is not None:
            text = Text(mode.label(), style=tone("warning", bold=True))
            line = mode.bf16_line()
            if line:
                text.append(f"\n{line}", style=tone("warning"))
            label.update(text)
        label.set_class(shown, "-shown")

    @on(SettingsForm.Saved)
    def _setting_saved(self, message: SettingsForm.Saved) -> None:
        if self._cpu_mode is not None:  # mixed precision (or anything the speed depends on) changed
            self._read_cpu_mode()

    def on_resize(self) -> None:
        self.set_class(self.size.width >= 110, "-wide")

    # -- runs

    def _attach_existing(self) -> None:
        from lorawizard.core.launch import runs
        from lorawizard.core.train.step import live_run

        problems: list[str] = []
        session = wizard_app(self).session
        records = runs.list_runs(session.paths.runs, problems)
        for problem in problems:  # a damaged run.json: said, then skipped
            self.notify(one_line(problem), severity="warning")
        # the process group is the truth: a trainer whose supervisor was killed, or whose run folder was deleted
        live = live_run(session)
        if live is None and not records:
            return
        self.record = live or records[-1]
        if live is not None:
            self.notify(f"reattached to run {live.run_id} (pid {live.pid})")
        self._start_tail(self.record)

    def _start_tail(self, record: RunRecord) -> None:
        self._stop_tail.set()
        self._stop_tail = threading.Event()
        self.record = record
        self._tail(record, self._stop_tail)

    @work(thread=True, exclusive=True, group="train-tail", exit_on_error=False)
    def _tail(self, record: RunRecord, stop: threading.Event) -> None:
        from lorawizard.core.train.dashboard import views

        name = record.output_name or wizard_app(self).session.name
        for view in views(record, name, wait=stop.wait):
            self.post_message(TrainUpdate(view))

    def on_unmount(self) -> None:
        self._stop_tail.set()

    # -- updates

    @on(TrainUpdate)
    def _update(self, message: TrainUpdate) -> None:
        self.apply_view(message.view)

    def apply_view(self, view: TrainView) -> None:
        """One tick: the one assignment every panel follows, drawn as one update."""
        with self.app.batch_update():
            self.view = view

    def watch_view(self, before: TrainView, view: TrainView) -> None:
        """What the screen itself says about a new view: a notice, the end of a run, the step bar's state."""
        if view.notice:
            self.notify(view.notice, severity="warning", timeout=15)
        asked = view.status == "stopped" and view.run_id == self._stop_asked  # the stop worker's line says it
        if before.status == "running" and view.status in ("finished", "failed", "stopped", "lost") and not asked:
            self.app.bell()  # a run that ends while nobody watches: the terminal says so
            self.notify(f"run {view.run_id} {view.status}" + (": g shows the samples, k there keeps an epoch, "
                        "p publishes" if view.status == "finished" else ""), timeout=15)
        if view.status != before.status and view.status in _STEP_STATES:
            wizard_app(self).set_step_state("train", _STEP_STATES[view.status])
        if (view.gpu is None) != (before.gpu is None):
            self._show_cpu_mode()

    # -- actions

    def action_primary(self) -> None:
        self._launch(resume=False)

    def action_resume(self) -> None:
        self._launch(resume=True)

    def _launch(self, *, resume: bool) -> None:
        if self.record is not None and self.record.is_alive():
            self.notify("a run is already going: stop it first (s)", severity="warning")
            return
        self._start_run(resume)

    @work(thread=True, exclusive=True, group="train-start", exit_on_error=False)
    def _start_run(self, resume: bool, asked: bool = False) -> None:
        from lorawizard.core.captions.captionset import stale_captions_line
        from lorawizard.core.captions.written import edited_files_line, files_before_training
        from lorawizard.core.contract import StepFailed
        from lorawizard.core.train.step import claim_project, live_run, plan_run, start_run

        session = wizard_app(self).session
        refused = wizard_app(self).store.sync()  # as decided, and as edited by hand on disk meanwhile
        if refused is not None:
            self.post_message(Notice(f"training not started: {refused}", "error"))
            return
        if not asked:
            stale, edited = files_before_training(session)
            if stale:  # QA: a trigger changed after writing the files; the run trained on the old ones, unsaid
                self.post_message(StaleCaptions(stale_captions_line(stale), resume))
                return
            if edited:  # a person's edit of the file: trained on as it is, said once (issue 23 A8)
                self.post_message(Notice(edited_files_line(edited)))
        try:
            claim_project(session)  # refuses (one line) while a replay in another terminal drives the project
            live = live_run(session)  # any process of an earlier run: never a second trainer
            if live is not None:
                raise StepFailed(f"a run is already going ({live.run_id}, pid {live.pid}): stop it first (s)")
            plan = plan_run(session, resume=resume)
            record = start_run(session, plan)
        except StepFailed as exc:
            self.post_message(Notice(str(exc), "error"))
            return
        what = f"resumed at step {plan.base_step}" if resume else "started"
        where = " on the CPU (test mode)" if plan.cpu is not None else ""
        self.post_message(Notice(f"training {what}{where}: run {record.run_id}"))
        self.post_message(RunStarted(record))

    @on(StaleCaptions)
    def _stale_captions(self, message: StaleCaptions) -> None:
        from lorawizard.tui.screens.confirm import ConfirmScreen

        def answer(yes: bool | None) -> None:
            if yes:
                self._start_run(message.resume, asked=True)

        self.app.push_screen(ConfirmScreen(f"{message.line}. Start the run anyway?"), answer)

    @on(RunStarted)
    def _run_started(self, message: RunStarted) -> None:
        self._start_tail(message.record)

    def action_stop(self) -> None:
        """s: asks first, saying in one line which steps a stop loses (sd-scripts keeps only its saved states)."""
        if self.record is None or not self.record.is_alive():
            self.notify("no run is going")
            return
        from lorawizard.core.launch import runs
        from lorawizard.core.train import statesave
        from lorawizard.tui.screens.confirm import ConfirmScreen

        record = self.record
        saved = runs.newest_state_step(record)
        question = statesave.stop_question(self.view.step, self.view.total_steps, saved)
        self.app.push_screen(
            ConfirmScreen(question, "The trainer gets SIGINT, then SIGTERM, then SIGKILL; r resumes later."),
            lambda yes: self._stop_answer(record, yes))

    def _stop_answer(self, record: RunRecord, yes: bool | None) -> None:
        if not yes:
            return
        if not record.is_alive():
            self.notify("the run has already ended")
            return
        from lorawizard.core.launch import runs
        from lorawizard.core.train import statesave

        lost = statesave.steps_lost(self.view.step, runs.newest_state_step(record))
        self.notify(f"stopping: loses {statesave.steps_text(lost)} since the newest saved state "
                    "(SIGINT, then SIGTERM, then SIGKILL)…")
        self._stop_asked = record.run_id
        self._stop_run(record)

    @work(thread=True, exclusive=True, group="train-stop", exit_on_error=False)
    def _stop_run(self, record: RunRecord) -> None:
        from lorawizard.core.contract import StepFailed
        from lorawizard.core.launch import runs
        from lorawizard.core.train.step import claim_project

        try:
            claim_project(wizard_app(self).session)
        except StepFailed as exc:
            self.post_message(Notice(str(exc), "error"))
            return
        try:
            how = runs.stop(record)
        except runs.RunError as exc:
            self.post_message(Notice(str(exc), "error"))
            return
        self.post_message(Notice(f"run {record.run_id} stopped ({how}); {after_stop(wizard_app(self).session, record)}"))

    def action_samples(self) -> None:
        if self.record is None:
            self.notify("no run yet: samples appear once a run has made them")
            return
        from lorawizard.core.train.keep import run_chain
        from lorawizard.core.train.samples import read_prompts
        from lorawizard.tui.screens.samples import SamplesScreen

        chain = run_chain(self.record)
        name = self.record.output_name or wizard_app(self).session.name
        self.app.push_screen(SamplesScreen([r.dir for r in chain], name, read_prompts(self.record.dir),
                                           last_epoch=self.view.epochs))

    def action_publish(self) -> None:
        from lorawizard.core.models.download import hub_endpoint
        from lorawizard.core.publish.step import problem
        from lorawizard.core.train.keep import kept_lora
        from lorawizard.tui.screens.confirm import ConfirmScreen

        if self._publishing:
            self.notify("publishing is already under way")
            return
        if self.record is not None and self.record.is_alive():
            self.notify("a run is going: publish once it has finished (and you kept an epoch: g, then k)",
                        severity="warning")
            return
        session = wizard_app(self).session
        blocked = problem(session)
        if blocked:
            self.notify(blocked, severity="error", timeout=12, markup=False)
            return
        repo = session.publish.repo
        lora = kept_lora(session)
        what = lora.name if lora is not None else "the final LoRA (kept into loras/ first)"
        visibility = "private" if session.publish.private else "PUBLIC"
        self.app.push_screen(
            ConfirmScreen(f"Publish {what} to {repo} ({visibility})?",
                          f"Uploads the LoRA, the sample images and a model card to {hub_endpoint()}/{repo}, one "
                          "commit per file (files already there are skipped). The token comes from HF_TOKEN or "
                          "`hf auth login`."),
            self._publish_answer)

    _publishing = False

    def _publish_answer(self, yes: bool | None) -> None:
        if not yes:
            return
        self._publishing = True
        line = self.query_one("#train-publish", Static)
        line.update("publish: starting…")
        line.add_class("-shown")
        self._publish(wizard_app(self).session)

    @work(thread=True, exclusive=True, group="train-publish", exit_on_error=False)
    def _publish(self, session: Session) -> None:
        from lorawizard.core.common.progress import format_progress
        from lorawizard.core.contract import StepContext, StepFailed
        from lorawizard.core.publish.step import run_step

        ctx = StepContext(session=session, progress=lambda e: self.post_message(PublishProgress(format_progress(e))),
                          log=lambda text: None)
        refused = wizard_app(self).store.sync()
        if refused is not None:
            self.post_message(PublishProgress(f"publish not started: {one_line(refused)}", done=True))
            return
        try:
            result = run_step(ctx)
        except StepFailed as exc:
            self.post_message(PublishProgress(f"publish failed: {one_line(str(exc))}", done=True))
            self.post_message(Notice(f"publish failed: {exc}", "error"))
            return
        except Exception as exc:  # noqa: BLE001 - a worker error must reach the person, not end the app
            self.post_message(PublishProgress(f"publish failed: {type(exc).__name__}: {exc}", done=True))
            self.post_message(Notice(f"publish failed: {type(exc).__name__}: {exc}", "error"))
            return
        self.post_message(PublishProgress(f"publish: {result.summary}", done=True))
        self.post_message(Notice(result.summary))

    @on(PublishProgress)
    def _publish_progress(self, message: PublishProgress) -> None:
        self.query_one("#train-publish", Static).update(message.text)
        if message.done:
            self._publishing = False

    def action_full_log(self) -> None:
        if self.record is None:
            self.notify("no run yet")
            return
        self.app.push_screen(FullLogScreen(self.record.log_path))

    def action_cancel(self) -> None:  # Esc never stops training (s does); it only leaves a field
        if self.in_text_field():
            self.focus_main()


_STEP_STATES: dict[str, StepState] = {"finished": "done", "failed": "attention", "lost": "attention", "running": "todo", "stopped": "todo"}


def after_stop(session: Session, record: RunRecord) -> str:
    """What r does after `record` stopped: the verdict --stop and --status give (statesave.resume_point)."""
    from lorawizard.core.train import statesave

    point = statesave.resume_point(record.dir.parent, session.train.max_train_epochs)
    return f"r resumes from step {point.base_step}" if point.resumable else point.reason
