"""The keyboard model: every global key, on every screen, in every focus state, leaves session.toml as it was;
screens open with their main list focused and go back to it after an action; Esc leaves any field."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, TextArea

from lorawizard.core.session import Session
from lorawizard.core.steps import STEP_ORDER
from lorawizard.tui.app import LoraWizardApp

# Keys never typed into a field, and keys that are characters in a field (pressed only outside fields). Every step
# key is pressed from every screen with nothing focused; in the other states the keys that stay (switching screens
# 300 times would make this a minute-long test on a loaded machine).
EVERYWHERE = ["escape", "ctrl+p"]
OUTSIDE_FIELDS = ["question_mark"]


def _saved_project(project: Path) -> bytes:
    session = Session.open_project(project)
    session.set("name", "keys")
    session.save()
    return (project / "session.toml").read_bytes()


async def _settle(pilot, app: LoraWizardApp) -> None:  # noqa: ANN001
    await pilot.pause()
    while app.screen.is_modal:  # the palette or help: Esc closes it
        await pilot.press("escape")
        await pilot.pause()


def _focus_states(screen) -> list[str | None]:  # noqa: ANN001
    """Nothing focused, then every text field, and one widget of every other focusable kind (the main list…)."""
    states: list[str | None] = [None]
    kinds: set[type] = set()
    for widget in screen.query("*"):
        if not (widget.focusable and widget.id):
            continue
        if isinstance(widget, (Input, TextArea)) or type(widget) not in kinds:
            states.append(widget.id)
            kinds.add(type(widget))
    return states


async def test_every_global_key_on_every_screen_in_every_focus_state_leaves_the_session(project: Path) -> None:
    before = _saved_project(project)
    app = LoraWizardApp(Session.open_project(project), start_step="env")
    pressed = 0
    async with app.run_test(size=(80, 24)) as pilot:
        for step in STEP_ORDER:
            await app.switch_mode(step)
            await pilot.pause()
            screen = app.screen
            states = _focus_states(screen)
            for index, state in enumerate(states):
                steps = range(1, 7) if index == 0 else []  # (screen switches are the slow part)
                for key in EVERYWHERE + [f"f{n}" for n in steps] + OUTSIDE_FIELDS + [str(n) for n in steps]:
                    if app.current_mode != step:
                        await app.switch_mode(step)
                    await _settle(pilot, app)
                    if state is None:
                        screen.set_focus(None)
                    else:
                        screen.query_one(f"#{state}").focus()
                    await pilot.pause()
                    in_field = state is not None and isinstance(screen.query_one(f"#{state}"), (Input, TextArea))
                    if in_field and (key in OUTSIDE_FIELDS or key.isdigit()):
                        continue
                    await pilot.press(key)
                    pressed += 1
                    await _settle(pilot, app)
                    assert (project / "session.toml").read_bytes() == before, (step, state, key)
    assert pressed > 60


async def test_f_keys_jump_from_inside_a_field_without_typing(project: Path) -> None:
    before = _saved_project(project)
    app = LoraWizardApp(Session.open_project(project), start_step="dataset")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen.focused, Input)  # no photo folder yet: the source field leads
        await pilot.press("f4")
        await pilot.pause()
        assert app.current_mode == "captions"
    assert (project / "session.toml").read_bytes() == before


async def test_escape_leaves_the_field_and_then_step_keys_act(project: Path) -> None:
    _saved_project(project)
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.screen.query_one("#set-train-network_dim", Input).focus()
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen.focused, Input)
        await pilot.press("4")
        await pilot.pause()
        assert app.current_mode == "captions"


async def test_screens_open_on_their_main_list_and_enter_in_a_field_returns_there(project: Path) -> None:
    _saved_project(project)
    app = LoraWizardApp(Session.open_project(project), start_step="models")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.screen.focused is not None and app.screen.focused.id == "model-rows"
        app.screen.query_one("#set-paths-models", Input).focus()
        await pilot.press("enter")
        await pilot.pause()
        await pilot.pause()
        assert app.screen.focused is not None and app.screen.focused.id == "model-rows"
