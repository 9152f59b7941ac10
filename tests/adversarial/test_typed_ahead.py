"""Issue 23 D: keys typed before a screen is seen are not typed into its field.

`3` then `4` ~50 ms apart (or keys typed during start-up) opened Dataset, whose empty `source` field takes focus, and
the `4` landed in it: `source = "4"` was saved. A key read from the terminal before the screen was drawn (or just
after: no one reads a screen and types in 150 ms) goes where it was meant to go, never into the field the screen
focused by itself. Which keys were typed ahead is decided by when the terminal's bytes were read (the key event's
time) against when the screen was drawn, so the tests set the screen's drawing time rather than race a real one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual._time import get_time

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.dataset import DatasetScreen
from lorawizard.tui.widgets import settings_form
from lorawizard.tui.widgets.settings_form import TYPED_AHEAD_S, SettingInput

PERSONS_WINDOW_S = TYPED_AHEAD_S  # as shipped (read before conftest sets it to 0 for Pilot)


@pytest.fixture(autouse=True)
def a_persons_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest makes the window 0 for Pilot's fast typing; these tests check the one a person gets."""
    monkeypatch.setattr(settings_form, "TYPED_AHEAD_S", PERSONS_WINDOW_S)


async def test_a_step_key_typed_before_the_screen_was_drawn_switches_steps_and_types_nothing(tmp_path: Path) -> None:
    app = LoraWizardApp(Session.open_project(tmp_path), start_step="dataset")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, DatasetScreen) and isinstance(screen.focused, SettingInput)
        screen.shown_at = get_time() + 60  # the key below was read before the screen was drawn
        await pilot.press("4")
        assert app.current_mode == "captions"
        screen.shown_at = get_time() - 60
        await pilot.press("3")
        assert app.current_mode == "dataset"
        assert screen.query_one("#set-dataset-source", SettingInput).value == ""
        assert app.session.get("dataset.source") in (None, "")


async def test_a_letter_typed_ahead_is_not_typed_into_the_field_either(tmp_path: Path) -> None:
    app = LoraWizardApp(Session.open_project(tmp_path), start_step="dataset")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        app.screen.shown_at = get_time() + 60
        await pilot.press("x")
        await pilot.pause()
        assert app.screen.query_one("#set-dataset-source", SettingInput).value == ""


async def test_typing_into_the_field_once_it_is_seen_still_types(tmp_path: Path) -> None:
    app = LoraWizardApp(Session.open_project(tmp_path), start_step="dataset")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await asyncio.sleep(PERSONS_WINDOW_S + 0.2)  # the screen has been on view: the person types into what they see
        await pilot.press("4", "2")
        await pilot.pause()
        assert app.current_mode == "dataset"
        assert app.screen.query_one("#set-dataset-source", SettingInput).value == "42"
        # issue 23 C19: the hint says Enter keeps it; a path typed or pasted is not saved before that
        assert app.session.get("dataset.source") in (None, "")
        await pilot.press("enter")
        await pilot.pause()
        assert app.session.get("dataset.source") == "42"
