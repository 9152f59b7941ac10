"""The wizard shell: step navigation, help, palette entries, and decisions saved the moment they are made."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input

from lorawizard.core.registry import STEP_ORDER
from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.widgets.step_bar import StepBar


def make_app(project: Path, start: str = "env") -> LoraWizardApp:
    return LoraWizardApp(Session.open_project(project), start_step=start)


async def test_number_keys_walk_every_step_and_the_bar_follows(project: Path) -> None:
    app = make_app(project)
    async with app.run_test(size=(80, 24)) as pilot:
        for number, step in enumerate(STEP_ORDER, start=1):
            app.screen.set_focus(None)
            await pilot.press(str(number))
            await pilot.pause()
            assert app.current_mode == step
            bar = app.screen.query_one(StepBar)
            assert bar.step == step and f"{number}●" in bar.render().plain


async def test_typed_setting_is_saved_without_pressing_enter_and_survives_quit(project: Path) -> None:
    app = make_app(project, start="train")
    async with app.run_test(size=(120, 40)) as pilot:
        field = app.screen.query_one("#set-train-network_dim", Input)
        field.focus()
        field.value = ""
        await pilot.press("1", "6")
        await pilot.press("ctrl+q")
    saved = Session.load(project / "session.toml")
    assert saved.get("train.network_dim") == 16


async def test_invalid_value_shows_a_reason_and_keeps_the_file(project: Path) -> None:
    app = make_app(project, start="train")
    async with app.run_test(size=(120, 40)) as pilot:
        field = app.screen.query_one("#set-train-learning_rate", Input)
        field.focus()
        field.value = "fast"
        await pilot.press("enter")
        await pilot.pause()
        error = app.screen.query_one(".setting-error").render()
        assert "train.learning_rate: expected a number" in str(error)
    assert not (project / "session.toml").exists()  # nothing valid was decided, nothing written


async def test_help_screen_and_palette_commands(project: Path) -> None:
    app = make_app(project)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        await pilot.pause()
        titles = [command.title for command in app.get_system_commands(app.screen)]
        for number, title in enumerate(["Environment", "Models", "Dataset", "Captions", "GPU & batch size", "Train"], 1):
            assert f"Go to step {number}: {title}" in titles
        goto_captions = next(c for c in app.get_system_commands(app.screen) if c.title.startswith("Go to step 4"))
        goto_captions.callback()
        await pilot.pause()
        assert app.current_mode == "captions"


async def test_unknown_key_warning_is_shown(project: Path) -> None:
    (project / "session.toml").write_text("version = 1\n[train]\nwarmup = 3\n")
    app = make_app(project)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert any("train.warmup" in n.message for n in app._notifications)


@pytest.mark.parametrize("start", [None])
async def test_starts_on_first_unfinished_step(project: Path, start) -> None:
    app = LoraWizardApp(Session.open_project(project), start_step=start)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.current_mode == "env"


async def test_opens_on_train_when_every_step_is_done(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: after a finished run every step is done, and reopening the project landed on Environment."""
    from lorawizard.tui import app as app_module

    monkeypatch.setattr(app_module, "session_step_states", lambda session: {step: "done" for step in STEP_ORDER})
    app = LoraWizardApp(Session.open_project(project))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.current_mode == "train"


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_help_screen_snapshot(snap_compare, isolated_home: Path, size: tuple[int, int]) -> None:
    project = isolated_home / "loras" / "demo"  # shown as ~/loras/demo whatever the temp folder
    project.mkdir(parents=True)
    assert snap_compare(make_app(project, start="train"), press=["question_mark"], terminal_size=size)


