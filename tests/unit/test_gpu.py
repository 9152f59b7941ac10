"""core.gpu: inventory through fake NVML adapters (none, one, two different GPUs), the pynvml adapter's error
mapping with a stand-in pynvml module, and process-memory peak sampling."""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest

from lorawizard.core.gpu import nvml as gpu
from lorawizard.core.gpu.nvml import NO_GPU, GpuInfo, Inventory, PeakSampler, PynvmlAdapter, inventory, sample_memory
from tests.support.fake_nvml import (
    RTX_3090_BUSY,
    RTX_3090_FREE,
    RTX_4090,
    FakeNvml,
    none_visible,
    one_gpu,
    two_different_gpus,
)


def test_no_gpu_is_a_state_not_a_crash() -> None:
    inv = inventory(none_visible())
    assert inv.gpus == [] and inv.problem == NO_GPU
    assert inv.default_choice() is None and inv.choose("GPU-x") is None
    assert "driver not installed" in (inv.message() or "")


def test_nvml_without_devices_is_the_same_state() -> None:
    inv = inventory(FakeNvml([]))
    assert inv.problem == NO_GPU and inv.gpus == []


def test_one_gpu() -> None:
    inv = inventory(one_gpu())
    assert inv.problem is None and [g.uuid for g in inv.gpus] == [RTX_4090.uuid]
    assert inv.default_choice() == RTX_4090
    text = RTX_4090.describe()
    assert "RTX 4090" in text and "25.8 GB" in text and "CUDA 12.8" in text and "driver 570.86.10" in text


def test_two_different_gpus_default_is_most_free_and_saved_uuid_wins() -> None:
    inv = inventory(two_different_gpus())
    assert inv.default_choice() == RTX_3090_FREE
    assert inv.choose(RTX_3090_BUSY.uuid) == RTX_3090_BUSY
    assert inv.choose("GPU-gone") == RTX_3090_FREE  # a saved GPU that disappeared falls back
    assert gpu.gpu_by_uuid(RTX_3090_BUSY.uuid, two_different_gpus()) == RTX_3090_BUSY
    assert gpu.gpu_by_uuid("GPU-nope", two_different_gpus()) is None


def test_default_adapter_can_be_replaced() -> None:
    gpu.set_default_nvml(one_gpu())  # the public way (tests/support/fake_nvml.install patches the same global)
    try:
        assert inventory().gpus == [RTX_4090]
    finally:
        gpu.set_default_nvml(None)
    assert not isinstance(gpu.default_nvml(), FakeNvml)  # None: back to the real adapter


def test_vitals_leave_out_what_nvml_cannot_tell() -> None:
    info = GpuInfo(0, "GPU-1", "X", 8 * gpu.GB, 0, 8 * gpu.GB, utilization_pct=5)
    assert info.vitals() == "util 5%"
    assert "driver" not in info.describe()


# ---------------------------------------------------------------- the pynvml adapter with a stand-in module


def _fake_pynvml(*, init_error: str | None = None, power_supported: bool = True) -> types.SimpleNamespace:
    class NVMLError(Exception):
        pass

    errors = {name: type(name, (NVMLError,), {}) for name in (
        "NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_NoPermission",
        "NVMLError_LibRmVersionMismatch", "NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoData",
        "NVMLError_ArgumentVersionMismatch", "NVMLError_Unknown", "NVMLError_NotFound",
    )}

    @dataclass
    class Mem:
        total: int
        used: int
        free: int

    @dataclass
    class Proc:
        pid: int
        usedGpuMemory: int | None

    state = {"init": 0, "shutdown": 0}

    def init() -> None:
        if init_error:
            raise errors[init_error]("boom")
        state["init"] += 1

    def power(handle: int) -> int:
        if not power_supported:
            raise errors["NVMLError_NotSupported"]("no")
        return 123456

    def by_uuid(uuid: str) -> int:
        if uuid != "GPU-abc":
            raise errors["NVMLError_NotFound"]("no")
        return 0

    return types.SimpleNamespace(
        NVMLError=NVMLError, **errors, state=state, nvmlMemory_v2=2, NVML_TEMPERATURE_GPU=0,
        nvmlInit=init, nvmlShutdown=lambda: state.__setitem__("shutdown", state["shutdown"] + 1),
        nvmlSystemGetDriverVersion=lambda: b"570.86.10", nvmlSystemGetCudaDriverVersion=lambda: 12080,
        nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetHandleByUUID=by_uuid,
        nvmlDeviceGetUUID=lambda h: "GPU-abc", nvmlDeviceGetName=lambda h: b"NVIDIA GeForce RTX 3060",
        nvmlDeviceGetMemoryInfo=lambda h, version=None: Mem(12 * 2**30, 2**30, 11 * 2**30),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=42, memory=10),
        nvmlDeviceGetPowerUsage=power, nvmlDeviceGetTemperatureV=lambda h, s: 55,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [Proc(10, 3 * 2**30), Proc(11, None), Proc(99, 2**30)],
    )


