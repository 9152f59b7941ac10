"""The probe against the stand-in trainer (real processes, fake NVML): exact limits in few trials, SIGKILL,
a hanging trial, cancel, and `--replay --steps probe`."""

from __future__ import annotations

import io
import json
import math
import threading
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import tomlkit

from lorawizard.core.contract import Cancelled, StepContext, StepFailed
from lorawizard.core.gpu.nvml import GB
from lorawizard.core.gpu.presets import preset_named
from lorawizard.core.probe.step import run_step
from lorawizard.core.probe.trials import MARGIN, ProbeEvent, SubprocessTrialRunner, TrialSpec
from lorawizard.core.session.document import Session
from lorawizard.headless import replay
from tests.support.dataset_fixtures import prepared_buckets
from tests.support.fake_nvml import RTX_4090, FakeNvml, none_visible
from tests.support.sessions import save
from tests.support.standin import make_fake_sd_scripts

BYTES_PER_PIXEL = 16384  # the stand-in's default pretend cost


def peak_reader(path: Path):  # noqa: ANN201
    """The stand-in writes its pretend peak to a file; NVML "sees" it once (read and removed) as device memory."""

    def read() -> dict[int, int]:
        try:
            data = json.loads(path.read_text())
            path.unlink()
        except (OSError, ValueError):
            return {}
        return {0: int(data["peak_bytes"])}

    return read


def standin_gpu(budget_pixels: int, peak_file: Path) -> FakeNvml:
    """A GPU whose 95 % margin sits just above the stand-in's budget: the OOM limit and the margin agree."""
    limit = RTX_4090.memory_used + budget_pixels * BYTES_PER_PIXEL
    total = math.ceil(limit / MARGIN) + 1
    gpu = replace(RTX_4090, memory_total=total, memory_free=total - RTX_4090.memory_used)
    return FakeNvml([gpu], processes={gpu.uuid: peak_reader(peak_file)}, per_process=False)


