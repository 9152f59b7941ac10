"""Models step screen (foundation: settings and the step runner; the full screen is not built yet)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.widgets.settings_form import SettingsForm


class ModelsScreen(StepScreen):
    STEP = "models"
    PRIMARY = "find or download the models"
    INTRO = "Finds the FLUX.1-dev files you already have (Hugging Face cache, ComfyUI) and downloads the rest, resumably."

    def compose_body(self) -> ComposeResult:
        yield SettingsForm(['models.preset', 'paths.models'])
        yield Static("This screen is not fully built yet: its settings are saved, its step can be run.", classes="not-built")
