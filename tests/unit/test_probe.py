"""core.steps.probe: log classification, repeats, and the batch-size search with a simulated GPU (fast, no processes).

The search must land exactly on the limit in ≤ ⌈log2(limit)⌉ + 2 trials when NVML gives peaks, and exactly (more
trials) when it doesn't."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from lorawizard.core.contract import Cancelled, StepContext, StepFailed
from lorawizard.core.dataset.step import bucket_counts
from lorawizard.core.gpu.nvml import GB
from lorawizard.core.probe.step import run_step
from lorawizard.core.probe.trials import (
    MARGIN,
    BatchSearch,
    ProbeEvent,
    TrialOutcome,
    TrialSpec,
    areas,
    classify,
    repeats_for,
)
from lorawizard.core.session.document import Session
from tests.support.dataset_fixtures import prepared_buckets
from tests.support.fake_nvml import (
    RTX_3090_BUSY,
    RTX_3090_FREE,
    RTX_4090,
    FakeNvml,
    none_visible,
    one_gpu,
    two_different_gpus,
)
from tests.support.sessions import save

OOM_TEXT = (
    "Traceback (most recent call last):\n  File \"train_network.py\", line 1453, in train\n"
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 MiB. GPU 0 has a total capacity of 23.64 GiB\n"
    "subprocess.CalledProcessError: Command '['/x/python', 'flux_train_network.py']' returned non-zero exit status 1.\n"
)


@pytest.mark.parametrize(
    ("rc", "text", "steps", "status"),
    [
        (1, OOM_TEXT, 0, "oom"),
        (1, "RuntimeError: CUDA error: out of memory\n", 0, "oom"),
        (1, "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", 0, "oom"),
        (1, "subprocess.CalledProcessError: Command '[...]' died with <Signals.SIGKILL: 9>.\n", 1, "killed"),
        (-9, "", 1, "killed"),
        (0, "steps: 100%|██████████| 3/3 [00:01<00:00, 2.1it/s]\nmodel saved.\n", 3, "ok"),
        (0, "No data found. Please verify arguments\n", 0, "error"),
        (1, "Traceback (most recent call last):\nvoluptuous.error.MultipleInvalid: extra keys not allowed\n", 0, "error"),
    ],
)
def test_classify(rc: int, text: str, steps: int, status: str) -> None:
    assert classify(rc, text, steps, 3)[0] == status


def test_oom_detail_is_the_oom_line() -> None:
    assert classify(1, OOM_TEXT, 0, 3)[1].startswith("torch.OutOfMemoryError: CUDA out of memory.")
    assert "extra keys not allowed" in classify(1, "x\nvoluptuous.error.MultipleInvalid: extra keys not allowed\n", 0, 3)[1]


@pytest.mark.parametrize(("images", "batch"), [(1, 1), (1, 7), (3, 2), (12, 8), (40, 3), (5, 32)])
def test_repeats_make_every_batch_full(images: int, batch: int) -> None:
    repeats = repeats_for(images, batch, 3)
    assert (images * repeats) % batch == 0 and images * repeats // batch >= 3


# ---------------------------------------------------------------- the search on a simulated GPU


def simulate(limit: int, start: int, *, with_peaks: bool = True, total: int = 24 * GB) -> tuple[int, list[int]]:
    """A GPU where memory = base + batch × per and batch `limit` is the last one under the margin."""
    usable = int(total * MARGIN)
    base = 6 * GB
    per = (usable - base) // limit - 1  # limit fits; limit + 1 exceeds the margin by at least `per`
    search = BatchSearch(start, limit_bytes=usable, max_batch=64)
    tried = []
    while (batch := search.next()) is not None:
        tried.append(batch)
        peak = base + batch * per
        if peak > total:
            outcome = TrialOutcome(batch, "oom")
        elif peak > usable:
            outcome = TrialOutcome(batch, "over-margin", peak - base, peak if with_peaks else None)
        else:
            outcome = TrialOutcome(batch, "ok", peak - base, peak if with_peaks else None)
        search.add(outcome)
        assert len(tried) < 40
    return search.best, tried


@pytest.mark.parametrize("start", [1, 2])
@pytest.mark.parametrize("limit", [*list(range(1, 33)), 48, 64])
def test_search_lands_on_the_limit_within_log2_plus_2(limit: int, start: int) -> None:
    best, tried = simulate(limit, start)
    assert best == limit, tried
    assert len(tried) <= math.ceil(math.log2(limit)) + 2, tried


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 8, 13, 31])
def test_search_without_peaks_still_lands_exactly(limit: int) -> None:
    best, tried = simulate(limit, 2, with_peaks=False)
    assert best == limit and len(set(tried)) == len(tried), tried
    assert len(tried) <= 2 * math.ceil(math.log2(limit + 1)) + 2


def test_search_stops_at_the_cap() -> None:
    search = BatchSearch(2, max_batch=8)
    while (batch := search.next()) is not None:
        search.add(TrialOutcome(batch, "ok"))
    assert search.best == 8 and [o.batch for o in search.outcomes] == [2, 4, 8]


def test_a_wrong_prediction_falls_back_to_bisecting() -> None:
    """Peaks promise 20 but OOM starts at 7 (fragmentation, a spike): it must still land on 6."""
    search = BatchSearch(2, limit_bytes=100 * GB)
    while (batch := search.next()) is not None:
        fits = batch <= 6
        search.add(TrialOutcome(batch, "ok" if fits else "oom", None, 4 * GB * batch if fits else None))
        assert len(search.outcomes) < 12
    assert search.best == 6


# ---------------------------------------------------------------- the step with an injected trial runner


def make_project(project: Path, buckets: dict[str, int], preset: str | None = "24gb") -> Session:
    session = Session.new(project / "session.toml", name="probe-test")
    session.set("paths.sd_scripts", str(project / "sd-scripts"))
    session.set("gpu.vram_preset", preset)
    prepared_buckets(session.paths.dataset, buckets)
    save(session)
    return session


class PixelBudgetRunner:
    """Fits while batch × area ≤ budget pixels; peak = 1 GB + 1 KB per pixel (a linear GPU)."""

    def __init__(self, budget: int, *, with_peaks: bool = True, batch1_fails_until_swap: int = 0) -> None:
        self.budget, self.with_peaks, self.swap_needed = budget, with_peaks, batch1_fails_until_swap
        self.specs: list[TrialSpec] = []

    def __call__(self, spec: TrialSpec, report: Callable[[ProbeEvent], None]) -> TrialOutcome:
        self.specs.append(spec)
        width, height = (int(v) for v in spec.bucket.split("x"))
        pixels = spec.batch * width * height
        for step in range(1, 4):
            report(ProbeEvent("trial-step", spec, step, 3))
        if spec.preset.blocks_to_swap < self.swap_needed or pixels > self.budget:
            return TrialOutcome(spec.batch, "oom", detail="torch.OutOfMemoryError: CUDA out of memory.")
        peak = GB + pixels * 1000
        return TrialOutcome(spec.batch, "ok", peak, peak + RTX_4090.memory_used if self.with_peaks else None, 0.5)


def budget_gpu(budget: int) -> FakeNvml:
    """A GPU whose 95 % margin sits exactly at `budget` pixels of the PixelBudgetRunner's memory model."""
    from dataclasses import replace

    limit = RTX_4090.memory_used + GB + budget * 1000
    total = math.ceil(limit / MARGIN) + 1
    return FakeNvml([replace(RTX_4090, memory_total=total, memory_free=total - RTX_4090.memory_used)])


