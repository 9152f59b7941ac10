"""Low-VRAM presets for FLUX.1 LoRA training, from sd-scripts' docs (docs/flux_train_network.md §6.1, all with
`--fp8_base`), and a rough memory estimate per bucket and batch size.

The preset is chosen from the GPU's total memory and saved as `gpu.vram_preset`; the command builder applies its
options to every trainer run (`core.command.trainer_options`). A person may pick another one, may override any of
its options with `train.extra_args` (e.g. `--blocks_to_swap 35`), and may edit the table itself with a
`vram_presets.toml` in the project folder (a preset named like a built-in one replaces it):

    [presets.20gb]
    min_gb = 20
    batch_size = 1
    options = { fp8_base = true, blocks_to_swap = 4 }
    note = "my 3080 20 GB"

The probe measures what really fits; the estimate is only a first guess and always says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from lorawizard.core.gpu.nvml import GB
from lorawizard.core.session.document import Session

PRESETS_FILE = "vram_presets.toml"
MAX_BLOCKS_TO_SWAP = 35  # FLUX.1: sd-scripts asserts ≤ 17 double + 36 single blocks swapped


@dataclass(frozen=True)
class VramPreset:
    name: str  # "24gb": what gpu.vram_preset holds
    min_gb: float  # chosen for GPUs with at least this much memory (as cards are sold: GiB)
    batch_size: int  # the docs' batch size: where the probe starts, and the batch size until one is probed
    options: dict[str, Any] = field(default_factory=dict)  # trainer options (no dashes): value, True for a flag
    note: str = ""  # what the docs say, for a person
    fp8_t5: bool = False  # the docs recommend an fp8 T5-XXL file (t5xxl_fp8_e4m3fn, not the "scaled" one)
    from_docs: bool = True  # False for our own last resort and for the project's vram_presets.toml

    @property
    def blocks_to_swap(self) -> int:
        return int(self.options.get("blocks_to_swap") or 0)

    @property
    def label(self) -> str:
        return f"{self.min_gb:g} GB" if self.from_docs or self.min_gb else "last resort"

    def title(self) -> str:
        """`24 GB: fp8 base, AdamW 8-bit, batch 2`."""
        parts = []
        if self.options.get("fp8_base"):
            parts.append("fp8 base")
        if self.blocks_to_swap:
            parts.append(f"swap {self.blocks_to_swap} blocks")
        if self.options.get("optimizer_type") == "adamw8bit":
            parts.append("AdamW 8-bit")
        if self.fp8_t5:
            parts.append("fp8 T5")
        parts.append(f"batch {self.batch_size}")
        return f"{self.label}: " + ", ".join(parts)


# Ordered from the most memory to the least. Each lower one swaps more blocks (slower, less VRAM, more host RAM).
# 16 GB: the docs say "batch size 1 and use --blocks_to_swap" without a number; 8 is our choice (the lightest).
# "max-swap" is not in the docs: 35 blocks is the most FLUX.1 allows; only reached by the probe's step-down.
BUILTIN_PRESETS: tuple[VramPreset, ...] = (
    VramPreset("24gb", 24, 2, {"fp8_base": True, "optimizer_type": "adamw8bit"},
               "24 GB: basic settings work fine (batch size 2)"),
    VramPreset("16gb", 16, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 8},
               "16 GB: batch size 1 and use --blocks_to_swap"),
    VramPreset("12gb", 12, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 16},
               "12 GB: --blocks_to_swap 16 and 8bit AdamW"),
    VramPreset("10gb", 10, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 22},
               "10 GB: --blocks_to_swap 22, fp8 T5XXL recommended", fp8_t5=True),
    VramPreset("8gb", 8, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 28},
               "8 GB: --blocks_to_swap 28, fp8 T5XXL recommended", fp8_t5=True),
    VramPreset("max-swap", 0, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": MAX_BLOCKS_TO_SWAP},
               "not in the docs: the most block swapping FLUX.1 allows (35); slow, needs much host RAM",
               fp8_t5=True, from_docs=False),
)


class PresetError(Exception):
    """A vram_presets.toml that cannot be used; one line for a person."""


def load_presets(session: Session | None = None) -> list[VramPreset]:
    """The built-in presets with the project's `vram_presets.toml` applied, from the most memory to the least."""
    presets = {p.name: p for p in BUILTIN_PRESETS}
    if session is not None:
        path = session.project_dir / PRESETS_FILE
        if path.exists():
            for preset in _read_file(path):
                presets[preset.name] = preset
    return sorted(presets.values(), key=lambda p: (-p.min_gb, p.blocks_to_swap))


