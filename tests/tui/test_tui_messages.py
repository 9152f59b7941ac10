"""Workers post messages and handlers touch widgets; SettingsForm says Saved(key, value); step states repaint the bar.

The guard `widgets_from_ui_thread_only` records every `query_one` made off the thread that runs the App: the
token check, the full log and the photo scan run in thread workers, and must reach widgets only through messages.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual.dom import DOMNode
from textual.message import Message
from textual.widgets import Input, Label, Log

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.widgets.settings_form import SettingsForm
from lorawizard.tui.widgets.step_bar import StepBar
from tests.support.sessions import save
from tests.support.waiting import pilot_until


@pytest.fixture
def off_thread_queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every query_one made on a thread other than the one running the test (and the App): 'thread: selector'."""
    ui = threading.get_ident()
    seen: list[str] = []
    original = DOMNode.query_one

    def query_one(self: DOMNode, *args: object, **kwargs: object) -> object:
        if threading.get_ident() != ui:
            seen.append(f"{threading.current_thread().name}: {args[0] if args else ''!r}")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DOMNode, "query_one", query_one)
    return seen


def notifications(app: LoraWizardApp) -> list[str]:
    return [n.message for n in app._notifications]


# ---------------------------------------------------------------- workers post, handlers touch widgets


@pytest.mark.parametrize("refused", [False, True])
async def test_token_check_reaches_the_screen_through_a_message(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                off_thread_queries: list[str], refused: bool) -> None:
    from lorawizard.core.models import download

    checked_on: list[int] = []

    def store_token(token: str) -> str:
        checked_on.append(threading.get_ident())
        if refused:
            raise download.DownloadError("unauthorized", "the token was refused (401)")
        assert token == "hf_secret"
        return "alice"

    monkeypatch.setattr(download, "store_token", store_token)
    app = LoraWizardApp(Session.open_project(project), start_step="models")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.press("t")
        await pilot.press(*"hf_secret", "enter")
        problem = app.screen.query_one("#model-problem", Label)
        await pilot_until(pilot, lambda: bool(checked_on) and str(problem.render()) != "checking the token…")
        if refused:
            assert "the token was refused (401)" in str(problem.render())
            assert not any("logged in" in n for n in notifications(app))
        else:
            assert str(problem.render()) == ""
            assert "logged in to Hugging Face as alice" in notifications(app)
    assert checked_on and checked_on[0] != threading.get_ident()  # the check itself ran in a worker
    assert off_thread_queries == []


async def test_full_log_is_read_in_a_worker_and_written_by_its_handler(project: Path, off_thread_queries: list[str]) -> None:
    from lorawizard.tui.screens.train import FullLogScreen

    log = project / "train.log"
    log.write_bytes(b"".join(f"line {n}\n".encode() for n in range(50)) + b"steps: 10%\rsteps: 20%\rsteps: 30%\n")
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=(100, 30)) as pilot:
        await app.push_screen(FullLogScreen(log, max_lines=20))
        await pilot_until(pilot, lambda: isinstance(app.screen, FullLogScreen) and app.screen.query_one(Log).line_count > 0)
        lines = list(app.screen.query_one(Log).lines)
        assert lines[-3:] == ["steps: 10%", "steps: 20%", "steps: 30%"]  # '\r' redraws: one line each
        assert len(lines) == 20 and lines[0] == "line 33"  # the newest max_lines
    assert off_thread_queries == []


async def test_photo_scan_posts_its_progress_and_plan(tmp_path: Path, off_thread_queries: list[str]) -> None:
    from lorawizard.tui.messages import ScanProgress, StepProgress
    from lorawizard.tui.screens.dataset import DatasetScreen, ScanDone

    posted: list[Message] = []
    app = LoraWizardApp(_dataset_session(tmp_path), start_step="dataset")
    async with app.run_test(size=(120, 40), message_hook=posted.append) as pilot:
        screen = app.screen
        assert isinstance(screen, DatasetScreen)
        await pilot_until(pilot, lambda: screen.plan is not None)
        assert screen.table.row_count == len(screen.plan.items) > 0
    kinds = {type(m) for m in posted}
    assert ScanDone in kinds and ScanProgress in kinds
    assert not any(isinstance(m, StepProgress) for m in posted)  # the scan is not a step run: no made-up step id
    assert off_thread_queries == []


def _dataset_session(tmp_path: Path) -> Session:
    from PIL import Image

    source = tmp_path / "photos"
    source.mkdir()
    for n, size in enumerate([(1200, 900), (900, 1200), (1024, 1024)]):
        Image.new("RGB", size, (40 * n, 90, 160)).save(source / f"IMG_{n:04d}.jpg")
    project = tmp_path / "project"
    project.mkdir()
    session = Session.open_project(project)
    session.set("dataset.source", str(source))
    save(session)
    return session


# ---------------------------------------------------------------- SettingsForm.Saved


