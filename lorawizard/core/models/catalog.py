"""What the models step knows about: the base model's presets and tokenizer files (read from the model-family
profile, core.profile), and the captioners that draft captions.

Sizes and sha256 are deliberately *not* written here: they come from the hub's metadata at first contact and
are then recorded under `.lorawizard/models.json`, so later checks work offline (see `core.models.step` and `core.models.files`).
"""

from __future__ import annotations

from typing import NamedTuple

from lorawizard.core.profile import DEFAULT_FAMILY
from lorawizard.core.profile import ModelFile as ModelFile  # re-exported: the models step's names
from lorawizard.core.profile import Preset as Preset
from lorawizard.core.profile import Tokenizer as Tokenizer

# The default family's facts under the names the models step and its screen have always used.
ROLES = DEFAULT_FAMILY.role_names
ROLE_TITLES = {role.name: role.title for role in DEFAULT_FAMILY.roles}
MODEL_SUFFIXES = DEFAULT_FAMILY.model_suffixes
COMFY_FOLDERS = {role.name: role.comfy_folders for role in DEFAULT_FAMILY.roles}
PRESETS: dict[str, Preset] = {p.name: p for p in DEFAULT_FAMILY.presets}
DEFAULT_PRESET = DEFAULT_FAMILY.default_preset.name
TOKENIZERS: tuple[Tokenizer, ...] = DEFAULT_FAMILY.tokenizers


def preset(name: str | None) -> Preset:
    return DEFAULT_FAMILY.preset(name)


# ---------------------------------------------------------------- captioners (auto-captions)


class Captioner(NamedTuple):
    """A vision-language model that drafts captions; downloaded as a whole transformers folder."""

    name: str  # `[captions] model`
    title: str
    repo: str
    approx_gb: float  # download size (bf16 safetensors)
    vram_gb: float  # GPU memory it needs to caption in batches
    license: str
    architecture: str  # config.json `architectures[0]`, a transformers class
    min_transformers: str  # the first transformers release that has `architecture`
    cpu_s_per_image: float  # rough CPU cost of one ~160-token caption (a guess, shown until the first images are timed)
    revision: str = "main"
    shards: int = 1
    gpu_s_per_image: float = 3.0  # rough GPU cost of one caption (a guess, likewise)

    @property
    def folder(self) -> str:
        return self.repo.split("/")[-1]

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo}"

    def files(self) -> tuple[str, ...]:
        """Everything `from_pretrained` reads: config, weight shards and their index, tokenizer, processor."""
        shards = tuple(f"model-{i:05d}-of-{self.shards:05d}.safetensors" for i in range(1, self.shards + 1))
        return CAPTIONER_SMALL_FILES + shards


CAPTIONER_SMALL_FILES = (
    "config.json", "generation_config.json", "model.safetensors.index.json", "preprocessor_config.json",
    "chat_template.json", "tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt",
)
# Architectures checked against transformers 4.54.1 (sd-scripts' pin): transformers.Qwen2_5_VLForConditionalGeneration
# (added in 4.49.0), AutoProcessor → Qwen2_5_VLProcessor.
CAPTIONERS: dict[str, Captioner] = {
    "qwen2.5-vl-3b": Captioner(
        "qwen2.5-vl-3b", "Qwen2.5-VL-3B-Instruct (default; fits 12 GB)", "Qwen/Qwen2.5-VL-3B-Instruct",
        7.5, 12, "Qwen Research License (non-commercial)", "Qwen2_5_VLForConditionalGeneration", "4.49.0",
        60, shards=2, gpu_s_per_image=2.0,
    ),
    "qwen2.5-vl-7b": Captioner(
        "qwen2.5-vl-7b", "Qwen2.5-VL-7B-Instruct (better captions; 24 GB)", "Qwen/Qwen2.5-VL-7B-Instruct",
        16.6, 24, "Apache-2.0", "Qwen2_5_VLForConditionalGeneration", "4.49.0", 150, shards=5,
        gpu_s_per_image=4.0,
    ),
}
DEFAULT_CAPTIONER = "qwen2.5-vl-3b"
CPU_S_PER_IMAGE_UNKNOWN = 120.0  # a folder of the user's: its size is unknown, so is its speed (a guess)
GPU_S_PER_IMAGE_UNKNOWN = 5.0