async def test_help_lists_the_screens_own_keys(project: Path) -> None:
    app = make_app(project, start="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        keys = dict(app.screen.screen_keys)
        assert keys.get("s") == "Stop" and keys.get("r") == "Resume"
        assert "Scroll Up" not in keys.values()


def test_step_bar_knows_captions_and_training_are_done(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.core.launch import runs
    from lorawizard.core.registry import session_step_states
    from tests.support.captions_fixtures import make_project

    session = make_project(project, ["a.jpg", "b.jpg"], captions={"a.jpg": "a red wall"})
    states = session_step_states(session)
    assert states.get("dataset") == "done" and "captions" not in states and "train" not in states
    for png in (project / "dataset").glob("*/*.png"):
        png.with_suffix(".txt").write_text("ohwx, x\n")
    assert "captions" not in session_step_states(session)  # b.jpg has no caption yet
    session.update_image("b.jpg", caption="a blue door")
    assert session_step_states(session).get("captions") == "done"

    class Run:
        def __init__(self, status: str) -> None:
            self._status = status

        def status(self) -> str:
            return self._status

    monkeypatch.setattr(runs, "list_runs", lambda folder: [Run("failed"), Run("stopped")])
    assert "train" not in session_step_states(session)
    monkeypatch.setattr(runs, "list_runs", lambda folder: [Run("finished"), Run("failed")])
    assert session_step_states(session).get("train") == "done"


@pytest.mark.parametrize("step", ["env", "train"])
async def test_tab_goes_to_the_first_field_never_the_scrolling_body(project: Path, step: str) -> None:
    """At 80x24 a person presses Tab to reach a field and types a path: the first Tab used to focus the body (out of
    sight), so `/tmp/qa/...` ran the letter keys and q quit the wizard."""
    from textual.widgets import Log

    app = make_app(project, start=step)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen.set_focus(None)  # as after Enter ran the check: keys act on the screen
        await pilot.press("tab")
        first = {"env": "set-paths-sd_scripts", "train": "train-log"}[step]
        assert app.focused is not None and app.focused.id == first
        if step == "env":
            await pilot.press(*"/tmp/q")
            assert app.is_running and app.screen.query_one("#set-paths-sd_scripts", Input).value == "/tmp/q"
            await pilot.press("shift+tab")
            assert not (app.focused is not None and app.focused.has_class("step-body"))
        else:
            assert isinstance(app.focused, Log)


async def test_page_keys_scroll_the_step_body_from_a_field_or_from_nowhere(project: Path) -> None:
    """Tab skips the body, so PageDown/PageUp scroll it wherever the focus is (the findings below the fold at 80x24)."""
    app = make_app(project, start="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        body = app.screen.query_one(".step-body")
        assert body.max_scroll_y > 0
        app.screen.set_focus(None)
        await pilot.press("pagedown")
        await pilot.pause()
        assert body.scroll_y > 0
        app.screen.query_one("#set-name", Input).focus()  # in a field: the body still pages
        await pilot.pause()
        before = body.scroll_y
        await pilot.press("pageup")
        await pilot.pause()
        assert body.scroll_y < before and app.focused is app.screen.query_one("#set-name", Input)


def test_step_bar_drops_the_gpu_tick_when_the_dataset_has_other_buckets(project: Path) -> None:
    """QA: max_side 1024 → 512 and Apply: the buckets became 512x512…, the batch sizes were for 1024x1024…, and the
    step bar (also after a restart) still showed GPU ✓."""
    from lorawizard.core.dataset.manifest import load_manifest
    from lorawizard.core.registry import session_step_states
    from tests.support.captions_fixtures import make_project

    session = make_project(project, ["a.jpg", "b.jpg"], captions={"a.jpg": "a red wall"})
    buckets = {image.bucket for image in load_manifest(session)}
    session.set_batch_size("2048x2048", 1)
    assert "probe" not in session_step_states(session)  # measured for a bucket the dataset does not have
    for bucket in buckets:
        session.set_batch_size(bucket, 2)
    assert session_step_states(session).get("probe") == "done"


class SkeletonWatch(LoraWizardApp):
    """The wizard as the CLI starts it (skeleton_first), noting what was on screen when the step screen was opened;
    `key_on_skeleton`: a step the person chose (pressed 1–6) while only the skeleton was drawn."""

    CSS_PATH = str(Path(__file__).resolve().parents[2] / "lorawizard" / "tui" / "app.tcss")  # relative to this file

    def __init__(self, session: Session, key_on_skeleton: str | None = None) -> None:
        super().__init__(session, skeleton_first=True)
        self.key_on_skeleton = key_on_skeleton
        self.seen_before_open: list[str] = []
        self.help_on_skeleton: bool | None = None

    def on_mount(self) -> None:  # Textual runs LoraWizardApp.on_mount too (handlers of every class in the MRO)
        self.help_on_skeleton = self.check_action("help", ())
        if self.key_on_skeleton:
            self.action_goto(self.key_on_skeleton)

    def _open_first_step(self) -> None:
        self.seen_before_open = [type(widget).__name__ for widget in self.screen.walk_children()]
        super()._open_first_step()


async def test_skeleton_first_draws_the_step_bar_then_the_opening_step(project: Path) -> None:
    app = SkeletonWatch(Session.open_project(project))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.seen_before_open == ["StepBar"]  # the first frame: the step bar alone, no step screen yet
        assert app.current_mode == "env" and app.screen.query_one(StepBar).step == "env"
        assert app.help_on_skeleton is False  # help pushed on the skeleton would hide behind the step screen
        assert app.check_action("help", ()) is True


async def test_a_step_chosen_on_the_skeleton_is_not_overridden(project: Path) -> None:
    app = SkeletonWatch(Session.open_project(project), key_on_skeleton="dataset")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.pause()
        assert app.current_mode == "dataset"


async def test_a_screen_waits_for_fields_its_form_has_not_mounted_yet(project: Path) -> None:
    """On a loaded machine a form's fields could be missing when its screen mounted, and the Environment screen's
    on_mount crashed the app querying one (seen as a flaky skeleton test): `when_mounted` runs the callback once the
    ids are there."""
    from textual.widgets import Static

    app = LoraWizardApp(Session.open_project(project))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        called: list[bool] = []
        screen.when_mounted(lambda: called.append(True), "late-field")
        await pilot.pause(0.12)
        assert called == []  # not there: nothing run yet, nothing raised
        await screen.mount(Static("late", id="late-field"))
        await pilot.pause(0.12)
        assert called == [True]
        screen.when_mounted(lambda: called.append(True), "late-field")  # there: at once
        assert called == [True, True]
