"""Fastest fit on several GPUs (issue 26; DDP: every card trains the same batch): the search runs once, on the binding
card (the least memory left under its margin), one card of each kind checks every area at the shared batch, a check
that does not fit lowers the shared batch, the slowest card's s/step is what the forecast uses, and the training
command applies the choice. Fake NVML cards; trials answered in-process from the stand-in's memory and speed model
(tests.unit.test_probe_fit.ModelRunner), each card its own runner."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest

from lorawizard.core.common.progress import format_duration
from lorawizard.core.contract import Cancelled, StepContext, StepFailed, StepResult
from lorawizard.core.gpu.nvml import GB, GpuInfo
from lorawizard.core.gpu.probe_results import fit_gpu_key, load_results
from lorawizard.core.launch.command import trainer_options
from lorawizard.core.probe import fit
from lorawizard.core.probe.step import run_step
from lorawizard.core.probe.trials import ProbeEvent, TrialOutcome, TrialSpec
from lorawizard.core.session.document import Session
from lorawizard.core.train.forecast import fit_staleness, forecast
from lorawizard.headless import replay
from tests.support.fake_nvml import RTX_3090_24, RTX_4060, FakeNvml
from tests.support.sessions import save
from tests.support.standin import standin_model
from tests.unit.test_probe_fit import ModelRunner, make_session, optimum

TWIN = replace(RTX_3090_24, index=1, uuid="GPU-3090ffff-twin")  # a second, identical 24 GB card
SMALL = replace(RTX_4060, index=1, uuid="GPU-4060aaaa-16gb")  # 16 GB beside the 24 GB card (index 0)


class CardRunner(ModelRunner):
    """The stand-in model's answers for one card. `held`: bytes another process took on this card after the probe
    began (NVML did not show them); `factor`: this card's s/step relative to the model (an older, slower card);
    `fail`: every trial ends so (refused, hung, killed); `cancel_at`: Ctrl-C at this card's n-th trial."""

    def __init__(self, gpu: GpuInfo, *, held: int = 0, factor: float = 1.0, fail: str | None = None,
                 cancel_at: int | None = None, cancel: threading.Event | None = None) -> None:
        super().__init__(replace(gpu, memory_used=gpu.memory_used + held), cancel_at=cancel_at, cancel=cancel)
        self.factor, self.fail = factor, fail

    def __call__(self, spec: TrialSpec, report: Callable[[ProbeEvent], None]) -> TrialOutcome:
        if self.fail is not None:
            self.specs.append(spec)
            return TrialOutcome(spec.batch, self.fail, detail=f"the stand-in's {self.fail}",  # type: ignore[arg-type]
                                log="/tmp/trial.log")
        outcome = super().__call__(spec, report)
        if outcome.s_per_step is None:
            return outcome
        return replace(outcome, s_per_step=outcome.s_per_step * self.factor)


def setting_of(spec: TrialSpec) -> tuple[int, bool, bool]:
    """(swap, fp8, checkpointing) of a trial, as ModelRunner reads them."""
    options = spec.preset.options
    return (int(options.get("blocks_to_swap") or 0), bool(options.get("fp8_base")),
            options.get("gradient_checkpointing", True) is not None)


class Choice(NamedTuple):
    swap: int
    fp8: bool
    batch: int
    checkpointing: bool

    @property
    def setting(self) -> tuple[int, bool, bool]:
        return self.swap, self.fp8, self.checkpointing

    def seconds(self, batch: int | None = None) -> float:
        """The model's s/step of this setting (at `batch`, else its own)."""
        return standin_model.step_seconds(self.swap, self.fp8, batch or self.batch, 1024, 1024,
                                          checkpointing=self.checkpointing)


def chosen(session: Session, bucket: str = "1024x1024") -> Choice:
    """What the probe recorded: the fit's setting and the bucket's batch."""
    return Choice(session.gpu.fit_swap, session.gpu.fit_fp8, session.batch_sizes()[bucket],  # type: ignore[arg-type]
                  session.gpu.fit_checkpointing is not False)


def several(project: Path, choice: str, cards: list[GpuInfo], runners: dict[str, CardRunner],
            buckets: dict[str, int] | None = None, **options: object) -> tuple[Session, StepResult, list[str]]:
    session = make_session(project, choice, buckets)
    session.set("gpu.uuids", [card.uuid for card in cards])
    save(session)
    lines: list[str] = []
    ctx = StepContext(session=session, log=lines.append, options={
        "nvml": FakeNvml(cards), "trial_runner_for": lambda gpu: runners[gpu.uuid], **options})
    return session, run_step(ctx), lines