def ctx_for(session: Session, **options: object) -> tuple[StepContext, list[str]]:
    lines: list[str] = []
    return StepContext(session=session, log=lines.append, options=dict(options)), lines


def test_probe_records_one_batch_size_per_bucket_and_shares_equal_areas(project: Path) -> None:
    session = make_project(project, {"512x512": 3, "512x256": 2, "256x512": 5, "256x256": 1})
    runner = PixelBudgetRunner(budget=5 * 512 * 512)
    ctx, lines = ctx_for(session, trial_runner=runner, nvml=budget_gpu(5 * 512 * 512))
    result = run_step(ctx)
    assert result.ok, result.summary
    assert session.batch_sizes() == {"512x512": 5, "512x256": 10, "256x512": 10, "256x256": 20}
    assert [s.bucket for s in runner.specs if s.bucket in ("512x256", "256x512")] == ["256x512"] * len(
        [s for s in runner.specs if s.bucket in ("512x256", "256x512")])  # the area's bucket with most images
    assert session.get("gpu.uuid") == RTX_4090.uuid and session.get("gpu.vram_preset") == "24gb"
    text = Session.load(session.path).to_text()  # saved in the wizard (not read-only)
    assert "256x512 = 10" in text
    assert any("batch" in line and "ok" in line for line in lines)
    assert result.details[0].split() == ["bucket", "images", "batch", "peak", "GB", "s/step", "trials"]
    probe_json = (project / ".lorawizard" / "probe.json").read_text()
    assert '"peak_gb"' in probe_json and '"measured_at"' in probe_json


