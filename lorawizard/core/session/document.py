"""session.toml: the single source of truth for every decision.

Read and written with tomlkit so a person's comments, ordering and formatting survive every save; an
unchanged load → save is byte-identical. tomlkit is imported and the round-trip document built only when the wizard
first changes or writes something: until then reads use tomllib's plain values, so the first frame never pays for
them (~15 ms; bench/bench_cli_startup.py). Values are validated against `SCHEMA`; errors are one line that
names the file, the line, the key and what was expected. Unknown keys are kept and warned about.
"""

from __future__ import annotations

import errno
import math
import re
import stat
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from lorawizard.core.common.fsutil import atomic_write_text
from lorawizard.core.common.text import first_few
from lorawizard.core.profile import (
    DEFAULT_FAMILY,
    FAMILIES,
    all_preset_names,
    all_role_names,
    family_for,
    family_setting_keys,
)
from lorawizard.core.session.sections import SectionViews
from lorawizard.core.session.variants import (
    VARIANTS_KEY,
    Variant,
    VariantProblem,
    identical_warning,
    parse_variants,
    same_as_base,
    short_key,
)

if TYPE_CHECKING:
    from tomlkit.items import AoT

SESSION_FILE = "session.toml"
SESSION_VERSION = 1
STATE_DIR = ".lorawizard"  # our own bookkeeping inside the project (caches, manifests, logs)
BUCKET_RE = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_BOM = "\ufeff"
FORBIDDEN_CHARS = re.compile(r"[\x00\r\n]")  # in a path or argv: NUL cannot be passed, CR/LF split lines
INT64_MIN, INT64_MAX, INT32_MAX = -(2**63), 2**63 - 1, 2**31 - 1
MAX_BATCH = 4096
# The largest session file read (docs/session.md, "Sizes"): about 100,000 image entries of one short caption each,
# or 20,000 with long captions. Above it: one line, refused before the file is read (memory stays bounded).
MAX_SESSION_BYTES = 16 * 1024 * 1024
MAX_KEY_WARNINGS = 10  # unknown keys warned about one by one (with their line); more are counted in one warning
MULTILINE_OK = frozenset({"captions.instruction", "train.samples.prompts"})  # prose into JSON files, never argv
_SECRET_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}")


class SessionError(Exception):
    """A session file that cannot be used; the message is one line meant for a person."""


# ---------------------------------------------------------------- schema

Check = Callable[[Any], str | None]  # returns what was expected, or None when fine


FieldKind = Literal["str", "int", "float", "bool", "path", "str_list"]


class Field(NamedTuple):
    key: str  # dotted path
    kind: FieldKind
    default: Any = None
    check: Check | None = None
    doc: str = ""
    choices: tuple[str, ...] = ()


def _at_least(low: int | float) -> Check:
    return lambda v: None if v >= low else f"a value of at least {low}"


def _positive(v: float) -> str | None:
    return None if v > 0 and math.isfinite(v) else "a positive number"


def _between(low: int | float, high: int | float) -> Check:
    return lambda v: None if low <= v <= high else f"a value from {low} to {high}"


NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def name_problem(name: str) -> str | None:
    """What a LoRA name must be (it becomes a file name in the run folder), or None when `name` is fine."""
    if NAME_RE.fullmatch(name) is None:
        return "a file name of letters, digits, '-', '_' and '.' (not starting with '.' or '-', at most 100)"
    return None


def _word(pattern: str, what: str) -> Check:
    compiled = re.compile(pattern)
    return lambda v: None if v == "" or compiled.fullmatch(v) else what


def _power_of_two_side(v: int) -> str | None:
    ok = 256 <= v <= 2048 and v & (v - 1) == 0
    return None if ok else "a power of two from 256 to 2048 (256, 512, 1024, 2048)"


def _validation_split(v: float) -> str | None:
    return None if 0 < v <= 0.5 else "a share above 0 and at most 0.5 (0.1: a tenth of each bucket's images)"


def _learning_rate(v: float) -> str | None:
    return None if 0 < v <= 10 else "a positive number up to 10"


_UUID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]*"
_UUID_WHAT = "an NVML GPU UUID (GPU-xxxxxxxx-...)"


def _program_first(v: list[str]) -> str | None:
    return "a program to run first (not an empty string), then its arguments" if v and not v[0].strip() else None


def _uuid_list(v: list[str]) -> str | None:
    """Every entry of `gpu.uuids` is checked as `gpu.uuid` is: one entry the same as several."""
    check = _word(_UUID_PATTERN, _UUID_WHAT)
    bad = next((u for u in v if u == "" or check(u) is not None), None)
    return None if bad is None else f"a list of NVML GPU UUIDs (GPU-xxxxxxxx-...; {bad!r} is not one)"


# Upper bounds that keep a value in what the trainer accepts (a 2^63-1 sample width passed and failed at launch).
MAX_SAMPLE_SIDE = 8192
MAX_SAMPLE_STEPS = 1000
MAX_STATE_MINUTES = 7 * 24 * 60  # a week


def unknown_user(value: str) -> str | None:
    """`nouser` for a path `~nouser/...` whose user does not exist here (Path.expanduser raises), else None."""
    if not value.startswith("~"):
        return None
    try:
        Path(value).expanduser()
    except RuntimeError:
        return value[1:].split("/", 1)[0]
    return None


MAX_PATH_BYTES, MAX_NAME_BYTES = 4096, 255  # Linux's PATH_MAX and NAME_MAX: longer fails with "name too long"


def _path_problem(value: str) -> str | None:
    user = unknown_user(value)
    if user is not None:
        return f"a path whose ~{user} is a user on this machine (there is none)"
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        return f"a path of at most {MAX_PATH_BYTES} bytes with names of at most {MAX_NAME_BYTES} (got {len(encoded):,} bytes)"
    return None


def _library_dirs(value: list[str]) -> str | None:
    """`paths.ld_library_path`: absolute folders (each one entry of LD_LIBRARY_PATH, so no ':' inside)."""
    for entry in value:
        if not entry.startswith(("/", "~")) or ":" in entry:
            return f"a list of absolute folders without ':' ({entry!r} is not one)"
        problem = _path_problem(entry)
        if problem is not None:
            return problem
    return None


def _version(v: int) -> str | None:
    return None if v == SESSION_VERSION else f"version {SESSION_VERSION} (this lorawizard reads only that)"


# huggingface_hub's validate_repo_id: `\b[\w\-.]{1,96}\b` per part, so "_" may start or end a part, "-" and "." not
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_ID_RE = re.compile(rf"(?:{_REPO_PART}/)?{_REPO_PART}")


def repo_id_problem(repo: str) -> str | None:
    """What a Hugging Face repo id must look like ("user/name", or "name" for the token's user), or None."""
    if REPO_ID_RE.fullmatch(repo) is None or "--" in repo or ".." in repo or repo.endswith(".git"):
        return ('a Hugging Face repo id "user/name" (letters, digits, "-", "_", "." inside each part, '
                'at most 96 each, no "--" or "..")')
    return None


