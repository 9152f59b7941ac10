"""Issue 24 item 1: after Enter in a field, Tab goes on to the next field, on every settings form.

Tried as a new user: Tab, a path, Enter, Tab, a second path, Enter: the second Tab went back to the *first* field
with its text selected, so the second path replaced the first and was saved.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.widgets.settings_form import TYPED_AHEAD_S, SettingInput


async def _type(pilot, text: str) -> None:  # noqa: ANN001
    await pilot.press(*text)


async def test_tab_after_enter_goes_to_the_next_field_on_environment(tmp_path: Path) -> None:
    app = LoraWizardApp(Session.open_project(tmp_path), start_step="env")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await asyncio.sleep(TYPED_AHEAD_S + 0.1)
        await pilot.press("tab")
        first = app.screen.focused
        assert isinstance(first, SettingInput) and first.key == "paths.sd_scripts"
        await _type(pilot, "/opt/sd")
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("tab")
        second = app.screen.focused
        assert isinstance(second, SettingInput) and second.key == "paths.python", second
        await _type(pilot, "/opt/py")
        await pilot.press("enter")
        await pilot.pause()
        assert app.session.get("paths.sd_scripts") == "/opt/sd"
        assert app.session.get("paths.python") == "/opt/py"


@pytest.mark.parametrize("step", ["train", "dataset"])
async def test_tab_after_enter_goes_on_from_that_field_on_other_forms(tmp_path: Path, step: str) -> None:
    session = Session.open_project(tmp_path)
    session.set("dataset.source", str(tmp_path))  # Dataset shows its table, the form behind `s`
    app = LoraWizardApp(session, start_step=step)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        fields = [w for w in app.screen.focus_chain if isinstance(w, SettingInput)]
        assert len(fields) >= 2
        fields[0].focus()
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("tab")
        assert app.screen.focused is app.screen.focus_chain[app.screen.focus_chain.index(fields[0]) + 1]


async def test_a_typed_sample_prompt_is_one_sentence_and_shown_as_saved(tmp_path: Path) -> None:
    """Issue 24 item 3: `ohwx, a white disc on a red background` was saved as 8 one-word prompts."""
    app = LoraWizardApp(Session.open_project(tmp_path), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        field = app.screen.query_one("#set-train-samples-prompts", SettingInput)
        field.focus()
        await pilot.pause()
        await _type(pilot, "ohwx, a white disc")  # typed as a person types (the rest set at once: Pilot is slow)
        field.value += " on a red background"
        field.cursor_position = len(field.value)
        await pilot.press("enter")
        await pilot.pause()
        assert app.session.get("train.samples.prompts") == ["ohwx, a white disc on a red background"]
        field.focus()
        await pilot.pause()
        field.value = "ohwx on a beach | ohwx, portrait, 'soft light' "
        field.cursor_position = len(field.value)
        await _type(pilot, "|")
        await pilot.press("enter")
        await pilot.pause()
        assert app.session.get("train.samples.prompts") == ["ohwx on a beach", "ohwx, portrait, 'soft light'"]
    app = LoraWizardApp(app.session, start_step="train")  # shown as saved when the screen opens again
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        shown = app.screen.query_one("#set-train-samples-prompts", SettingInput).value
        assert shown == "ohwx on a beach | ohwx, portrait, 'soft light'"


async def test_the_settings_a_person_tunes_have_fields_where_they_matter(tmp_path: Path) -> None:
    """Issue 24 item 2: num_repeats, the base precision, mixed precision and the sample size and steps lived only in
    session.toml; each has a field now, and what it saves reaches the trainer's command."""
    from textual.widgets import Select

    from lorawizard.core.launch.command import trainer_options

    session = Session.open_project(tmp_path)
    session.set("dataset.source", str(tmp_path))
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for key in ("train.samples.steps", "train.samples.width", "train.samples.height"):
            assert app.screen.query_one(f"#set-{key.replace('.', '-')}", SettingInput)
        app.screen.query_one("#set-train-base_precision", Select).value = "16bit"
        app.screen.query_one("#set-train-mixed_precision", Select).value = "no"
        steps = app.screen.query_one("#set-train-samples-steps", SettingInput)
        steps.focus()
        await pilot.pause()
        steps.value = ""
        await _type(pilot, "12")
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("3")
        await pilot.pause()
        repeats = app.screen.query_one("#set-dataset-num_repeats", SettingInput)
        repeats.focus()
        await pilot.pause()
        repeats.value = ""
        await _type(pilot, "3")
        await pilot.press("enter")
        await pilot.pause()
    assert (session.get("train.base_precision"), session.get("train.mixed_precision")) == ("16bit", "no")
    assert (session.get("train.samples.steps"), session.get("dataset.num_repeats")) == (12, 3)
    options = trainer_options(session)
    assert options.get("fp8_base") is None and options["mixed_precision"] == "no"


def test_16bit_base_drops_fp8_base_even_under_a_vram_preset(tmp_path: Path) -> None:
    from lorawizard.core.launch.command import trainer_options

    session = Session.open_project(tmp_path)
    session.set("gpu.vram_preset", "24gb")
    assert trainer_options(session).get("fp8_base") is True
    session.set("train.base_precision", "16bit")
    assert trainer_options(session).get("fp8_base") is None
    session.set("train.extra_args", ["--fp8_base"])  # extra_args still win, as documented
    assert trainer_options(session).get("fp8_base") is True
