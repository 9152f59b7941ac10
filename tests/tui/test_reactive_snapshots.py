"""The Train dashboard and the GPU screen's tables are drawn from one snapshot each: a single assignment of a new
snapshot to the screen's reactive updates every panel bound to it, at once, and the tick handlers only assign."""

from __future__ import annotations

import ast
import inspect
from dataclasses import replace
from pathlib import Path

import pytest
from textual.widgets import DataTable

from lorawizard.core.probe.batch_sources import BucketRow
from lorawizard.core.probe.trial_rows import TrialRow
from lorawizard.core.session.document import Session
from lorawizard.core.train.diagnosis import Diagnosis
from lorawizard.core.train.logparse import Line
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.gpu import GpuScreen
from lorawizard.tui.screens.train import TrainScreen
from lorawizard.tui.widgets.loss_chart import LossChart
from lorawizard.tui.widgets.train_panels import (
    BarLine,
    CheckpointPanel,
    DiagnosisLine,
    LogTail,
    ResourcePanel,
    SamplePanel,
    TrainHeader,
)
from tests.support.fake_nvml import install, one_gpu
from tests.tui.test_gpu_screen import settle, with_dataset
from tests.tui.test_train_screen import dashboard_view

OOM = Diagnosis("oom", "CUDA ran out of GPU memory", "lower the batch size")


async def test_one_assignment_of_a_view_updates_every_train_panel(home_project: Path) -> None:
    view = dashboard_view(home_project, diagnosis=OOM)
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        screen.view = view  # the one assignment; everything below is checked before the app runs again
        panels = [screen.query_one(kind) for kind in (TrainHeader, DiagnosisLine, LossChart, ResourcePanel,
                                                       CheckpointPanel, BarLine, LogTail, SamplePanel)]
        assert all(panel.view is view for panel in panels)  # type: ignore[attr-defined]
        assert "step 120/640" in screen.query_one(TrainHeader).render().plain
        diagnosis = screen.query_one(DiagnosisLine)
        assert diagnosis.has_class("-warn") and "lower the batch size" in str(diagnosis.render())
        assert screen.query_one(LossChart).border_title == f"loss (avr_loss) · latest {view.loss:.4g}"
        assert screen.query_one(ResourcePanel).border_title == "GPU 0 · RTX 4090"
        assert screen.query_one(CheckpointPanel).border_title == "checkpoints (2)"
        assert str(screen.query_one(BarLine).render()) == view.bar_line
        log = screen.query_one(LogTail)
        assert log.lines == [line.text for line in view.new_lines]
        assert log.border_title == "log · runs/20261125-101500/train.log"
        sample = screen.query_one(SamplePanel)
        assert sample.has_class("-has-image") and sample.border_title == "sample · epoch 3"


async def test_a_view_equal_to_the_last_still_brings_its_log_lines(home_project: Path) -> None:
    """Views are compared by identity: a tick whose view equals the last one's (same numbers, same new lines) is
    still a new tick, and its lines are written again (a reactive comparing by value would drop them)."""
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        first = replace(dashboard_view(home_project, sample=False), new_lines=[Line("saving checkpoint")],
                        reset_lines=False)
        screen.apply_view(first)
        screen.apply_view(replace(first))
        assert screen.query_one(LogTail).lines == ["saving checkpoint", "saving checkpoint"]


def _methods_reached(path: Path, class_name: str, start: set[str]) -> dict[str, ast.FunctionDef]:
    """The methods of `class_name` in `path` that `start` reaches through `self.method(...)` calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name)
    methods = {node.name: node for node in cls.body if isinstance(node, ast.FunctionDef)}
    reached: dict[str, ast.FunctionDef] = {}
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in reached or name not in methods:
            continue
        reached[name] = methods[name]
        for node in ast.walk(methods[name]):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"):
                todo.append(node.func.attr)
    return reached


def _handler_of(path: Path, class_name: str, message: str) -> str:
    """The name of the method of `class_name` decorated with `@on(message)`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name)
    return next(node.name for node in cls.body if isinstance(node, ast.FunctionDef)
                and any(isinstance(d, ast.Call) and ast.unparse(d) == f"on({message})" for d in node.decorator_list))


def _queries_and_assignments(methods: dict[str, ast.FunctionDef]) -> tuple[list[str], set[str]]:
    """(every `query_one(...)`/`query(...)` call, as written; the `self.x` the methods assign)."""
    queries, assigned = [], set()
    for method in methods.values():
        for node in ast.walk(method):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("query_one",
                                                                                                          "query"):
                queries.append(f"{method.name}: {ast.unparse(node)}")
            if isinstance(node, ast.Assign):
                assigned |= {ast.unparse(target) for target in node.targets}
    return queries, assigned


@pytest.mark.parametrize(("module", "class_name", "message", "also", "snapshots"), [
    ("train", "TrainScreen", "TrainUpdate", set(), {"self.view"}),
    ("gpu", "GpuScreen", "ProbeUpdate", {"_show_buckets"}, {"self.trial_rows", "self.bucket_rows"}),
], ids=["train", "gpu"])
def test_the_tick_handlers_assign_a_snapshot_and_query_no_widget(
        module: str, class_name: str, message: str, also: set[str], snapshots: set[str]) -> None:
    """The dashboard's tick (TrainUpdate) and the GPU tables' refresh (ProbeUpdate, the bucket rows) change no widget
    themselves: no query_one(...).update(...) — they assign the new snapshot, which the widgets are bound to."""
    path = Path(inspect.getfile(TrainScreen if module == "train" else GpuScreen))
    start = {_handler_of(path, class_name, message), *also}
    methods = _methods_reached(path, class_name, start)
    queries, assigned = _queries_and_assignments(methods)
    assert queries == [], "\n".join(queries)
    assert snapshots <= assigned, (sorted(methods), assigned)


async def test_one_assignment_of_rows_redraws_each_probe_table(home_project: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, one_gpu())
    app = LoraWizardApp(with_dataset(home_project), start_step="probe")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, GpuScreen)
        trials = screen.query_one("#trials", DataTable)
        buckets = screen.query_one("#buckets", DataTable)
        assert not trials.display  # no probe yet

        def shown(table: DataTable) -> list[list[str]]:
            return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]

        running = TrialRow(2, "1024x512", 6, "…", "step 2/5…", "info", "")
        screen.trial_rows = (TrialRow(1, "1024x1024", 3, "21.3", "✓ ok", "good", "1.23"), running)
        assert trials.display and shown(trials) == [["1", "1024x1024", "3", "21.3", "✓ ok", "1.23"],
                                                    ["2", "1024x512", "6", "…", "step 2/5…", ""]]
        assert trials.cursor_row == 1  # the newest trial in view
        screen.trial_rows = (screen.trial_rows[0], replace(running, peak_gb="23.9", result="✗ out of memory",
                                                             tone="error"))
        assert shown(trials)[1] == ["2", "1024x512", "6", "23.9", "✗ out of memory", ""]
        screen.trial_rows = ()  # a new probe
        assert trials.display and trials.row_count == 0

        screen.bucket_rows = (BucketRow("768x768", 4, "~5", "—", "—", "estimate", "dim"),)
        assert buckets.display and shown(buckets) == [["768x768", "4", "~5", "—", "—", "estimate"]]
        screen.bucket_rows = ()  # no buckets
        assert not buckets.display and buckets.row_count == 0

