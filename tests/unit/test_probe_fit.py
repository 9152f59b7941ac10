"""Fastest fit (issue 26): the search over gradient checkpointing × optimizer state × swap × base precision × batch
finds the known optimum of the stand-in's memory and speed model with the promised number of trials, on 12 to 80 GB
fake cards and with another process holding memory; its pruning, what the person fixes, staleness, Ctrl-C, and the
command it leads to."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from lorawizard.core.contract import Cancelled, StepContext, StepFailed
from lorawizard.core.gpu.nvml import GB, GpuInfo
from lorawizard.core.gpu.probe_results import load_results
from lorawizard.core.launch.command import fit_options, parse_extra_args, preset_overrides, trainer_options
from lorawizard.core.probe import fit
from lorawizard.core.probe.step import run_step
from lorawizard.core.probe.trials import ProbeEvent, TrialOutcome, TrialSpec
from lorawizard.core.session.document import Session, parse_bucket
from tests.support.dataset_fixtures import prepared_buckets
from tests.support.fake_nvml import RTX_3060_12, RTX_3090_24, RTX_3090_BUSY, RTX_4060, FakeNvml
from tests.support.sessions import save
from tests.support.standin import standin_model

LADDER = (0, 8, 16, 22, 28, 35)  # FLUX.1's presets' blocks_to_swap, and 0


class ModelRunner:
    """A trial runner (test double) answering from the stand-in's memory and speed model, in-process: the GPU's
    other processes hold `gpu.memory_used`; over the free memory is a CUDA OOM. With `session`, the trial's
    optimizer and checkpointing are what the command builder would give the trainer (`preset_overrides`)."""

    def __init__(self, gpu: GpuInfo, *, refuse_swap: int | None = None, kill_swap: int | None = None,
                 cancel_at: int | None = None, cancel: threading.Event | None = None, hang_swap: int | None = None,
                 driver_error_at: int | None = None, session: Session | None = None,
                 refuse_optimizer: str | None = None) -> None:
        self.gpu, self.specs = gpu, []  # type: ignore[var-annotated]
        self.refuse_swap, self.kill_swap, self.cancel_at, self.cancel = refuse_swap, kill_swap, cancel_at, cancel
        self.hang_swap, self.driver_error_at = hang_swap, driver_error_at
        self.session, self.refuse_optimizer = session, refuse_optimizer

    def setting(self, spec: TrialSpec) -> dict[str, bool]:
        options = preset_overrides(self.session, spec.preset) if self.session is not None else spec.preset.options
        optimizer = options.get("optimizer_type") or (self.session.train.optimizer_type if self.session else "")
        return {"checkpointing": options.get("gradient_checkpointing", True) is not None,
                "state32": standin_model.state_32bit(optimizer)}

    def __call__(self, spec: TrialSpec, report) -> TrialOutcome:  # noqa: ANN001
        self.specs.append(spec)
        if self.cancel_at is not None and len(self.specs) >= self.cancel_at and self.cancel is not None:
            self.cancel.set()
            raise Cancelled()
        swap = int(spec.preset.options.get("blocks_to_swap") or 0)
        fp8 = bool(spec.preset.options.get("fp8_base"))
        width, height = parse_bucket(spec.bucket)
        if swap == self.refuse_swap:
            return TrialOutcome(spec.batch, "error", detail="AssertionError: block swap is refused here")
        if self.refuse_optimizer and spec.preset.options.get("optimizer_type") == self.refuse_optimizer:
            return TrialOutcome(spec.batch, "error", detail="ImportError: No module named 'bitsandbytes'")
        if swap == self.kill_swap:
            return TrialOutcome(spec.batch, "killed", detail="SIGKILL")
        if swap == self.hang_swap:
            return TrialOutcome(spec.batch, "timeout", detail="no result within 900 s (hung?); the trial was stopped")
        if self.driver_error_at is not None and len(self.specs) >= self.driver_error_at:
            return TrialOutcome(spec.batch, "error", detail="the trainer failed (exit status 1): RuntimeError: CUDA "
                                "error: unspecified launch failure")
        setting = self.setting(spec)
        peak = standin_model.peak_bytes(swap, fp8, spec.batch, width, height, **setting)
        if peak > self.gpu.memory_total - self.gpu.memory_used:
            return TrialOutcome(spec.batch, "oom", detail="torch.OutOfMemoryError: CUDA out of memory.")
        report(ProbeEvent("trial-step", spec, 3, 3, text="training", peak_bytes=peak))
        return TrialOutcome(spec.batch, "ok", peak_bytes=peak, device_peak_bytes=peak + self.gpu.memory_used,
                            s_per_step=standin_model.step_seconds(swap, fp8, spec.batch, width, height, **setting),
                            start_seconds=4.0 if len(self.specs) == 1 else 1.0)


def make_session(project: Path, choice: str, buckets: dict[str, int] | None = None) -> Session:
    session = Session.new(project / "session.toml", name="fit")
    session.set("gpu.fit", choice)
    prepared_buckets(session.paths.dataset, buckets or {"1024x1024": 4, "512x512": 3})
    save(session)
    return session


def probe(session: Session, gpu: GpuInfo, runner: ModelRunner, **options: object):  # noqa: ANN201
    lines: list[str] = []
    ctx = StepContext(session=session, log=lines.append,
                      options={"nvml": FakeNvml([gpu]), "gpu_uuid": gpu.uuid, "trial_runner": runner, **options})
    return run_step(ctx), lines


def model_rungs(policy: fit.FitPolicy, own_state32: bool = False) -> tuple[standin_model.Rung, ...]:
    """The policy's ladder as the stand-in model's rungs: (swap, checkpointing, 32-bit state)."""
    return tuple((r.swap, r.checkpointing, own_state32 and not r.optimizer) for r in policy.rungs)


def optimum(gpu: GpuInfo, fp8s: tuple[bool, ...], *, own_state32: bool = False,
            twin: str = "") -> tuple[int, bool, int, bool, bool] | None:
    """The brute-force best over every candidate the policy allows: (swap, fp8, batch, checkpointing, state32)."""
    limit = fit.limit_bytes(gpu.memory_total) - gpu.memory_used
    policy = fit.FitPolicy("x", LADDER, fp8s, no_checkpointing=True, lean_optimizer=twin)
    return standin_model.best_setting(model_rungs(policy, own_state32), fp8s, fit.MAX_BATCH, 1024, 1024, limit)


CARDS = {"24gb": RTX_3090_24, "16gb": RTX_4060, "12gb": RTX_3060_12,
         "24gb-busy": RTX_3090_BUSY}  # another process holds 11.2 GB of it


@pytest.mark.parametrize("card", list(CARDS))
def test_fastest_finds_the_known_optimum_within_the_promised_trials(project: Path, card: str) -> None:
    gpu = CARDS[card]
    session = make_session(project, "fastest")
    runner = ModelRunner(gpu)
    result, _ = probe(session, gpu, runner)
    expected = optimum(gpu, (True, False))
    assert expected is not None
    swap, fp8, batch, checkpointing, _ = expected
    assert (result.data["fit_swap"], result.data["fit_fp8"]) == (swap, fp8), result.details
    assert session.gpu.fit_swap == swap and session.gpu.fit_fp8 is fp8
    assert session.gpu.fit_checkpointing is checkpointing and session.gpu.fit_optimizer is None
    assert session.batch_sizes()["1024x1024"] == batch
    first_area = [s for s in runner.specs if s.bucket == "1024x1024"]
    budget = fit.FitPolicy("fastest", LADDER, (True, False), no_checkpointing=True).budget
    assert len(first_area) == result.data["trials"] <= budget == 28
    assert session.batch_sizes()["512x512"] >= batch  # the smaller area got its own largest batch, same setting
    assert all(s.preset.options.get("blocks_to_swap") in (swap or None,) for s in runner.specs[len(first_area):])
    if card == "24gb-busy":
        assert any("other processes hold 11.2 GB" in line for line in result.details)


@pytest.mark.parametrize("card", ["24gb", "16gb", "12gb"])
def test_quality_first_keeps_a_16_bit_base(project: Path, card: str) -> None:
    gpu = CARDS[card]
    session = make_session(project, "quality")
    runner = ModelRunner(gpu)
    expected = optimum(gpu, (False,))
    if expected is None:  # the 16-bit base does not fit this card at any swap: said in one line, fp8 suggested
        with pytest.raises(StepFailed, match="fastest"):
            probe(session, gpu, runner)
        assert all(not s.preset.options.get("fp8_base") for s in runner.specs)
        assert len(runner.specs) <= 14
        return
    result, _ = probe(session, gpu, runner)
    assert (session.gpu.fit_swap, session.gpu.fit_fp8, session.batch_sizes()["1024x1024"],
            session.gpu.fit_checkpointing) == expected[:4]
    assert all(not s.preset.options.get("fp8_base") for s in runner.specs)
    assert result.data["trials"] <= 14


def test_an_oom_rules_out_what_needs_more_memory_without_a_trial() -> None:
    policy = fit.FitPolicy("fastest", LADDER, (True, False))
    search = fit.FitSearch(policy, fit.limit_bytes(RTX_4060.memory_total))
    gpu = RTX_4060

    def trial(candidate: fit.Candidate) -> fit.Measured:
        s = candidate.setting
        peak = standin_model.peak_bytes(s.swap, s.fp8, candidate.batch, 1024, 1024) + gpu.memory_used
        if peak > gpu.memory_total:
            return fit.Measured(candidate, "oom", trial=1)
        status = "ok" if peak <= search.limit else "over-margin"
        return fit.Measured(candidate, status, peak, standin_model.step_seconds(s.swap, s.fp8, candidate.batch, 1024,
                                                                               1024), trial=1)

    search.run(trial)
    ruled = [m for m in search.measured if m.status == "ruled-out"]
    assert ruled, "fp8 at swap 0 ran out of memory: 16-bit at swap 0 is never tried"
    assert fit.Candidate(fit.Setting(0, False), 1) in {m.candidate for m in ruled}
    assert all(m.trial == 0 for m in ruled) and search.trials == sum(1 for m in search.measured if m.trial)


def test_a_slower_leaner_candidate_ends_its_line() -> None:
    """A larger batch slower per image than batch 2 (less memory): the line ends there, nothing between is tried."""
    speeds = {1: 1.0, 2: 1.5}  # s/step: images/s 1.0, 1.33; then 0.9 s per image (1.11 images/s)
    policy = fit.FitPolicy("quality", (0, 8), (False,))
    search = fit.FitSearch(policy, 20 * GB)
    tried: list[fit.Candidate] = []

    def trial(candidate: fit.Candidate) -> fit.Measured:
        tried.append(candidate)
        return fit.Measured(candidate, "ok", int((5 + candidate.batch) * GB), speeds.get(candidate.batch, 0.9 * candidate.batch), trial=1)

    best = search.run(trial)
    assert best is not None and best.candidate.batch == 2
    assert [c.batch for c in tried][:2] == [1, 2] and len(tried) == 3  # and the walk stops: not memory-bound
    assert all(c.setting.swap == 0 for c in tried)


def test_what_the_person_fixed_is_respected_and_said(project: Path) -> None:
    session = make_session(project, "fastest")
    session.set("train.extra_args", ["--blocks_to_swap", "12"])
    policy = fit.policy_for(session, parse_extra_args(session.train.extra_args))
    assert policy.swaps == (12,) and any("--blocks_to_swap 12" in n for n in policy.notes)
    session.set("train.extra_args", ["--cpu_offload_checkpointing"])
    policy = fit.policy_for(session, parse_extra_args(session.train.extra_args))
    assert policy.swaps == (0,) and any("refuses block swap" in n for n in policy.notes)
    session.set("train.extra_args", [])
    session.set("train.base_precision", "16bit")
    policy = fit.policy_for(session, {})
    assert policy.fp8 == (False,) and any("base_precision" in n for n in policy.notes)
    session.set("train.base_precision", "fp8")
    session.set("train.mixed_precision", "no")
    assert fit.policy_for(session, {}).fp8 == (False,)
    session.set("train.mixed_precision", "bf16")
    session.set("gpu.fit", "quality")
    assert fit.policy_for(session, {}).fp8 == (True,)  # explicitly fp8: kept even under quality first, and said


def test_a_refused_candidate_is_a_row_and_a_host_ram_kill_stops_that_walk(project: Path) -> None:
    gpu = RTX_4060  # 16 GB: fp8 at swap 0 and 8 do not fit, so the walk reaches swap 16
    session = make_session(project, "fastest", {"1024x1024": 4})
    result, _ = probe(session, gpu, ModelRunner(gpu, refuse_swap=16))
    assert any("refused by the trainer: AssertionError" in line for line in result.details)
    assert session.gpu.fit_swap not in (None, 16)  # the walk went on past the refused level
    (project / "b").mkdir()
    session = make_session(project / "b", "fastest", {"1024x1024": 4})
    killer = ModelRunner(gpu, kill_swap=16)
    with pytest.raises(StepFailed, match="killed for host RAM"):  # this card needs swap 16: host RAM is the limit
        probe(session, gpu, killer)
    swaps = [int(s.preset.options.get("blocks_to_swap") or 0) for s in killer.specs]
    assert swaps.count(16) == 1 and max(swaps) == 16  # the 16-bit walk (bigger blocks in RAM) never swaps as much
    (project / "c").mkdir()
    session = make_session(project / "c", "fastest", {"1024x1024": 4})
    runner = ModelRunner(RTX_3090_24, kill_swap=8)
    result, _ = probe(session, RTX_3090_24, runner)
    assert any("host RAM" in line for line in result.details)
    assert session.gpu.fit_swap == 0
    assert not [s for s in runner.specs if (s.preset.options.get("blocks_to_swap") or 0) > 8]


def test_measured_again_only_when_the_gpu_buckets_or_settings_change(project: Path) -> None:
    gpu = RTX_3090_24
    session = make_session(project, "fastest")
    probe(session, gpu, ModelRunner(gpu))
    again = ModelRunner(gpu)
    result, _ = probe(session, gpu, again)
    assert again.specs == [] and "measured for this GPU" in result.summary
    assert any("◀ chosen" in line for line in result.details)  # the saved table comes back
    session.set("train.network_dim", 32)
    save(session)
    changed = ModelRunner(gpu)
    _, lines = probe(session, gpu, changed)
    assert changed.specs and any("settings that change memory or speed changed" in line for line in lines)
    other = replace(RTX_4060, uuid="GPU-other")
    _, lines = probe(session, other, ModelRunner(other))
    assert any("the GPU changed" in line for line in lines)
    (session.paths.dataset / "1024x1024" / "0009.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    _, lines = probe(session, other, ModelRunner(other))
    assert any("the buckets changed" in line for line in lines)
    session.set("gpu.fit", "quality")
    save(session)
    lines: list[str] = []
    with pytest.raises(StepFailed, match="fastest allows an fp8 base"):  # 16 GB: no 16-bit setting fits
        run_step(StepContext(session=session, log=lines.append, options={
            "nvml": FakeNvml([other]), "gpu_uuid": other.uuid, "trial_runner": ModelRunner(other)}))
    assert any("the search changed (fastest → quality)" in line for line in lines)


def test_ctrl_c_keeps_the_partial_table_marked(project: Path) -> None:
    gpu = RTX_4060
    session = make_session(project, "fastest")
    cancel = threading.Event()
    runner = ModelRunner(gpu, cancel_at=3, cancel=cancel)
    with pytest.raises(Cancelled):
        run_step(StepContext(session=session, cancel=cancel, options={
            "nvml": FakeNvml([gpu]), "gpu_uuid": gpu.uuid, "trial_runner": runner}))
    saved = load_results(session)["fit"]
    assert saved["partial"] is True and len([c for c in saved["candidates"] if c["trial"]]) == 2
    assert any(line.startswith("partial:") for line in saved["lines"])
    assert fit.stale_reason(saved, saved["fingerprint"]) == "the last search was stopped before it ended"
    assert session.gpu.fit_swap is None  # nothing chosen from half a search


def test_the_command_uses_the_chosen_candidate(project: Path) -> None:
    session = make_session(project, "fastest")
    session.set("gpu.vram_preset", "24gb")
    session.set("gpu.fit_swap", 8)
    session.set("gpu.fit_fp8", False)
    options = trainer_options(session)
    assert options["blocks_to_swap"] == 8 and "fp8_base" not in options and "highvram" not in options
    session.set("gpu.fit_swap", 0)
    session.set("gpu.fit_fp8", True)
    options = trainer_options(session)
    assert "blocks_to_swap" not in options and options["fp8_base"] is True
    session.set("train.extra_args", ["--blocks_to_swap", "4"])  # the person's own option still wins
    assert trainer_options(session)["blocks_to_swap"] == "4"
    session.set("gpu.uuids", ["GPU-1", "GPU-2"])
    # several GPUs: the fit is searched on the binding card and checked on the others, so training applies it too
    assert fit_options(session) == {"blocks_to_swap": None, "fp8_base": True}
    assert trainer_options(session)["fp8_base"] is True
    session.set("gpu.uuids", [])
    session.set("gpu.fit", "preset")
    assert fit_options(session) == {}
    session.set("gpu.fit", "quality")
    session.set("gpu.fit_fp8", None)
    assert fit_options(session)["fp8_base"] is None  # quality first: 16-bit even before a fit is measured


def test_forecast_from_the_measured_speed_and_phases(project: Path) -> None:
    gpu = RTX_3090_24
    session = make_session(project, "fastest")
    session.set("gpu.price_per_hour", 0.8)
    save(session)
    result, _ = probe(session, gpu, ModelRunner(gpu))
    forecast = [line for line in result.details if line.startswith("forecast:")]
    assert any("s/step" in line and "1024x1024" in line for line in forecast)
    assert any("start-up 0:04" in line and "the probe's longest launch to first step" in line for line in forecast), forecast
    total = next(line for line in forecast if "in all" in line)
    assert "per GPU-hour" in total
    assert any("no hosted-trainer price" in line and "gpu.hosted_price_per_1000_steps" in line for line in forecast)
    session.set("gpu.hosted_price_per_1000_steps", 2.5)  # the person's figure, from the hosted trainer's price page
    from lorawizard.core.train.forecast import forecast as run_forecast
    from lorawizard.core.train.forecast import forecast_lines

    planned = run_forecast(session)
    assert planned is not None
    steps = sum(b.steps for b in planned.buckets)
    hosted = next(line for line in forecast_lines(session) if "hosted at 2.5 per 1,000 steps" in line)
    assert f"≈{steps / 1000 * 2.5:.2f} for {steps:,} steps" in hosted and "your figure" in hosted
    session.set("gpu.hosted_price_per_1000_steps", None)
    assert not any("not current" in line for line in forecast_lines(session))
    session.set("train.network_dim", 64)  # memory changes: the forecast says the fit must be measured again
    assert any("not current — settings that change memory or speed changed" in line for line in forecast_lines(session))


def test_dry_run_runs_nothing_and_says_the_bound(project: Path) -> None:
    gpu = RTX_3090_24
    session = make_session(project, "fastest")
    runner = ModelRunner(gpu)
    ctx = StepContext(session=session, dry_run=True, options={"nvml": FakeNvml([gpu]), "gpu_uuid": gpu.uuid,
                                                              "trial_runner": runner})
    result = run_step(ctx)
    assert runner.specs == [] and "at most 28 trials" in result.summary
    assert not (session.paths.state / "probe").exists()


def test_a_hung_trial_ends_its_walk_and_a_driver_error_stops_the_probe(project: Path) -> None:
    gpu = RTX_4060
    session = make_session(project, "fastest", {"1024x1024": 4})
    runner = ModelRunner(gpu, hang_swap=22)
    result, _ = probe(session, gpu, runner)
    assert any("timed out" in line for line in result.details)
    fp8_swaps = [s.preset.options.get("blocks_to_swap") or 0 for s in runner.specs if s.preset.options.get("fp8_base")]
    assert max(fp8_swaps) == 22  # the fp8 walk stopped at the hung level: its time limit is long
    (project / "b").mkdir()
    session = make_session(project / "b", "fastest", {"1024x1024": 4})
    with pytest.raises(StepFailed, match="driver failed mid-probe"):
        probe(session, gpu, ModelRunner(gpu, driver_error_at=3))
    saved = load_results(session)["fit"]
    assert saved["partial"] and len(saved["candidates"]) >= 3 and session.gpu.fit_swap is None


def test_extra_args_fixing_the_swap_are_kept_through_the_probe(project: Path) -> None:
    gpu = RTX_3090_24
    session = make_session(project, "fastest", {"1024x1024": 4})
    session.set("train.extra_args", ["--blocks_to_swap", "12"])
    save(session)
    runner = ModelRunner(gpu)
    result, _ = probe(session, gpu, runner)
    assert any("--blocks_to_swap 12 in train.extra_args: kept, not searched" in line for line in result.details)
    assert {s.preset.options.get("blocks_to_swap") for s in runner.specs} == {12}
    assert session.gpu.fit_swap == 12
    assert trainer_options(session)["blocks_to_swap"] == "12"  # the person's own value reaches the trainer


def test_a_hand_edited_probe_json_gives_no_rows_not_a_crash() -> None:
    from lorawizard.core.probe.fit_rows import saved_rows

    assert saved_rows({"candidates": [{"swap": "x"}]}, 100) == ()
    assert saved_rows("nonsense", 100) == ()  # type: ignore[arg-type]
    assert fit.stale_reason({"fingerprint": "x"}, {"gpu": "g", "buckets": "", "settings": "", "choice": "fastest"})


# ---------------------------------------------------------------- checkpointing and the optimizer's state

H100_80 = replace(RTX_3090_24, name="NVIDIA H100 80GB HBM3", memory_total=80 * 1024**3, uuid="GPU-h100eeee-80gb")
A6000_48 = replace(RTX_3090_24, name="NVIDIA RTX A6000", memory_total=48 * 1024**3, uuid="GPU-a6000fff-48gb")
SWEEP = [RTX_3060_12, RTX_4060, RTX_3090_24, RTX_3090_BUSY, A6000_48, H100_80]


def model_trial(gpu: GpuInfo, limit: int, own_state32: bool):  # noqa: ANN201
    def trial(candidate: fit.Candidate) -> fit.Measured:
        s = candidate.setting
        setting = {"checkpointing": s.checkpointing, "state32": own_state32 and not s.optimizer}
        peak = standin_model.peak_bytes(s.swap, s.fp8, candidate.batch, 1024, 1024, **setting) + gpu.memory_used
        if peak > gpu.memory_total:
            return fit.Measured(candidate, "oom", trial=1)
        return fit.Measured(candidate, "ok" if peak <= limit else "over-margin", peak,
                            standin_model.step_seconds(s.swap, s.fp8, candidate.batch, 1024, 1024, **setting), trial=1)

    return trial


@pytest.mark.parametrize("gpu", SWEEP, ids=lambda g: f"{g.name.split()[-1]}-{g.memory_used / GB:.0f}used")
@pytest.mark.parametrize(("fp8s", "own_state32", "twin"), [
    ((False,), False, ""), ((True, False), False, ""), ((False,), True, ""), ((True, False), True, "AdamW8bit")],
    ids=["quality", "fastest", "quality-AdamW", "fastest-AdamW"])
def test_the_search_finds_the_best_of_every_allowed_candidate(gpu: GpuInfo, fp8s: tuple[bool, ...],
                                                              own_state32: bool, twin: str) -> None:
    """Every card × mode × optimizer: the search's choice is the brute-force best of the whole allowed grid
    (checkpointing off/on × state × swap × base × batch 1–32), within the promised bound."""
    limit = fit.limit_bytes(gpu.memory_total)
    policy = fit.FitPolicy("x", LADDER, fp8s, no_checkpointing=True, lean_optimizer=twin)
    search = fit.FitSearch(policy, limit)
    found = search.run(model_trial(gpu, limit, own_state32))
    expected = standin_model.best_setting(model_rungs(policy, own_state32), fp8s, fit.MAX_BATCH, 1024, 1024,
                                          limit - gpu.memory_used)
    assert search.trials <= policy.budget
    if expected is None:
        assert found is None
        return
    assert found is not None, search.notes
    s = found.candidate.setting
    state32 = own_state32 and not s.optimizer
    assert (s.swap, s.fp8, found.candidate.batch, s.checkpointing, state32) == expected, (search.notes, [
        (m.candidate.label(), m.status, m.images_per_s) for m in search.measured])


def test_no_checkpointing_when_it_fits_reaches_the_training_command(project: Path) -> None:
    gpu = H100_80
    session = make_session(project, "quality", {"1024x1024": 4})
    runner = ModelRunner(gpu, session=session)
    result, _ = probe(session, gpu, runner)
    expected = optimum(gpu, (False,))
    assert expected is not None and expected[3] is False  # the model says: no checkpointing wins on 80 GB
    assert (session.gpu.fit_swap, session.batch_sizes()["1024x1024"], session.gpu.fit_checkpointing) == \
        (expected[0], expected[2], False), result.details
    assert "gradient_checkpointing" not in trainer_options(session)
    assert any(" off " in line and "◀ chosen" in line for line in result.details)  # the table's ckpt column
    session.set("gpu.fit", "preset")  # the preset governs again: checkpointing back on
    assert trainer_options(session)["gradient_checkpointing"] is True


def test_fastest_may_swap_the_persons_adamw_for_its_8_bit_twin_quality_keeps_it(project: Path) -> None:
    gpu = RTX_3090_24
    session = make_session(project, "fastest", {"1024x1024": 4})
    session.set("train.optimizer_type", "AdamW")
    save(session)
    runner = ModelRunner(gpu, session=session)
    result, _ = probe(session, gpu, runner)
    expected = optimum(gpu, (True, False), own_state32=True, twin="AdamW8bit")
    assert expected is not None and expected[4] is False  # the 8-bit state buys the best setting here
    assert session.gpu.fit_optimizer == "AdamW8bit" and session.gpu.fit_checkpointing is expected[3]
    assert (session.gpu.fit_swap, session.gpu.fit_fp8, session.batch_sizes()["1024x1024"]) == expected[:3]
    assert trainer_options(session)["optimizer_type"] == "AdamW8bit"
    assert any("AdamW8bit (the same rule, 8-bit state)" in line for line in result.details)
    from lorawizard.core.train.step import fit_used_line

    used = fit_used_line(session, trainer_options(session))  # what the run's plan says it trains with
    assert used is not None and "AdamW8bit in place of your AdamW" in used
    assert ("no gradient checkpointing" in used) is (expected[3] is False) and f"swap {expected[0]}," in used
    header = next(i for i, line in enumerate(result.details) if line.lstrip().startswith("#  swap"))
    assert "ckpt state" in result.details[header]  # the state column, as a candidate used the twin
    rows = result.details[header + 1:header + 1 + result.data["trials"]]
    assert any(" own " in row for row in rows) and any(" 8-bit " in row for row in rows)
    session.set("train.optimizer_type", "Lion")  # the person changed optimizer: the old twin no longer applies
    assert trainer_options(session)["optimizer_type"] == "Lion"

    (project / "q").mkdir()
    session = make_session(project / "q", "quality", {"1024x1024": 4})
    session.set("train.optimizer_type", "AdamW")
    save(session)
    runner = ModelRunner(gpu, session=session)
    result, _ = probe(session, gpu, runner)
    assert not [s for s in runner.specs if s.preset.options.get("optimizer_type") == "AdamW8bit"]
    assert session.gpu.fit_optimizer is None and trainer_options(session)["optimizer_type"] == "AdamW"
    assert any("kept (quality first)" in line for line in result.details)


def test_what_the_person_fixed_about_checkpointing_and_optimizer_is_kept(project: Path) -> None:
    session = make_session(project, "fastest")
    policy = fit.policy_for(session, {})
    assert policy.no_checkpointing and not policy.lean_optimizer  # the default AdamW8bit: 8-bit already
    assert [(r.swap, r.checkpointing) for r in policy.rungs[:3]] == [(0, False), (0, True), (8, True)]
    session.set("train.extra_args", ["--gradient_checkpointing"])
    policy = fit.policy_for(session, parse_extra_args(session.train.extra_args))
    assert not policy.no_checkpointing and all(r.checkpointing for r in policy.rungs)
    assert any("--gradient_checkpointing in train.extra_args" in n for n in policy.notes)
    session.set("train.extra_args", ["--blocks_to_swap", "8"])  # swapping fixed: checkpointing stays on
    assert all(r.checkpointing for r in fit.policy_for(session, parse_extra_args(session.train.extra_args)).rungs)
    session.set("train.extra_args", [])
    session.set("train.optimizer_type", "prodigyopt.Prodigy")  # no 8-bit twin: nothing to search
    assert fit.policy_for(session, {}).lean_optimizer == ""
    session.set("train.optimizer_type", "sgdnesterov")
    policy = fit.policy_for(session, {})
    assert policy.lean_optimizer == "SGDNesterov8bit" and policy.budget == 2 * (9 + 5 + 2)
    assert "32-bit then SGDNesterov8bit optimizer state" in policy.line()


def test_a_refused_8_bit_twin_leaves_the_later_rungs_to_the_persons_optimizer(project: Path) -> None:
    gpu = RTX_4060
    session = make_session(project, "fastest", {"1024x1024": 4})
    session.set("train.optimizer_type", "AdamW")
    save(session)
    runner = ModelRunner(gpu, session=session, refuse_optimizer="AdamW8bit")
    result, _ = probe(session, gpu, runner)
    twins = [s for s in runner.specs if s.preset.options.get("optimizer_type") == "AdamW8bit"]
    assert twins and len(twins) <= 2  # refused once per walk, then never again
    assert any("No module named 'bitsandbytes'" in line for line in result.details)
    assert session.gpu.fit_optimizer is None and session.gpu.fit_swap is not None


def test_fit_options_apply_checkpointing_and_the_twin_only_while_they_hold(project: Path) -> None:
    session = make_session(project, "fastest")
    session.set("gpu.fit_swap", 0)
    session.set("gpu.fit_checkpointing", False)
    session.set("gpu.fit_optimizer", "AdamW8bit")
    assert fit_options(session)["gradient_checkpointing"] is None
    assert "optimizer_type" not in fit_options(session)  # AdamW8bit is nobody's twin of the default adamw8bit
    session.set("train.optimizer_type", "adamw")
    assert fit_options(session)["optimizer_type"] == "AdamW8bit"
    session.set("gpu.fit_checkpointing", True)
    assert "gradient_checkpointing" not in fit_options(session)


def test_fit_rows_read_the_new_settings_from_names_and_saved_candidates() -> None:
    from lorawizard.core.gpu.presets import BUILTIN_PRESETS
    from lorawizard.core.probe.fit_rows import saved_rows, setting_of
    from lorawizard.core.probe.fit_run import candidate_preset

    base = BUILTIN_PRESETS[0]
    for setting in (fit.Setting(8, True), fit.Setting(0, False, checkpointing=False),
                    fit.Setting(0, True, optimizer="AdamW8bit"), fit.Setting(16, False, True, "Lion8bit")):
        name = candidate_preset(base, setting).name
        assert setting_of(name) == (setting.swap, "fp8" if setting.fp8 else "16-bit",
                                    "on" if setting.checkpointing else "off", "8-bit" if setting.optimizer else "own")
    assert setting_of("16gb") is None
    assert setting_of(candidate_preset(base, fit.Setting(8, True), chosen=True).name) is None
    chosen = {"swap": 0, "fp8": True, "batch": 2, "checkpointing": False, "optimizer": ""}
    candidates = [{**chosen, "status": "ok", "peak_bytes": 20 * GB, "s_per_step": 0.5, "images_per_s": 4.0, "trial": 1},
                  {**chosen, "checkpointing": True, "status": "ok", "peak_bytes": 15 * GB, "s_per_step": 0.6,
                   "images_per_s": 3.3, "trial": 2},
                  {"swap": 8, "fp8": True, "batch": 1, "status": "oom", "trial": 3}]  # an older probe.json's row
    rows = saved_rows({"chosen": chosen, "candidates": candidates}, 100)
    assert [(r.ckpt, r.state, r.result) for r in rows] == [("off", "own", "◀ chosen"), ("on", "own", "ok"),
                                                           ("on", "own", "out of memory")]


def test_a_run_with_a_fit_that_is_not_current_warns_in_one_line(tmp_path: Path) -> None:
    """Checkpointing off or a large batch chosen for other buckets may not fit them: the run says so (and still
    uses the fit: the person decides); a current fit, or the preset, says nothing."""
    from lorawizard.core.train.step import plan_run, stale_fit_line
    from tests.support.standin import make_train_project

    gpu = H100_80
    session = make_train_project(tmp_path, epochs=1)
    session.set("gpu.fit", "quality")
    session.set("gpu.uuid", gpu.uuid)
    save(session)
    probe(session, gpu, ModelRunner(gpu))
    assert session.gpu.fit_checkpointing is False and stale_fit_line(session) is None
    (session.paths.dataset / "512x512" / "0009.png").write_bytes(b"\x89PNG stand-in")
    line = stale_fit_line(session)
    assert line is not None and "\n" not in line and "the buckets changed" in line
    plan = plan_run(session)
    assert plan.notes[0] == line
    assert any(note.startswith("the probe's fit (gpu.fit = quality) trains with: swap 0, 16-bit base, no gradient "
                               "checkpointing") for note in plan.notes), plan.notes
    session.set("gpu.fit", "preset")
    assert stale_fit_line(session) is None