_MODEL_PRESETS = all_preset_names()
# Room a captioner's draft leaves in the long text encoder's budget for the trigger word and separators.
_CAPTION_BUDGET = DEFAULT_FAMILY.longest_text_encoder
_MAX_DRAFT_TOKENS = _CAPTION_BUDGET.max_tokens - 32
_SAMPLES = DEFAULT_FAMILY.samples

SCHEMA: tuple[Field, ...] = (
    Field("version", "int", SESSION_VERSION, _version, "format version of this file"),
    Field("name", "str", "my-lora", name_problem, "the LoRA's output name (file name of the .safetensors)"),
    Field("paths.sd_scripts", "path", None, _path_problem, "kohya-ss/sd-scripts checkout"),
    Field("paths.python", "path", None, _path_problem, "the trainer's Python (default <sd_scripts>/.venv/bin/python)"),
    Field("paths.models", "path", "models", _path_problem, "where model files live or are downloaded to"),
    Field("paths.tokenizers", "path", None, _path_problem, "offline tokenizers (default <models>/tokenizers)"),
    Field("paths.dataset", "path", "dataset", _path_problem, "prepared images, one folder per bucket"),
    Field("paths.runs", "path", "runs", _path_problem, "training runs: logs, checkpoints, states"),
    Field("paths.ld_library_path", "str_list", [], _library_dirs,
          "folders put first on the trainer's LD_LIBRARY_PATH (NixOS: the driver's /run/opengl-driver/lib)"),
    Field("models.family", "str", None, None,
          f"the base model (unset: the family of models.preset, else {DEFAULT_FAMILY.name})", tuple(FAMILIES)),
    Field("models.preset", "str", _MODEL_PRESETS[0], None, "which model set (the family's 16-bit or fp8 files)",
          _MODEL_PRESETS),
    *(Field(f"models.{role}", "path", None, _path_problem, f"use this {role} file instead of the preset's") for role in all_role_names()),
    Field("dataset.source", "path", None, _path_problem, "your original photos (never modified)"),
    Field("dataset.max_side", "int", DEFAULT_FAMILY.resolution, _power_of_two_side, "longest side of every bucket"),
    Field("dataset.trigger", "str", "", None, "trigger word, written first in every caption"),
    Field("dataset.num_repeats", "int", 10, _between(1, 10_000), "how often each image is seen per epoch"),
    Field("dataset.captionless", "bool", False, None, "train without captions on purpose"),
    Field("gpu.uuid", "str", None, _word(_UUID_PATTERN, _UUID_WHAT),
          "the one GPU to train on (NVML UUID)"),
    Field("gpu.uuids", "str_list", [], _uuid_list, "several GPUs to train on together (NVML UUIDs; data-parallel)"),
    Field("gpu.machines", "str_list", [], None, 'several machines: "host:gpus" each, the main one first'),
    Field("gpu.main_process_port", "int", None, None, "rendezvous port (one machine: a free one is picked)"),
    Field("gpu.same_network", "bool", True, None, "the machines share one local network"),
    Field("gpu.vram_preset", "str", None, None, "low-VRAM preset (chosen from the GPU's memory)"),
    Field("gpu.parallel_runs", "bool", False, None,
          "a queue of variants on the GPUs of gpu.uuids: one run per GPU side by side, not each run on all of them"),
    Field("gpu.fit", "str", "preset", None,
          "what the probe may change: preset (the VRAM preset, largest batch), quality (16-bit base: the fastest swap "
          "and batch) or fastest (an fp8 base allowed too)", ("preset", "quality", "fastest")),
    Field("gpu.fit_swap", "int", None, _at_least(0), "blocks_to_swap the probe's fit chose (quality/fastest)"),
    Field("gpu.fit_fp8", "bool", None, None, "whether the probe's fit chose an fp8 base (quality/fastest)"),
    Field("gpu.fit_checkpointing", "bool", None, None,
          "whether the probe's fit kept gradient checkpointing on (quality/fastest; false: training without it)"),
    Field("gpu.fit_optimizer", "str", None, _word(r"[A-Za-z][A-Za-z0-9_.]*", "an optimizer name such as AdamW8bit"),
          "the 8-bit twin of train.optimizer_type the probe's fit chose (fastest; empty: the person's optimizer)"),
    Field("gpu.price_per_hour", "float", None, _positive, "what one GPU-hour costs (any currency): the forecast's price"),
    Field("gpu.hosted_price_per_1000_steps", "float", None, _positive,
          "what a hosted trainer you would otherwise use charges per 1,000 steps (same currency; from its price page): "
          "the forecast puts its price for the run's steps beside yours"),
    Field("train.network_dim", "int", 4, _between(1, 4096), "LoRA rank"),
    Field("train.learning_rate", "float", 1e-4, _learning_rate, "learning rate"),
    Field("train.max_train_epochs", "int", 16, _between(1, 100_000), "epochs to train"),
    Field("train.save_every_n_epochs", "int", 4, _between(1, 100_000), "save a checkpoint and state every N epochs"),
    Field("train.optimizer_type", "str", "adamw8bit",
          _word(r"[A-Za-z][A-Za-z0-9_.]*", "an optimizer name such as AdamW8bit or prodigyopt.Prodigy"), "optimizer"),
    Field("train.seed", "int", 42, _between(0, 2**32 - 1), "random seed (numpy takes 0 to 2^32-1)"),
    Field("train.extra_args", "str_list", [], None, "extra trainer options (validated)"),
    Field("train.mixed_precision", "str", "bf16", None,
          "bf16 (every GPU the base model trains on) or no (fp32: CPUs without native bf16, debugging; ~2x memory)", ("bf16", "no")),
    Field("train.base_precision", "str", "fp8", None,
          "the base model's weights while training: fp8 (--fp8_base, as every VRAM preset; least memory) or 16bit "
          "(better quality, about twice the transformer's memory)", ("fp8", "16bit")),
    Field("train.validation_split", "float", None, _validation_split,
          "share of each bucket's images held out for a validation loss per epoch (0 < x <= 0.5; unset: none)"),
    Field("train.validation_every_n_epochs", "int", 1, _between(1, 100_000),
          "validate every N epochs (with train.validation_split)"),
    Field("captions.kind", "str", "subject", None, "what the LoRA learns: drafts describe everything else", ("subject", "style")),
    Field("captions.model", "str", "qwen2.5-vl-3b", _path_problem, "captioner: a catalog name or a folder with a transformers model"),
    Field("captions.instruction", "str", None, None, "the captioner's instruction (default: built from kind and trigger)"),
    Field("captions.max_tokens", "int", 160,
          lambda v: None if 16 <= v <= _MAX_DRAFT_TOKENS else f"16 to {_MAX_DRAFT_TOKENS} (the {_CAPTION_BUDGET.name} budget is "
          f"{_CAPTION_BUDGET.max_tokens})",
          "longest draft the captioner may write, in tokens"),
    Field("captions.auto", "bool", False, None, "replay: draft a caption for every image that has none"),
    Field("captions.device", "str", "auto", None, "where the captioner runs", ("auto", "gpu", "cpu")),
    Field("train.keep_epoch", "int", None, _at_least(0), "the epoch whose LoRA is kept (0 or unset: the final one)"),
    Field("train.on_finish", "str_list", [], _program_first, "argv run once when a run ends (never a shell)"),
    Field("train.state_minutes", "int", 15, _between(1, MAX_STATE_MINUTES), "save a resumable state about every N minutes"),
    Field("train.samples.prompts", "str_list", None, None, "sample prompts; on screen separated by | (default: 3 from the trigger; [] = off)"),
    Field("train.samples.every_n_epochs", "int", None, _at_least(1), "sample every N epochs (default: the save cadence)"),
    Field("train.samples.width", "int", None, _between(64, MAX_SAMPLE_SIDE), "sample width (default: the largest bucket's)"),
    Field("train.samples.height", "int", None, _between(64, MAX_SAMPLE_SIDE), "sample height (default: the largest bucket's)"),
    Field("train.samples.steps", "int", _SAMPLES.steps, _between(1, MAX_SAMPLE_STEPS), "denoising steps per sample"),
    Field("train.samples.guidance", "float", _SAMPLES.guidance, _at_least(0),
          "the base model's embedded guidance for samples (default: the family's; 0 for Chroma, ignored by schnell)"),
    Field("train.samples.cfg_scale", "float", _SAMPLES.cfg_scale, _at_least(0),
          "real classifier-free guidance for samples (1 = none; default: the family's, 4 for Chroma)"),
    Field("train.samples.negative_prompt", "str", _SAMPLES.negative_prompt, None,
          "negative prompt for samples, used with a cfg_scale other than 1 (default: the family's)"),
    Field("train.samples.seed", "int", 42, _at_least(0), "fixed seed, so epochs are comparable"),
    Field("train.samples.at_first", "bool", True, None, "a baseline sample before any training"),
    Field("publish.repo", "str", None, repo_id_problem, 'Hugging Face repo to publish to ("user/name")'),
    Field("publish.private", "bool", True, None, "create the repo private (an existing repo keeps its visibility)"),
    Field("publish.tags", "str_list", [], None, "extra tags for the model card"),
    Field("publish.existing", "bool", False, None, "upload into a repo that exists but this project did not create"),
    Field("tools.lora", "path", None, _path_problem, "the LoRA resize, convert, merge_base and check start from (default: the kept one)"),
    Field("tools.rank", "int", None, _between(1, 4096), "resize: the new rank (dynamic: the largest; default half the LoRA's)"),
    Field("tools.resize_method", "str", "fixed", None, "resize: a fixed rank, or each module's rank by how much of "
          "its weights it keeps (sv_fro: Frobenius norm, sv_cumulative: sum of singular values, sv_ratio: largest/smallest)",
          ("fixed", "sv_fro", "sv_cumulative", "sv_ratio")),
    Field("tools.resize_param", "float", None, _positive,
          "resize: the dynamic target (sv_fro/sv_cumulative 0-1, default 0.9; sv_ratio > 1, default 10)"),
    Field("tools.convert_to", "str", "other", None, "convert: the key layout to write (other: the one the file is not in)",
          ("other", "sd-scripts", "ai-toolkit")),
    Field("tools.merge", "str_list", [], None, 'merge: the LoRAs to merge into one, each "path;weight" (weight 1 if left out)'),
    Field("tools.check", "bool", True, None, "after each tool: load the result with the inference script, a sample beside the original's"),
    Field("tools.check_prompt", "str", None, None, "check: the prompt (default: the first sample prompt)"),
    Field("tools.check_seed", "int", 42, _at_least(0), "check: the seed (fixed, so the samples compare)"),
    Field("tools.check_steps", "int", _SAMPLES.steps, _between(1, MAX_SAMPLE_STEPS), "check: denoising steps"),
    Field("tools.check_size", "int", 512, _between(64, MAX_SAMPLE_SIDE), "check: the sample's side in pixels"),
    Field("tools.device", "str", "auto", None, "where resize and merge compute (auto: the GPU when there is one)",
          ("auto", "gpu", "cpu")),
)
FIELDS: dict[str, Field] = {f.key: f for f in SCHEMA}
_FAMILY_KEYS = family_setting_keys()  # their default is the session's family's (Session.get)
TABLES = ("paths", "models", "dataset", "gpu", "train")
OPTIONAL_TABLES = ("captions", "train.samples", "publish", "tools")  # not in a new session file; created when first set

