"""Issue 23 A10: a hand edit of session.toml made while the wizard is open counts when a step runs or a run starts.

Seen in tmux: `train.mixed_precision = "no"` and `dataset.num_repeats = 1` added by hand, then Ctrl+G on Train: the
run used the old values, because the store took a hand edit in only before a write of its own.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import tomlkit

from lorawizard.core.launch import runs
from lorawizard.core.session.document import Session
from lorawizard.core.session.store import SessionStore
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.widgets.train_panels import TrainHeader
from tests.support.standin import make_train_project
from tests.support.waiting import pilot_until


def set_by_hand(path: Path, **tables: dict[str, object]) -> None:
    """What a person does in an editor: change values, keep the rest; the file's mtime moves on."""
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    for table, values in tables.items():
        doc.setdefault(table, tomlkit.table()).update(values)
    before = path.stat().st_mtime_ns
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    if path.stat().st_mtime_ns == before:  # a coarse clock: make the edit visible by its stamp, as an editor's is
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def test_sync_takes_in_a_hand_edit_with_nothing_pending(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml")
    store = SessionStore(session, delay=3600)
    store.decide("train.seed", 1)
    assert store.flush() is None
    set_by_hand(session.path, train={"max_train_epochs": 2})
    assert store.sync() is None
    assert session.get("train.max_train_epochs") == 2 and session.get("train.seed") == 1


def test_sync_keeps_a_pending_decision_on_top_of_the_hand_edit(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml")
    store = SessionStore(session, delay=3600)
    store.decide("train.seed", 1)
    assert store.flush() is None
    set_by_hand(session.path, dataset={"num_repeats": 1})
    store.decide("train.seed", 5)  # made in the wizard after the edit, not yet written
    assert store.sync() is None
    saved = Session.load(session.path, read_only=True)
    assert (saved.get("dataset.num_repeats"), saved.get("train.seed")) == (1, 5)
    assert (session.get("dataset.num_repeats"), session.get("train.seed")) == (1, 5)


def test_sync_refuses_a_hand_edit_that_does_not_read(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml")
    store = SessionStore(session, delay=3600)
    store.decide("train.seed", 1)
    assert store.flush() is None
    set_by_hand(session.path, train={"max_train_epochs": "many"})
    problem = store.sync()
    assert problem is not None and "max_train_epochs" in problem and "\n" not in problem
    assert session.get("train.max_train_epochs") != "many"


async def test_a_hand_edit_made_with_the_wizard_open_is_what_the_run_trains(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.02")
    session = make_train_project(tmp_path, epochs=3)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        time.sleep(0.01)
        set_by_hand(session.path, train={"max_train_epochs": 2, "mixed_precision": "no"})
        await pilot.press("ctrl+g")
        header = app.screen.query_one(TrainHeader)
        await pilot_until(pilot, lambda: getattr(header, "view", None) is not None and header.view.status == "finished")
        assert (header.view.epochs, header.view.total_steps) == (2, 4)
    record = runs.list_runs(session.paths.runs)[-1]
    argv = json.loads((record.dir / "run.json").read_text())["argv"]
    assert "--max_train_epochs" in argv and argv[argv.index("--max_train_epochs") + 1] == "2"
    assert argv[argv.index("--mixed_precision") + 1] == "no"
