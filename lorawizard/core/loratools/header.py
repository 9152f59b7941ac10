"""What a LoRA file is, from its safetensors header alone: its key layout, rank(s), modules and model family.

Only the header is read (tensor names, shapes, dtypes and `__metadata__`; core.models.identify.read_header), never a
tensor. The layouts and the family's module names come from the family's profile (`ModelFamily.lora_tools`): a
module key `<module><down>` (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, or ai-toolkit's
`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`) whose first dimension is the module's rank.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.models.identify import HeaderError, main_dtype, read_header
from lorawizard.core.profile import FAMILIES, ModelFamily
from lorawizard.core.profile.family import LoraLayout, LoraTools

# Down (A) matrices of the LoRA formats people meet, whatever the model: what makes a file a LoRA at all.
DOWN_PARTS = (".lora_down.weight", ".lora_A.weight", ".lora_down", ".lora_A")


class LoraError(ValueError):
    """The file cannot be used as a LoRA here; one line for a person."""


@dataclass(frozen=True)
class LoraInfo:
    path: Path
    size: int
    layout: str  # a LoraLayout.name of its family ("sd-scripts", "ai-toolkit"), or "unknown"
    layout_title: str
    family: str | None  # the ModelFamily.name its modules belong to; None when no profile knows them
    ranks: dict[str, int]  # module → rank (the down matrix's first dimension)
    dtype: str  # "bf16", "fp32", …
    metadata: dict[str, str] = field(default_factory=dict)
    text_encoder_modules: int = 0  # modules of the text encoders (a conversion without them leaves them out)

    @property
    def modules(self) -> int:
        return len(self.ranks)

    @property
    def rank(self) -> int:
        """The largest module rank (the rank of a LoRA of one fixed rank)."""
        return max(self.ranks.values(), default=0)

    @property
    def uniform(self) -> bool:
        """Every module has the same rank (a dynamic resize gives each its own)."""
        return len(set(self.ranks.values())) <= 1

    def rank_text(self) -> str:
        """`rank 16`, or `ranks 3–11 (dynamic)`."""
        values = set(self.ranks.values())
        if len(values) <= 1:
            return f"rank {self.rank}"
        return f"ranks {min(values)}–{max(values)} (dynamic)"

    @property
    def alpha(self) -> str:
        return self.metadata.get("ss_network_alpha", "")

    def line(self) -> str:
        """`mychar-e8.safetensors: FLUX.1-dev LoRA, sd-scripts layout, rank 16, 304 modules, bf16, 38.3 MB`."""
        from lorawizard.core.common.progress import format_bytes

        family = FAMILIES[self.family].title if self.family in FAMILIES else "unknown model"
        return (f"{self.path.name}: {family} LoRA, {self.layout} layout, {self.rank_text()}, {self.modules} modules, "
                f"{self.dtype}, {format_bytes(self.size)}")

    def record(self) -> dict[str, Any]:
        """For a sidecar: what the file is."""
        ranks = sorted(set(self.ranks.values()))
        return {"file": self.path.name, "size": self.size, "layout": self.layout, "family": self.family,
                "rank": self.rank, "ranks": ranks, "modules": self.modules, "dtype": self.dtype}


def _module_ranks(tensors: dict[str, Any], down: str) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for name, entry in tensors.items():
        if not name.endswith(down):
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if isinstance(shape, list) and shape and isinstance(shape[0], int):
            ranks[name[: -len(down)]] = shape[0]
    return ranks


def _layout_of(tensors: dict[str, Any], tools: LoraTools) -> tuple[LoraLayout, dict[str, int]] | None:
    """The family's layout most of the file's modules are in, with their ranks; None when none of them is."""
    best: tuple[LoraLayout, dict[str, int]] | None = None
    for layout in tools.layouts:
        ranks = _module_ranks(tensors, layout.down)
        ours = {m: r for m, r in ranks.items() if m.startswith(layout.module_prefixes + layout.text_encoder_prefixes)}
        if any(m.startswith(layout.module_prefixes) for m in ours) and (best is None or len(ours) > len(best[1])):
            best = (layout, ours)
    return best


def family_of(tensors: dict[str, Any], prefer: ModelFamily | None = None
              ) -> tuple[ModelFamily, LoraLayout, dict[str, int]] | None:
    """The family whose LoRA module names the file has (by each family's layouts), `prefer` (the session's) first:
    families of one architecture (FLUX.1-dev and its siblings) name their modules alike, and a header cannot tell
    their LoRAs apart."""
    families = [prefer] if prefer is not None else []
    for family in [*families, *FAMILIES.values()]:
        if family.lora_tools is None:
            continue
        found = _layout_of(tensors, family.lora_tools)
        if found is not None:
            return family, found[0], found[1]
    return None


def _other_ranks(tensors: dict[str, Any]) -> dict[str, int]:
    for down in (".lora_down.weight", ".lora_A.weight"):
        ranks = _module_ranks(tensors, down)
        if ranks:
            return ranks
    return {}


def is_lora_header(tensors: dict[str, Any]) -> bool:
    return any(part in name for name in tensors for part in DOWN_PARTS)


def inspect(path: Path | str, family: ModelFamily | None = None) -> LoraInfo:
    """What the LoRA file `path` is (`family`: the session's, tried first). Raises LoraError (one line) for a file that
    is no safetensors file or no LoRA."""
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"{display_path(path)} does not exist" if not path.exists() else
                        f"{display_path(path)} is not a file")
    try:
        header = read_header(path)
    except HeaderError as exc:
        raise LoraError(f"{path.name} {exc}") from None
    raw_meta = header.get("__metadata__")
    metadata = {str(k): str(v) for k, v in raw_meta.items()} if isinstance(raw_meta, dict) else {}
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not is_lora_header(tensors):
        example = f", e.g. {min(tensors)}" if tensors else ""
        raise LoraError(f"{path.name} is not a LoRA: none of its {len(tensors)} tensors is a LoRA's down/up matrix"
                        f"{example}")
    size = path.stat().st_size
    dtype = main_dtype(tensors)
    found = family_of(tensors, family)
    if found is None:
        ranks = _other_ranks(tensors)
        return LoraInfo(path, size, "unknown", "unknown", None, ranks, dtype, metadata)
    owner, layout, ranks = found
    te = sum(1 for m in ranks if layout.text_encoder_prefixes and m.startswith(layout.text_encoder_prefixes))
    return LoraInfo(path, size, layout.name, layout.title, owner.name, ranks, dtype, metadata, te)


def _architecture(info: LoraInfo) -> str:
    return info.metadata.get("modelspec.architecture", "") or info.metadata.get("ss_base_model_version", "")


def family_problem(info: LoraInfo, family: ModelFamily) -> str | None:
    """One line when `info` is not a LoRA of `family` (the one the session trains), naming what it is instead."""
    if info.family == family.name:
        return None
    if info.family in FAMILIES:
        return f"{info.path.name} is a {FAMILIES[info.family].title} LoRA, not {family.title}: its tools cannot use it"
    arch = _architecture(info)
    said = f" (its metadata says {arch})" if arch else ""
    example = min(info.ranks) if info.ranks else "none"
    return (f"{info.path.name} is a LoRA for another model{said}, not {family.title}: none of its module names is "
            f"{family.title}'s (e.g. {example})")


def common_rank_problem(infos: list[LoraInfo]) -> str | None:
    """Why LoRAs cannot be merged module by module (different layouts); None when they can."""
    layouts = Counter(info.layout for info in infos)
    if len(layouts) > 1:
        listed = ", ".join(f"{info.path.name} ({info.layout})" for info in infos)
        return f"the LoRAs to merge are in different key layouts ({listed}): convert them to one layout first"
    return None