def best_on(card: GpuInfo, fp8s: tuple[bool, ...]) -> Choice:
    """The brute-force best of every candidate the policy allows on `card` alone (test_probe_fit.optimum)."""
    found = optimum(card, fp8s)
    assert found is not None
    return Choice(*found[:4])


def largest_batch(card: GpuInfo, choice: Choice, below: int, held: int = 0) -> int:
    """The largest batch < `below` the model fits on `card` (no OOM with `held` more taken, peak under the margin)."""
    used = card.memory_used + held
    fitting = [b for b in range(1, below) if standin_model.peak_bytes(
        choice.swap, choice.fp8, b, 1024, 1024, checkpointing=choice.checkpointing) + used
               <= min(card.memory_total, fit.limit_bytes(card.memory_total))]
    return max(fitting, default=0)


def test_two_identical_cards_search_once_and_the_other_checks_each_area(project: Path) -> None:
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24), TWIN.uuid: CardRunner(TWIN)}
    session, result, _ = several(project, "quality", [RTX_3090_24, TWIN], runners)
    best = best_on(RTX_3090_24, (False,))  # equal room: the lower index is the binding card
    assert chosen(session) == best
    swap, fp8, batch = best.swap, best.fp8, best.batch
    searched = [s for s in runners[RTX_3090_24.uuid].specs if s.bucket == "1024x1024"]
    assert len(searched) == result.data["trials"] > 2  # the whole search on GPU 0 …
    checks = runners[TWIN.uuid].specs  # … and one trial per area on GPU 1, at the shared batch, the chosen setting
    assert [(s.bucket, s.batch) for s in checks] == [("1024x1024", batch), ("512x512", session.batch_sizes()["512x512"])]
    assert {setting_of(s) for s in checks} == {best.setting}
    assert result.data["binding"] == RTX_3090_24.uuid and result.data["check_trials"] == 2
    # each card trains half the images: the choice's "the run ≈" is the two cards' time, not one card's alone
    per_card = fit.image_visits({"1024x1024": 4, "512x512": 3}, session.dataset.num_repeats,
                                session.train.max_train_epochs, 2)
    ips = batch / best.seconds()
    assert f"the run ≈{format_duration(per_card / ips)}" in result.summary, result.summary
    options = trainer_options(session)  # the command trains with the fit's swap and 16-bit base, not the preset's
    assert options.get("blocks_to_swap") == (swap or None) and options.get("fp8_base") is (True if fp8 else None)
    assert swap and not fp8 and session.gpu.vram_preset == "24gb"  # the preset alone would say fp8 and no swap
    saved = load_results(session)["fit"]
    assert saved["fingerprint"]["gpu"] == ",".join(sorted([RTX_3090_24.uuid, TWIN.uuid])) == fit_gpu_key(session)
    assert fit_staleness(session) is None
    again = {uuid: CardRunner(runner.gpu) for uuid, runner in runners.items()}
    ctx = StepContext(session=session, options={"nvml": FakeNvml([RTX_3090_24, TWIN]),
                                                "trial_runner_for": lambda gpu: again[gpu.uuid]})
    assert "measured for these 2 GPUs" in run_step(ctx).summary
    assert all(not r.specs for r in again.values())
    session.set("gpu.uuids", [RTX_3090_24.uuid])  # one card fewer: the fit no longer holds
    session.set("gpu.uuid", RTX_3090_24.uuid)
    assert fit_staleness(session) == "the GPU changed"


def test_a_smaller_card_is_the_binding_one_and_the_slowest_card_sets_the_speed(project: Path) -> None:
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24, factor=1.5), SMALL.uuid: CardRunner(SMALL)}
    session, result, _ = several(project, "fastest", [RTX_3090_24, SMALL], runners, {"1024x1024": 4})
    best = best_on(SMALL, (True, False))
    assert best_on(RTX_3090_24, (True, False)) != best  # the 24 GB card alone would choose otherwise
    assert chosen(session) == best
    swap, batch = best.swap, best.batch
    assert len(runners[SMALL.uuid].specs) == result.data["trials"]  # searched on the 16 GB card
    assert [(s.bucket, s.batch, setting_of(s)) for s in runners[RTX_3090_24.uuid].specs] == [
        ("1024x1024", batch, best.setting)]
    slow = best.seconds() * 1.5  # the 24 GB card here is the slower one
    entry = load_results(session)["buckets"]["1024x1024"]
    assert entry["batch_size"] == batch and entry["s_per_step"] == pytest.approx(slow, abs=1e-3)
    planned = forecast(session)
    assert planned is not None and planned.gpus == 2
    assert planned.buckets[0].s_per_step == pytest.approx(slow, abs=1e-3)  # forecast.py: no special case needed
    assert options_have_swap(session, swap)
    row = next(line for line in result.details if line.startswith("1024x1024") and "RTX 3090 (GPU 0)" in line)
    assert f"RTX 3090 (GPU 0): {slow:.2f} s/step" in row and "RTX 4060 Ti (GPU 1, searched)" in row
    assert any("each step waits for the slowest card: RTX 3090" in line for line in result.details)


