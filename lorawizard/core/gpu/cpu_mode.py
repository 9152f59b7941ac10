"""One story for "no GPU" (issue 24 item 5): the rule, decided here once; the environment step, the probe step, the
GPU and Train screens and `--replay` all read it, so a session runs the same way in the wizard and in replay.

The rule, when NVML sees no GPU:

- the probe step is skipped with one line (`PROBE_SKIPPED`), ok (exit 0 in replay), never a failure: there is
  nothing to measure;
- each bucket's batch size is the one set by hand (the GPU screen's `b`, `gpu.batch_size.<bucket>`), else 1 — never
  a VRAM preset's guess (presets are about GPU memory);
- training on the CPU is allowed, labelled "CPU test mode" with its expected speed (an estimate, below): it checks
  a setup end to end, it does not make a LoRA in useful time;
- a CPU without native bf16 (neither `avx512_bf16` nor `amx_bf16` in /proc/cpuinfo's flags) runs bf16 about 200×
  slower than fp32: said wherever training is started, with `train.mixed_precision = "no"` offered.

The expected speed is a rough estimate, calibrated once: sd-scripts' FLUX trainer on 2 vCPUs with avx512_bf16 ran a
545.5 M-parameter transformer at 128×128 px (64 image tokens + 512 text tokens), batch 2, in 7.5 s/step
(../shared/e2e/README.md, "Results"); that is ~4.2e10 parameter·tokens per second per thread in bf16. fp32 matmuls
ran at 120 GFLOP/s there against 370 for bf16 (same table), and bf16 without native support about 200× slower than
fp32 (issue 24, measured on such a CPU). The wizard's command runs one thread per process
(`--num_cpu_threads_per_process 1`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorawizard.core.gpu.nvml import Inventory, NvmlAdapter, inventory
from lorawizard.core.profile import family_for
from lorawizard.core.session.document import Session, bucket_area, parse_bucket

CPUINFO = Path("/proc/cpuinfo")  # tests pass their own file (or patch this)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either one: the CPU computes bf16 natively
PROBE_SKIPPED = "no GPU: the probe is skipped; batch sizes from b, else 1"
NO_GPU_RULE = "training runs on the CPU as a test mode; the probe is skipped, batch sizes from b, else 1"
REPLAY_PROBE_SKIPPED = "no GPU: the probe is skipped; batch sizes from gpu.batch_size (the GPU screen's b), else 1"

_PARAM_TOKENS_PER_S = 4.2e10  # bf16 with native support, one thread (see the module's docstring)
_FP32_SLOWER = 370 / 120  # fp32 against native bf16
_EMULATED_BF16_SLOWER = 200.0  # bf16 without native support against fp32 (issue 24)
_PIXELS_PER_TOKEN = 256  # the latent's 8× downscale and 2×2 patches: 1024×1024 is 4096 image tokens
THREADS = 1  # the command's --num_cpu_threads_per_process


def safe_inventory(nvml: NvmlAdapter | None = None) -> Inventory:
    """NVML's inventory; any failure of NVML is an inventory without GPUs, never a crash."""
    try:
        return inventory(nvml)
    except Exception as exc:  # noqa: BLE001 - a broken NVML binding means: no GPU we can use
        return Inventory(gpus=[], problem="no NVIDIA GPU visible", reason=str(exc))


def gpu_visible(nvml: NvmlAdapter | None = None) -> bool:
    return bool(safe_inventory(nvml).gpus)


def cpu_flags(path: Path | None = None) -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (`path`: tests), None when it cannot be read (not Linux)."""
    try:
        text = (path or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def native_bf16(flags: frozenset[str] | None) -> bool | None:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX); None when its flags are unknown."""
    if flags is None:
        return None
    return any(flag in flags for flag in BF16_FLAGS)


def batch_sizes(session: Session, buckets: dict[str, int] | list[str]) -> dict[str, int]:
    """Without a GPU: each bucket's batch size set by hand (`gpu.batch_size.<bucket>`), else 1."""
    set_sizes = session.batch_sizes()
    return {bucket: set_sizes.get(bucket, 1) for bucket in buckets}


@dataclass(frozen=True)
class CpuMode:
    """What the rule says for one session on this machine (no GPU visible)."""

    precision: str  # train.mixed_precision: "bf16" or "no"
    bf16: bool | None  # the CPU computes bf16 natively (None: unknown)
    bucket: str | None  # the largest bucket, for the speed
    batch: int
    seconds_per_step: float | None  # the estimate at that bucket and batch

    @property
    def slow_bf16(self) -> bool:
        """bf16 chosen on a CPU known to lack native bf16."""
        return self.precision == "bf16" and self.bf16 is False

    def speed_text(self) -> str:
        """`~22 min per step at 1024x1024 batch 1 (estimate)`."""
        if self.seconds_per_step is None or self.bucket is None:
            return "expect minutes per step or more"
        return f"~{_duration(self.seconds_per_step)} per step at {self.bucket} batch {self.batch} (estimate)"

    def label(self) -> str:
        """The Train screen's and replay's line."""
        return (f"CPU test mode: no GPU visible, training runs on the CPU to test the setup — {self.speed_text()}; "
                "a GPU takes seconds")

    def bf16_line(self) -> str | None:
        """The line that offers mixed_precision = "no", when bf16 would be emulated."""
        if not self.slow_bf16:
            return None
        return ('this CPU has no native bf16 (no avx512_bf16/amx_bf16): bf16 runs about 200× slower than fp32 — '
                'set mixed precision to no (train.mixed_precision = "no"; about twice the RAM)')


def seconds_per_step(session: Session, bucket: str, batch: int, precision: str, bf16: bool | None) -> float:
    """The estimated seconds per training step on the CPU (see the module's docstring)."""
    width, height = parse_bucket(bucket)
    family = family_for(session)
    tokens = width * height / _PIXELS_PER_TOKEN + family.longest_text_encoder.max_tokens
    seconds = family.transformer.params * tokens * batch / (_PARAM_TOKENS_PER_S * THREADS)
    if precision != "bf16":
        return seconds * _FP32_SLOWER
    if bf16 is False:
        return seconds * _FP32_SLOWER * _EMULATED_BF16_SLOWER
    return seconds


def cpu_mode(session: Session, buckets: dict[str, int] | list[str], *, cpuinfo: Path | None = None) -> CpuMode:
    """The rule's verdict for `session` on this CPU (call it when no GPU is visible)."""
    precision = session.train.mixed_precision
    bf16 = native_bf16(cpu_flags(cpuinfo))
    if not buckets:
        return CpuMode(precision, bf16, None, 1, None)
    bucket = max(buckets, key=bucket_area)
    batch = batch_sizes(session, [bucket])[bucket]
    return CpuMode(precision, bf16, bucket, batch, seconds_per_step(session, bucket, batch, precision, bf16))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
