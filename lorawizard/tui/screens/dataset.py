"""Dataset step screen (foundation: settings and the step runner; the full screen is not built yet)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.widgets.settings_form import SettingsForm


class DatasetScreen(StepScreen):
    STEP = "dataset"
    PRIMARY = "prepare the dataset"
    INTRO = "Turns your photos into upright, power-of-two buckets (originals untouched)."

    def compose_body(self) -> ComposeResult:
        yield SettingsForm(['dataset.source', 'dataset.max_side', 'dataset.num_repeats', 'paths.dataset'])
        yield Static("This screen is not fully built yet: its settings are saved, its step can be run.", classes="not-built")