IMAGE_FIELDS: dict[str, str] = {"file": "str", "bucket": "bucket", "crop": "crop", "caption": "str", "skip": "bool",
                               "caption_auto": "bool"}  # caption_auto: a captioner's draft nobody reviewed yet


_KIND_WORDS = {
    "str": "a string",
    "path": "a path (string)",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str_list": "a list of strings",
    "bucket": 'a bucket "WxH" such as "1024x512"',
    "crop": "[left, top, right, bottom] as 4 integers with left < right and top < bottom",
}


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # bool is an int to Python, not to TOML


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_bucket(value: Any) -> bool:
    return isinstance(value, str) and BUCKET_RE.match(value) is not None


def _is_crop(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(_is_int(v) and 0 <= v <= INT32_MAX for v in value)
        and value[0] < value[2]
        and value[1] < value[3]
    )


# kind -> (does the value fit, the python value it stands for)
_KINDS: dict[str, tuple[Callable[[Any], bool], Callable[[Any], Any]]] = {
    "str": (_is_str, str),
    "path": (_is_str, str),
    "int": (_is_int, int),
    "float": (_is_number, float),
    "bool": (lambda value: isinstance(value, bool), bool),
    "str_list": (_is_str_list, lambda value: [str(v) for v in value]),
    "bucket": (_is_bucket, str),
    "crop": (_is_crop, lambda value: [int(v) for v in value]),
}


def _coerce(kind: str, value: Any) -> tuple[Any, str | None]:
    """(python value, None) when `value` fits `kind`, else (None, what was expected)."""
    if kind not in _KINDS:
        raise ValueError(kind)
    fits, convert = _KINDS[kind]
    return (convert(value), None) if fits(value) else (None, _KIND_WORDS[kind])


def _value_problem(spec: Field, value: Any) -> str | None:
    """What `value` should have been for `spec` (type, line breaks, range, choices), or None when it fits."""
    coerced, problem = _coerce(spec.kind, value)
    if problem is None and spec.kind == "int" and not INT64_MIN <= coerced <= INT64_MAX:
        problem = "an integer that fits in 64 bits"
    if problem is None and spec.kind == "float" and not math.isfinite(coerced):
        problem = "a finite number (not inf or nan)"
    if problem is None and spec.kind in ("str", "path", "str_list"):
        texts = coerced if isinstance(coerced, list) else [coerced]
        if spec.key in MULTILINE_OK:  # prose that goes into a JSON file, never a path or argv
            if any("\x00" in text for text in texts):
                problem = "text without NUL"
        elif any(FORBIDDEN_CHARS.search(text) for text in texts):
            problem = "text without NUL, CR or line breaks"
    if problem is None and spec.check is not None:
        problem = spec.check(coerced)
    if problem is None and spec.choices and coerced not in spec.choices:
        problem = "one of " + ", ".join(f'"{c}"' for c in spec.choices)
    return problem


