"""The shape of a model-family profile: what lorawizard must know about one base model and the trainer that trains it.

Only data lives here (named tuples: immutable, and ~5x cheaper to define than frozen dataclasses, which
the first frame pays for: bench/bench_cli_startup.py); the entries are beside it (`flux1_dev.py`) and the registry in
`core.profile`. Every step reads these instead of writing a base model's facts itself, so a second family, or a
second trainer backend for one, is a new entry, not new branches in the steps.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
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
    precision: str = "fp8"  # the transformer file's weights: "fp8" or "16bit" (the Models screen's choice)
    base_model: str = ""  # the model card's `base_model` when not the family's `hub_repo` (Chroma1-Base)

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
    guidance: float  # the embedded guidance the samples are drawn with (ignored by a model without one)
    cfg_scale: float = 1.0  # real classifier-free guidance (sd-scripts' `scale`, `--l`); 1.0 = none
    negative_prompt: str = ""  # used only with a real CFG (cfg_scale != 1)


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

    def title(self, own_optimizer: str = "") -> str:
        """`24 GB: fp8 base, AdamW 8-bit, batch 2`; with `own_optimizer` (the person chose one: it wins over the
        preset's) `24 GB: fp8 base, AdamW (yours), batch 2`."""
        parts = []
        if self.options.get("fp8_base"):
            parts.append("fp8 base")
        if self.blocks_to_swap:
            parts.append(f"swap {self.blocks_to_swap} blocks")
        if own_optimizer:
            parts.append(f"{own_optimizer} (yours)")
        elif self.options.get("optimizer_type") == "adamw8bit":
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


class LoraLayout(NamedTuple):
    """One way a LoRA file of the family names its tensors (its key layout), as the family's conversion tool says it."""

    name: str  # the conversion tool's word for it: "sd-scripts", "ai-toolkit"
    title: str  # for people: "sd-scripts / ComfyUI (lora_unet_…)"
    down: str  # the key part of a module's down (A) matrix: ".lora_down.weight"
    up: str  # its up (B) matrix: ".lora_up.weight"
    module_prefixes: tuple[str, ...]  # a module of this family in this layout begins with one of these
    loads: bool  # the family's inference script loads a LoRA in this layout as it is
    suffix: str  # a file converted into this layout is named `<stem>-<suffix>.safetensors`
    text_encoder_prefixes: tuple[str, ...] = ()  # modules of the text encoders (left out by a conversion without them)


class LoraTools(NamedTuple):
    """The trainer's own tools for a finished LoRA (paths in its checkout) and how the family's LoRAs look."""

    layouts: tuple[LoraLayout, ...]  # the first is the trainer's own
    architectures: tuple[str, ...]  # `modelspec.architecture` values the trainer writes into the family's LoRAs
    resize_script: str  # SVD rank reduction: --model --save_to --new_rank [--dynamic_method --dynamic_param]
    convert_script: str | None  # between the layouts: --src --dst --src_path --dst_path; None: no conversion
    merge_script: str  # LoRAs into one (--models --ratios --save_to [--concat]), or into the base (--<merge_option>)
    merge_option: str  # the merge script's option for the base model file: "flux_model"
    merge_role: str  # the ModelRole a LoRA merges into: "flux"
    inference_script: str  # one image from the base model with LoRAs (--lora_weights "path;multiplier")
    inference_roles: tuple[tuple[str, str], ...]  # (role, the inference script's option for its file)
    inference_options: Mapping[str, Any] = MappingProxyType({})  # always passed (no dashes)


class TransformerSignature(NamedTuple):
    """How a family's transformer file is told from its siblings' by header, once its `FileKind` says "a FLUX.1-style
    transformer": it has one of `has_any` (none asked when empty) and none of `lacks` (names as the trainer sees them,
    prefixes stripped). Families whose files differ only in their weights (FLUX.1-dev and Krea [dev]) have the same
    signature: a header cannot tell them apart, and the wizard says so instead of guessing."""

    has_any: tuple[str, ...] = ()
    lacks: tuple[str, ...] = ()

    def matches(self, keys: Container[str]) -> bool:
        return (not self.has_any or any(key in keys for key in self.has_any)) and not any(key in keys for key in self.lacks)


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
    licence_id: str = "other"  # the Hub's `license` ("other" with a `license_name`, or a known id: "apache-2.0")
    trainer_tokenizers: tuple[Tokenizer, ...] = ()  # what the trainer loads when more than the text encoders' own
    unsupported_options: Mapping[str, str] = MappingProxyType({})  # trainer option → why this family refuses it
    min_trainer_version: str = ""  # the trainer's first release tag with what this family needs ("" = any)
    trainer_marker: str = ""  # a file in the trainer's checkout that releases with this family's support have
    signature: TransformerSignature | None = None  # how its transformer file is told from the other families'
    note: str = ""  # what a person should know before choosing it (one or two sentences)
    lora_tools: LoraTools | None = None  # resize, convert, merge and load a finished LoRA; None: not offered

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
        """What the trainer reads from `--tokenizer_cache_dir`: the text encoders' tokenizers, or more when the
        trainer loads one whose encoder the family does not use (sd-scripts loads CLIP-L's for Chroma too)."""
        return self.trainer_tokenizers or tuple(encoder.tokenizer for encoder in self.text_encoders)

    def base_model(self, preset: str | None = None) -> str:
        """The model card's `base_model` for the file set `preset` (Chroma1-Base's repository for its preset)."""
        return self.preset(preset).base_model or self.hub_repo

    def has_role(self, role: str) -> bool:
        return any(r.name == role for r in self.roles)

    def presets_of(self, precision: str) -> tuple[Preset, ...]:
        return tuple(p for p in self.presets if p.precision == precision)

    def setting_defaults(self) -> dict[str, Any]:
        """Session keys whose default is this family's (`Session.get` asks when the key is not set)."""
        return {
            "train.samples.steps": self.samples.steps,
            "train.samples.guidance": self.samples.guidance,
            "train.samples.cfg_scale": self.samples.cfg_scale,
            "train.samples.negative_prompt": self.samples.negative_prompt,
            "dataset.max_side": self.resolution,
        }

    def text_encoder(self, role: str) -> TextEncoder:
        return next(encoder for encoder in self.text_encoders if encoder.role == role)

    def budget(self, role: str) -> int | None:
        """The token budget of the text encoder of `role`, None when this family has no such encoder."""
        return next((encoder.max_tokens for encoder in self.text_encoders if encoder.role == role), None)

    @property
    def longest_text_encoder(self) -> TextEncoder:
        """The text encoder that reads the most of a caption: its budget bounds what a captioner may write."""
        return max(self.text_encoders, key=lambda encoder: encoder.max_tokens)
