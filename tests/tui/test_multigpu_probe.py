"""The probe with several GPUs (fake NVML, stand-in trials): each kind of card measured once, the smallest batch
per bucket, the smallest card's preset, and what the slower card costs / two cards gain."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext, StepFailed
from lorawizard.core.gpu.nvml import GpuInfo
from lorawizard.core.gpu.probe_results import load_results
from lorawizard.core.launch import multigpu
from lorawizard.core.probe.step import run_step
from lorawizard.core.probe.trials import ProbeEvent, TrialOutcome, TrialSpec
from tests.support.fake_nvml import RTX_3060_12, RTX_3090_24, FakeNvml
from tests.support.sessions import save
from tests.unit.test_probe import make_project

CAPS = {"NVIDIA GeForce RTX 3090": 4, "NVIDIA GeForce RTX 3060": 2}  # largest batch that fits at 512x512
SPEED = {"NVIDIA GeForce RTX 3090": 1.2, "NVIDIA GeForce RTX 3060": 1.5}  # s/step at that batch


class CardRunner:
    """Fits while batch × (512×512 units) ≤ the card's cap; one runner per kind of card."""

    def __init__(self, gpu: GpuInfo, calls: list[tuple[str, str, int, str]]) -> None:
        self.gpu, self.calls = gpu, calls

    def __call__(self, spec: TrialSpec, report: Callable[[ProbeEvent], None]) -> TrialOutcome:
        self.calls.append((self.gpu.uuid, spec.bucket, spec.batch, spec.preset.name))
        width, height = (int(v) for v in spec.bucket.split("x"))
        units = spec.batch * width * height / (512 * 512)
        if units > CAPS[self.gpu.name]:
            return TrialOutcome(spec.batch, "oom", detail="torch.OutOfMemoryError: CUDA out of memory.")
        return TrialOutcome(spec.batch, "ok", s_per_step=SPEED[self.gpu.name] * spec.batch / CAPS[self.gpu.name])


def test_two_kinds_of_card_probed_once_each_smallest_batch_kept(project: Path) -> None:
    second_3060 = replace(RTX_3060_12, index=2, uuid="GPU-3060eeee-twin")
    nvml = FakeNvml([RTX_3090_24, RTX_3060_12, second_3060], p2p=False)
    session = make_project(project, {"512x512": 4, "256x256": 2}, preset="24gb")
    session.set("gpu.uuids", [RTX_3090_24.uuid, RTX_3060_12.uuid, second_3060.uuid])
    calls: list[tuple[str, str, int, str]] = []
    lines: list[str] = []
    ctx = StepContext(session=session, log=lines.append,
                      options={"nvml": nvml, "trial_runner_for": lambda gpu: CardRunner(gpu, calls)})
    result = run_step(ctx)
    assert result.ok, result.summary
    assert {uuid for uuid, *_ in calls} == {RTX_3090_24.uuid, RTX_3060_12.uuid}  # the twin 3060 is not re-measured
    assert {preset for *_, preset in calls} == {"12gb"}  # every card probed with the smallest card's preset
    assert session.get("gpu.vram_preset") == "12gb"
    assert session.batch_sizes() == {"512x512": 2, "256x256": 8}  # min(4, 2) and min(16, 8)
    speed = result.data["speed"]
    assert any("waits for the slowest card: RTX 3060" in line for line in speed)
    # 3 processes × batch 2 / 1.5 s = 4.0 img/s vs the 3090 alone at batch 4 / 1.2 s = 3.33 img/s → ×1.20
    assert any("3 GPUs ≈ 4.00 images/s" in line and "≈ 3.33 images/s → ×1.20 (faster together)" in line
               for line in speed)
    assert any("side by side, one run per GPU" in line and "gpu.parallel_runs = true" in line for line in speed)
    saved = load_results(session)
    assert saved["gpu"]["uuid"] in (RTX_3060_12.uuid, second_3060.uuid) and len(saved["gpus"]) == 3
    assert saved["buckets"]["512x512"]["batch_size"] == 2


def test_speed_summary_says_when_two_cards_are_slower() -> None:
    cards = [multigpu.CardSpeed("NVIDIA GeForce RTX 4090", 1, 8, 1.0), multigpu.CardSpeed("RTX 3060", 1, 1, 1.0)]
    lines = multigpu.speed_summary(cards, 1)
    assert "idles ~88%" in lines[0]  # the 4090 needs 0.125 s for batch 1, the 3060 1.0 s
    assert "×0.25 (slower together)" in lines[1]  # 2 img/s vs 8 img/s alone
    assert multigpu.speed_summary([multigpu.CardSpeed("a", 1, 1, None)], 1)[0].startswith("no step times")


def test_a_gpu_that_is_gone_stops_the_probe_with_its_name(project: Path) -> None:
    session = make_project(project, {"512x512": 1})
    session.set("gpu.uuids", [RTX_3090_24.uuid, "GPU-gone-1234"])
    with pytest.raises(StepFailed, match="GPU-gone-1234 is not visible"):
        run_step(StepContext(session=session, options={"nvml": FakeNvml([RTX_3090_24, RTX_3060_12])}))


