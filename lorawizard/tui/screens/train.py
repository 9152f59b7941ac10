"""Train step screen (foundation: settings and the step runner; the full screen is not built yet)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.widgets.settings_form import SettingsForm


class TrainScreen(StepScreen):
    STEP = "train"
    PRIMARY = "start training"
    INTRO = "Launches sd-scripts detached (it survives SSH drops) and follows it live."

    def compose_body(self) -> ComposeResult:
        yield SettingsForm(['name', 'train.network_dim', 'train.learning_rate', 'train.max_train_epochs', 'train.save_every_n_epochs', 'train.optimizer_type', 'train.seed', 'train.extra_args'])
        yield Static("This screen is not fully built yet: its settings are saved, its step can be run.", classes="not-built")