async def test_settings_form_says_saved_with_key_and_value_once_it_is_in_the_session(project: Path) -> None:
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    saved: list[tuple[str, object, bool, object]] = []
    ids: set[int] = set()

    def hook(message: Message) -> None:
        if isinstance(message, SettingsForm.Saved) and id(message) not in ids:  # a bubbling message is posted again
            ids.add(id(message))
            saved.append((message.key, message.value, message.submitted, app.session.get(message.key)))

    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await pilot.pause()
        field = app.screen.query_one("#set-train-network_dim", Input)
        field.focus()
        field.value = ""
        await pilot.press("3", "2")
        await pilot.pause()
        assert saved == []  # keystrokes are saved silently: no Saved per key
        await pilot.press("enter")
        await pilot.pause()
        # the value is in the session when it is posted; focus then leaves the field (back to the screen): again
        assert saved == [("train.network_dim", 32, True, 32), ("train.network_dim", 32, False, 32)]

        field.focus()
        await pilot.press("enter")  # Enter on an unchanged field re-submits it
        await pilot.pause()
        assert saved[2] == ("train.network_dim", 32, True, 32)

        count = len(saved)
        field.focus()
        field.value = ""
        await pilot.press(*"many", "enter")  # refused by the schema: the form says why, nothing is Saved
        await pilot.pause()
        assert len(saved) == count
        assert "expected an integer" in str(app.screen.query_one(SettingsForm).query_one(".setting-error", Label).render())

        field.focus()
        await pilot.pause()
        field.value = "16"
        await pilot.pause()
        app.screen.set_focus(None)  # leaving the field commits it too (not a submit)
        await pilot_until(pilot, lambda: saved[-1] == ("train.network_dim", 16, False, 16), 10, f"Saved 16 ({saved})")


# ---------------------------------------------------------------- step states render themselves


async def test_step_bar_follows_the_apps_step_states(project: Path) -> None:
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        bar = app.screen.query_one(StepBar)
        assert "1○ Environment" in str(bar.render())
        app.step_states = {**app.step_states, "env": "done"}  # replaced: no bar is told
        await pilot.pause()
        assert bar.states["env"] == "done" and "1✓ Environment" in str(bar.render())
        app.set_step_state("models", "attention")
        await pilot.pause()
        assert "2✗ Models" in str(bar.render()) and app.step_states["env"] == "done"
        await pilot.press("1")  # another screen's bar shows the same states
        await pilot.pause()
        other = app.screen.query_one(StepBar)
        assert other is not bar and other.states["models"] == "attention"


async def test_a_finished_step_reaches_the_app_by_bubbling(project: Path) -> None:
    """StepRunner does not call the App: its StepFinished bubbles through the screen to LoraWizardApp."""
    from lorawizard.core.contract import StepResult
    from lorawizard.tui.messages import StepFinished
    from lorawizard.tui.widgets.step_runner import StepRunner

    app = LoraWizardApp(Session.open_project(project), start_step="models")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        runner = app.screen.query_one(StepRunner)
        runner.post_message(StepFinished("captions", StepResult(ok=True, summary="written")))
        await pilot_until(pilot, lambda: app.step_states.get("captions") == "done")
        assert "written" in str(runner.query_one(".runner-status", Label).render())


async def test_auto_caption_dialog_follows_the_forms_saved_settings(project: Path) -> None:
    """The dialog re-describes itself from SettingsForm.Saved (no longer from Select.Changed plus handler order)."""
    from textual.widgets import Select, Static

    from lorawizard.tui.screens.autocaption import AutoCaptionScreen

    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await app.push_screen(AutoCaptionScreen(2, 3, 0))
        await pilot.pause()
        dialog = app.screen
        shown = dialog.query_one("#auto-instruction", Static)
        before = str(shown.render())
        assert before.startswith("default instruction:")
        dialog.query_one("#set-captions-kind", Select).value = "style"
        await pilot_until(pilot, lambda: str(shown.render()) != before)
        assert app.session.get("captions.kind") == "style" and str(shown.render()).startswith("default instruction:")
        field = dialog.query_one("#set-captions-instruction", Input)
        field.focus()
        await pilot.pause()
        field.value = "Describe the background only."
        await pilot.pause()
        dialog.set_focus(None)
        await pilot_until(pilot, lambda: str(shown.render()) == "(your instruction above)")


async def test_a_long_result_line_wraps_at_80_columns(project: Path) -> None:
    """The runner's result line is the one that says what failed and what to do: at 80 columns it was cut after one
    row (Models offline: "…so the tokenizers cannot be fe")."""
    from lorawizard.core.contract import StepResult
    from lorawizard.tui.messages import StepFinished
    from lorawizard.tui.widgets.step_runner import StepRunner

    summary = ("offline mode is on (HF_HUB_OFFLINE is set), so the tokenizers cannot be fetched: unset it, or copy "
               "them into the tokenizers folder by hand")
    app = LoraWizardApp(Session.open_project(project), start_step="models")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        runner = app.screen.query_one(StepRunner)
        runner.post_message(StepFinished("models", StepResult(ok=False, summary=summary)))
        await pilot.pause()
        await pilot.pause()
        status = runner.query_one(".runner-status", Label)
        assert status.region.height >= 2 and status.region.right <= 80  # all of it shown, within the screen
