"""Low-VRAM presets for LoRA training (the built-in tiers are the model family's, core.profile: for FLUX.1-dev from
sd-scripts' docs), and a rough memory estimate per bucket and batch size.

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
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from lorawizard.core.gpu.nvml import GB
from lorawizard.core.profile import DEFAULT_FAMILY, family_for
from lorawizard.core.profile import VramPreset as VramPreset  # re-exported: the GPU step's name
from lorawizard.core.session.document import Session

PRESETS_FILE = "vram_presets.toml"
# The default family's tiers and block limit (a session's: load_presets(session)).
BUILTIN_PRESETS: tuple[VramPreset, ...] = DEFAULT_FAMILY.vram_presets
MAX_BLOCKS_TO_SWAP = DEFAULT_FAMILY.transformer.max_blocks_to_swap


class PresetError(Exception):
    """A vram_presets.toml that cannot be used; one line for a person."""


def load_presets(session: Session | None = None) -> list[VramPreset]:
    """The built-in presets with the project's `vram_presets.toml` applied, from the most memory to the least."""
    presets = {p.name: p for p in family_for(session).vram_presets}
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
    named = preset_named(session.gpu.vram_preset, presets)
    if named is not None:
        return named
    if total_bytes:
        return preset_for_memory(total_bytes, presets)
    return presets[0]


# ---------------------------------------------------------------- the estimate

_OVERHEAD = 1.5 * GB  # CUDA context, LoRA weights and optimizer state, allocator slack
_PER_MEGAPIXEL = 2.5 * GB  # activations per 1024×1024 image with gradient checkpointing (rough)


def estimate_bytes(preset: VramPreset, width: int, height: int, batch_size: int, session: Session | None = None) -> int:
    """A rough guess of peak VRAM for one bucket and batch size with this preset, for the session's family's
    transformer (its parameters, and how many each swapped block moves off the GPU; the default family's without a
    session). An estimate, not a measurement.

    Calibrated only against the docs' table: with its preset every tier fits 1024×1024 at batch 1, 24 GB at batch 2.
    """
    transformer = family_for(session).transformer
    bytes_per_param = 1 if preset.options.get("fp8_base") else 2
    swap = preset.blocks_to_swap
    double, single = transformer.double_block, transformer.single_block
    swapped = (swap // 2) * double + 2 * (swap - swap // 2) * single if swap else 0
    weights = max(0.0, transformer.params - swapped) * bytes_per_param
    activations = batch_size * _PER_MEGAPIXEL * (width * height) / (1024 * 1024)
    return int(weights + _OVERHEAD + activations)


def estimate_batch(preset: VramPreset, width: int, height: int, total_bytes: int, margin: float = 0.95,
                   session: Session | None = None) -> int:
    """The largest batch size the estimate puts under `margin` of `total_bytes` (0 when not even 1)."""
    base = estimate_bytes(preset, width, height, 0, session)
    per = estimate_bytes(preset, width, height, 1, session) - base
    return max(0, math.floor((total_bytes * margin - base) / per))


def estimate_text(preset: VramPreset, width: int, height: int, batch_size: int, session: Session | None = None) -> str:
    """`1024×1024 batch 2 ≈ 18.4 GB (estimate)`."""
    gb = estimate_bytes(preset, width, height, batch_size, session) / GB
    return f"{width}×{height} batch {batch_size} ≈ {gb:.1f} GB (estimate)"
