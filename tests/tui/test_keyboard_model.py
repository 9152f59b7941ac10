"""The keyboard model: every global key, on every screen, in every focus state, leaves session.toml as it was;
screens open with their main list focused and go back to it after an action; Esc leaves any field."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, TextArea

from lorawizard.core.registry import STEP_ORDER
from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from tests.support.sessions import save

# The global keys. STAY keys never switch screens: pressed in every focus state of every screen. F1–F6 work from
# inside fields too; 1–6 and ? are characters in a field (typing them there is the field's business), so they are
# pressed only outside fields. q quits, F8 writes a screenshot file: not swept.
EVERYWHERE = ["escape", "ctrl+p"]
OUTSIDE_FIELDS = ["question_mark"]
F_KEYS = [f"f{n}" for n in range(1, 7)]
DIGITS = [str(n) for n in range(1, 7)]


def _saved_project(project: Path) -> bytes:
    session = Session.open_project(project)
    session.set("name", "keys")
    save(session)
    return (project / "session.toml").read_bytes()


async def _settle(pilot, app: LoraWizardApp) -> None:  # noqa: ANN001
    await pilot.pause()
    while app.screen.is_modal:  # the palette or help: Esc closes it
        await pilot.press("escape")
        await pilot.pause()


def _focus_states(screen, *, full: bool) -> list[str | None]:  # noqa: ANN001
    """Nothing focused, then every focusable widget with an id (every field, list, table, button, checkbox…); the
    default sweep takes one widget of each kind (the Train screen's fourteen fields are one kind: the full sweep,
    an extra, takes each)."""
    widgets = [widget for widget in screen.query("*") if widget.focusable and widget.id]
    if not full:
        widgets = list({type(widget): widget for widget in reversed(widgets)}.values())[::-1]
    return [None] + [widget.id for widget in widgets]


def _keys_for(screen_index: int, state_index: int, in_field: bool, *, full: bool) -> list[str]:
    """The keys pressed in one focus state. `full`: every global key. Otherwise every key that stays on the screen,
    plus one F-key and one digit, rotating with the state so every screen presses each of them from some state
    (a screen switch and the way back is what makes the full sweep take minutes)."""
    if full:
        switching = F_KEYS + ([] if in_field else DIGITS)
    else:
        turn = screen_index + state_index
        switching = [F_KEYS[turn % 6]] + ([] if in_field else [DIGITS[(turn + 3) % 6]])
    return EVERYWHERE + ([] if in_field else OUTSIDE_FIELDS) + switching


async def _sweep(project: Path, step: str, *, full: bool) -> set[str]:
    """Press the global keys on `step`'s screen in each of its focus states; session.toml and the focused field's
    text must be unchanged after every key. Returns the keys pressed."""
    before = _saved_project(project)
    app = LoraWizardApp(Session.open_project(project), start_step=step)
    pressed: set[str] = set()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        states = _focus_states(screen, full=full)
        assert len(states) > 1, step
        for index, state in enumerate(states):
            widget = None if state is None else screen.query_one(f"#{state}")
            in_field = isinstance(widget, (Input, TextArea))
            for key in _keys_for(STEP_ORDER.index(step), index, in_field, full=full):
                if app.current_mode != step:
                    await app.switch_mode(step)
                await _settle(pilot, app)
                if widget is None:
                    screen.set_focus(None)
                elif widget.display and widget.focusable:
                    widget.focus()
                else:
                    break  # hidden by an earlier key's state (nothing to press from)
                await pilot.pause()
                text = widget.value if isinstance(widget, Input) else widget.text if isinstance(widget, TextArea) else None
                await pilot.press(key)
                pressed.add(key)
                await _settle(pilot, app)
                where = (step, state, key)
                assert (project / "session.toml").read_bytes() == before, where
                if isinstance(widget, Input):
                    assert widget.value == text, where
                elif isinstance(widget, TextArea):
                    assert widget.text == text, where
    return pressed


@pytest.mark.parametrize("step", STEP_ORDER)
async def test_every_global_key_on_every_screen_in_every_focus_state_leaves_the_session(project: Path, step: str) -> None:
    pressed = await _sweep(project, step, full=False)
    assert set(EVERYWHERE + OUTSIDE_FIELDS) <= pressed and len(pressed & set(F_KEYS)) >= 2, pressed


@pytest.mark.extra
@pytest.mark.parametrize("step", STEP_ORDER)
async def test_full_key_sweep(project: Path, step: str) -> None:
    """Every global key in every focus state (the default sweep rotates F-keys and digits over the states)."""
    assert await _sweep(project, step, full=True) == set(EVERYWHERE + OUTSIDE_FIELDS + F_KEYS + DIGITS)


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
