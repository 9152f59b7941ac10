"""`lorawizard --replay … --steps train` with the stand-in trainer: dry run, follow, failure, detach."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from lorawizard.core.launch import runs
from lorawizard.headless import replay
from tests.support.standin import make_train_project


def _replay(session, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = replay(session.path, ["train"], out=out, err=err, tty=False, **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_dry_run_writes_the_config_files_and_prints_the_command(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    code, out, _ = _replay(session, dry_run=True)
    assert code == 0
    dry = session.paths.state / "dry-run"
    assert (dry / "dataset_config.toml").is_file() and (dry / "accelerate.yaml").is_file()
    assert "accelerate.commands.launch" in out and "flux_train_network.py" in out and "--save_state" in out
    assert runs.list_runs(session.paths.runs) == []  # nothing launched


def test_follows_the_run_and_succeeds_on_model_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.05")
    session = make_train_project(tmp_path, epochs=3)
    code, out, err = _replay(session)
    assert code == 0, err
    assert "train: epoch 1/3 begins" in out and "train: epoch 3/3 begins" in out
    assert "model saved: run" in out and "\r" not in out


def test_failure_exits_1_with_the_diagnosis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_VRAM_BUDGET", "1000")
    session = make_train_project(tmp_path)
    code, _out, err = _replay(session)
    assert code == 1
    assert "CUDA ran out of GPU memory" in err and "probe" in err


def test_exit_zero_without_model_saved_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_FAIL", "no_data")
    session = make_train_project(tmp_path)
    code, _, err = _replay(session)
    assert code == 1 and "no training images" in err


def test_detach_leaves_it_running_and_says_how_to_follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.1")
    session = make_train_project(tmp_path, epochs=3)
    started = time.monotonic()
    code, out, _ = _replay(session, options={"train": {"detach": True}})
    assert code == 0 and time.monotonic() - started < 10
    assert f"lorawizard {session.project_dir}" in out
    live = runs.live_run(session.paths.runs)
    assert live is not None
    # a second replay attaches to the live run instead of starting another
    code, out, _ = _replay(session)
    assert code == 0 and "already going" in out
    assert len(runs.list_runs(session.paths.runs)) == 1
