"""Speeds as a person reads them, at every size: slow ones as the time one unit takes, never `0.0 steps/s`."""

from __future__ import annotations

import math

import pytest

from lorawizard.core.common.progress import Progress, format_progress, format_rate


@pytest.mark.parametrize(
    ("rate", "unit", "text"),
    [
        (10_000, "images", "10000 images/s"),
        (123.4, "images", "123 images/s"),
        (12.34, "steps", "12.3 steps/s"),
        (1.92, "it", "1.92 it/s"),
        (1.0, "it", "1.00 it/s"),
        (0.5, "steps", "2.00 s/step"),
        (1 / 28.78, "steps", "28.8 s/step"),  # the real trainer on a CPU: headless said "0.0 steps/s"
        (1 / 283, "", "4.7 min/it"),  # caching one latent on a CPU: headless said "0.0 /s"
        (1 / 283, "latents", "4.7 min/latent"),
        (1 / 7200, "images", "2.0 h/image"),
        (0.0001, "files", "2.8 h/file"),
        (2.5e6, "B", "2.5 MB/s"),
        (0.25, "class", "4.00 s/class"),  # only a plural "s" is dropped
        # at the edges the unit and the precision follow the figure shown, not the value before rounding
        (9.999, "steps", "10.0 steps/s"),
        (99.99, "steps", "100 steps/s"),
        (1 / 9.999, "steps", "10.0 s/step"),
        (1 / 59.99, "steps", "1.0 min/step"),
        (1 / 3599, "steps", "1.0 h/step"),
    ],
)
def test_rates_read_at_every_size(rate: float, unit: str, text: str) -> None:
    assert format_rate(rate, unit) == text


@pytest.mark.parametrize("rate", [None, 0.0, -1.0, math.inf, math.nan])
def test_unknown_rate_is_left_out(rate: float | None) -> None:
    assert format_rate(rate, "steps") == ""
    line = format_progress(Progress("train", "epoch 1/1", 1, 4, "steps", rate, None))
    assert line == "train: epoch 1/1 1/4 (25%)"


def test_progress_line_with_a_slow_rate_keeps_its_eta() -> None:
    line = format_progress(Progress("train", "epoch 1/1", 1, 4, "steps", 1 / 28.78, 3 * 28.78))
    assert line == "train: epoch 1/1 1/4 (25%) 28.8 s/step ETA 1:26"
    assert "0.0" not in line
