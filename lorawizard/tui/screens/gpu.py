"""Gpu step screen (foundation: settings and the step runner; the full screen is not built yet)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.widgets.settings_form import SettingsForm


class GpuScreen(StepScreen):
    STEP = "probe"
    PRIMARY = "probe batch sizes"
    INTRO = "Picks one GPU and finds the largest batch size per bucket that really trains."

    def compose_body(self) -> ComposeResult:
        yield SettingsForm(['gpu.vram_preset'])
        yield Static("This screen is not fully built yet: its settings are saved, its step can be run.", classes="not-built")
