"""Train step screen: start/attach a detached run and watch it (progress, loss, GPU, resources, checkpoints, log).

A thread worker follows the run through `core.dashboard.views` (the one follow loop, `core.steps.training.watch`) and
posts one `TrainUpdate` a few times a second (never one message per log line). Its handler assigns the view to the
screen's `view` reactive, once; every panel is bound to it (data_bind) and draws its own part. Leaving
the wizard leaves the run running; opening the project again reattaches (pid + create-time). Keys: s stop (asks
first, saying which steps it loses; then SIGINT → SIGTERM → SIGKILL), r resume from the newest state, l the full
log, g the samples, p publish the kept LoRA to the Hugging Face hub (after a confirmation).

With `[[train.variants]]` the screen shows the queue (widgets/queue_panel.py): v adds a variant from the current
settings ("same, but: network_dim 16"), x removes the one under the cursor (asks first), shift+up/down move it;
ctrl+g hands the whole queue to its detached driver (core/train/queue.start_queue), r resumes a stopped or lost
queue, s stops the running run and the queue with it. A timer reads `.lorawizard/queue.json` (a short worker each
time) every ~1.5 s while a queue runs and moves the dashboard to the queue's next live run when one starts.
"""

from __future__ import annotations

import threading
import time
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
from textual.widgets import DataTable, Input, Label, Log, Static

from lorawizard.core.common.fsutil import tilde_paths
from lorawizard.core.common.text import one_line
from lorawizard.core.contract import StepState
from lorawizard.tui.messages import Notice
from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.text_fit import FitPaths
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.loss_chart import LossChart
from lorawizard.tui.widgets.queue_panel import QueuePanel, QueueRow, queue_rows
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
    from collections.abc import Callable

    from lorawizard.core.gpu.cpu_mode import CpuMode
    from lorawizard.core.launch.runs import RunRecord
    from lorawizard.core.session.document import Session
    from lorawizard.core.session.variants import Variant
    from lorawizard.core.train.queue import QueueRecord

TAIL_LINES = 300
QUEUE_POLL_S, IDLE_POLL_S = 1.5, 5.0  # queue.json and the live run while a queue runs; otherwise


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
class QueueRead(Message):
    """Posted by the queue worker: the project's last queue (None: none yet), its state, and the panel's head line."""

    record: QueueRecord | None
    status: str | None  # running, finished, stopped, lost; None without a queue
    head: str
    read: int = 0  # which read posted it: an older read that ends later must not undo a newer one


