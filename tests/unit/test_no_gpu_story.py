"""One story for "no GPU" (issue 24 item 5), the rule of core.gpu.cpu_mode as every step applies it: the probe is
skipped with one line (replay exits 0), batch sizes come from the session (set by hand) else 1, the CPU trains as a
labelled test mode with its expected speed, and a CPU without native bf16 is said with mixed_precision = "no" offered."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest

from lorawizard.core.environment.doctor import cpu_finding
from lorawizard.core.environment.fixes import run_fix
from lorawizard.core.gpu import cpu_mode
from lorawizard.core.probe.step import run_step as probe_step
from lorawizard.core.session.document import Session
from lorawizard.core.train.step import plan_run
from lorawizard.headless import replay
from tests.support.fake_nvml import FakeNvml, install
from tests.support.sessions import save
from tests.support.standin import make_train_project

pytestmark = pytest.mark.unit

FLAGS_NATIVE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
FLAGS_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"


def none_visible() -> FakeNvml:
    return FakeNvml(problem="NVIDIA driver not installed (libnvidia-ml not found)")


def cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


@pytest.fixture
def two_buckets(tmp_path: Path) -> Session:
    """A stand-in project: 512x512 with a batch size set by hand (3), 256x256 with none, and the 24 GB preset
    (whose batch of 2 must not be used without a GPU)."""
    session = make_train_project(tmp_path, batch_size=3)
    folder = session.paths.dataset / "256x256"
    folder.mkdir(parents=True)
    (folder / "0000.png").write_bytes(b"\x89PNG stand-in")
    (folder / "0000.txt").write_text("tok, a thing")
    session.set("gpu.vram_preset", "24gb")
    save(session)
    return session


def test_no_gpu_skips_the_probe_with_one_line_and_replay_exits_0(two_buckets: Session) -> None:
    before = two_buckets.path.read_bytes()
    out, err = io.StringIO(), io.StringIO()
    code = replay(two_buckets.path, ["probe"], out=out, err=err, tty=False, options={"probe": {"nvml": none_visible()}})
    assert code == 0, err.getvalue() + out.getvalue()
    assert err.getvalue() == ""
    assert f"probe: ok - {cpu_mode.REPLAY_PROBE_SKIPPED}" in out.getvalue()
    assert "512x512" in out.getvalue() and "batch 3 (set by hand)" in out.getvalue()
    assert "batch 1 (default)" in out.getvalue()
    assert two_buckets.path.read_bytes() == before  # nothing recorded: "else 1" is the rule, not a decision
    assert not (two_buckets.paths.state / "replay-decisions.toml").exists()


def test_the_probe_step_without_a_gpu_is_ok_not_a_failure(two_buckets: Session) -> None:
    from lorawizard.core.contract import StepContext

    lines: list[str] = []
    result = probe_step(StepContext(session=two_buckets, log=lines.append, options={"nvml": none_visible()}))
    assert result.ok and result.summary == cpu_mode.REPLAY_PROBE_SKIPPED
    assert result.data["batch_sizes"] == {"512x512": 3, "256x256": 1}


def test_batch_sizes_without_a_gpu_come_from_the_session_else_1(two_buckets: Session,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu_mode.batch_sizes(two_buckets, {"512x512": 4, "256x256": 1}) == {"512x512": 3, "256x256": 1}
    install(monkeypatch, none_visible())
    plan = plan_run(two_buckets, run_dir=two_buckets.project_dir / "run")
    config = tomllib.loads((plan.run_dir / "dataset_config.toml").read_text())
    sizes = {Path(d["subsets"][0]["image_dir"]).name: d["batch_size"] for d in config["datasets"]}
    assert sizes == {"512x512": 3, "256x256": 1}  # the 24 GB preset's batch 2 is a GPU's guess, not used
    assert plan.cpu is not None and plan.cpu_lines()[0].startswith("CPU test mode")


def test_replay_train_without_a_gpu_says_cpu_test_mode_and_offers_fp32(two_buckets: Session, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, none_visible())
    monkeypatch.setattr(cpu_mode, "CPUINFO", cpuinfo(tmp_path, FLAGS_PLAIN))
    out, err = io.StringIO(), io.StringIO()
    assert replay(two_buckets.path, ["train"], dry_run=True, out=out, err=err, tty=False) == 0, err.getvalue()
    text = out.getvalue()
    assert "CPU test mode: no GPU visible" in text and "per step at 512x512 batch 3 (estimate)" in text
    assert "bf16 runs about 200× slower than fp32" in text and 'train.mixed_precision = "no"' in text


def test_cpu_flags_and_native_bf16(tmp_path: Path) -> None:
    assert cpu_mode.native_bf16(cpu_mode.cpu_flags(cpuinfo(tmp_path, FLAGS_NATIVE))) is True
    assert cpu_mode.native_bf16(cpu_mode.cpu_flags(cpuinfo(tmp_path, FLAGS_PLAIN))) is False
    assert cpu_mode.native_bf16(cpu_mode.cpu_flags(tmp_path / "missing")) is None
    amx = cpuinfo(tmp_path, "flags : sse2 amx_bf16 amx_tile\n")
    assert cpu_mode.native_bf16(cpu_mode.cpu_flags(amx)) is True


def test_the_estimate_orders_the_precisions(two_buckets: Session) -> None:
    native = cpu_mode.seconds_per_step(two_buckets, "1024x1024", 1, "bf16", True)
    fp32 = cpu_mode.seconds_per_step(two_buckets, "1024x1024", 1, "no", False)
    emulated = cpu_mode.seconds_per_step(two_buckets, "1024x1024", 1, "bf16", False)
    assert 60 < native < 3 * 3600  # minutes per step: a test mode
    assert fp32 > native and emulated == pytest.approx(fp32 * 200)
    assert cpu_mode.seconds_per_step(two_buckets, "1024x1024", 2, "bf16", True) == pytest.approx(2 * native)


def test_a_cpu_without_bf16_flags_is_a_finding_offering_mixed_precision_no(two_buckets: Session,
                                                                           tmp_path: Path) -> None:
    finding = cpu_finding(two_buckets, cpuinfo(tmp_path, FLAGS_PLAIN))
    assert finding.status == "warning" and finding.action == "fp32"
    assert "200× slower than fp32" in finding.message and 'mixed_precision = "no"' in finding.fix
    recorded: dict[str, object] = {}
    result = run_fix(two_buckets, "fp32", record=recorded.__setitem__)
    assert result.ok and recorded == {"train.mixed_precision": "no"}

    native = cpu_finding(two_buckets, cpuinfo(tmp_path, FLAGS_NATIVE))
    assert native.status == "ok" and native.action is None and "test mode (native bf16)" in native.message
    two_buckets.set("train.mixed_precision", "no")
    assert cpu_finding(two_buckets, cpuinfo(tmp_path, FLAGS_PLAIN)).status == "ok"  # fp32 already: nothing to offer


def test_environment_without_a_gpu_tells_the_same_rule(two_buckets: Session) -> None:
    from lorawizard.core.environment.doctor import _gpu_finding
    from lorawizard.core.gpu.nvml import inventory

    finding = _gpu_finding(two_buckets, inventory(none_visible()), [])
    assert "need one" not in finding.line() and cpu_mode.NO_GPU_RULE in finding.fix
