"""Environment step screen (foundation: settings and the step runner; the full screen is not built yet)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.widgets.settings_form import SettingsForm


class EnvironmentScreen(StepScreen):
    STEP = "env"
    PRIMARY = "check the environment"
    INTRO = "Finds sd-scripts and its Python, checks torch, CUDA and accelerate, and fixes what is missing."

    def compose_body(self) -> ComposeResult:
        yield SettingsForm(['paths.sd_scripts', 'paths.python'])
        yield Static("This screen is not fully built yet: its settings are saved, its step can be run.", classes="not-built")