def test_pynvml_adapter_reads_every_field() -> None:
    module = _fake_pynvml()
    adapter = PynvmlAdapter(module)
    (info,) = adapter.read_gpus()
    assert info == GpuInfo(0, "GPU-abc", "NVIDIA GeForce RTX 3060", 12 * 2**30, 2**30, 11 * 2**30,
                           "570.86.10", "12.8", 42, 55, 123.456)
    assert adapter.process_memory("GPU-abc") == {10: 3 * 2**30, 99: 2**30}
    assert adapter.process_memory("GPU-other") is None
    adapter.read_gpus()
    assert module.state["init"] == 1  # initialised once, kept
    adapter.close()
    assert module.state["shutdown"] == 1


def test_pynvml_adapter_unsupported_fields_are_none() -> None:
    (info,) = PynvmlAdapter(_fake_pynvml(power_supported=False)).read_gpus()
    assert info.power_w is None and info.temperature_c == 55


@pytest.mark.parametrize(
    ("error", "words"),
    [
        ("NVMLError_LibraryNotFound", "driver not installed"),
        ("NVMLError_DriverNotLoaded", "not loaded"),
        ("NVMLError_NoPermission", "no permission"),
        ("NVMLError_LibRmVersionMismatch", "reboot"),
    ],
)
def test_pynvml_init_errors_become_one_line_reasons(error: str, words: str) -> None:
    inv = inventory(PynvmlAdapter(_fake_pynvml(init_error=error)))
    assert inv.problem == NO_GPU and words in (inv.reason or "")


def test_real_nvml_on_this_machine_never_raises() -> None:
    inv = inventory(PynvmlAdapter())
    assert isinstance(inv, Inventory)
    if not inv.gpus:
        assert inv.problem == NO_GPU


# ---------------------------------------------------------------- memory sampling


def test_sample_memory_counts_only_the_watched_pids() -> None:
    fake = FakeNvml([RTX_4090], processes={RTX_4090.uuid: {100: 5 * gpu.GB, 200: 3 * gpu.GB}})
    sample = sample_memory(RTX_4090.uuid, [100, 101], fake)
    assert sample.processes == 5 * gpu.GB and sample.pids_seen == (100,)
    assert sample.device_used == RTX_4090.memory_used + 8 * gpu.GB


def test_peak_sampler_keeps_the_highest_value() -> None:
    box = {"gb": 0}
    fake = FakeNvml([RTX_4090], processes={RTX_4090.uuid: lambda: {100: box["gb"] * gpu.GB}})
    sampler = PeakSampler(RTX_4090.uuid, lambda: [100], fake, interval=3600)
    for value in (1, 7, 3, 2):
        box["gb"] = value
        sampler.sample_once()
    assert sampler.peak == 7 * gpu.GB
    assert sampler.device_peak == RTX_4090.memory_used + 7 * gpu.GB


def test_peak_sampler_falls_back_to_device_use_above_baseline() -> None:
    """In a container NVML's pids are host pids; the device's growth over the baseline is the trial's peak."""
    box = {"used": 0}
    fake = FakeNvml([RTX_4090], processes={RTX_4090.uuid: lambda: {4242: box["used"]}})
    sampler = PeakSampler(RTX_4090.uuid, lambda: [1], fake, interval=0.01).start()
    box["used"] = 6 * gpu.GB
    sampler.sample_once()
    box["used"] = 0
    sampler.stop()
    assert sampler.process_peak is None and sampler.peak == 6 * gpu.GB


def test_peak_sampler_without_nvml_reports_nothing() -> None:
    sampler = PeakSampler("GPU-x", lambda: [1], none_visible(), interval=0.01).start().stop()
    assert sampler.peak is None
