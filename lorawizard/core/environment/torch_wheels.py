"""GPU, driver and the torch wheel: CUDA and torch version parsing, and which torch wheel a driver (and a GPU
architecture) can run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_TORCH = (2, 6)  # sd-scripts README: "PyTorch 2.6.0 or later is required"


def parse_cuda_version(value: Any) -> tuple[int, int] | None:
    """"12.8", 12080 (NVML's int), (12, 8) → (12, 8); None when unknown."""
    if value is None:
        return None
    if isinstance(value, tuple | list) and len(value) >= 2:
        return int(value[0]), int(value[1])
    if isinstance(value, int):
        return value // 1000, (value % 1000) // 10
    match = re.match(r"^\s*(\d+)\.(\d+)", str(value))
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_torch_version(text: str | None) -> tuple[int, int, int] | None:
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)) if match else None


@dataclass(frozen=True)


class TorchWheel:
    tag: str  # "cu128"
    cuda: tuple[int, int]
    torch: str
    torchvision: str

    @property
    def index_url(self) -> str:
        return f"https://download.pytorch.org/whl/{self.tag}"

    def pip_argv(self, python: Path | str) -> list[str]:
        return [str(python), "-m", "pip", "install", f"torch=={self.torch}", f"torchvision=={self.torchvision}",
                "--index-url", self.index_url]


# Newest first. Versions sd-scripts names: 2.6.0 (tested), 2.8.0 with CUDA 12.8 for RTX 50 (reference §11, hub §3).
TORCH_WHEELS: tuple[TorchWheel, ...] = (
    TorchWheel("cu128", (12, 8), "2.8.0", "0.23.0"),
    TorchWheel("cu126", (12, 6), "2.6.0", "0.21.0"),
    TorchWheel("cu124", (12, 4), "2.6.0", "0.21.0"),
    TorchWheel("cu118", (11, 8), "2.6.0", "0.21.0"),
)
NO_DRIVER_WHEEL = TORCH_WHEELS[2]  # sd-scripts README's own choice when we cannot ask a driver


def torch_wheel_for(driver_cuda: tuple[int, int] | None, capability: tuple[int, int] | None = None) -> TorchWheel | None:
    """The newest wheel whose CUDA ≤ the driver's and that has kernels for the GPU; None when the driver is too old."""
    if driver_cuda is None:
        return NO_DRIVER_WHEEL
    for wheel in TORCH_WHEELS:
        if wheel.cuda > driver_cuda:
            continue
        if capability is not None and capability >= (12, 0) and wheel.cuda < (12, 8):
            return None  # Blackwell (RTX 50xx) needs CUDA 12.8 wheels and a driver that supports them
        if capability is not None and capability < (7, 5) and wheel.cuda >= (12, 8):
            continue  # Pascal / Volta: the cu128 builds have no kernels for them
        return wheel
    return None


def arch_supported(arch_list: list[str], capability: tuple[int, int]) -> bool:
    if not arch_list:
        return True  # unknown: don't cry wolf
    wanted = capability[0] * 10 + capability[1]
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)a?", arch)
        if not match:
            continue
        number = int(match.group(2))
        if match.group(1) == "sm" and number // 10 == capability[0] and number <= wanted:
            return True  # same major, older or equal minor: binary compatible
        if match.group(1) == "compute" and number <= wanted:
            return True  # PTX JIT
    return False