async def test_gpu_screen_space_adds_a_second_card_and_the_probe_measures_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from textual.widgets import OptionList

    from lorawizard.core.session.document import Session
    from lorawizard.tui.app import LoraWizardApp
    from tests.support.fake_nvml import install, two_cards_no_p2p

    install(monkeypatch, two_cards_no_p2p())
    calls: list[tuple[str, str, int, str]] = []
    project = tmp_path / "p"
    session = make_project(project, {"512x512": 2}, preset=None)
    app = LoraWizardApp(Session.open_project(project), start_step="probe",
                        step_options={"probe": {"trial_runner_for": lambda gpu: CardRunner(gpu, calls)}})
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(3):
            await pilot.pause()
            await app.workers.wait_for_complete()
        options = app.screen.query_one("#gpu-list", OptionList)
        options.focus()
        assert options.highlighted == 0  # the 24 GB card has the most free memory
        await pilot.press("down", "space")
        await pilot.pause()
        assert app.session.get("gpu.uuids") == [RTX_3090_24.uuid, RTX_3060_12.uuid]
        state = str(app.screen.query_one("#gpu-state").render())
        assert "2 GPUs train together" in state and "RTX 3060" in state
        assert str(options.get_option_at_index(0).prompt).startswith("☑")
        await pilot.press("ctrl+g")
        for _ in range(3):
            await pilot.pause()
            await app.workers.wait_for_complete()
        assert {uuid for uuid, *_ in calls} == {RTX_3090_24.uuid, RTX_3060_12.uuid}
        assert app.session.batch_sizes() == {"512x512": 2}
        await pilot.press("space")  # the 3060 out again: back to one GPU
        await pilot.pause()
        assert app.session.get("gpu.uuids") == [] and app.session.get("gpu.uuid") == RTX_3090_24.uuid
    assert session.path.exists()


async def test_gpu_screen_names_a_chosen_gpu_that_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.core.session.document import Session
    from lorawizard.tui.app import LoraWizardApp
    from tests.support.fake_nvml import install, two_cards_no_p2p

    install(monkeypatch, two_cards_no_p2p())
    project = tmp_path / "p"
    session = make_project(project, {"512x512": 2}, preset=None)
    session.set("gpu.uuids", [RTX_3090_24.uuid, "GPU-gone-5678"])
    save(session)
    app = LoraWizardApp(Session.open_project(project), start_step="probe")
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(3):
            await pilot.pause()
            await app.workers.wait_for_complete()
        assert "the chosen GPU GPU-gone-5678 is not visible now" in str(app.screen.query_one("#gpu-state").render())


def test_side_by_side_is_suggested_only_for_different_cards() -> None:
    twin = replace(RTX_3090_24, index=1, uuid="GPU-3090ffff-twin")
    assert multigpu.side_by_side_line([RTX_3090_24, twin], 2) is None  # alike: data-parallel loses nothing
    line = multigpu.side_by_side_line([RTX_3090_24, RTX_3060_12], 2)
    assert line is not None and "your 2 variant(s) and the base run" in line
    assert "[[train.variants]]" in (multigpu.side_by_side_line([RTX_3090_24, RTX_3060_12], 0) or "")


async def test_gpu_screen_fit_on_two_cards_is_current_after_the_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpu.fit on two cards: ctrl+g searches on the binding card and checks the other; the screen then reads the fit
    as measured for both cards (one fingerprint key: probe_results.fit_gpu_key), not as stale."""
    from lorawizard.core.session.document import Session
    from lorawizard.tui.app import LoraWizardApp
    from tests.support.fake_nvml import RTX_4060, install
    from tests.unit.test_probe_fit_multigpu import CardRunner

    small = replace(RTX_4060, index=1, uuid="GPU-4060aaaa-16gb")
    install(monkeypatch, FakeNvml([RTX_3090_24, small]))
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24), small.uuid: CardRunner(small)}
    project = tmp_path / "p"
    session = make_project(project, {"1024x1024": 4}, preset=None)
    session.set("gpu.fit", "fastest")
    session.set("gpu.uuids", [RTX_3090_24.uuid, small.uuid])
    save(session)
    app = LoraWizardApp(Session.open_project(project), start_step="probe",
                        step_options={"probe": {"trial_runner_for": lambda gpu: runners[gpu.uuid]}})
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(2):
            await pilot.pause()
            await app.workers.wait_for_complete()
        assert "not measured yet" in str(app.screen.query_one("#fit-line").render())
        await pilot.press("ctrl+g")
        for _ in range(3):
            await pilot.pause()
            await app.workers.wait_for_complete()
        assert len(runners[RTX_3090_24.uuid].specs) == 1 and len(runners[small.uuid].specs) > 1
        line = str(app.screen.query_one("#fit-line").render())
        assert f"swap {app.session.gpu.fit_swap}" in line and "training uses it" in line, line
        assert "changed" not in line and "measures it" not in line
