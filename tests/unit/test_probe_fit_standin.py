"""Fastest fit through real processes: the stand-in trainer with its memory and speed model (STANDIN_MODEL: swap,
fp8 base and batch change its peak and its s/step; it OOMs above the card's free memory), the fake NVML reading its
peak. A 12 GB card, where the choice is clear-cut (most candidates run out of memory at their first step): the
search lands on the known optimum within the promised trials; `--replay --steps probe` prints the table and the
choice; `--steps train --dry-run` prints the forecast."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext
from lorawizard.core.probe import fit
from lorawizard.core.probe.step import run_step
from lorawizard.core.session.document import Session
from lorawizard.headless import replay
from tests.support.dataset_fixtures import prepared_buckets
from tests.support.fake_nvml import RTX_3060_12, FakeNvml
from tests.support.sessions import save
from tests.support.standin import make_fake_sd_scripts, standin_model
from tests.unit.test_probe_standin import peak_reader

GPU = RTX_3060_12


@pytest.fixture
def session(tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    sd_scripts, _python = make_fake_sd_scripts(tmp_path)
    session = Session.new(project / "session.toml", name="fit-standin")
    session.set("paths.sd_scripts", str(sd_scripts))
    session.set("gpu.fit", "fastest")
    session.set("gpu.price_per_hour", 0.5)
    prepared_buckets(session.paths.dataset, {"1024x1024": 2})
    save(session)
    monkeypatch.setenv("STANDIN_MODEL", "1")
    monkeypatch.setenv("STANDIN_VRAM_BYTES", str(GPU.memory_total - GPU.memory_used))
    monkeypatch.setenv("STANDIN_PEAK_FILE", str(tmp_path / "peak.json"))
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    monkeypatch.setenv("STANDIN_IMAGE_SECONDS", "0.02")
    monkeypatch.setenv("STANDIN_SWAP_SECONDS", "0.001")
    return session


def fake_nvml(tmp_path: Path) -> FakeNvml:
    return FakeNvml([GPU], processes={GPU.uuid: peak_reader(tmp_path / "peak.json")}, per_process=False)


def test_the_search_through_the_stand_in_lands_on_the_known_optimum(session: Session, tmp_path: Path) -> None:
    result = run_step(StepContext(session=session, options={"nvml": fake_nvml(tmp_path)}))
    policy = fit.FitPolicy("fastest", (0, 8, 16, 22, 28, 35), (True, False), no_checkpointing=True)
    rungs = tuple((r.swap, r.checkpointing, False) for r in policy.rungs)
    expected = standin_model.best_setting(rungs, (True, False), fit.MAX_BATCH, 1024, 1024,
                                          fit.limit_bytes(GPU.memory_total) - GPU.memory_used)
    assert expected is not None
    assert (session.gpu.fit_swap, session.gpu.fit_fp8, session.batch_sizes()["1024x1024"],
            session.gpu.fit_checkpointing) == expected[:4], result.details
    assert result.data["trials"] <= result.data["budget"] == policy.budget == 28
    logs = sorted((session.paths.state / "probe").glob("trial-*/trial.log"))
    assert len(logs) == result.data["trials"]
    assert any("CUDA out of memory" in log.read_text() for log in logs)  # the real OOM text, from the real process
    assert any("◀ chosen" in line for line in result.details)


def test_replay_prints_the_table_and_the_choice_and_dry_run_the_forecast(session: Session, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = replay(session.path, ["probe"], out=out, err=err, tty=False, options={"probe": {"nvml": fake_nvml(tmp_path)}})
    text = out.getvalue()
    assert code == 0, err.getvalue() + text
    for needed in ("peak GB", "img/s", "s/step", "◀ chosen", "fit: swap", "at most 28 trials", "forecast:"):
        assert needed in text, needed
    assert "[gpu]" not in session.path.read_text() or "fit_swap" not in session.path.read_text()  # replay: untouched
    run_step(StepContext(session=session, options={"nvml": fake_nvml(tmp_path)}))  # the wizard's probe: saved
    out = io.StringIO()
    code = replay(session.path, ["probe"], out=out, err=err, tty=False, options={"probe": {"nvml": fake_nvml(tmp_path)}})
    assert code == 0 and "fit is measured for this GPU" in out.getvalue() and "◀ chosen" in out.getvalue()
    out = io.StringIO()
    code = replay(session.path, ["train"], dry_run=True, out=out, err=err, tty=False)
    text = out.getvalue()
    assert code == 0, err.getvalue() + text
    assert "forecast: 1024x1024" in text and "per GPU-hour" in text and "--blocks_to_swap" in text