@pytest.fixture
def standin(tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    sd_scripts, _python = make_fake_sd_scripts(tmp_path)
    session = Session.new(project / "session.toml", name="probe-standin")
    session.set("paths.sd_scripts", str(sd_scripts))
    session.set("gpu.vram_preset", "24gb")
    prepared_buckets(session.paths.dataset, {"512x512": 3, "256x256": 2})
    save(session)
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    monkeypatch.setenv("STANDIN_PEAK_FILE", str(tmp_path / "peak.json"))
    monkeypatch.setenv("STANDIN_ARGS_FILE", str(tmp_path / "args.json"))
    return session


def test_lands_exactly_on_the_limit_in_few_trials(standin: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = 3 * 512 * 512  # 512x512: batch 3; 256x256: batch 12
    monkeypatch.setenv("STANDIN_VRAM_BUDGET", str(budget))
    events: list[ProbeEvent] = []
    ctx = StepContext(session=standin, options={"nvml": standin_gpu(budget, tmp_path / "peak.json"),
                                                "on_event": events.append})
    result = run_step(ctx)
    assert result.ok, result.summary
    assert standin.batch_sizes() == {"512x512": 3, "256x256": 12}
    for entry in result.data["results"]:
        limit = entry["batch_size"]
        statuses = [(t["batch"], t["status"]) for t in entry["trials"]]
        assert len(statuses) <= math.ceil(math.log2(limit)) + 2, statuses
        assert (limit, "ok") in statuses and (limit + 1, "oom") in statuses, statuses
        assert entry["peak_gb"] == pytest.approx(budget * BYTES_PER_PIXEL / GB, abs=0.01)
        assert entry["s_per_step"] is not None and entry["s_per_step"] > 0
    assert {e.kind for e in events} >= {"trial-start", "trial-step", "trial-end", "area-done"}
    args = json.loads((tmp_path / "args.json").read_text())
    argv = args["argv"]
    assert argv[argv.index("--max_train_steps") + 1] == "3"
    for dropped in ("--max_train_epochs", "--sample_prompts", "--save_state", "--save_every_n_epochs"):
        assert dropped not in argv
    assert args["env"]["CUDA_VISIBLE_DEVICES"] == RTX_4090.uuid
    assert not list((standin.paths.state / "probe").glob("*/out/*.safetensors"))  # throwaway output removed
    assert list((standin.paths.state / "probe").glob("*/trial.log"))


def _runner(session: Session, tmp_path: Path, **kwargs: object) -> SubprocessTrialRunner:
    session.set("gpu.uuid", RTX_4090.uuid)
    workdir = session.paths.state / "probe"
    return SubprocessTrialRunner(session, RTX_4090, workdir, cancel=kwargs.pop("cancel", threading.Event()),  # type: ignore[arg-type]
                                 nvml=FakeNvml([RTX_4090]), sample_interval=0.05, **kwargs)  # type: ignore[arg-type]


def _standin_processes(root: Path, grace_s: float = 3.0) -> list[psutil.Process]:
    """The stand-in processes of `root` still alive once `grace_s` has passed: SIGKILL to a group is delivered at
    once but each process ends, and its parent reaps it, a moment later (a loaded machine showed one in between)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(root) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(found, timeout=grace_s)
    return [proc for proc in alive if _running(proc)]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE  # a zombie is dead: only its exit status is left to collect
    except psutil.Error:
        return False


def test_sigkill_is_reported_as_host_ram(standin: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_KILL_AT_STEP", "2")
    runner = _runner(standin, tmp_path)
    outcome = runner(TrialSpec("512x512", 2, preset_named("24gb"), 3, 1), lambda event: None)
    assert outcome.status == "killed" and "host RAM" in outcome.detail
    standin.set("gpu.vram_preset", "16gb")  # starts at batch 1: nothing to learn, the step says why
    with pytest.raises(StepFailed, match="host RAM ran out"):
        run_step(StepContext(session=standin, options={"nvml": FakeNvml([RTX_4090])}))


def test_a_hanging_trial_hits_its_time_limit_and_its_group_dies(standin: Session, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_HANG_AT_STEP", "2")
    runner = _runner(standin, tmp_path, timeout_s=1.5)
    outcome = runner(TrialSpec("512x512", 2, preset_named("24gb"), 3, 1), lambda event: None)
    assert outcome.status == "timeout" and 1.5 <= outcome.seconds < 10
    assert _standin_processes(standin.paths.state / "probe") == []


def test_cancel_kills_the_running_trial(standin: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_HANG_AT_STEP", "2")
    cancel = threading.Event()
    runner = _runner(standin, tmp_path, cancel=cancel)

    def report(event: ProbeEvent) -> None:
        if event.step >= 1:
            cancel.set()

    with pytest.raises(Cancelled):
        runner(TrialSpec("512x512", 1, preset_named("24gb"), 3, 1), report)
    assert _standin_processes(standin.paths.state / "probe") == []


def test_a_trainer_error_stops_the_probe_with_its_line(standin: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_FAIL", "bad_config")
    with pytest.raises(StepFailed, match="extra keys not allowed"):
        run_step(StepContext(session=standin, options={"nvml": FakeNvml([RTX_4090])}))


# ---------------------------------------------------------------- replay


def test_replay_steps_probe_prints_the_table_and_keeps_the_session(standin: Session, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    budget = 2 * 512 * 512
    monkeypatch.setenv("STANDIN_VRAM_BUDGET", str(budget))
    standin.set_batch_size("256x256", 5)
    save(standin)
    before = standin.path.read_bytes()
    out, err = io.StringIO(), io.StringIO()
    code = replay(standin.path, ["probe"], out=out, err=err, tty=False,
                  options={"probe": {"nvml": standin_gpu(budget, tmp_path / "peak.json")}})
    text = out.getvalue()
    assert code == 0, err.getvalue() + text
    assert standin.path.read_bytes() == before  # replay never rewrites the session file
    assert "512x512" in text and "bucket" in text and "(already set)" in text
    decisions = tomlkit.parse((standin.paths.state / "replay-decisions.toml").read_text()).unwrap()
    flat = json.dumps(decisions)
    assert "512x512" in flat and "256x256" not in flat


def test_replay_without_gpu_skips_the_probe_and_exits_0(standin: Session) -> None:
    """Issue 24 item 5: no GPU is not a failure (core.gpu.cpu_mode): the probe is skipped with one line."""
    out, err = io.StringIO(), io.StringIO()
    assert replay(standin.path, ["probe"], out=out, err=err, tty=False, options={"probe": {"nvml": none_visible()}}) == 0
    assert "no GPU: the probe is skipped" in out.getvalue() and err.getvalue() == ""


def test_replay_dry_run_shows_the_first_trial_and_runs_nothing(standin: Session, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = replay(standin.path, ["probe"], dry_run=True, out=out, err=err, tty=False,
                  options={"probe": {"nvml": FakeNvml([RTX_4090])}})
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert "would probe 512x512 (3 images)" in text and "first trial: cd " in text and "--max_train_steps 3" in text
    assert not (tmp_path / "args.json").exists() and not (standin.paths.state / "probe").exists()


def test_leaving_mid_trial_kills_the_trial(standin: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`q` or a crash while a trial runs: the exit hook kills the trial's process group."""
    from lorawizard.core.probe import trials as probe

    monkeypatch.setenv("STANDIN_HANG_AT_STEP", "1")
    cancel = threading.Event()
    runner = _runner(standin, tmp_path, cancel=cancel, timeout_s=30)
    seen = threading.Event()
    thread = threading.Thread(target=lambda: runner(TrialSpec("512x512", 1, preset_named("24gb"), 3, 1), lambda e: None),
                              daemon=True)
    thread.start()
    for _ in range(750):  # up to 15 s on a loaded machine
        if probe._running and _standin_processes(standin.paths.state / "probe"):
            seen.set()
            break
        threading.Event().wait(0.02)
    assert seen.is_set()
    probe._kill_running()  # what atexit runs
    thread.join(10)
    assert not thread.is_alive() and _standin_processes(standin.paths.state / "probe") == []


def test_cli_replay_probe_without_a_gpu_exits_0(standin: Session) -> None:
    """The real command line and the real NVML binding on a machine without an NVIDIA driver."""
    import subprocess
    import sys

    from lorawizard.core.gpu.nvml import PynvmlAdapter, inventory

    if inventory(PynvmlAdapter()).gpus:
        pytest.skip("this machine has an NVIDIA GPU")
    run = subprocess.run([sys.executable, "-m", "lorawizard", "--replay", str(standin.path), "--steps", "probe"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no GPU: the probe is skipped" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr


def test_the_probe_removes_text_encoder_caches_of_another_t5_length_first(standin: Session, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27: the trials cache text-encoder outputs and training reuses them, so FLUX.1-dev's 512-token caches go
    before a schnell session's first trial, as before a run."""
    from tests.support.te_caches import caches, write_cache

    for png in standin.paths.dataset.glob("*/*.png"):
        write_cache(png.with_name(png.stem + "_flux_te.npz"), 512)
    standin.set("models.family", "flux1-schnell")
    save(standin)
    budget = 2 * 512 * 512
    monkeypatch.setenv("STANDIN_VRAM_BUDGET", str(budget))
    out, err = io.StringIO(), io.StringIO()
    code = replay(standin.path, ["probe"], out=out, err=err, tty=False,
                  options={"probe": {"nvml": standin_gpu(budget, tmp_path / "peak.json")}})
    assert code == 0, err.getvalue()
    assert "probe: 5 text-encoder caches (*_flux_te.npz)" in out.getvalue() and "T5 512 → 256 tokens" in out.getvalue()
    assert caches(standin) == [] and len(list(standin.paths.dataset.glob("*/*.txt"))) == 5