def options_have_swap(session: Session, swap: int) -> bool:
    return trainer_options(session).get("blocks_to_swap") == (swap or None)


def test_another_process_on_the_second_card_makes_it_the_binding_one(project: Path) -> None:
    busy = replace(TWIN, memory_used=TWIN.memory_used + 8 * GB, memory_free=TWIN.memory_free - 8 * GB)
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24), busy.uuid: CardRunner(busy)}
    session, result, _ = several(project, "fastest", [RTX_3090_24, busy], runners, {"1024x1024": 4})
    best = best_on(busy, (True, False))
    assert best_on(RTX_3090_24, (True, False)) != best
    assert chosen(session) == best
    assert len(runners[busy.uuid].specs) == result.data["trials"] and result.data["binding"] == busy.uuid
    assert [(s.batch, setting_of(s)) for s in runners[RTX_3090_24.uuid].specs] == [(best.batch, best.setting)]
    assert any(f"other processes hold {busy.memory_used / GB:.1f} GB" in line for line in result.details)


def test_a_check_that_runs_out_of_memory_lowers_the_shared_batch(project: Path) -> None:
    held = 4 * GB  # taken on GPU 1 after the probe read NVML: the check at the searched batch runs out of memory
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24), TWIN.uuid: CardRunner(TWIN, held=held, factor=1.2)}
    session, result, lines = several(project, "quality", [RTX_3090_24, TWIN], runners, {"1024x1024": 4})
    best = best_on(RTX_3090_24, (False,))
    searched = best.batch
    shared = largest_batch(TWIN, best, searched, held)
    assert 0 < shared < searched, "the held memory must matter for this test"
    assert chosen(session) == best._replace(batch=shared)
    checks = runners[TWIN.uuid].specs
    assert checks[0].batch == searched and max(s.batch for s in checks[1:]) < searched
    assert runners[RTX_3090_24.uuid].specs[-1].batch == shared  # the binding card measured again at the shared batch
    entry = load_results(session)["buckets"]["1024x1024"]
    slow = best.seconds(shared) * 1.2
    assert entry["batch_size"] == shared and entry["s_per_step"] == pytest.approx(slow, abs=1e-3)
    assert any(f"batch {searched} does not fit GPU 1" in line for line in lines)
    assert result.data["check_trials"] == len(checks) + 1


@pytest.mark.parametrize(("fail", "words"), [("error", "failed"), ("timeout", "timed out"),
                                             ("killed", "killed (host RAM?)")])
def test_a_check_refused_hung_or_killed_names_the_card_in_one_line(project: Path, fail: str, words: str) -> None:
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24, fail=fail), SMALL.uuid: CardRunner(SMALL)}
    session = make_session(project, "fastest", {"1024x1024": 4})
    session.set("gpu.uuids", [RTX_3090_24.uuid, SMALL.uuid])
    save(session)
    with pytest.raises(StepFailed) as raised:  # the 16 GB card binds: searched there; the 24 GB card's check fails
        run_step(StepContext(session=session, options={"nvml": FakeNvml([RTX_3090_24, SMALL]),
                                                       "trial_runner_for": lambda gpu: runners[gpu.uuid]}))
    message = str(raised.value)
    assert f"on GPU 0 (NVIDIA GeForce RTX 3090) {words}: the stand-in's {fail}" in message and "\n" not in message
    assert len(runners[RTX_3090_24.uuid].specs) == 1
    saved = load_results(session)["fit"]
    assert saved["partial"] and len([c for c in saved["candidates"] if c["trial"]]) == len(runners[SMALL.uuid].specs)
    assert session.gpu.fit_swap is None and fit_staleness(session) == "the last search was stopped before it ended"


