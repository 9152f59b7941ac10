"""The probe's log reading against real sd-scripts logs (CPU runs with tiny random models, ../shared/e2e/logs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.probe.trials import _LogTail, classify

LOGS = Path(__file__).resolve().parents[3] / "shared" / "e2e" / "logs"

pytestmark = [
    pytest.mark.extra,
    pytest.mark.skipif(not (LOGS / "train.log").exists(), reason="needs ../shared/e2e/logs"),
]


@pytest.mark.parametrize(("name", "rc", "steps", "status", "words"), [
    ("train", 0, 4, "ok", ""),
    ("sample", 0, 2, "ok", ""),
    ("v_swap_1d1s", 1, 0, "error", "AssertionError: Cannot swap more than"),
    ("v_fp16", 1, 0, "error", "RuntimeError: mat1 and mat2 must have the same dtype"),
])
def test_real_logs(name: str, rc: int, steps: int, status: str, words: str) -> None:
    tail = _LogTail(LOGS / f"{name}.log")
    tail.read()
    assert tail.step == steps
    got, detail = classify(rc, tail.text, tail.step, steps or 3)
    assert got == status and words in detail
    if status == "ok":
        assert tail.seconds_per_step() is not None and tail.seconds_per_step() > 0