def test_larger_area_result_starts_the_next_area(project: Path) -> None:
    session = make_project(project, {"1024x1024": 4, "512x512": 4})
    runner = PixelBudgetRunner(budget=3 * 1024 * 1024)
    run_step(ctx_for(session, trial_runner=runner, nvml=budget_gpu(3 * 1024 * 1024))[0])
    first_small = next(s for s in runner.specs if s.bucket == "512x512")
    assert first_small.batch == 3
    assert session.batch_sizes() == {"1024x1024": 3, "512x512": 12}


def test_buckets_already_set_are_skipped_unless_reprobe(project: Path) -> None:
    session = make_project(project, {"512x512": 2, "256x256": 2})
    session.set_batch_size("512x512", 7)
    runner = PixelBudgetRunner(budget=4 * 512 * 512)
    result = run_step(ctx_for(session, trial_runner=runner, nvml=budget_gpu(4 * 512 * 512))[0])
    assert {s.bucket for s in runner.specs} == {"256x256"} and session.batch_sizes()["512x512"] == 7
    assert any("already set" in line for line in result.details)
    runner = PixelBudgetRunner(budget=4 * 512 * 512)
    run_step(ctx_for(session, trial_runner=runner, nvml=budget_gpu(4 * 512 * 512), reprobe=True)[0])
    assert session.batch_sizes()["512x512"] == 4


def test_batch_1_not_fitting_steps_down_the_presets(project: Path) -> None:
    session = make_project(project, {"512x512": 2})
    runner = PixelBudgetRunner(budget=2 * 512 * 512, batch1_fails_until_swap=16)
    ctx, lines = ctx_for(session, trial_runner=runner, nvml=budget_gpu(2 * 512 * 512))
    result = run_step(ctx)
    assert session.get("gpu.vram_preset") == "12gb" and session.batch_sizes() == {"512x512": 2}
    assert sum("stepping down" in line for line in lines) == 2
    assert "preset 12gb" in result.summary


def test_nothing_fits_even_at_the_last_preset(project: Path) -> None:
    session = make_project(project, {"512x512": 2})
    runner = PixelBudgetRunner(budget=0)
    with pytest.raises(StepFailed, match="even batch 1 does not fit 512x512 with the max-swap preset"):
        run_step(ctx_for(session, trial_runner=runner, nvml=budget_gpu(10))[0])


def test_sigkill_at_batch_1_is_host_ram_not_vram(project: Path) -> None:
    session = make_project(project, {"512x512": 2})

    def runner(spec: TrialSpec, report: Callable[[ProbeEvent], None]) -> TrialOutcome:
        return TrialOutcome(spec.batch, "killed" if spec.batch >= 1 else "ok", detail="killed (SIGKILL)")

    session.set("gpu.vram_preset", "16gb")  # starts at batch 1
    with pytest.raises(StepFailed, match="killed \\(SIGKILL\\): host RAM ran out"):
        run_step(ctx_for(session, trial_runner=runner, nvml=one_gpu())[0])


def test_no_gpu_skips_the_probe_with_one_line(project: Path) -> None:
    session = make_project(project, {"512x512": 2})
    result = run_step(ctx_for(session, nvml=none_visible())[0])
    assert result.ok and result.summary.startswith("no GPU: the probe is skipped")


def test_two_gpus_default_to_most_free_and_a_saved_choice_is_kept(project: Path) -> None:
    session = make_project(project, {"256x256": 1})
    run_step(ctx_for(session, trial_runner=PixelBudgetRunner(budget=2 * 256 * 256), nvml=two_different_gpus())[0])
    assert session.get("gpu.uuid") == RTX_3090_FREE.uuid
    session.set("gpu.uuid", RTX_3090_BUSY.uuid)
    run_step(ctx_for(session, trial_runner=PixelBudgetRunner(budget=2 * 256 * 256), nvml=two_different_gpus(),
                     reprobe=True)[0])
    assert session.get("gpu.uuid") == RTX_3090_BUSY.uuid


def test_a_vanished_gpu_is_replaced_and_said(project: Path) -> None:
    session = make_project(project, {"256x256": 1})
    session.set("gpu.uuid", "GPU-gone")
    ctx, lines = ctx_for(session, trial_runner=PixelBudgetRunner(budget=256 * 256), nvml=one_gpu())
    run_step(ctx)
    assert session.get("gpu.uuid") == RTX_4090.uuid and any("not visible now" in line for line in lines)


def test_no_dataset_is_one_line(project: Path) -> None:
    session = make_project(project, {})
    with pytest.raises(StepFailed, match="run the dataset step first"):
        run_step(ctx_for(session, nvml=one_gpu())[0])