def test_ctrl_c_during_a_check_keeps_the_search_partial_and_runs_nothing_more(project: Path) -> None:
    cancel = threading.Event()
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24, cancel_at=1, cancel=cancel), SMALL.uuid: CardRunner(SMALL)}
    session = make_session(project, "fastest")
    session.set("gpu.uuids", [RTX_3090_24.uuid, SMALL.uuid])
    save(session)
    with pytest.raises(Cancelled):
        run_step(StepContext(session=session, cancel=cancel, options={
            "nvml": FakeNvml([RTX_3090_24, SMALL]), "trial_runner_for": lambda gpu: runners[gpu.uuid]}))
    assert len(runners[RTX_3090_24.uuid].specs) == 1  # the first check, then nothing
    saved = load_results(session)["fit"]
    assert saved["partial"] and any(line.startswith("partial:") for line in saved["lines"])
    assert session.gpu.fit_swap is None


def test_a_card_gone_from_nvml_stops_before_any_trial(project: Path) -> None:
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24)}
    session = make_session(project, "fastest")
    session.set("gpu.uuids", [RTX_3090_24.uuid, "GPU-gone-1234"])
    save(session)
    with pytest.raises(StepFailed, match="GPU-gone-1234 is not visible"):
        run_step(StepContext(session=session, options={"nvml": FakeNvml([RTX_3090_24, SMALL]),
                                                       "trial_runner_for": lambda gpu: runners[gpu.uuid]}))
    assert runners[RTX_3090_24.uuid].specs == []


def test_replay_prints_the_table_and_the_cards_and_dry_run_names_the_binding_card(project: Path) -> None:
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24, factor=1.3), SMALL.uuid: CardRunner(SMALL)}
    session = make_session(project, "fastest", {"1024x1024": 4})
    session.set("gpu.uuids", [RTX_3090_24.uuid, SMALL.uuid])
    save(session)
    options = {"probe": {"nvml": FakeNvml([RTX_3090_24, SMALL]), "trial_runner_for": lambda gpu: runners[gpu.uuid]}}
    out, err = io.StringIO(), io.StringIO()
    assert replay(session.path, ["probe"], dry_run=True, out=out, err=err, tty=False, options=options) == 0, err.getvalue()
    text = out.getvalue()
    assert "fit search (fastest) on GPU 1 (RTX 4060 Ti, the binding card)" in text, text
    assert "trains the 1 bucket area(s) at the shared batch" in text and "GPU 0 (RTX 3090)" in text
    assert all(not r.specs for r in runners.values())
    out = io.StringIO()
    assert replay(session.path, ["probe"], out=out, err=err, tty=False, options=options) == 0, err.getvalue()
    text = out.getvalue()
    best = best_on(SMALL, (True, False))
    slow = best.seconds() * 1.3
    for needed in ("peak GB", "img/s", "◀ chosen", "per card (s/step", f"RTX 3090 (GPU 0): {slow:.2f} s/step",
                   "RTX 4060 Ti (GPU 1, searched)", "estimate: 2 GPUs", "forecast: 1024x1024", "(2 GPUs)"):
        assert needed in text, (needed, text)
    assert f"fit: {fit.Setting(best.swap, best.fp8, best.checkpointing).label()}, batch {best.batch}" in text