def _describe(value: Any) -> str:
    import tomlkit

    text = tomlkit.item(value).as_string() if not isinstance(value, dict) else "a table"
    return text if len(text) <= 40 else text[:37] + "..."


def _family_warnings(data: dict[str, Any], where: Callable[[str], str]) -> list[str]:
    """What `[models]` sets that its family does not use (kept, ignored): a role it has no file for (CLIP-L for
    Chroma), a preset of another family."""
    models = data.get("models")
    if not isinstance(models, dict):
        return []
    family = family_for(_Plain(data))
    warnings = [f"{where(role)}: models.{role}: {family.title} has no {role} file; ignored (kept in the file)"
                for role in all_role_names() if models.get(role) and not family.has_role(role)]
    preset = models.get("preset")
    if isinstance(preset, str) and preset in _MODEL_PRESETS and all(p.name != preset for p in family.presets):
        warnings.append(f"{where('preset')}: models.preset: {preset!r} is not a {family.title} file set; "
                        f"{family.default_preset.name!r} is used")
    return warnings


class _Plain:
    """`get` over plain values with the schema's defaults (family_for before a Session exists)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def get(self, key: str) -> Any:
        return _value_in(self._data, key)


def parse_bucket(bucket: str) -> tuple[int, int]:
    match = BUCKET_RE.match(bucket)
    if not match:
        raise ValueError(f"not a bucket: {bucket!r}")
    return int(match.group(1)), int(match.group(2))


def bucket_area(bucket: str) -> int:
    width, height = parse_bucket(bucket)
    return width * height


# ---------------------------------------------------------------- line numbers for messages


def find_line(text: str, table: str, key: str, occurrence: int = 0) -> int | None:
    """1-based line of `key` inside `[table]` (or the `occurrence`-th `[[table]]`), or None.

    tomlkit keeps no positions, so messages find the line in the source text themselves.
    """
    current, seen = "", -1
    header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
    key_re = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        match = header.match(line)
        if match:
            current = match.group(2).replace('"', "").replace("'", "")
            if current == table and match.group(1) == "[[":
                seen += 1
            continue
        if current == table and (seen == occurrence or seen == -1) and key_re.match(line):
            return number
    return None


# ---------------------------------------------------------------- the session


class ResolvedPaths(NamedTuple):
    project: Path
    state: Path
    sd_scripts: Path | None
    python: Path | None
    models: Path
    tokenizers: Path
    dataset: Path
    runs: Path


@dataclass
class Session(SectionViews):
    path: Path
    _doc: Any  # tomlkit.TOMLDocument (the wizard: round-trip) or tomllib's plain dicts (read-only, or not built yet)
    warnings: list[str] = field(default_factory=list)
    read_only: bool = False  # replay never rewrites the user's file
    _saved_text: str | None = None
    _bom: bool = False  # the file began with a UTF-8 BOM: kept on save, so only the person's edits change it
    _disk_stamp: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) of the file as last read or written
    _build_doc: Callable[[], Any] | None = None  # builds the round-trip document the first time one is needed

    @property
    def doc(self) -> Any:
        """The document changes are made in: tomlkit's, built on first use (read-only: the plain values)."""
        build = self._build_doc
        if build is not None:
            self._doc, self._build_doc = build(), None
        return self._doc

    # -- construction

    @classmethod
    def load(cls, path: Path | str, *, read_only: bool = False) -> Session:
        """Read and validate `path`. The wizard gets tomlkit's round-trip document (formatting kept on save);
        `read_only` (replay, status, stop) gets plain dicts from tomllib: ~8x faster and ~5x smaller for a large file."""
        path = Path(path).expanduser()
        try:
            stamp = _stamp(path)  # before reading: a change made meanwhile shows as a newer stamp
            raw = _read_regular_file(path)
        except FileNotFoundError:
            raise SessionError(f"{path}: no such session file") from None
        except IsADirectoryError:
            raise SessionError(f"{path}: is a folder, not a session file") from None
        except _TooLarge as exc:
            raise SessionError(
                f"{path}: {exc.size / 2**20:.1f} MiB is larger than lorawizard reads ({MAX_SESSION_BYTES // 2**20} MiB, "
                "about 100,000 image entries; see Sizes in docs/session.md)") from None
        except OSError as exc:
            raise SessionError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SessionError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        del raw
        bom = text.startswith(_BOM)
        text = text.removeprefix(_BOM)  # editors on Windows add one; tomlkit would call it an empty key
        doc: Any
        images: list[_Image] | None = None
        placeholder = False
        if read_only:
            try:
                doc = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise SessionError(_toml_error(path, str(exc))) from None
            data = doc
        else:
            try:
                data = tomllib.loads(text)  # values (and syntax errors) from tomllib: ~20x faster than tomlkit
            except tomllib.TOMLDecodeError as exc:
                raise SessionError(_toml_error(path, str(exc))) from None
            split = _split_images(text, data)
            if split is not None:  # the usual layout: tomlkit reads only the small rest; entries stay plain
                head_text, images = split
                placeholder = _PLACEHOLDER in head_text
                doc = {**data, "dataset": {k: v for k, v in data.get("dataset", {}).items() if k != "images"}}
            else:  # an unusual layout (inline array, tables between entries): all of it in tomlkit, as before
                head_text, doc = text, data
            build = partial(_tomlkit_parse, path, head_text)
        session = cls(path=path, _doc=doc, read_only=read_only, _saved_text=text, _bom=bom, _disk_stamp=stamp,
                      _build_doc=None if read_only else build)
        session._images, session._placeholder = images, placeholder
        session.warnings = session.validate(text, data)
        if not read_only:
            remove_stale_temp_files(path)
        return session

    @classmethod
    def new(cls, path: Path | str, *, name: str | None = None) -> Session:
        """A fresh session; nothing is written until the first decision is saved."""
        path = Path(path).expanduser()
        name = name or _default_name(path.parent)
        values = {"version": SESSION_VERSION, "name": name, **{table: {} for table in TABLES}}
        session = cls(path=path, _doc=values, _build_doc=partial(_new_document, name))
        session._images = []
        return session

    @classmethod
    def open_project(cls, project_dir: Path | str) -> Session:
        path = Path(project_dir).expanduser() / SESSION_FILE
        return cls.load(path) if path.exists() else cls.new(path)

    # -- validation

    def validate(self, text: str | None = None, data: dict[str, Any] | None = None) -> list[str]:
        """Raise SessionError on the first invalid value; return warnings for unknown keys.

        `data`: the file's plain values (tomllib) when the caller has them; else the session's own."""
        text = text if text is not None else self.to_text()
        if data is None:
            data = self._doc if self._images is None else tomllib.loads(text)
        warnings: list[str] = []
        unknown: list[str] = []

        def where(table: str, key: str, occurrence: int = 0) -> str:
            line = find_line(text, table, key, occurrence)
            return f"{self.path}:{line}" if line else f"{self.path}"

        if "version" not in data:
            raise SessionError(f"{self.path}: missing `version = {SESSION_VERSION}` at the top")
        for key, value in _walk(data):
            spec = FIELDS.get(key)
            table, _, leaf = key.rpartition(".")
            if key in TABLES or key in OPTIONAL_TABLES:  # _walk descends into tables: here it is something else
                raise SessionError(f"{where(table, leaf)}: {key}: expected a table [{key}], got {_describe(value)}")
            if key == "dataset.images":
                warnings += self._validate_images(value, text)
                continue
            if key == VARIANTS_KEY:
                warnings += self._validate_variants(value, data, text)
                continue
            if key == "gpu.batch_size":
                if not isinstance(value, dict):
                    raise SessionError(f"{where(table, leaf)}: gpu.batch_size: expected a table of \"WxH\" = n")
                for bucket, size in value.items():
                    if not BUCKET_RE.match(bucket):
                        raise SessionError(
                            f"{where(key, bucket)}: gpu.batch_size.{bucket}: expected a bucket name such as \"1024x512\""
                        )
                    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BATCH:
                        raise SessionError(
                            f"{where(key, bucket)}: gpu.batch_size.{bucket}: expected a positive integer up to {MAX_BATCH}, "
                            f"got {_describe(size)}"
                        )
                continue
            if spec is None:
                unknown.append(key)
                if len(unknown) <= MAX_KEY_WARNINGS:  # each finds its line by scanning the file: a bounded number
                    warnings.append(f"{where(table, leaf)}: unknown key `{key}` (kept, not used{_did_you_mean(key)})")
                continue
            if _looks_secret(value):  # said before anything that would echo the value
                raise SessionError(f"{where(table, leaf)}: {key}: looks like a Hugging Face token; remove it "
                                   "(tokens belong in huggingface_hub's token store, never in session.toml)")
            problem = _value_problem(spec, value)
            if problem is not None:
                raise SessionError(f"{where(table, leaf)}: {key}: expected {problem}, got {_describe(value)}")
        if len(unknown) > MAX_KEY_WARNINGS:
            more = unknown[MAX_KEY_WARNINGS:]
            warnings.append(f"{self.path}: {len(more):,} more unknown keys (kept, not used) {first_few(more)}")
        return warnings + _family_warnings(data, lambda key: where("models", key))

    def _validate_variants(self, value: Any, data: dict[str, Any], text: str) -> list[str]:
        """Raise on the first bad `[[train.variants]]` entry (its line, one reason); warn about one that changes
        nothing."""
        try:
            parsed = parse_variants(value, schema_keys=FIELDS, value_problem=_schema_value_problem,
                                    base_name=str(data.get("name") or FIELDS["name"].default))
        except VariantProblem as exc:
            line = find_line(text, VARIANTS_KEY, exc.key, exc.index)
            raise SessionError(f"{self.path}:{line}: {exc}" if line else f"{self.path}: {exc}") from None
        return [identical_warning(v) for v in parsed if same_as_base(v, lambda key: _value_in(data, key))]

    def _validate_images(self, value: Any, text: str) -> list[str]:
        """Raise on the first bad value; one warning per unknown key, however many entries carry it (count, line of
        the first, first few files): a session with 400,000 entries of one stray key prints one line, not 400,000."""
        if not isinstance(value, list):
            raise SessionError(f"{self.path}: dataset.images: expected [[dataset.images]] tables")
        unknown: dict[str, tuple[int, list[str]]] = {}  # key → (entries carrying it, the first 3 of their files)
        first_index: dict[str, int] = {}
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise SessionError(f"{self.path}: dataset.images[{index}]: expected a table")
            if "file" not in entry:
                line = find_line(text, "dataset.images", "bucket", index) or find_line(text, "dataset.images", "skip", index)
                at = f":{line}" if line else ""
                raise SessionError(f"{self.path}{at}: dataset.images[{index}]: missing `file`")
            for key, item in entry.items():
                kind = IMAGE_FIELDS.get(key)
                if kind is None:
                    count, files = unknown.get(key, (0, []))
                    if count < 3:
                        files.append(str(entry["file"]))
                    unknown[key] = (count + 1, files)
                    first_index.setdefault(key, index)
                    continue
                problem = _coerce(kind, item)[1]
                if problem is None and key == "file" and "\x00" in item:
                    problem = "a file name (without NUL)"
                if problem is None:
                    continue  # find_line scans the whole file: only for messages, or 5,000 images take minutes
                line = find_line(text, "dataset.images", key, index)
                at = f"{self.path}:{line}" if line else str(self.path)
                raise SessionError(f"{at}: dataset.images[{index}].{key}: expected {problem}, got {_describe(item)}")
        warnings = []
        keys = list(unknown)
        for key in keys[:MAX_KEY_WARNINGS]:
            count, files = unknown[key]
            line = find_line(text, "dataset.images", key, first_index[key])  # one scan per distinct key
            at = f"{self.path}:{line}" if line else str(self.path)
            entries = f"{count:,} entries" if count > 1 else "1 entry"
            warnings.append(f"{at}: unknown key `dataset.images.{key}` in {entries} (kept, not used) {first_few(files, count)}")
        if len(keys) > MAX_KEY_WARNINGS:
            more = keys[MAX_KEY_WARNINGS:]
            warnings.append(f"{self.path}: {len(more):,} more unknown keys in [[dataset.images]] (kept, not used) "
                            f"{first_few(more)}")
        return warnings

    # -- reading

    def get(self, key: str) -> Any:
        """The value of a schema key, or its default (the session's model family's for `_FAMILY_KEYS`: sample steps,
        guidance, CFG, negative prompt, max side). A key known where it is read is read typed instead:
        `session.train.max_train_epochs` (sections.py: the same read, its type from the schema)."""
        spec = FIELDS[key]
        node: Any = self._doc  # read: the plain values do until a change builds the round-trip document
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if key in _FAMILY_KEYS:
                    return family_for(self).setting_defaults()[key]
                if key == "models.family":  # unset: the family owning models.preset (FLUX.1-dev's by default)
                    return family_for(self.get("models.preset")).name
                return _copy_default(spec.default)
            node = node[part]
        return _coerce(spec.kind, _plain(node))[0]

    def variants(self) -> list[Variant]:
        """`[[train.variants]]`, in file order (checked when the file was read; [] when there are none)."""
        value = _plain(self._doc.get("train", {}).get("variants"))
        if not value:
            return []
        return parse_variants(value, schema_keys=FIELDS, value_problem=_schema_value_problem, base_name=self.name)

    def with_changes(self, changes: dict[str, Any]) -> Session:
        """A read-only copy with `changes` (schema key → value) applied: a variant's settings, never saved."""
        import copy

        data = copy.deepcopy(_plain(self._doc))
        for key, value in changes.items():
            spec = FIELDS.get(key)
            if spec is None:
                raise SessionError(f"unknown setting `{key}`")
            problem = _value_problem(spec, value)
            if problem is not None:
                raise SessionError(f"{key}: expected {problem}, got {_describe(value)}")
            node = data
            *tables, leaf = key.split(".")
            for table in tables:
                node = node.setdefault(table, {})
            node[leaf] = _coerce(spec.kind, value)[0]
        derived = Session(path=self.path, _doc=data, read_only=True, _saved_text=self._saved_text, _bom=self._bom)
        derived._images, derived._placeholder = self._images, self._placeholder  # shared, read-only
        return derived

    def set_variants(self, variants: list[Variant]) -> None:
        """Replace `[[train.variants]]` (checked first: SessionError, nothing changed); [] removes them."""
        import tomlkit

        entries = [{"name": v.name, **{short_key(k): val for k, val in v.changes.items()}} for v in variants]
        try:
            parse_variants(entries, schema_keys=FIELDS, value_problem=_schema_value_problem, base_name=self.name)
        except VariantProblem as exc:
            raise SessionError(str(exc)) from None
        train, _ = self._table_for("train.network_dim")
        if not entries:
            train.pop("variants", None)
            return
        aot = tomlkit.aot()
        for entry in entries:
            table = tomlkit.table()
            for key, value in entry.items():
                table[key] = value
            aot.append(table)
        train["variants"] = aot

    def is_set(self, key: str) -> bool:
        node: Any = self._doc
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    @property
    def project_dir(self) -> Path:
        return self.path.parent.resolve()

    def resolve(self, value: str | None) -> Path | None:
        """A path from the file: `~` expands, relative paths resolve against the session's folder."""
        if value is None or value == "":
            return None
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # `~nouser/…` (validation refuses it where the file is read; never a traceback here)
            path = Path(value)
        return path if path.is_absolute() else (self.project_dir / path)

    @property
    def paths(self) -> ResolvedPaths:
        sd_scripts = self.resolve(self.path_settings.sd_scripts)
        python = self.resolve(self.path_settings.python)
        if python is None and sd_scripts is not None:
            python = sd_scripts / ".venv" / "bin" / "python"
        models = self.resolve(self.path_settings.models) or self.project_dir / "models"
        return ResolvedPaths(
            project=self.project_dir,
            state=self.project_dir / STATE_DIR,
            sd_scripts=sd_scripts,
            python=python,
            models=models,
            tokenizers=self.resolve(self.path_settings.tokenizers) or models / "tokenizers",
            dataset=self.resolve(self.path_settings.dataset) or self.project_dir / "dataset",
            runs=self.resolve(self.path_settings.runs) or self.project_dir / "runs",
        )

    def batch_sizes(self) -> dict[str, int]:
        table = self._doc.get("gpu", {}).get("batch_size", {})
        return {str(k): int(v) for k, v in table.items()}

    def images(self) -> dict[str, dict[str, Any]]:
        """`[[dataset.images]]` as {file: {bucket, crop, caption, skip}} (plain values, in file order)."""
        if self._images is not None:
            return {str(image.values["file"]): _plain_entry(image.values) for image in self._images}
        return {str(entry["file"]): _plain_entry(entry) for entry in self._image_tables()}

    # -- writing

    def set(self, key: str, value: Any) -> None:
        """Validate and store one schema value (None removes it). Raises SessionError, changes nothing then."""
        spec = FIELDS.get(key)
        if spec is None:
            raise SessionError(f"unknown setting `{key}`")
        if value is None:
            self._remove(key)
            return
        _refuse_secret(key, value)  # before any message that would echo the value
        problem = _value_problem(spec, value)
        if problem is not None:
            raise SessionError(f"{key}: expected {problem}, got {_describe(value)}")
        coerced = _coerce(spec.kind, value)[0]
        table, leaf = self._table_for(key)
        if leaf in table and _plain(table[leaf]) == coerced:
            return  # keep the user's formatting (e.g. 1e-4 vs 0.0001) when nothing changed
        table[leaf] = coerced

    def set_batch_size(self, bucket: str, size: int | None) -> None:
        parse_bucket(bucket)
        gpu, _ = self._table_for("gpu.uuid")
        if size is None:
            if "batch_size" in gpu:
                gpu["batch_size"].pop(bucket, None)
            return
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BATCH:
            raise SessionError(f"gpu.batch_size.{bucket}: expected a positive integer up to {MAX_BATCH}, got {size!r}")
        if "batch_size" not in gpu:
            import tomlkit

            gpu["batch_size"] = tomlkit.table()
        gpu["batch_size"][bucket] = size

    def update_image(self, file: str, **values: Any) -> None:
        """Create or change the `[[dataset.images]]` entry of `file`; a value of None removes that field."""
        self._update_image(self._image_index(), file, values)

    def update_images(self, changes: Iterable[tuple[str, dict[str, Any]]]) -> None:
        index = self._image_index()  # once: with tomlkit, finding it costs about as much as one update
        for file, values in changes:
            self._update_image(index, file, values)

    def _update_image(self, index: dict[str, Any], file: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            kind = IMAGE_FIELDS.get(key)
            if kind is None or key == "file":
                raise SessionError(f"dataset.images: unknown field `{key}`")
            if value is not None:
                _, problem = _coerce(kind, value)
                if problem is not None:
                    raise SessionError(f"dataset.images ({file}).{key}: expected {problem}, got {_describe(value)}")
                _refuse_secret(f"dataset.images.{key}", value)
        if self._images is not None:
            self._update_plain(index, file, values)
            return
        entry = index.get(file)
        if entry is None:
            import tomlkit

            entry = tomlkit.table()
            entry["file"] = file
            self._images_aot().append(entry)
            entry = self._images_aot()[-1]
            index[file] = entry  # keep the index: rebuilding it per new image is quadratic
        for key, value in values.items():
            if value is None:
                entry.pop(key, None)
            elif key not in entry or _plain(entry[key]) != value:
                entry[key] = value

    def _update_plain(self, index: dict[str, Any], file: str, values: dict[str, Any]) -> None:
        """The plain-entry layout: change the values, then that one entry's text (nothing else is re-rendered)."""
        assert self._images is not None
        image = index.get(file)
        if image is None:
            image = _Image({"file": file}, None)
            self._images.append(image)
            index[file] = image
        changed = dict(image.values)
        for key, value in values.items():
            if value is None:
                changed.pop(key, None)
            else:
                changed[key] = [int(v) for v in value] if key == "crop" else _coerce(IMAGE_FIELDS[key], value)[0]
        if changed == image.values and image.src is not None:
            return  # nothing changed: the entry keeps its text byte for byte
        image.src = _entry_text(image.src, image.values, changed)
        image.values = changed

    def to_text(self) -> str:
        import tomlkit

        if self._images is None:
            return tomlkit.dumps(self.doc)
        head = tomlkit.dumps(self.doc)
        images = "".join(image.src or "" for image in self._images)
        if self._placeholder:
            return head.replace(_PLACEHOLDER, images, 1)
        if not images:
            return head
        gap = "" if not head or head.endswith("\n\n") else "\n" if head.endswith("\n") else "\n\n"
        return head + gap + images

    @property
    def dirty(self) -> bool:
        return self.to_text() != self._saved_text

    def _write_file(self) -> bool:
        """Write atomically when something changed. Returns whether a write happened. Only the store calls this
        (core/session/store.py: it merges a hand edit made on disk first); tests/unit/test_session_writer.py checks."""
        if self.read_only:
            raise SessionError(f"{self.path}: opened read-only (replay never rewrites your session file)")
        text = self.to_text()
        if text == self._saved_text and self.path.exists():
            return False
        if _has_secret(text):
            raise SessionError("refusing to save: the session would contain a Hugging Face token")
        # A symlinked session.toml (a dotfiles repo) stays a link: the write goes to its target, atomically there.
        target = self.path.resolve() if self.path.is_symlink() else self.path
        atomic_write_text(target, (_BOM if self._bom else "") + text)
        self._saved_text = text
        try:
            self._disk_stamp = _stamp(self.path)
        except OSError:
            self._disk_stamp = None
        return True

    def changed_on_disk(self) -> bool:
        """Whether the file now differs from what this session last read or wrote: someone edited it by hand (or
        another program wrote it) while the wizard had it open. A file that is gone or unreadable counts as unchanged
        (the next save writes it again, or says why it cannot)."""
        try:
            stamp = _stamp(self.path)
        except OSError:
            return False
        if stamp == self._disk_stamp:
            return False
        if self._saved_text is None:
            return True  # a file appeared where this new session had none
        try:
            text = self.path.read_bytes().decode("utf-8")
        except OSError:
            return False
        except UnicodeDecodeError:
            return True
        if text.removeprefix(_BOM) == self._saved_text:
            self._disk_stamp = stamp  # touched, not changed
            return False
        return True

    def adopt(self, other: Session) -> None:
        """Take `other`'s content (the file as it is on disk now) into this object, which the wizard shares."""
        self._doc, self._build_doc = other._doc, other._build_doc
        self.warnings, self._saved_text, self._bom = other.warnings, other._saved_text, other._bom
        self._images, self._placeholder, self._index = other._images, other._placeholder, None
        self._disk_stamp = other._disk_stamp

    # -- internals

    _index: dict[str, Any] | None = None
    # The usual layout: `[[dataset.images]]` entries as plain values, each with the exact text it was read from
    # (or rendered to when it changed), outside tomlkit; `doc` then holds everything else, with _PLACEHOLDER
    # where the entries were. None: every entry lives in the tomlkit document (an unusual layout).
    _images: list[_Image] | None = None
    _placeholder: bool = False

    def _table_for(self, key: str) -> tuple[Any, str]:
        parts = key.split(".")
        node: Any = self.doc
        for part in parts[:-1]:
            if part not in node:
                import tomlkit

                node[part] = tomlkit.table()  # a tomlkit Container appends it like .add
            node = node[part]
        return node, parts[-1]

    def _remove(self, key: str) -> None:
        parts = key.split(".")
        node: Any = self.doc
        for part in parts[:-1]:
            if part not in node:
                return
            node = node[part]
        node.pop(parts[-1], None)

    def _images_aot(self) -> AoT:
        import tomlkit
        from tomlkit.items import Table

        dataset, _ = self._table_for("dataset.images")
        if "images" not in dataset:
            dataset["images"] = tomlkit.aot() if isinstance(dataset, Table) else []
        return cast("AoT", dataset["images"])

    def _image_tables(self) -> list[Any]:
        dataset = self._doc.get("dataset")
        if not isinstance(dataset, dict) or "images" not in dataset:
            return []
        return list(dataset["images"])

    def _image_index(self) -> dict[str, Any]:
        if self._images is not None:
            if self._index is None or len(self._index) != len(self._images):
                self._index = {str(image.values["file"]): image for image in self._images}
            return self._index
        dataset = self.doc.get("dataset")
        count = len(dataset["images"]) if isinstance(dataset, dict) and "images" in dataset else 0
        if self._index is None or len(self._index) != count:  # len only: copying the AoT per call is slow
            self._index = {str(t["file"]): t for t in self._image_tables()}
        return self._index


# ---------------------------------------------------------------- [[dataset.images]] outside tomlkit
#
# tomlkit builds dozens of objects per entry: 20,000 entries take tens of seconds to parse and about as long to
# dump. The entries are read with tomllib instead and kept as plain values beside the text each came from; an
# unchanged entry is written back byte for byte (its comments included), a changed one is rendered alone.

_PLACEHOLDER = "[lorawizard-dataset-images-go-here-5b0e]\n"  # a table header: keys added to [dataset] stay above it
_HEADER_LINE = re.compile(r"^[ \t]*\[(\[?)[ \t]*([^\]\n]*?)[ \t]*\]", re.M)


@dataclass
class _Image:
    values: dict[str, Any]  # plain values, validated like every other entry when read
    src: str | None  # its exact text in the file (header to the next header), or what it was rendered to


def _split_images(text: str, data: dict[str, Any]) -> tuple[str, list[_Image]] | None:
    """(the text without the entries, the entries) when they form one run of `[[dataset.images]]` tables; None when
    the layout is anything else, or when the rest does not read back as the same values (then tomlkit reads all)."""
    dataset = data.get("dataset")
    values = dataset.get("images") if isinstance(dataset, dict) else None
    if values is None:
        return (text, []) if _PLACEHOLDER.strip() not in text else None
    assert isinstance(dataset, dict)
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values) or _PLACEHOLDER.strip() in text:
        return None
    starts: list[int] = []  # where each entry's header begins
    start = end = -1
    for match in _HEADER_LINE.finditer(text):
        name = match.group(2).replace('"', "").replace("'", "").replace(" ", "")
        if name == "dataset.images" and match.group(1):
            if end != -1:
                return None  # another table between entries
            starts.append(match.start())
        elif name.startswith("dataset.images."):
            if not starts or end != -1:
                return None
        elif starts and end == -1:
            end = match.start()
    if len(starts) != len(values):
        return None
    start, end = starts[0], (len(text) if end == -1 else end)
    head = text[:start] + _PLACEHOLDER + text[end:]
    try:
        rest = tomllib.loads(head)
    except tomllib.TOMLDecodeError:
        return None
    rest.pop(_PLACEHOLDER.strip()[1:-1], None)
    expected = {**data, "dataset": {k: v for k, v in dataset.items() if k != "images"}}
    if rest != expected:
        return None
    bounds = [*starts, end]
    return head, [_Image(value, text[bounds[i]:bounds[i + 1]]) for i, value in enumerate(values)]