def test_cancel_between_trials(project: Path) -> None:
    session = make_project(project, {"512x512": 2})
    ctx, _ = ctx_for(session, nvml=budget_gpu(8 * 512 * 512))
    inner = PixelBudgetRunner(budget=8 * 512 * 512)

    def runner(spec: TrialSpec, report: Callable[[ProbeEvent], None]) -> TrialOutcome:
        ctx.cancel.set()
        return inner(spec, report)

    ctx.options["trial_runner"] = runner
    with pytest.raises(Cancelled):
        run_step(ctx)
    assert session.batch_sizes() == {} and len(inner.specs) == 1


def test_bucket_counts_and_areas(project: Path) -> None:
    session = make_project(project, {"1024x512": 2, "512x1024": 3, "768x768": 1})
    (session.paths.dataset / "notes").mkdir()
    buckets = bucket_counts(session)
    assert buckets == {"1024x512": 2, "512x1024": 3, "768x768": 1}
    assert areas(buckets) == [("768x768", ["768x768"], 1), ("512x1024", ["1024x512", "512x1024"], 3)]


def test_an_unknown_preset_is_one_line_not_replaced(project: Path) -> None:
    session = make_project(project, {"256x256": 1}, preset=None)
    session.doc["gpu"]["vram_preset"] = "23gb"
    with pytest.raises(StepFailed, match="gpu.vram_preset: unknown preset '23gb' \\(known: 24gb, 16gb"):
        run_step(ctx_for(session, trial_runner=PixelBudgetRunner(budget=1), nvml=one_gpu())[0])
    assert session.get("gpu.vram_preset") == "23gb"


def test_no_preset_is_chosen_from_the_gpu(project: Path) -> None:
    session = make_project(project, {"256x256": 1}, preset=None)
    run_step(ctx_for(session, trial_runner=PixelBudgetRunner(budget=4 * 256 * 256), nvml=one_gpu())[0])
    assert session.get("gpu.vram_preset") == "24gb"  # a 24 GiB card


def test_host_ram_kills_above_batch_1_cap_the_result_and_are_said(project: Path) -> None:
    session = make_project(project, {"512x512": 2})
    inner = PixelBudgetRunner(budget=8 * 512 * 512)

    def runner(spec: TrialSpec, report: Callable[[ProbeEvent], None]) -> TrialOutcome:
        if spec.batch >= 4:
            return TrialOutcome(spec.batch, "killed", detail="killed (SIGKILL)")
        return inner(spec, report)

    result = run_step(ctx_for(session, trial_runner=runner, nvml=budget_gpu(8 * 512 * 512))[0])
    assert session.batch_sizes() == {"512x512": 3}
    assert any("killed by the system (SIGKILL) — host RAM" in line for line in result.details)


def test_log_tail_follows_phases_and_steps_across_any_chunking(tmp_path: Path) -> None:
    from lorawizard.core.probe.trials import _LogTail

    text = (
        "2026-11-25 16:44:52 INFO     Checking the state dict: Diffusers or BFL, dev or schnell  flux_utils.py:44\n"
        "                    INFO     caching latents...                                      train_util.py:1170\n"
        "\r100%|██████████| 2/2 [00:00<00:00, 49.2it/s]\nprepare optimizer, data loader etc.\n"
        "running training / 学習開始\n"
        "\rsteps:   0%|          | 0/3 [00:00<?, ?it/s]"
        "\rsteps:  33%|███▎      | 1/3 [00:02<00:04,  2.10s/it]"
        "\rsteps:  33%|███▎      | 1/3 [00:02<00:04,  2.10s/it, avr_loss=1.23]"
        "\rsteps:  67%|██████▋   | 2/3 [00:04<00:02,  2.05s/it, avr_loss=1.2]"
        "\rsteps: 100%|██████████| 3/3 [00:06<00:00,  2.01s/it, avr_loss=1.1]"
    ).encode()
    for size in (1, 7, 64, len(text)):
        path = tmp_path / f"log{size}"
        path.write_bytes(b"")
        tail, phases = _LogTail(path), []
        for start in range(0, len(text), size):
            with open(path, "ab") as handle:
                handle.write(text[start : start + size])
            tail.read()
            phases.append(tail.phase)
        assert (tail.step, tail.total) == (3, 3), size
        assert tail.rate_s == pytest.approx(2.01)
        ordered = list(dict.fromkeys(phases))
        assert ordered[-1] == "training", (size, ordered)
        if size < len(text):
            assert "loading models" in ordered and "caching latents" in ordered, (size, ordered)
        assert "学習開始" in tail.text  # multi-byte characters survive any split
