"""The Train screen's queue: variants typed, refused, removed and reordered; a queue started, followed and stopped
(the stand-in trainer, tests/support/standin)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.launch import runs
from lorawizard.core.session.document import Session
from lorawizard.core.session.variants import Variant
from lorawizard.core.train import queue
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.confirm import ConfirmScreen
from lorawizard.tui.widgets.queue_panel import QueuePanel
from lorawizard.tui.widgets.train_panels import TrainHeader
from tests.support.sessions import save
from tests.support.standin import make_train_project
from tests.support.waiting import pilot_until


def _on_disk(session: Session) -> list[Variant]:
    return Session.load(session.path).variants()


def _panel(app: LoraWizardApp) -> QueuePanel:
    return app.screen.query_one(QueuePanel)


async def _type(pilot, text: str) -> None:  # noqa: ANN001
    await pilot.press("v")
    for char in text:
        await pilot.press(char if char != " " else "space")
    await pilot.press("enter")
    await pilot.pause()


async def test_a_variant_typed_after_v_is_written_and_listed(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert not _panel(app).display  # no variants: the screen as before
        await _type(pilot, "network_dim 16")
        await pilot_until(pilot, lambda: _on_disk(session) == [Variant("dim16", {"train.network_dim": 16})],
                          what="the variant in session.toml")
        panel = _panel(app)
        assert panel.display and [r.label for r in panel.rows] == ["base", "dim16"]
        assert panel.rows[1].what == "network_dim 16"
        assert app.screen.focused is panel.table and panel.cursor_label() == "dim16"
        await _type(pilot, "hi: learning_rate 2e-4, num_repeats 3")
        await pilot_until(pilot, lambda: [v.name for v in _on_disk(session)] == ["dim16", "hi"])
        assert _on_disk(session)[1].changes == {"train.learning_rate": 0.0002, "dataset.num_repeats": 3}


@pytest.mark.parametrize(("typed", "reason"), [
    ("netwrk_dim 16", "`netwrk_dim` is not a [train] key; did you mean `network_dim`?"),
    ("network_dim sixteen", "network_dim: expected an integer"),
    ("network_dim", "`network_dim` needs a value"),
])
async def test_a_bad_key_or_value_says_why_and_keeps_the_text(tmp_path: Path, typed: str, reason: str) -> None:
    session = make_train_project(tmp_path)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await _type(pilot, typed)
        ask = app.screen.query_one("#variant-ask")
        problem = app.screen.query_one("#variant-problem")
        assert reason in str(problem.render()), str(problem.render())
        assert ask.display and ask.value == typed and app.screen.focused is ask  # nothing typed is lost
        await pilot.press("escape")
        assert not ask.display and not problem.display
    assert _on_disk(session) == []


async def test_remove_asks_first_and_shift_arrows_reorder(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    session.set_variants([Variant("a", {"train.network_dim": 8}), Variant("b", {"train.network_dim": 16}),
                          Variant("c", {"train.network_dim": 32})])
    save(session)
    app = LoraWizardApp(Session.load(session.path), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        panel = _panel(app)
        assert [r.label for r in panel.rows] == ["base", "a", "b", "c"]
        panel.table.focus()
        await pilot.press("down", "down")  # b
        assert panel.cursor_label() == "b"
        await pilot.press("shift+up")
        await pilot_until(pilot, lambda: [v.name for v in _on_disk(session)] == ["b", "a", "c"])
        assert panel.cursor_label() == "b"
        await pilot.press("shift+down", "shift+down")
        await pilot_until(pilot, lambda: [v.name for v in _on_disk(session)] == ["a", "c", "b"])
        await pilot.press("x")
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Remove variant b (network_dim 16)?" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert [v.name for v in _on_disk(session)] == ["a", "c", "b"]
        await pilot.press("x")
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await pilot_until(pilot, lambda: [v.name for v in _on_disk(session)] == ["a", "c"])
        assert [r.label for r in _panel(app).rows] == ["base", "a", "c"]
        panel.move_cursor_to("base")
        await pilot.press("x")  # the base run is no variant: nothing asked, nothing removed
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)


async def test_ctrl_g_runs_the_queue_and_the_dashboard_follows_each_run(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.6")  # 4 steps a run: each run on the dashboard a few seconds
    session = make_train_project(tmp_path, epochs=2)
    session.set_variants([Variant("dim8", {"train.network_dim": 8})])
    save(session)
    session = Session.load(session.path)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_until(pilot, lambda: "queue: 2 runs" in str(app.screen.query_one("#queue-head").render()),
                          what="the forecast line")
        await pilot.press("ctrl+g")
        header = app.screen.query_one(TrainHeader)

        def shown() -> tuple[str, str]:
            view = getattr(header, "view", None)
            return (view.name, view.status) if view is not None else ("", "")

        await pilot_until(pilot, lambda: shown() == ("tiny", "running") or shown() == ("tiny", "finished"),
                          timeout=60, what="the base run on the dashboard")
        await pilot_until(pilot, lambda: shown()[0] == "tiny-dim8", timeout=60, what="the second run followed")
        await pilot_until(pilot, lambda: (record := queue.QueueRecord.load(session)) is not None
                          and record.state == "finished", timeout=60, what="the queue's end")
        await pilot_until(pilot, lambda: [r.state for r in _panel(app).rows] == ["finished", "finished"])
        assert shown()[0] == "tiny-dim8"
    [variant_run] = runs.list_runs(session.paths.runs / "variants" / "dim8")
    assert variant_run.output_name == "tiny-dim8" and variant_run.status() == "finished"


async def test_s_stops_the_queue_and_r_resumes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, epochs=20)
    session.set_variants([Variant("dim8", {"train.network_dim": 8})])
    save(session)
    session = Session.load(session.path)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+g")
        header = app.screen.query_one(TrainHeader)
        await pilot_until(pilot, lambda: getattr(header, "view", None) is not None and header.view.step >= 1,
                          timeout=60, what="the base run going")
        await pilot.press("s")
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "queue stops with it" in app.screen.detail
        await pilot.press("y")
        await pilot_until(pilot, lambda: (record := queue.QueueRecord.load(session)) is not None
                          and record.state == "stopped", timeout=60, what="the queue stopped")
        record = queue.QueueRecord.load(session)
        assert record is not None and [e.status for e in record.entries] == ["stopped", "pending"]
        assert runs.list_runs(session.paths.runs / "variants" / "dim8") == []  # no further run started
        await pilot_until(pilot, lambda: "r resumes it" in str(app.screen.query_one("#queue-head").render()))
        monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
        await pilot.press("r")
        await pilot_until(pilot, lambda: (record := queue.QueueRecord.load(session)) is not None
                          and record.state == "finished", timeout=60, what="the resumed queue's end")
    record = queue.QueueRecord.load(session)
    assert record is not None and [e.status for e in record.entries] == ["finished", "finished"]


async def test_s_between_two_runs_asks_and_stops_the_queue(tmp_path: Path) -> None:
    import os

    import psutil

    session = make_train_project(tmp_path)
    session.set_variants([Variant("dim8", {"train.network_dim": 8})])
    save(session)
    session = Session.load(session.path)
    record = queue.QueueRecord(path=queue.queue_path(session), queue_id="20261207-101010",  # a driver: this process
                               entries=[queue.QueueEntry("base", "tiny", "finished", ["20261207-101011"]),
                                        queue.QueueEntry("dim8", "tiny-dim8")],
                               pid=os.getpid(), create_time=psutil.Process().create_time())
    record.save()
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot_until(pilot, lambda: "s stops the queue" in str(app.screen.query_one("#queue-head").render()))
        assert [(r.label, r.state) for r in _panel(app).rows] == [("base", "finished"), ("dim8", "pending")]
        await pilot.press("ctrl+g")  # the queue is going: nothing starts
        await pilot.pause()
        assert any("the queue is going" in str(n.message) for n in app._notifications)
        await pilot.press("s")
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert app.screen.question == "Stop the queue? No further run of it starts."
        await pilot.press("y")
        await pilot.pause()
    assert queue.stop_path(session).read_text().strip() == "20261207-101010"


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_train_screen_with_two_variants(snap_compare, home_project: Path, size: tuple[int, int],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.core.gpu import cpu_mode

    monkeypatch.setattr(cpu_mode, "gpu_visible", lambda: True)  # the CPU-mode lines depend on the machine
    session = Session.open_project(home_project)
    session.set("name", "mychar")
    session.set_variants([Variant("dim16", {"train.network_dim": 16}),
                          Variant("16bit", {"train.base_precision": "16bit", "train.learning_rate": 0.0002})])
    save(session)
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")

    async def run_before(pilot) -> None:  # noqa: ANN001
        await pilot_until(pilot, lambda: "ctrl+g starts the queue: " in str(app.screen.query_one("#queue-head").render()))
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
