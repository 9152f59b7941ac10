"""Fake NVML adapters for tests (no GPU anywhere in the test suite).

`FakeNvml` implements `lorawizard.core.gpu.nvml.NvmlAdapter`: a fixed list of GPUs, optional per-process memory, or a
problem (no driver), peer-to-peer answers. Ready-made inventories: none, one RTX 4090, two different RTX 3090s,
a 24 GB + 12 GB pair without peer-to-peer (`two_cards_no_p2p`).
Use `install(monkeypatch, fake)` to make it the process-wide adapter (what the steps and screens use by default).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from lorawizard.core.gpu import nvml as core_gpu
from lorawizard.core.gpu.nvml import GB, GpuInfo, NvmlUnavailable

GIB = 1024**3


def fake_gpu(index: int, name: str, total_gb: float, used_gb: float = 0.5, **extra: object) -> GpuInfo:
    total, used = int(total_gb * GB), int(used_gb * GB)
    values: dict[str, object] = dict(
        index=index,
        uuid=f"GPU-{index:08d}-fake-{name.split()[-1].lower()}",
        name=name,
        memory_total=total,
        memory_used=used,
        memory_free=total - used,
        driver_version="570.86.10",
        cuda_driver_version="12.8",
        utilization_pct=3,
        temperature_c=41,
        power_w=27.5,
        compute_capability=(8, 6),
    )
    values.update(extra)
    return GpuInfo(**values)  # type: ignore[arg-type]


RTX_4090 = fake_gpu(0, "NVIDIA GeForce RTX 4090", 25.76, 0.6)
RTX_3090_BUSY = replace(fake_gpu(0, "NVIDIA GeForce RTX 3090", 25.77, 11.2), uuid="GPU-3090aaaa-busy")
RTX_3090_FREE = replace(fake_gpu(1, "NVIDIA GeForce RTX 3090 Ti", 25.77, 0.4), uuid="GPU-3090bbbb-free")
RTX_4060 = fake_gpu(0, "NVIDIA GeForce RTX 4060 Ti", 17.18, 0.3, power_w=None, temperature_c=None)
# two different cards on a consumer board (no peer-to-peer): 24 GB and 12 GB (GiB, as NVML reports them)
RTX_3090_24 = replace(fake_gpu(0, "NVIDIA GeForce RTX 3090", 24 * GIB / GB, 0.3), uuid="GPU-3090cccc-24gb")
RTX_3060_12 = replace(fake_gpu(1, "NVIDIA GeForce RTX 3060", 12 * GIB / GB, 0.2), uuid="GPU-3060dddd-12gb")
RTX_2080_TI = replace(fake_gpu(2, "NVIDIA GeForce RTX 2080 Ti", 11 * GIB / GB, 0.2, compute_capability=(7, 5)),
                      uuid="GPU-2080eeee-turing")


class FakeNvml:
    """A scripted NVML. `processes[uuid] = {pid: bytes}`, or a callable returning that (changes over time)."""

    def __init__(
        self,
        gpus: list[GpuInfo] | None = None,
        *,
        problem: str | None = None,
        processes: dict[str, dict[int, int] | Callable[[], dict[int, int]]] | None = None,
        per_process: bool = True,
        p2p: bool | dict[frozenset[str], bool | None] | None = True,
    ) -> None:
        self.gpus = list(gpus or [])
        self.p2p = p2p  # peer-to-peer between GPUs: one answer for every pair, or per pair of UUIDs
        self.problem = problem
        self.processes = processes or {}
        self.per_process = per_process
        self.calls = 0
        self.lock = threading.Lock()

    def read_gpus(self) -> list[GpuInfo]:
        with self.lock:
            self.calls += 1
        if self.problem:
            raise NvmlUnavailable(self.problem)
        result = []
        for gpu in self.gpus:
            extra = sum(self._procs(gpu.uuid).values())
            if extra:
                used = min(gpu.memory_total, gpu.memory_used + extra)
                gpu = replace(gpu, memory_used=used, memory_free=gpu.memory_total - used)
            result.append(gpu)
        return result

    def process_memory(self, uuid: str) -> dict[int, int] | None:
        if self.problem:
            raise NvmlUnavailable(self.problem)
        if not self.per_process:
            return None
        return dict(self._procs(uuid))

    def p2p_ok(self, uuid_a: str, uuid_b: str) -> bool | None:
        if self.problem:
            raise NvmlUnavailable(self.problem)
        if isinstance(self.p2p, dict):
            return self.p2p.get(frozenset((uuid_a, uuid_b)))
        return self.p2p

    def _procs(self, uuid: str) -> dict[int, int]:
        value = self.processes.get(uuid, {})
        return value() if callable(value) else value


def none_visible() -> FakeNvml:
    return FakeNvml(problem="NVIDIA driver not installed (libnvidia-ml not found)")


def one_gpu() -> FakeNvml:
    return FakeNvml([RTX_4090])


def two_different_gpus() -> FakeNvml:
    return FakeNvml([RTX_3090_BUSY, RTX_3090_FREE])


def two_cards_no_p2p() -> FakeNvml:
    """A 24 GB and a 12 GB card that cannot reach each other directly (common on consumer boards)."""
    return FakeNvml([RTX_3090_24, RTX_3060_12], p2p=False)


def install(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml) -> FakeNvml:
    monkeypatch.setattr(core_gpu, "_default", fake)
    return fake
