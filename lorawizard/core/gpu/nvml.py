"""GPU inventory and memory sampling through NVML (nvidia-ml-py, module `pynvml`), behind a small adapter.

`inventory()` never raises for a missing driver or GPU: it returns `Inventory(gpus=[], problem=NO_GPU)` and every
other step keeps working. Tests pass their own adapter (`tests/support/fake_nvml.py`); the real one wraps `pynvml`, imported
lazily so `--help`, replay of other steps and the tests never load it.

GPUs are identified by their NVML UUID ("GPU-…"): NVML numbers GPUs by PCI bus while CUDA's default order is
"fastest first", so an index can name a different card in the trainer. `CUDA_VISIBLE_DEVICES=<uuid>` cannot.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

NO_GPU = "no NVIDIA GPU visible"  # what follows from it: core.gpu.cpu_mode (the CPU trains, as a test mode)
GB = 1000**3  # the unit people read on spec sheets and in nvidia-smi's "GB" (we print decimal GB everywhere)


@dataclass(frozen=True)
class GpuInfo:
    index: int  # NVML index (PCI bus order) — for display only; pin with `uuid`
    uuid: str  # "GPU-xxxxxxxx-…", also accepted by CUDA_VISIBLE_DEVICES
    name: str
    memory_total: int  # bytes
    memory_used: int  # bytes
    memory_free: int  # bytes
    driver_version: str | None = None  # "570.124.06"
    cuda_driver_version: str | None = None  # "12.8": the newest CUDA this driver supports
    utilization_pct: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    compute_capability: tuple[int, int] | None = None  # (8, 6) for an RTX 3090: several GPUs must agree on bf16

    @property
    def total_gb(self) -> float:
        return self.memory_total / GB

    def describe(self) -> str:
        """`GPU 0  NVIDIA GeForce RTX 3090 · 24.0 GB · 22.1 GB free · driver 570.86 · CUDA 12.8`."""
        parts = [f"GPU {self.index}  {self.name}", f"{self.memory_total / GB:.1f} GB", f"{self.memory_free / GB:.1f} GB free"]
        if self.driver_version:
            parts.append(f"driver {self.driver_version}")
        if self.cuda_driver_version:
            parts.append(f"CUDA {self.cuda_driver_version}")
        return " · ".join(parts)

    def vitals(self) -> str:
        """`util 98% · 71°C · 341 W` (parts NVML can't tell are left out)."""
        parts = []
        if self.utilization_pct is not None:
            parts.append(f"util {self.utilization_pct}%")
        if self.temperature_c is not None:
            parts.append(f"{self.temperature_c}°C")
        if self.power_w is not None:
            parts.append(f"{self.power_w:.0f} W")
        return " · ".join(parts)


@dataclass(frozen=True)
class Inventory:
    gpus: list[GpuInfo] = field(default_factory=list)
    problem: str | None = None  # NO_GPU when nothing usable is visible
    reason: str | None = None  # why, when known: "NVIDIA driver not installed (libnvidia-ml not found)"

    def by_uuid(self, uuid: str | None) -> GpuInfo | None:
        return next((gpu for gpu in self.gpus if uuid and gpu.uuid == uuid), None)

    def default_choice(self) -> GpuInfo | None:
        """The GPU with the most free memory (ties: the lower NVML index)."""
        if not self.gpus:
            return None
        return max(self.gpus, key=lambda gpu: (gpu.memory_free, -gpu.index))

    def choose(self, saved_uuid: str | None) -> GpuInfo | None:
        """The saved GPU when it is still present, else the default choice."""
        return self.by_uuid(saved_uuid) or self.default_choice()

    def message(self) -> str | None:
        """One line for a person: the problem and, when known, why."""
        if self.problem is None:
            return None
        return f"{self.problem} ({self.reason})" if self.reason else self.problem


class NvmlUnavailable(Exception):
    """NVML cannot be used (no driver, driver not loaded, …); the message is short and meant for a person."""


class NvmlAdapter(Protocol):
    """What lorawizard needs from NVML. The real one wraps pynvml; tests pass fakes (tests/support/fake_nvml.py)."""

    def read_gpus(self) -> list[GpuInfo]:
        """Every GPU NVML sees, in NVML order. Raises NvmlUnavailable when NVML can't be used."""
        ...

    def process_memory(self, uuid: str) -> dict[int, int] | None:
        """{host pid: bytes of GPU memory} for compute processes on that GPU; None when NVML can't tell."""
        ...

    # optional: `p2p_ok(uuid_a, uuid_b) -> bool | None` (peer-to-peer between two GPUs; core.multigpu uses it)


# ---------------------------------------------------------------- the real adapter


class PynvmlAdapter:
    """nvidia-ml-py. Initialises NVML on first use and keeps it (NVML is ref-counted and thread-safe).

    `module` is the imported `pynvml` (a stand-in module in the adapter's own tests).
    """

    def __init__(self, module: Any = None) -> None:
        self._module = module
        self._ready = False
        self._lock = threading.Lock()

    def _nvml(self) -> Any:
        with self._lock:
            if self._module is None:
                try:
                    import pynvml  # nvidia-ml-py
                except ImportError:
                    raise NvmlUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
                self._module = pynvml
            n = self._module
            if not self._ready:
                try:
                    n.nvmlInit()
                except n.NVMLError as exc:
                    raise NvmlUnavailable(_init_reason(n, exc)) from None
                except OSError as exc:
                    raise NvmlUnavailable(f"NVML could not be loaded ({exc})") from None
                self._ready = True
                atexit.register(self.close)
            return n

    def close(self) -> None:
        with self._lock:
            if self._ready and self._module is not None:
                try:
                    self._module.nvmlShutdown()
                except Exception:  # noqa: BLE001 - shutting down; nothing useful to say
                    pass
                self._ready = False

    def read_gpus(self) -> list[GpuInfo]:
        n = self._nvml()
        try:
            driver = _text(_optional(n, n.nvmlSystemGetDriverVersion))
            cuda = _optional(n, n.nvmlSystemGetCudaDriverVersion)
            cuda_text = f"{cuda // 1000}.{(cuda % 1000) // 10}" if isinstance(cuda, int) and cuda > 0 else None
            gpus = []
            for index in range(n.nvmlDeviceGetCount()):
                handle = n.nvmlDeviceGetHandleByIndex(index)
                total, used, free = _memory(n, handle)
                util = _optional(n, n.nvmlDeviceGetUtilizationRates, handle)
                power = _optional(n, n.nvmlDeviceGetPowerUsage, handle)  # milliwatts
                gpus.append(
                    GpuInfo(
                        index=index,
                        uuid=_text(n.nvmlDeviceGetUUID(handle)) or f"GPU-index-{index}",
                        name=_text(n.nvmlDeviceGetName(handle)) or "NVIDIA GPU",
                        memory_total=int(total),
                        memory_used=int(used),
                        memory_free=int(free),
                        driver_version=driver,
                        cuda_driver_version=cuda_text,
                        utilization_pct=int(util.gpu) if util is not None else None,
                        temperature_c=_temperature(n, handle),
                        power_w=power / 1000 if isinstance(power, int | float) else None,
                        compute_capability=_capability(n, handle),
                    )
                )
            return gpus
        except n.NVMLError as exc:
            raise NvmlUnavailable(f"NVML error: {exc}") from None

    def p2p_ok(self, uuid_a: str, uuid_b: str) -> bool | None:
        """Whether the two GPUs can read each other's memory directly (nvmlDeviceGetP2PStatus); None: can't tell."""
        n = self._nvml()
        function = getattr(n, "nvmlDeviceGetP2PStatus", None)
        if function is None:
            return None
        index = getattr(n, "NVML_P2P_CAPS_INDEX_READ", 0)
        index = index[0] if isinstance(index, tuple) else index  # nvidia-ml-py defines it as `0,` (a tuple)
        try:
            status = function(n.nvmlDeviceGetHandleByUUID(uuid_a), n.nvmlDeviceGetHandleByUUID(uuid_b), index)
        except n.NVMLError:
            return None
        return bool(status == getattr(n, "NVML_P2P_STATUS_OK", 0))

    def process_memory(self, uuid: str) -> dict[int, int] | None:
        n = self._nvml()
        try:
            handle = n.nvmlDeviceGetHandleByUUID(uuid)
        except n.NVMLError:
            return None
        for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"):
            function = getattr(n, name, None)
            if function is None:
                continue
            try:
                processes = function(handle)
            except n.NVMLError as exc:
                if _is(n, exc, "NVMLError_FunctionNotFound"):
                    continue
                return None
            except getattr(n, "NVMLLibraryMismatchError", ()):  # driver lacks _v3
                continue
            # usedGpuMemory is None where the driver can't tell (Windows WDDM)
            return {int(p.pid): int(p.usedGpuMemory) for p in processes if p.usedGpuMemory is not None}
        return None


def _is(n: Any, exc: Exception, name: str) -> bool:
    cls = getattr(n, name, None)
    return isinstance(cls, type) and isinstance(exc, cls)


def _init_reason(n: Any, exc: Exception) -> str:
    if _is(n, exc, "NVMLError_LibraryNotFound"):
        return "NVIDIA driver not installed (libnvidia-ml not found)"
    if _is(n, exc, "NVMLError_DriverNotLoaded"):
        return "NVIDIA driver installed but not loaded (reboot? secure boot?)"
    if _is(n, exc, "NVMLError_NoPermission"):
        return "no permission to talk to the NVIDIA driver"
    if _is(n, exc, "NVMLError_LibRmVersionMismatch"):
        return "driver and library versions differ: reboot after the driver update"
    return f"NVML init failed: {exc}"


_UNSUPPORTED = (
    "NVMLError_NotSupported",
    "NVMLError_FunctionNotFound",
    "NVMLError_NoPermission",
    "NVMLError_NoData",
    "NVMLError_ArgumentVersionMismatch",
    "NVMLError_Unknown",
)


def _optional(n: Any, function: Callable[..., Any], *args: Any) -> Any:
    """A per-field call that may be unsupported on this GPU/OS (power on laptops, …): None then."""
    try:
        return function(*args)
    except n.NVMLError as exc:
        if any(_is(n, exc, name) for name in _UNSUPPORTED):
            return None
        raise


def _memory(n: Any, handle: Any) -> tuple[int, int, int]:
    v2 = getattr(n, "nvmlMemory_v2", None)
    if v2 is not None:
        try:  # v2 (driver R510+): `used` excludes driver-reserved memory and matches nvidia-smi
            info = n.nvmlDeviceGetMemoryInfo(handle, version=v2)
            return info.total, info.used, info.free
        except (n.NVMLError, TypeError):
            pass
    info = n.nvmlDeviceGetMemoryInfo(handle)
    return info.total, info.used, info.free


def _capability(n: Any, handle: Any) -> tuple[int, int] | None:
    function = getattr(n, "nvmlDeviceGetCudaComputeCapability", None)
    value = _optional(n, function, handle) if function is not None else None
    return (int(value[0]), int(value[1])) if isinstance(value, tuple | list) and len(value) == 2 else None


def _temperature(n: Any, handle: Any) -> int | None:
    sensor = getattr(n, "NVML_TEMPERATURE_GPU", 0)
    newer = getattr(n, "nvmlDeviceGetTemperatureV", None)
    if newer is not None:
        try:
            return int(newer(handle, sensor))
        except (n.NVMLError, TypeError):
            pass
    value = _optional(n, n.nvmlDeviceGetTemperature, handle, sensor) if hasattr(n, "nvmlDeviceGetTemperature") else None
    return int(value) if value is not None else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------- the API used by the steps

_default: NvmlAdapter | None = None
_default_lock = threading.Lock()


def default_nvml() -> NvmlAdapter:
    global _default
    with _default_lock:
        if _default is None:
            _default = PynvmlAdapter()
        return _default


def set_default_nvml(adapter: NvmlAdapter | None) -> None:
    """Replace the process-wide adapter (tests, or None to go back to the real one)."""
    global _default
    with _default_lock:
        _default = adapter


def inventory(nvml: NvmlAdapter | None = None) -> Inventory:
    """Every visible NVIDIA GPU, or an Inventory whose `problem` says none is (never raises for that)."""
    adapter = nvml if nvml is not None else default_nvml()
    try:
        gpus = list(adapter.read_gpus())
    except NvmlUnavailable as exc:
        return Inventory([], NO_GPU, str(exc))
    if not gpus:
        return Inventory([], NO_GPU, "NVML sees no GPU")
    return Inventory(gpus, None)


def gpu_by_uuid(uuid: str, nvml: NvmlAdapter | None = None) -> GpuInfo | None:
    return inventory(nvml).by_uuid(uuid)


@dataclass(frozen=True)
class MemorySample:
    """One look at a GPU: the memory of the watched processes and of the whole device, in bytes."""

    processes: int | None  # sum over the watched pids NVML reports; None when NVML can't tell per process
    device_used: int | None  # the whole GPU's used memory (every process, ours and others')
    pids_seen: tuple[int, ...] = ()


def sample_memory(uuid: str, pids: Iterable[int], nvml: NvmlAdapter | None = None) -> MemorySample:
    """GPU memory used by `pids` (host pids) on the GPU `uuid`, plus the device total in use.

    In a container NVML reports host pids that match none of ours: `processes` is then 0 with no pids seen, and
    callers should fall back to the device figure.
    """
    adapter = nvml if nvml is not None else default_nvml()
    wanted = set(pids)
    try:
        per_pid = adapter.process_memory(uuid)
    except NvmlUnavailable:
        per_pid = None
    try:
        gpu = next((g for g in adapter.read_gpus() if g.uuid == uuid), None)
    except NvmlUnavailable:
        gpu = None
    if per_pid is None:
        return MemorySample(None, gpu.memory_used if gpu else None)
    seen = tuple(sorted(pid for pid in per_pid if pid in wanted))
    return MemorySample(sum(per_pid[pid] for pid in seen), gpu.memory_used if gpu else None, seen)


class PeakSampler:
    """Samples a process tree's GPU memory in a thread; `peak` is the largest value seen.

    `pids` is a callable giving the current pids to watch (the trainer's tree grows after launch). The peak of the
    trial is the per-process figure when NVML shows our pids, else the device's use above the `baseline` taken at
    start (what other programs used before). `device_peak` is the whole GPU's highest use, for the safety margin.
    """

    def __init__(
        self,
        uuid: str,
        pids: Callable[[], Iterable[int]],
        nvml: NvmlAdapter | None = None,
        *,
        interval: float = 0.2,
    ) -> None:
        self.uuid, self.pids, self.interval = uuid, pids, interval
        self.nvml = nvml if nvml is not None else default_nvml()
        self.process_peak: int | None = None
        self.device_peak: int | None = None
        self.baseline: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeakSampler:
        first = sample_memory(self.uuid, (), self.nvml)
        self.baseline = first.device_used
        self._thread = threading.Thread(target=self._loop, name="gpu-peak-sampler", daemon=True)
        self._thread.start()
        return self

    def sample_once(self) -> None:
        try:
            pids = list(self.pids())
        except Exception:  # noqa: BLE001 - the tree vanished between looks
            pids = []
        sample = sample_memory(self.uuid, pids, self.nvml)
        self.samples += 1
        if sample.processes is not None and sample.pids_seen:
            self.process_peak = max(self.process_peak or 0, sample.processes)
        if sample.device_used is not None:
            self.device_peak = max(self.device_peak or 0, sample.device_used)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval)

    def stop(self) -> PeakSampler:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample_once()
        return self

    @property
    def peak(self) -> int | None:
        """The trial's own peak in bytes (per process when visible, else device use above the baseline)."""
        if self.process_peak is not None:
            return self.process_peak
        if self.device_peak is not None and self.baseline is not None:
            return max(0, self.device_peak - self.baseline)
        return None