def _new_document(name: str) -> Any:
    import tomlkit

    doc = tomlkit.document()
    doc.add(tomlkit.comment("lorawizard session: every decision lives here. Edit freely; see docs/session.md."))
    doc.add("version", SESSION_VERSION)
    doc.add("name", name)
    for table in TABLES:
        doc.add(tomlkit.nl())
        doc.add(table, tomlkit.table())
    return doc


def _tomlkit_parse(path: Path, text: str) -> Any:
    import tomlkit
    from tomlkit.exceptions import ParseError, TOMLKitError

    try:
        return tomlkit.parse(text)
    except ParseError as exc:
        reason = str(exc).split(" at line ")[0]
        raise SessionError(f"{path}:{exc.line}:{exc.col}: TOML syntax error: {reason}") from None
    except TOMLKitError as exc:
        raise SessionError(f"{path}: TOML error: {exc}") from None


_TOML_ESCAPES = {code: f"\\u{code:04x}" for code in [*range(0x20), 0x7F]}
_TOML_ESCAPES.update({ord("\\"): "\\\\", ord('"'): '\\"', 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"})


def _toml_value(value: Any) -> str:
    """A known image field's value in TOML (strings as basic strings, escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.translate(_TOML_ESCAPES) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(str(int(v)) for v in value) + "]"
    raise TypeError(value)


def _entry_text(src: str | None, old: dict[str, Any], new: dict[str, Any]) -> str:
    """The text of one changed entry. Written by us (key order kept, new keys last) unless its text has a comment
    or a key we do not know: then tomlkit edits that one small table, so the person's comments survive."""
    import tomlkit

    if src is not None and ("#" in src or any(key not in IMAGE_FIELDS for key in old)):
        doc = tomlkit.parse(src)
        table = doc["dataset"]["images"][0]
        for key in list(table):
            if key not in new:
                del table[key]
        for key, value in new.items():
            if key not in table or _plain(table[key]) != value:
                table[key] = value
        return tomlkit.dumps(doc)
    lines = ["[[dataset.images]]\n"]
    lines += [f"{key} = {_toml_value(value)}\n" for key, value in new.items()]
    return "".join(lines) + "\n"


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _did_you_mean(key: str) -> str:
    """`; did you mean `train.max_train_epochs`?` for a key one typo away from a known one (a hand edit), else ""."""
    import difflib  # only for unknown keys: nothing at start-up

    close = difflib.get_close_matches(key, list(FIELDS), n=1, cutoff=0.85)
    return f"; did you mean `{close[0]}`?" if close else ""


STALE_TEMP_S = 10 * 60  # a save takes well under a second: a temp file this old was left by a kill


def remove_stale_temp_files(path: Path, *, older_than_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove our own atomic-write temp files of `path` (`.session.toml.XXXXXXXX.tmp`, beside it and beside its link
    target) that a kill -9 during a save left behind; only that pattern, only older than `older_than_s`."""
    import os
    import time

    pattern = re.compile(r"^\." + re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.tmp$")
    folders = {path.parent}
    try:
        if path.is_symlink():
            target = path.resolve()
            folders.add(target.parent)
            pattern = re.compile(rf"^\.(?:{re.escape(path.name)}|{re.escape(target.name)})\.[A-Za-z0-9_]{{8}}\.tmp$")
    except (OSError, RuntimeError):
        pass
    removed: list[Path] = []
    now = time.time()
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not pattern.match(entry.name):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _stamp(path: Path) -> tuple[int, int, int]:
    """What tells a file changed without reading it (an editor that saves by rename makes a new inode)."""
    status = path.stat()
    return status.st_mtime_ns, status.st_size, status.st_ino


def _read_regular_file(path: Path, limit: int | None = None) -> bytes:
    """The file's bytes; a FIFO, socket or device is refused before it is opened (reading a FIFO blocks forever),
    and so is a file larger than `limit` (default MAX_SESSION_BYTES): _TooLarge, before or while reading."""
    limit = MAX_SESSION_BYTES if limit is None else limit
    status = path.stat()
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
    if not stat.S_ISREG(status.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device?)", str(path))
    if status.st_size > limit:
        raise _TooLarge(status.st_size)
    with path.open("rb") as file:
        data = file.read(limit + 1)  # a file that grew since the stat still stops here
    if len(data) > limit:
        raise _TooLarge(max(len(data), path.stat().st_size))
    return data


_TOMLLIB_AT = re.compile(r"^(?P<reason>.*?) \(at line (?P<line>\d+), column (?P<col>\d+)\)$", re.S)


def _toml_error(path: Path, message: str) -> str:
    """tomllib's "Invalid value (at line 3, column 7)" as `path:3:7: TOML syntax error: Invalid value`."""
    match = _TOMLLIB_AT.match(message)
    if match is None:
        return f"{path}: TOML syntax error: {message.replace(' (at end of document)', ' at the end of the file')}"
    return f"{path}:{match['line']}:{match['col']}: TOML syntax error: {match['reason']}"


def _schema_value_problem(key: str, value: Any) -> str | None:
    return _value_problem(FIELDS[key], value)


def _value_in(data: dict[str, Any], key: str) -> Any:
    """The value of schema key `key` in plain `data`, or its default (coerced as `Session.get` does)."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _copy_default(FIELDS[key].default)
        node = node[part]
    return _coerce(FIELDS[key].kind, _plain(node))[0]


def _walk(doc: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and (dotted in TABLES or dotted in OPTIONAL_TABLES):
            yield from _walk(value, dotted + ".")
        else:
            yield dotted, _plain(value)


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _plain_entry(entry: Any) -> dict[str, Any]:
    """A plain copy of one image entry: tomlkit's unwrap copies; tomllib's dict (read-only) is copied here, so a
    caller that changes what it got never changes the session."""
    if hasattr(entry, "unwrap"):
        return cast(dict[str, Any], entry.unwrap())
    return {key: list(value) if isinstance(value, list) else value for key, value in entry.items()}


def _copy_default(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _has_secret(text: str) -> bool:
    """`_SECRET_RE.search(text)`, quick on a large text: the regex runs only where "hf_" is.

    Searched whole, 20,000 captions (4 MB) took ~110 ms in the save thread, all of it holding the GIL: the UI froze that
    long half a second after each caption typed. `str.find` is a C scan, some 50x quicker.
    """
    at = text.find("hf_")
    while at != -1:
        if _SECRET_RE.match(text, at):  # \b sees the character before `at`: a match, not a slice
            return True
        at = text.find("hf_", at + 3)
    return False


def _looks_secret(value: Any) -> bool:
    texts = value if isinstance(value, list) else [value]
    return any(isinstance(t, str) and _has_secret(t) for t in texts)


def _refuse_secret(key: str, value: Any) -> None:
    if _looks_secret(value):
        raise SessionError(f"{key}: looks like a Hugging Face token; tokens never go into session.toml")


def _default_name(folder: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", folder.resolve().name).strip("-")[:100].rstrip("-")
    return slug if slug and name_problem(slug) is None and not _looks_secret(slug) else "my-lora"
