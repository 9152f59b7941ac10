"""What the models step knows about: the model presets and the tokenizer files sd-scripts needs.

Sizes and sha256 are deliberately *not* written here: they come from the hub's metadata at first contact and
are then recorded under `.lorawizard/models.json`, so later checks work offline (see `core.steps.models` and `core.model_files`).
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("flux", "ae", "clip_l", "t5xxl")
ROLE_TITLES = {"flux": "FLUX.1-dev", "ae": "autoencoder (AE)", "clip_l": "CLIP-L", "t5xxl": "T5-XXL"}
MODEL_SUFFIXES = (".safetensors", ".sft")  # the files sd-scripts' FLUX.1 loaders read

# ComfyUI keeps each kind of file in its own folder(s) under models/.
COMFY_FOLDERS = {
    "flux": ("unet", "diffusion_models", "checkpoints"),
    "ae": ("vae",),
    "clip_l": ("clip", "text_encoders"),
    "t5xxl": ("clip", "text_encoders"),
}


@dataclass(frozen=True)
class ModelFile:
    role: str  # flux | ae | clip_l | t5xxl
    repo: str
    filename: str
    revision: str = "main"
    gated: bool = False  # the repository needs an accepted license and a token

    @property
    def key(self) -> str:
        """Identity of the remote file (used for recorded metadata)."""
        return f"{self.repo}/{self.filename}@{self.revision}"

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo}"


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    files: tuple[ModelFile, ...]
    approx_gb: float  # for the screen before metadata is known (labelled as approximate)

    def file_for(self, role: str) -> ModelFile:
        return next(f for f in self.files if f.role == role)


_CAMENDURU = "camenduru/FLUX.1-dev"
_BFL = "black-forest-labs/FLUX.1-dev"
_TEXT_ENCODERS = "comfyanonymous/flux_text_encoders"

PRESETS: dict[str, Preset] = {
    "flux1-dev-fp8": Preset(
        "flux1-dev-fp8",
        "FLUX.1-dev fp8 (default, ungated)",
        (
            ModelFile("flux", "Kijai/flux-fp8", "flux1-dev-fp8.safetensors"),
            ModelFile("ae", _CAMENDURU, "ae.safetensors"),
            ModelFile("clip_l", _CAMENDURU, "clip_l.safetensors"),
            ModelFile("t5xxl", _CAMENDURU, "t5xxl_fp8_e4m3fn.safetensors"),
        ),
        17.0,
    ),
    "flux1-dev-bf16": Preset(
        "flux1-dev-bf16",
        "FLUX.1-dev bf16 (official, gated: accept the license first)",
        (
            ModelFile("flux", _BFL, "flux1-dev.safetensors", gated=True),
            ModelFile("ae", _BFL, "ae.safetensors", gated=True),
            ModelFile("clip_l", _TEXT_ENCODERS, "clip_l.safetensors"),
            ModelFile("t5xxl", _TEXT_ENCODERS, "t5xxl_fp16.safetensors"),
        ),
        33.0,
    ),
}
DEFAULT_PRESET = "flux1-dev-fp8"


def preset(name: str | None) -> Preset:
    return PRESETS.get(name or DEFAULT_PRESET, PRESETS[DEFAULT_PRESET])


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer sd-scripts loads with `from_pretrained`; it reads `<tokenizer_cache_dir>/<folder>`."""

    repo: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    revision: str = "main"

    @property
    def folder(self) -> str:
        return self.repo.replace("/", "_")

    def files(self) -> tuple[tuple[str, bool], ...]:
        return tuple((name, True) for name in self.required) + tuple((name, False) for name in self.optional)


TOKENIZERS: tuple[Tokenizer, ...] = (
    Tokenizer(
        "openai/clip-vit-large-patch14",
        ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"),
        ("tokenizer.json",),
    ),
    Tokenizer(
        "google/t5-v1_1-xxl",
        ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"),
        ("tokenizer.json",),
    ),
)


# ---------------------------------------------------------------- captioners (auto-captions)


@dataclass(frozen=True)
class Captioner:
    """A vision-language model that drafts captions; downloaded as a whole transformers folder."""

    name: str  # `[captions] model`
    title: str
    repo: str
    approx_gb: float  # download size (bf16 safetensors)
    vram_gb: float  # GPU memory it needs to caption in batches
    license: str
    architecture: str  # config.json `architectures[0]`, a transformers class
    min_transformers: str  # the first transformers release that has `architecture`
    cpu_s_per_image: float  # rough CPU cost of one ~160-token caption (shown before a CPU run)
    revision: str = "main"
    shards: int = 1

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
        60, shards=2,
    ),
    "qwen2.5-vl-7b": Captioner(
        "qwen2.5-vl-7b", "Qwen2.5-VL-7B-Instruct (better captions; 24 GB)", "Qwen/Qwen2.5-VL-7B-Instruct",
        16.6, 24, "Apache-2.0", "Qwen2_5_VLForConditionalGeneration", "4.49.0", 150, shards=5,
    ),
}
DEFAULT_CAPTIONER = "qwen2.5-vl-3b"
CPU_S_PER_IMAGE_UNKNOWN = 120.0
