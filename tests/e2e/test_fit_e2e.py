"""Extra (not in the default suite): the fastest-fit search through the real sd-scripts on the CPU (issue 26).

One trial per candidate kind through the same code path as on a GPU (SubprocessTrialRunner, the command builder,
the log reader): an fp8 base and a 16-bit base at batch 1 (both train; s/step measured from the real bar), block
swap on the tiny 1+1-block model, which sd-scripts refuses ("Cannot swap more than …") — a refused candidate is one row
of the table, not the end of the probe —, gradient checkpointing on and off, and the person's AdamW beside its 8-bit
twin: the LoRA each trial saves says in its own `ss_*` metadata what the trainer really trained with. No GPU: the
fake NVML's card is only a name (peaks unknown on the CPU).
    LORAWIZARD_E2E=/work/e2e flock /tmp/lorawizard-real-trainer.lock python -m pytest -m extra tests/e2e/test_fit_e2e.py
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext
from lorawizard.core.gpu.presets import preset_named
from lorawizard.core.probe import fit
from lorawizard.core.probe.fit_run import candidate_preset
from lorawizard.core.probe.step import run_step
from lorawizard.core.probe.trials import SubprocessTrialRunner, TrialSpec
from tests.e2e.test_command_e2e import e2e_session, needs_e2e
from tests.support.fake_nvml import RTX_4090, FakeNvml

pytestmark = pytest.mark.extra


@needs_e2e
def test_fp8_and_16_bit_trials_train_and_are_timed_by_the_real_trainer(project: Path) -> None:
    session = e2e_session(project, gpu__fit="fastest", gpu__vram_preset="24gb")
    lines: list[str] = []
    result = run_step(StepContext(session=session, log=lines.append, options={
        "nvml": FakeNvml([RTX_4090]), "gpu_uuid": RTX_4090.uuid, "max_batch": 1, "trial_timeout_s": 900}))
    print("\n".join(lines + result.details))
    saved = result.data
    assert saved["trials"] == 2, result.details  # batch 1 only: fp8 then 16-bit, one line each
    table = [line for line in result.details if "16-bit" in line or " fp8 " in line]
    assert len(table) >= 2 and any("◀ chosen" in line for line in table)
    assert session.gpu.fit_swap == 0 and session.gpu.fit_fp8 is not None
    speeds = [r["s_per_step"] for r in saved["results"]]
    assert all(s and s > 0 for s in speeds)


@needs_e2e
def test_block_swap_on_the_tiny_model_is_refused_and_said(project: Path) -> None:
    session = e2e_session(project, gpu__fit="fastest", gpu__vram_preset="24gb")
    runner = SubprocessTrialRunner(session, RTX_4090, session.paths.state / "probe", cancel=threading.Event(),
                                   nvml=FakeNvml([RTX_4090]), timeout_s=900)
    preset = candidate_preset(preset_named("24gb"), fit.Setting(8, True))
    outcome = runner(TrialSpec("128x128", 1, preset, 4, 1), lambda event: None)
    print(outcome)
    assert outcome.status == "error" and "Cannot swap more than" in outcome.detail


def _trainer_said(outcome_log: str) -> str:
    """The trial's log: what sd-scripts itself says it trained with (the throwaway LoRA is removed after a trial)."""
    return Path(outcome_log).read_text(errors="replace")


@needs_e2e
@pytest.mark.parametrize(("setting", "checkpointing", "optimizer"), [
    (fit.Setting(0, False, checkpointing=True), True, "use AdamW optimizer"),
    (fit.Setting(0, False, checkpointing=False), False, "use AdamW optimizer"),
    (fit.Setting(0, False, checkpointing=True, optimizer="AdamW8bit"), True, "use 8-bit AdamW optimizer"),
], ids=["checkpointing", "no-checkpointing", "8-bit-twin"])
def test_checkpointing_and_the_8_bit_twin_reach_the_real_trainer(project: Path, setting: fit.Setting,
                                                                 checkpointing: bool, optimizer: str) -> None:
    """The person's AdamW: each candidate kind trains through the real trainer, timed; its log says checkpointing
    ("FLUX: Gradient checkpointing enabled") and the optimizer (train_util.get_optimizer's "use … optimizer")."""
    session = e2e_session(project, gpu__fit="fastest", gpu__vram_preset="24gb", train__optimizer_type="AdamW")
    workdir = session.paths.state / "probe"
    runner = SubprocessTrialRunner(session, RTX_4090, workdir, cancel=threading.Event(), nvml=FakeNvml([RTX_4090]),
                                   timeout_s=900)
    outcome = runner(TrialSpec("128x128", 1, candidate_preset(preset_named("24gb"), setting), 4, 1),
                     lambda event: None)
    print(outcome)
    if outcome.status == "error":  # bitsandbytes' 8-bit optimizers need a GPU build on some machines: said, a row
        assert setting.optimizer and outcome.detail, outcome
        pytest.skip(f"the trainer refused {setting.optimizer} on this CPU: {outcome.detail[:200]}")
    assert outcome.status == "ok" and outcome.s_per_step and outcome.s_per_step > 0, outcome
    said = _trainer_said(outcome.log)
    assert ("Gradient checkpointing enabled" in said) is checkpointing
    assert f"{optimizer} |" in said
