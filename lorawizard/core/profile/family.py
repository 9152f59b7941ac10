"""The shape of a model-family profile: what lorawizard must know about one base model and the trainer that trains it.

Only data lives here (named tuples: immutable, and ~5x cheaper to define than frozen dataclasses, which
the first frame pays for: bench/bench_cli_startup.py); the entries are beside it (`flux1_dev.py`) and the registry in
`core.profile`. Every step reads these instead of writing a base model's facts itself, so a second family, or a
second trainer backend for one, is a new entry, not new branches in the steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple


class ModelFile(NamedTuple):
    """One downloadable file of a preset, for one role."""

    role: str  # a ModelRole.name
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


class Preset(NamedTuple):
    """A complete set of model files (one per role): what `models.preset` names."""

    name: str
    title: str
    files: tuple[ModelFile, ...]
    approx_gb: float  # for the screen before metadata is known (labelled as approximate)

    def file_for(self, role: str) -> ModelFile:
        return next(f for f in self.files if f.role == role)


class Tokenizer(NamedTuple):
    """A tokenizer the trainer loads with `from_pretrained`; it reads `<tokenizer_cache_dir>/<folder>`."""

    repo: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    revision: str = "main"

    @property
    def folder(self) -> str:
        return self.repo.replace("/", "_")

    def files(self) -> tuple[tuple[str, bool], ...]:
        return tuple((name, True) for name in self.required) + tuple((name, False) for name in self.optional)


class ModelRole(NamedTuple):
    """One model file training needs: `models.<name>` in session.toml, a row of the Models screen."""

    name: str
    title: str
    comfy_folders: tuple[str, ...]  # ComfyUI keeps each kind of file in its own folder(s) under models/


class FileKind(NamedTuple):
    """What a safetensors file of one kind holds, told from its header alone (tensor names, then shapes).

    `name` is a ModelRole.name for a role's file (or a kind no role takes, such as "lora"). A file is of this kind
    when it has one of `keys` (under one of `prefixes`: the trainer strips those) or a key containing one of
    `key_parts`; each `shapes` entry (key, axis, size, what it is) must then hold where the key is present, else
    the file is a near miss ("a CLIP text encoder of hidden size 1280, not 768").
    """

    name: str
    title: str  # in a sentence: "a T5-XXL text encoder"
    short: str  # in a table cell: "T5-XXL"
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ("",)
    key_parts: tuple[str, ...] = ()
    shapes: tuple[tuple[str, int, int, str], ...] = ()


class TextEncoder(NamedTuple):
    """A text encoder's token budget and the tokenizer that counts a caption's tokens for it."""

    role: str  # a ModelRole.name
    name: str  # short, in token counts: "CLIP 80/77"
    max_tokens: int  # special tokens included; more is cut off (or refused)
    tokenizer: Tokenizer


class TrainerBackend(NamedTuple):
    """The trainer that trains a family: its script and the options that are the family's, not the person's."""

    name: str  # its GitHub repository, for people and the model card: "kohya-ss/sd-scripts"
    script: str  # in the trainer's checkout, launched through accelerate
    network_module: str
    role_options: tuple[tuple[str, str], ...]  # (role, the trainer option that takes its file), in argv order
    fixed_options: Mapping[str, Any]  # always passed (after the defaults); extra_args may still change them
    card_tag: str  # the model card's tag for the trainer
    text_encoder_cache_suffix: str  # `<image stem><suffix>`: the cached text-encoder outputs beside an image
    latent_cache_suffix: str  # `<image stem>_<W>x<H><suffix>`: the cached latents beside an image


class SampleDefaults(NamedTuple):
    """Sample images during training: what `[train.samples]` holds until a person changes it."""

    steps: int  # denoising steps per sample
    guidance: float  # the embedded guidance the samples are drawn with


class Licence(NamedTuple):
    """The base model's licence, which a published LoRA (a derivative) inherits: the model card says so."""

    name: str  # the Hub's `license_name`
    title: str
    link: str


class VramPreset(NamedTuple):
    name: str  # "24gb": what gpu.vram_preset holds
    min_gb: float  # chosen for GPUs with at least this much memory (as cards are sold: GiB)
    batch_size: int  # the docs' batch size: where the probe starts, and the batch size until one is probed
    options: Mapping[str, Any] = MappingProxyType({})  # trainer options (no dashes): value, True for a flag
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


class TransformerSize(NamedTuple):
    """The denoiser's parameter counts, for the VRAM estimate (block swapping moves whole blocks to the CPU)."""

    params: float
    double_block: float
    single_block: float
    max_blocks_to_swap: int  # the trainer refuses more


class ModelFamily(NamedTuple):
    name: str  # the registry's key
    title: str  # for people: "FLUX.1-dev"
    card_title: str  # how the model card names the base model
    hub_repo: str  # the model card's `base_model`
    roles: tuple[ModelRole, ...]  # in the order the Models screen shows them
    model_suffixes: tuple[str, ...]  # the file formats the trainer's loaders read
    presets: tuple[Preset, ...]  # the first is the default
    text_encoders: tuple[TextEncoder, ...]
    backend: TrainerBackend
    samples: SampleDefaults
    resolution: int  # the side the base model was trained at: the dataset's default longest side
    vram_presets: tuple[VramPreset, ...]  # from the most memory to the least
    transformer: TransformerSize
    licence: Licence
    card_tags: tuple[str, ...]
    file_kinds: tuple[FileKind, ...] = ()  # how each role's file (and a LoRA) is told by its header; first match wins

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(role.name for role in self.roles)

    @property
    def default_preset(self) -> Preset:
        return self.presets[0]

    def preset(self, name: str | None) -> Preset:
        """The preset called `name`; the default one for None or a name this family does not have."""
        return next((p for p in self.presets if p.name == name), self.default_preset)

    def file_kind(self, name: str) -> FileKind | None:
        return next((kind for kind in self.file_kinds if kind.name == name), None)

    @property
    def tokenizers(self) -> tuple[Tokenizer, ...]:
        return tuple(encoder.tokenizer for encoder in self.text_encoders)

    def text_encoder(self, role: str) -> TextEncoder:
        return next(encoder for encoder in self.text_encoders if encoder.role == role)

    @property
    def longest_text_encoder(self) -> TextEncoder:
        """The text encoder that reads the most of a caption: its budget bounds what a captioner may write."""
        return max(self.text_encoders, key=lambda encoder: encoder.max_tokens)
