"""A person walks through all six steps with the keyboard, deciding something on each, then quits.

Afterwards session.toml holds every decision (and nothing was lost by quitting mid-edit).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Select

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from tests.support.fake_nvml import install, one_gpu


async def type_into(pilot, field: Input, text: str) -> None:
    field.focus()
    await pilot.pause()
    field.value = ""
    await pilot.press(*text)


async def goto(pilot, app: LoraWizardApp, number: int, step: str) -> None:
    app.screen.set_focus(None)
    await pilot.press(str(number))
    await pilot.pause()
    assert app.current_mode == step


async def test_walk_every_step_and_check_session_toml(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, one_gpu())
    (project / "photos").mkdir()
    sd_scripts = project / "sd-scripts"
    sd_scripts.mkdir()
    app = LoraWizardApp(Session.open_project(project), start_step="env")
    async with app.run_test(size=(120, 40)) as pilot:
        # 1 Environment: where sd-scripts lives
        await type_into(pilot, app.screen.query_one("#set-paths-sd_scripts", Input), "sd-scripts")
        await pilot.press("tab")

        # 2 Models: the gated bf16 preset
        await goto(pilot, app, 2, "models")
        app.screen.query_one("#set-models-preset", Select).value = "flux1-dev-bf16"
        await pilot.pause()

        # 3 Dataset: settings (s), then the photo folder and a smaller max side
        await goto(pilot, app, 3, "dataset")
        await pilot.press("s")
        await pilot.pause()
        await type_into(pilot, app.screen.query_one("#set-dataset-source", Input), "photos")
        await pilot.press("enter")
        await type_into(pilot, app.screen.query_one("#set-dataset-max_side", Input), "512")
        await pilot.press("enter")
        await pilot.pause()

        # 4 Captions: the trigger word (ctrl+t opens its dialog)
        await goto(pilot, app, 4, "captions")
        await pilot.press("ctrl+t")
        await pilot.pause()
        await type_into(pilot, app.screen.query_one("#set-dataset-trigger", Input), "ohwx")
        await pilot.press("enter", "escape")
        await pilot.pause()

        # 5 GPU: the 16 GB preset
        await goto(pilot, app, 5, "probe")
        select = app.screen.query_one("#preset-select", Select)
        values = [value for _, value in select._options if value is not Select.BLANK]
        assert "16gb" in values
        select.value = "16gb"
        await pilot.pause()

        # 6 Train: rank 16, then quit while the field still has focus (no Enter)
        await goto(pilot, app, 6, "train")
        await type_into(pilot, app.screen.query_one("#set-train-network_dim", Input), "16")
        await pilot.press("ctrl+q")

    saved = Session.load(project / "session.toml")
    assert saved.get("paths.sd_scripts") == "sd-scripts"
    assert saved.paths.sd_scripts == sd_scripts
    assert saved.get("models.preset") == "flux1-dev-bf16"
    assert saved.get("dataset.source") == "photos"
    assert saved.get("dataset.max_side") == 512
    assert saved.get("dataset.trigger") == "ohwx"
    assert saved.get("gpu.vram_preset") == "16gb"
    assert saved.get("train.network_dim") == 16
    assert saved.warnings == []
    assert not list(project.glob(".session.toml.*.tmp"))  # every save was atomic and finished