@dataclass
class QueueRunFound(Message):
    """Posted by the queue worker for a queue this screen follows: its live run, else its latest run (the dashboard
    moves to it when it is not the one shown)."""

    record: RunRecord
    read: int = 0  # as QueueRead.read


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
        Binding("v", "add_variant", "Variant"),
        Binding("x,delete", "remove_variant", "Remove variant", key_display="x"),
        Binding("shift+up", "move_variant(-1)", "Move variant", key_display="⇧↑↓"),
        Binding("shift+down", "move_variant(1)", "Move variant", key_display="⇧↑↓", show=False),
    ]
    FOOTER_DROP_FIRST = ("move_variant", "remove_variant")

    # What the dashboard shows now: one snapshot per tick, assigned once (apply_view); the panels are bound to it.
    view: var[TrainView] = var(TrainView, init=False)

    def __init__(self, *, follow: bool = True) -> None:
        super().__init__()
        self.follow_runs = follow
        self.record: RunRecord | None = None
        self._stop_tail = threading.Event()
        self._stop_asked: str | None = None  # the run this wizard stopped (s): its stop worker says so, once
        self._cpu_mode: CpuMode | None = None  # no GPU visible: the rule of core.gpu.cpu_mode for this session
        self._queue: QueueRecord | None = None  # the project's last queue, as the queue worker read it
        self._queue_status: str | None = None
        self._queue_head = ""
        self._queue_started_at = 0.0  # time.time() when this screen started a queue: the reader follows it
        self._queue_read_at = 0.0  # time.monotonic() of the last read started
        self._queue_reads = 0  # reads started; each posts its number
        self._queue_read_shown = 0  # the newest read whose messages were applied
        self._forecast_for: object = None  # what the forecast line was computed from (only the reader touches these)
        self._forecast_line = ""

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
        yield QueuePanel(id="train-queue")
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
        self._show_queue()
        if self.follow_runs:
            self._attach_existing()
            self._poke_queue()
            self.set_interval(QUEUE_POLL_S, self._queue_tick)  # stops with the screen

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

    # -- the queue (base run and [[train.variants]])

    def _queue_tick(self) -> None:
        """Every QUEUE_POLL_S while a queue runs or was just started; every IDLE_POLL_S otherwise. A short read per
        tick, not a worker that loops: a worker that never ends would never let the App (or a test) be idle."""
        busy = self._queue_status == "running" or time.time() - self._queue_started_at < 30
        if busy or time.monotonic() - self._queue_read_at >= IDLE_POLL_S:
            self._poke_queue()

    def _poke_queue(self) -> None:
        """Read queue.json (and the forecast) now: a variant added or moved, a queue started or stopped."""
        self._queue_read_at = time.monotonic()
        self._queue_reads += 1
        self._read_queue(self._queue_reads)

    @work(thread=True, exclusive=True, group="train-queue", exit_on_error=False)
    def _read_queue(self, read: int) -> None:
        """Reads queue.json (cheap) and, while the queue runs, its live run; the forecast when the variants change."""
        from lorawizard.core.launch import runs
        from lorawizard.core.train.queue import QueueRecord, entries, forecast

        app = wizard_app(self)
        with app.store.lock:  # a copy to read off the UI thread (the session changes under this lock)
            session = app.session.with_changes({})
        try:
            variants = session.variants()
        except Exception:  # noqa: BLE001 - a hand edit the store refuses: the panel keeps what it showed
            variants = []
        record = QueueRecord.load(session)
        status = record.status() if record is not None else None
        if record is not None and (status == "running" or started_since(record, self._queue_started_at)):
            # while it runs, its live run only: queue.json names a run once it has ended, so "the latest" would be
            # the one before (the dashboard went back to it between two runs); at its end, its last run
            current = runs.live_run(session.paths.runs) if status == "running" else latest_queue_run(session, record)
            if current is not None:
                self.post_message(QueueRunFound(current, read))
        if record is not None and status is not None and (status == "running" or (status in ("stopped", "lost")
                                                          and variants)):
            head = queue_head(record, status)
        else:
            doc = session.doc  # what the forecast depends on, as text: a change computes it again
            key = (repr([doc.get(t) for t in ("train", "dataset", "gpu", "paths")]), int(time.monotonic() // 60),
                   record and (record.queue_id, record.state))  # a queue's end measured the speed
            if variants and key != self._forecast_for:
                try:
                    self._forecast_line = forecast(entries(session), session).line()
                except Exception as exc:  # noqa: BLE001 - a forecast that fails must not end the panel
                    self._forecast_line = f"queue: {len(variants) + 1} runs; no forecast ({one_line(str(exc))})"
                self._forecast_for = key
            head = f"ctrl+g starts the {self._forecast_line}" if variants else ""  # the key first: never cut
        self.post_message(QueueRead(record, status, head, read))

    @on(QueueRead)
    def _queue_read(self, message: QueueRead) -> None:
        if message.read < self._queue_read_shown:
            return  # a slower, older read: a newer one has been shown
        self._queue_read_shown = message.read
        self._queue, self._queue_status, self._queue_head = message.record, message.status, message.head
        self._show_queue()

    @on(QueueRunFound)
    def _queue_run_found(self, message: QueueRunFound) -> None:
        """The queue's driver started its next run: the dashboard follows it."""
        live = message.record
        if message.read < self._queue_read_shown:
            return  # an older read's run (the base run, while the next one already shows)
        self._queue_read_shown = message.read
        if self.record is not None and self.record.run_id == live.run_id:
            return
        label = f" ({live.extra['variant']})" if live.extra.get("variant") else " (base)"
        self.notify(f"queue: following run {live.run_id}{label}")
        self._start_tail(live)

    def _variants(self) -> list[Variant]:
        from lorawizard.core.session.document import SessionError

        try:
            return wizard_app(self).session.variants()
        except SessionError:
            return []

    def _queue_shown(self) -> bool:
        return bool(self._variants()) or self._queue_status in ("running", "stopped", "lost")

    def _show_queue(self) -> None:
        """The panel: shown with variants, a queue going or to resume, or while a variant is being typed."""
        panel = self.query_one(QueuePanel)
        asking = self.query_one("#variant-ask", Input).has_class("-shown")
        shown = self._queue_shown() or asking
        self.set_class(shown, "-queue")
        if not shown:
            return
        rows: list[QueueRow] = queue_rows(self._variants(), self._queue)
        head = self._queue_head or ("type what differs from the base run; Enter adds the variant" if asking else "")
        panel.show(rows, head)
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("remove_variant", "move_variant"):
            return bool(self._variants())  # hidden from the footer until there is one
        return True

    def action_add_variant(self) -> None:
        """v: the one-line prompt "same, but: …" (Enter adds the variant, Esc closes it)."""
        ask = self.query_one("#variant-ask", Input)
        ask.add_class("-shown")
        self._show_queue()
        ask.focus()

    def _close_ask(self) -> None:
        ask = self.query_one("#variant-ask", Input)
        ask.value = ""
        ask.remove_class("-shown")
        self.query_one(QueuePanel).say("")
        self._show_queue()

    @on(Input.Submitted, "#variant-ask")
    def _variant_typed(self, event: Input.Submitted) -> None:
        """Enter in the prompt: the typed text becomes a variant, or the reason stays under it with the text."""
        from lorawizard.core.session.document import FIELDS, SessionError
        from lorawizard.core.session.variants import identical_warning, same_as_base, variant_from_text

        event.stop()
        event.prevent_default()  # StepScreen's own handler would move focus out of the prompt
        panel = self.query_one(QueuePanel)
        session = wizard_app(self).session
        existing = self._variants()
        try:
            variant = variant_from_text(event.value, kinds={k: f.kind for k, f in FIELDS.items()},
                                        taken=[v.name for v in existing], base_name=session.name)
            wizard_app(self).store.apply(lambda s: s.set_variants([*s.variants(), variant]))
        except (ValueError, SessionError) as exc:
            panel.say(one_line(str(exc)))
            return  # the prompt keeps the text: fix it and press Enter again
        self._close_ask()
        self._poke_queue()
        panel.move_cursor_to(variant.name)
        panel.table.focus()
        if same_as_base(variant, session.get):
            self.notify(identical_warning(variant), severity="warning", timeout=10)
        else:
            self.notify(f"variant {variant.name} added: {variant.describe()} (output {session.name}-{variant.name})")

    def _focused_variant(self) -> Variant | None:
        label = self.query_one(QueuePanel).cursor_label()
        variant = next((v for v in self._variants() if v.name == label), None)
        if variant is None:
            self.notify("the base run is always the queue's first run: pick a variant's row (tab, ↑↓)")
        return variant

    def action_remove_variant(self) -> None:
        from lorawizard.tui.screens.confirm import ConfirmScreen

        variant = self._focused_variant()
        if variant is None:
            return
        folder = f"{wizard_app(self).session.paths.runs.name}/variants/{variant.name}/"
        self.app.push_screen(
            ConfirmScreen(f"Remove variant {variant.name} ({variant.describe()})?",
                          f"Only its [[train.variants]] entry goes: runs it made stay in {folder}."),
            lambda yes: self._remove_variant(variant.name) if yes else None)

    def _remove_variant(self, name: str) -> None:
        self._write_variants(lambda variants: [v for v in variants if v.name != name], None)
        self.notify(f"variant {name} removed")

    def action_move_variant(self, delta: int) -> None:
        variant = self._focused_variant()
        if variant is None:
            return

        def moved(variants: list[Variant]) -> list[Variant]:
            names = [v.name for v in variants]
            if variant.name not in names:
                return variants
            index = names.index(variant.name)
            target = min(max(index + delta, 0), len(variants) - 1)
            variants.insert(target, variants.pop(index))
            return variants

        self._write_variants(moved, variant.name)

    def _write_variants(self, change: Callable[[list[Variant]], list[Variant]], cursor: str | None) -> None:
        """One write through the App's store: `change` maps the variants to the new list."""
        from lorawizard.core.session.document import SessionError

        try:
            wizard_app(self).store.apply(lambda s: s.set_variants(change(s.variants())))
        except SessionError as exc:
            self.notify(one_line(str(exc)), severity="error")
            return
        self._show_queue()
        self._poke_queue()
        if cursor is not None:
            self.query_one(QueuePanel).move_cursor_to(cursor)

    @on(DataTable.RowSelected, "#queue-table")
    def _queue_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_primary()  # Enter on the queue's table starts it, as Enter does elsewhere on the screen

    # -- updates

    @on(TrainUpdate)
    def _update(self, message: TrainUpdate) -> None:
        if self.record is not None and message.view.run_id and message.view.run_id != self.record.run_id:
            return  # the last view of a tail this screen has left for another run (a queue's next one)
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
        if self._queue_status == "running":
            self.notify("the queue is going: s stops it (r resumes it later)", severity="warning")
            return
        if self.record is not None and self.record.is_alive():
            self.notify("a run is already going: stop it first (s)", severity="warning")
            return
        if resume and self._variants() and self._queue_status not in ("stopped", "lost"):
            self.notify(f"no stopped queue to resume: ctrl+g starts the queue (the base run and "
                        f"{len(self._variants())} variants)", severity="warning")
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
        if session.variants():  # the base run and each variant, one after another, by one detached driver
            self._start_queue(session, resume)
            return
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
        if plan.cache_line:  # text-encoder caches of other settings (another family's T5 length) were removed
            self.post_message(Notice(plan.cache_line))
        for note in plan.notes:  # what replay prints as a warning (an fp8 file trained as 16-bit) is said here too
            if note.startswith("warning: "):
                self.post_message(Notice(note.removeprefix("warning: "), "warning"))
            elif note.startswith("the probe's fit"):  # what the fit changed from the person's settings
                self.post_message(Notice(note))
        what = f"resumed at step {plan.base_step}" if resume else "started"
        where = " on the CPU (test mode)" if plan.cpu is not None else ""
        self.post_message(Notice(f"training {what}{where}: run {record.run_id}"))
        self.post_message(RunStarted(record))

    def _start_queue(self, session: Session, resume: bool) -> None:
        """In the start worker: the whole queue to its driver (start_queue refuses in one line: a run going, …)."""
        from lorawizard.core.contract import StepFailed
        from lorawizard.core.train.queue import start_queue

        try:
            result = start_queue(session, resume=resume)
        except StepFailed as exc:
            self.post_message(Notice(str(exc), "error"))
            return
        self.post_message(Notice(("queue resumed: " if resume else "") + result.summary))
        self._queue_started_at = time.time() - 1  # queue.json's `started` has whole seconds
        self.app.call_from_thread(self._poke_queue)  # read queue.json now and follow the first run

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
        """s: asks first, saying in one line which steps a stop loses (sd-scripts keeps only its saved states).
        With a queue going, the queue stops too: no further run of it starts."""
        from lorawizard.tui.screens.confirm import ConfirmScreen

        queue = self._queue_status == "running"
        if self.record is None or not self.record.is_alive():
            if queue:  # between two runs of the queue
                self.app.push_screen(ConfirmScreen("Stop the queue? No further run of it starts.",
                                                   "r resumes it later: the runs not started, in order."),
                                     lambda yes: self._stop_queue_only() if yes else None)
                return
            self.notify("no run is going")
            return
        from lorawizard.core.launch import runs
        from lorawizard.core.train import statesave

        record = self.record
        saved = runs.newest_state_step(record)
        question = statesave.stop_question(self.view.step, self.view.total_steps, saved)
        detail = "The trainer gets SIGINT, then SIGTERM, then SIGKILL; r resumes later."
        if queue:
            detail += " The queue stops with it: no further run of it starts."
        self.app.push_screen(ConfirmScreen(question, detail), lambda yes: self._stop_answer(record, yes, queue))

    def _stop_queue_only(self) -> None:
        from lorawizard.core.train.queue import request_stop

        asked = request_stop(wizard_app(self).session)
        self.notify(f"queue {asked.queue_id}: asked to stop; no further run of it starts; r resumes it"
                    if asked is not None else "the queue has already ended")
        self._poke_queue()

    def _stop_answer(self, record: RunRecord, yes: bool | None, queue: bool = False) -> None:
        if not yes:
            return
        if queue:
            self._stop_queue_only()
        if not record.is_alive():
            self.notify("the run has already ended")
            return
        from lorawizard.core.launch import runs
        from lorawizard.core.train import statesave

        lost = statesave.steps_lost(self.view.step, runs.newest_state_step(record))
        self.notify(f"stopping: loses {statesave.steps_text(lost)} since the newest saved state "
                    "(SIGINT, then SIGTERM, then SIGKILL)…")
        self._stop_asked = record.run_id
        self._stop_run(record, queue)

    @work(thread=True, exclusive=True, group="train-stop", exit_on_error=False)
    def _stop_run(self, record: RunRecord, queue: bool = False) -> None:
        from lorawizard.core.contract import StepFailed
        from lorawizard.core.launch import runs
        from lorawizard.core.train.step import claim_project

        try:
            claim_project(wizard_app(self).session)
        except StepFailed as exc:
            if not queue:  # a queue's driver holds the lock it was handed; stopping its run is what --stop does
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
        if self.query_one("#variant-ask", Input).has_class("-shown"):
            self._close_ask()
            self.focus_main()
            return
        if self.in_text_field():
            self.focus_main()


_STEP_STATES: dict[str, StepState] = {"finished": "done", "failed": "attention", "lost": "attention", "running": "todo", "stopped": "todo"}


def after_stop(session: Session, record: RunRecord) -> str:
    """What r does after `record` stopped: the verdict --stop and --status give (statesave.resume_point)."""
    from lorawizard.core.train import statesave

    point = statesave.resume_point(record.dir.parent, session.train.max_train_epochs)
    return f"r resumes from step {point.base_step}" if point.resumable else point.reason


def queue_head(record: QueueRecord, status: str) -> str:
    """The queue panel's head line while a queue runs, or when it can be resumed."""
    from lorawizard.core.common.progress import format_duration

    total = len(record.entries)
    if status == "running":
        going = next(((n, e) for n, e in enumerate(record.entries, 1) if e.status == "running"), None)
        where = f"run {going[0]}/{total} ({going[1].label})" if going else f"{total} runs"
        left = [e.forecast_s for e in record.entries if e.status in ("pending", "running")]
        eta = (f" · ≈{format_duration(sum(v for v in left if v is not None))} left (forecast at its start)"
               if left and all(v is not None for v in left) else "")
        return f"queue {record.queue_id}: {where} running{eta} · s stops the queue"
    done = sum(e.status in ("finished", "failed", "skipped") for e in record.entries)
    why = " (its driver ended without a word)" if status == "lost" else ""
    return f"queue {record.queue_id}: {status}{why} after {done} of {total} runs · r resumes it"


def started_since(record: QueueRecord, since: float) -> bool:
    """The queue was started (or resumed: its record is rewritten) at or after `since` (time.time())."""
    from datetime import datetime

    if not since:
        return False
    try:
        return datetime.fromisoformat(record.started).timestamp() >= since or record.path.stat().st_mtime >= since
    except (ValueError, OSError):
        return False


def latest_queue_run(session: Session, record: QueueRecord) -> RunRecord | None:
    """The newest run the queue has made (the last entry with a run), None before its first."""
    from lorawizard.core.launch import runs
    from lorawizard.core.session.variants import BASE

    for entry in reversed(record.entries):
        if entry.run_ids:
            folder = session.paths.runs if entry.label == BASE else session.paths.runs / runs.VARIANTS_DIR / entry.label
            try:
                return runs.RunRecord.load(folder / entry.run_ids[-1])
            except (OSError, ValueError, runs.RunError):
                return None
    return None