def test_through_real_stand_in_processes_each_pinned_to_its_card(project: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The real trial runner on two fake cards: each trial a stand-in trainer process pinned by CUDA_VISIBLE_DEVICES,
    with that card's free memory and pace (the 24 GB card 3× slower); the wizard's probe saves, then the training
    command and forecast use the choice on both GPUs."""
    import json

    from tests.support.fake_nvml import install
    from tests.support.standin import make_fake_sd_scripts

    sd_scripts, _python = make_fake_sd_scripts(tmp_path)
    cards = [RTX_3090_24, SMALL]
    peaks = tmp_path / "peak.json"

    def reader(uuid: str) -> Callable[[], dict[int, int]]:
        def read() -> dict[int, int]:
            try:
                data = json.loads(peaks.read_text())
            except (OSError, ValueError):
                return {}
            if data.get("device") != uuid:
                return {}
            peaks.unlink(missing_ok=True)
            return {0: int(data["peak_bytes"])}
        return read

    nvml = install(monkeypatch, FakeNvml(cards, processes={c.uuid: reader(c.uuid) for c in cards}, per_process=False))
    for name, value in {"MODEL": "1", "PEAK_FILE": str(peaks), "STEP_SECONDS": "0.01", "IMAGE_SECONDS": "0.02",
                        "SWAP_SECONDS": "0.001", "VRAM_BY_DEVICE": json.dumps({c.uuid: c.memory_total - c.memory_used
                                                                               for c in cards}),
                        "SLOWER_BY_DEVICE": json.dumps({RTX_3090_24.uuid: 3.0})}.items():
        monkeypatch.setenv(f"STANDIN_{name}", value)
    session = make_session(project, "fastest", {"1024x1024": 2})
    session.set("paths.sd_scripts", str(sd_scripts))
    session.set("gpu.uuids", [c.uuid for c in cards])
    save(session)
    result = run_step(StepContext(session=session, options={"nvml": nvml}))
    chosen = load_results(session)["fit"]["chosen"]  # (the optimum itself: the in-process tests; here speeds are timed)
    swap, fp8, batch = chosen["swap"], chosen["fp8"], chosen["batch"]
    assert (session.gpu.fit_swap, session.gpu.fit_fp8, session.batch_sizes()["1024x1024"]) == (swap, fp8, batch)
    assert swap > 0 and fp8  # 16 GB: FLUX.1's 16-bit base does not fit, nor fp8 without swapping
    logs = sorted((session.paths.state / "probe").glob("trial-*/trial.log"))
    assert len(logs) == result.data["trials"] + 1 and any("CUDA out of memory" in log.read_text() for log in logs)
    saved = load_results(session)
    check = next(c for c in saved["fit"]["checks"] if c["gpu"] == RTX_3090_24.uuid)
    searched = next(c for c in saved["fit"]["checks"] if c["searched"])
    assert searched["gpu"] == SMALL.uuid and check["batch"] == searched["batch"] == batch
    assert check["s_per_step"] > 1.5 * searched["s_per_step"]  # measured from the process's own step times
    assert saved["buckets"]["1024x1024"]["s_per_step"] == check["s_per_step"]
    out, err = io.StringIO(), io.StringIO()
    assert replay(session.path, ["train"], dry_run=True, out=out, err=err, tty=False) == 0, err.getvalue()
    text = out.getvalue()
    assert f"--blocks_to_swap {swap}" in text and "(2 GPUs)" in text and "not current" not in text, text


def test_memory_another_process_holds_on_a_checked_card_is_said(project: Path) -> None:
    busy = replace(TWIN, memory_used=TWIN.memory_used + 3 * GB, memory_free=TWIN.memory_free - 3 * GB)
    small = replace(SMALL, index=2, uuid="GPU-4060bbbb-16gb")
    runners = {c.uuid: CardRunner(c) for c in (RTX_3090_24, busy, small)}
    _, result, lines = several(project, "fastest", [RTX_3090_24, busy, small], runners, {"1024x1024": 4})
    assert result.data["binding"] == small.uuid
    # the 24 GB kind has two cards: the busier one speaks for both
    assert [len(runners[c.uuid].specs) for c in (RTX_3090_24, busy)] == [0, 1]
    assert any(f"other processes held {busy.memory_used / GB:.1f} GB of GPU 1" in line for line in result.details)
    assert any("1 more trial when every check fits" in line for line in lines)
    assert any("RTX 3090 ×2 (GPU 1)" in line for line in result.details)


class SpeedlessRunner(CardRunner):
    """A card whose trials train but whose log gives no s/step (a test double: a bar the reader could not parse)."""

    def __call__(self, spec: TrialSpec, report: Callable[[ProbeEvent], None]) -> TrialOutcome:
        return replace(super().__call__(spec, report), s_per_step=None)


def test_a_card_whose_speed_was_not_read_is_said_the_forecast_may_be_optimistic(project: Path) -> None:
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24), TWIN.uuid: SpeedlessRunner(TWIN)}  # GPU 0 is searched
    _, result, _ = several(project, "quality", [RTX_3090_24, TWIN], runners, {"1024x1024": 4})
    assert any(line.startswith(f"note: no s/step could be read on GPU {TWIN.index}") and "may be optimistic" in line
               for line in result.details), result.details
    runners = {RTX_3090_24.uuid: CardRunner(RTX_3090_24), TWIN.uuid: CardRunner(TWIN)}
    (project / "b").mkdir()
    _, result, _ = several(project / "b", "quality", [RTX_3090_24, TWIN], runners, {"1024x1024": 4})
    assert not any("no s/step could be read" in line for line in result.details)