def _read_file(path: Path) -> list[VramPreset]:
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
    except (OSError, UnicodeDecodeError, TOMLKitError) as exc:
        raise PresetError(f"{path}: cannot read it ({exc})") from None
    table = doc.get("presets")
    if not isinstance(table, dict):
        raise PresetError(f"{path}: expected [presets.<name>] tables")
    result = []
    for name, entry in table.items():
        where = f"{path}: presets.{name}"
        if not isinstance(entry, dict):
            raise PresetError(f"{where}: expected a table")
        min_gb, batch, options = entry.get("min_gb"), entry.get("batch_size", 1), entry.get("options", {})
        if not isinstance(min_gb, int | float) or isinstance(min_gb, bool) or min_gb < 0:
            raise PresetError(f"{where}.min_gb: expected a number of GB (0 or more)")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise PresetError(f"{where}.batch_size: expected a positive integer")
        if not isinstance(options, dict):
            raise PresetError(f"{where}.options: expected a table of trainer options, e.g. {{ blocks_to_swap = 16 }}")
        swap = options.get("blocks_to_swap", 0)
        if not isinstance(swap, int) or isinstance(swap, bool) or not 0 <= swap <= MAX_BLOCKS_TO_SWAP:
            raise PresetError(f"{where}.options.blocks_to_swap: expected an integer from 0 to {MAX_BLOCKS_TO_SWAP}")
        result.append(
            VramPreset(str(name), float(min_gb), batch, dict(options), str(entry.get("note", "from vram_presets.toml")),
                       bool(entry.get("fp8_t5", False)), from_docs=False)
        )
    return result


def preset_named(name: str | None, presets: list[VramPreset] | None = None) -> VramPreset | None:
    return next((p for p in (presets if presets is not None else BUILTIN_PRESETS) if p.name == name), None)


def preset_for_memory(total_bytes: int, presets: list[VramPreset] | None = None) -> VramPreset:
    """The preset for a GPU with `total_bytes` of memory.

    Cards are sold by GiB ("24 GB" = 24 GiB, NVML's total); some show a little less, hence 3 % slack. An 11 GiB
    card gets the 10 GB preset, not the 12 GB one.
    """
    ordered = sorted(presets if presets is not None else BUILTIN_PRESETS, key=lambda p: (-p.min_gb, p.blocks_to_swap))
    total_gb = total_bytes / 1024**3
    for preset in ordered:
        if total_gb >= preset.min_gb * 0.97:
            return preset
    return ordered[-1]


def step_down(preset: VramPreset, presets: list[VramPreset] | None = None) -> VramPreset | None:
    """The next preset that swaps more blocks (less VRAM, slower), or None at the bottom."""
    ordered = sorted(presets if presets is not None else BUILTIN_PRESETS, key=lambda p: (-p.min_gb, p.blocks_to_swap))
    lower = [p for p in ordered if p.name != preset.name and p.min_gb <= preset.min_gb
             and p.blocks_to_swap > preset.blocks_to_swap]
    return lower[0] if lower else None


def session_preset(session: Session, total_bytes: int | None = None) -> VramPreset:
    """The session's preset (gpu.vram_preset), else the one for `total_bytes`, else the largest."""
    presets = load_presets(session)
    named = preset_named(session.get("gpu.vram_preset"), presets)
    if named is not None:
        return named
    if total_bytes:
        return preset_for_memory(total_bytes, presets)
    return presets[0]


# ---------------------------------------------------------------- the estimate

# FLUX.1-dev transformer: 11.9 B parameters; 340 M per double block, 142 M per single block (sd-scripts.md §10).
_FLUX_PARAMS = 11.9e9
_DOUBLE, _SINGLE = 340e6, 142e6
_OVERHEAD = 1.5 * GB  # CUDA context, LoRA weights and optimizer state, allocator slack
_PER_MEGAPIXEL = 2.5 * GB  # activations per 1024×1024 image with gradient checkpointing (rough)


def estimate_bytes(preset: VramPreset, width: int, height: int, batch_size: int) -> int:
    """A rough guess of peak VRAM for one bucket and batch size with this preset. An estimate, not a measurement.

    Calibrated only against the docs' table: with its preset every tier fits 1024×1024 at batch 1, 24 GB at batch 2.
    """
    bytes_per_param = 1 if preset.options.get("fp8_base") else 2
    swap = preset.blocks_to_swap
    swapped = (swap // 2) * _DOUBLE + 2 * (swap - swap // 2) * _SINGLE if swap else 0
    weights = max(0.0, _FLUX_PARAMS - swapped) * bytes_per_param
    activations = batch_size * _PER_MEGAPIXEL * (width * height) / (1024 * 1024)
    return int(weights + _OVERHEAD + activations)


def estimate_batch(preset: VramPreset, width: int, height: int, total_bytes: int, margin: float = 0.95) -> int:
    """The largest batch size the estimate puts under `margin` of `total_bytes` (0 when not even 1)."""
    base = estimate_bytes(preset, width, height, 0)
    per = estimate_bytes(preset, width, height, 1) - base
    return max(0, math.floor((total_bytes * margin - base) / per))


def estimate_text(preset: VramPreset, width: int, height: int, batch_size: int) -> str:
    """`1024×1024 batch 2 ≈ 18.4 GB (estimate)`."""
    gb = estimate_bytes(preset, width, height, batch_size) / GB
    return f"{width}×{height} batch {batch_size} ≈ {gb:.1f} GB (estimate)"
