"""Captions step screen (foundation: settings and the step runner; the full screen is not built yet)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.widgets.settings_form import SettingsForm


class CaptionsScreen(StepScreen):
    STEP = "captions"
    PRIMARY = "write the caption files"
    INTRO = "One caption per image: the trigger word first, then what the LoRA should NOT learn."

    def compose_body(self) -> ComposeResult:
        yield SettingsForm(['dataset.trigger', 'dataset.captionless'])
        yield Static("This screen is not fully built yet: its settings are saved, its step can be run.", classes="not-built")
