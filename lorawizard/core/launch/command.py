"""The training command, the accelerate config and the dataset config — correct by construction.

Everything here is checked against sd-scripts' own parser and dataset validator, captured as data files in
`lorawizard/core/data/` (copies of ../shared/reference/sd-scripts-options.tsv and
sd-scripts-dataset-config-schema.tsv; a test keeps them equal):

* `build_train_command(...)` → `TrainCommand(argv, env, cwd)`: every option emitted exists in the parser, values
  have the parser's type and choices; the session's `train.extra_args` go through the same check and are rejected
  with one clear line when unknown or malformed. No shell is ever involved: `argv` is a list, `shell_text()` is
  only for people (shell-quoted, copyable).
* `write_accelerate_config(session, path)`: a project-local YAML (one machine, no dynamo, train.mixed_precision; one process on the
  chosen GPU, or MULTI_GPU over several — see core.multigpu). The user's global accelerate config is never read or
  changed (we always pass `--config_file`).
* `write_dataset_config(session, path, ...)`: one `[[datasets]]` per bucket in use, absolute `image_dir`, types
  checked against sd-scripts' schema before writing, comments for people.
* `prepare_run(session, run_dir, ...)`: writes both config files into `run_dir` and returns the command — what the
  train step and `--replay --steps train --dry-run` use.

`env` of a TrainCommand holds only the variables lorawizard sets; start the process with `command.full_env()`
(the inherited environment plus those), never with `env=command.env` alone.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import tomlkit
from tomlkit.items import Item, Table

from lorawizard.core.common.fsutil import atomic_write_text
from lorawizard.core.gpu import presets as vram_presets
from lorawizard.core.profile import DEFAULT_FAMILY, FAMILIES, ModelFamily, family_for
from lorawizard.core.session.document import (
    BUCKET_RE,
    FORBIDDEN_CHARS,
    INT64_MAX,
    INT64_MIN,
    Session,
    name_problem,
    parse_bucket,
)

if TYPE_CHECKING:
    from lorawizard.core.gpu.nvml import NvmlAdapter

TRAIN_SCRIPT = DEFAULT_FAMILY.backend.script  # the default family's; a session's is family_for(session)'s
LAUNCH_MODULE = "accelerate.commands.launch"
DATASET_CONFIG_NAME = "dataset_config.toml"
ACCELERATE_CONFIG_NAME = "accelerate.yaml"


class CommandError(ValueError):
    """The command or a config file cannot be built; the message is one line meant for a person."""


# ---------------------------------------------------------------- sd-scripts' option list and dataset schema


@dataclass(frozen=True)
class OptionSpec:
    name: str  # without dashes
    type: str  # "str" | "int" | "float" | "flag" | "int_or_float" | "Path" | "str nargs=*" | "float nargs=*"
    default: str
    choices: tuple[str, ...]

    @property
    def is_flag(self) -> bool:
        return self.type == "flag"

    @property
    def is_list(self) -> bool:
        return self.type.endswith("nargs=*")

    @property
    def base_type(self) -> str:
        return self.type.split()[0]


@dataclass(frozen=True)
class SchemaKey:
    key: str
    levels: frozenset[str]  # "general", "datasets", "subset"
    type: str  # as in the TSV: "int", "float", "bool", "str", "dict", "int | [int, int]", "[float, float]", "Any(float, int, ...)"


def _data_text(name: str) -> str:
    return resources.files("lorawizard.core").joinpath("data", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def sd_scripts_options() -> dict[str, OptionSpec]:
    """Every option of the trainer script's parser (sd-scripts sd3 == main, 2026-02), by name without dashes."""
    options: dict[str, OptionSpec] = {}
    for line in _data_text("sd-scripts-options.tsv").splitlines()[1:]:
        if not line.strip():
            continue
        cols = line.split("\t")
        name = cols[0].removeprefix("--")
        choices = tuple(c for c in cols[3].split(",") if c) if len(cols) > 3 else ()
        options[name] = OptionSpec(name, cols[1], cols[2], choices)
    return options


@lru_cache(maxsize=1)
def dataset_schema() -> dict[str, SchemaKey]:
    """sd-scripts' dataset-config keys with the levels where each is allowed (DreamBooth-style subsets)."""
    keys: dict[str, SchemaKey] = {}
    for line in _data_text("sd-scripts-dataset-config-schema.tsv").splitlines()[1:]:
        if not line.strip():
            continue
        cols = line.split("\t")
        levels: set[str] = set()
        for level in cols[1].split(","):
            level = level.strip()
            if level in ("general", "datasets"):
                levels.add(level)
            elif level == "subset(DreamBooth)":
                levels.add("subset")
        keys[cols[0]] = SchemaKey(cols[0], frozenset(levels), cols[2])
    return keys


# ---------------------------------------------------------------- VRAM presets (core.vram_presets, GPU step)


def session_vram_preset(session: Session) -> vram_presets.VramPreset | None:
    """The session's `gpu.vram_preset` as a `core.vram_presets.VramPreset`, None when unset; CommandError if unknown."""
    name = session.gpu.vram_preset
    if not name:
        return None
    try:
        presets = vram_presets.load_presets(session)
    except vram_presets.PresetError as exc:
        raise CommandError(str(exc)) from None
    preset = vram_presets.preset_named(name, presets)
    if preset is None:
        known = ", ".join(f'"{p.name}"' for p in presets)
        raise CommandError(f"gpu.vram_preset: unknown preset {name!r} (known: {known})")
    return preset


def preset_overrides(session: Session, preset: vram_presets.VramPreset) -> dict[str, Any]:
    """Trainer overrides that make one run use `preset` whatever `gpu.vram_preset` says (the probe's step-down).

    Same rules as the command builder: the user's explicit optimizer wins, and so do `train.extra_args`.
    """
    twin = eight_bit_twin(session.train.optimizer_type)  # a fit candidate's: the person's rule, 8-bit state
    options: dict[str, Any] = {k: v for k, v in preset.options.items()
                               if not (k == "optimizer_type" and session.is_set("train.optimizer_type")
                                       and not (twin and v == twin))}
    if preset.blocks_to_swap or preset.min_gb < 24:
        options["highvram"] = None  # as the command builder does: --highvram only for big GPUs
    extra = parse_extra_args(session.train.extra_args)
    return {k: v for k, v in options.items() if k not in extra}


# ---------------------------------------------------------------- the command


@dataclass(frozen=True)
class TrainCommand:
    argv: list[str]
    env: dict[str, str]  # only what lorawizard sets; use full_env() to start the process
    cwd: Path
    options: dict[str, Any] = field(default_factory=dict)  # the trainer options, as emitted (for reports/tests)
    script: str = ""  # the trainer script's word in argv: its options follow it

    def full_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment to start the trainer with: the inherited one (or `base`) plus ours."""
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        return env

    def shell_text(self, *, multiline: bool = False) -> str:
        """The command as a person would type it: `cd DIR && VAR=… python -m accelerate… …`, every word shell-quoted.

        `multiline` breaks before each trainer option with ` \\` continuations (still valid to paste).
        """
        prefix = [f"cd {shlex.quote(str(self.cwd))} &&"]
        prefix += [f"{key}={shlex.quote(value)}" for key, value in sorted(self.env.items())]
        if not multiline:
            return " ".join([*prefix, shlex.join(self.argv)])
        script = self.argv.index(self.script) if self.script in self.argv else len(self.argv) - 1
        lines = [" ".join([*prefix, shlex.join(self.argv[:script + 1])])]
        current: list[str] = []
        for word in self.argv[script + 1 :]:
            if word.startswith("--") and current:
                lines.append("  " + shlex.join(current))
                current = []
            current.append(word)
        if current:
            lines.append("  " + shlex.join(current))
        return " \\\n".join(lines)


def _role_options(families: Iterable[ModelFamily]) -> dict[str, str]:
    """Each trainer option that takes a model file → where it comes from, for every family's backend."""
    return {option: f"the models step (models.{role} in session.toml)"
            for family in families for role, option in family.backend.role_options}


# Options lorawizard sets itself: extra_args may not change them (say where they come from instead).
MANAGED_OPTIONS: dict[str, str] = {
    **_role_options(FAMILIES.values()),
    "tokenizer_cache_dir": "paths.tokenizers",
    "dataset_config": "the dataset step (lorawizard writes it per run)",
    "train_data_dir": "the dataset step (lorawizard writes a dataset config)",
    "reg_data_dir": "the dataset step",
    "in_json": "the dataset step",
    "output_dir": "paths.runs (one folder per run)",
    "output_name": "name in session.toml",
    "logging_dir": "paths.runs (one folder per run)",
    "resume": "the train step (resume)",
    "network_module": f"lorawizard (always {DEFAULT_FAMILY.backend.network_module})",
    "model_type": "models.family (the base model's family sets it)",
    "config_file": "lorawizard (options go on the command line)",
    "output_config": "lorawizard",
    "max_train_epochs": "train.max_train_epochs",
    "save_every_n_epochs": "train.save_every_n_epochs",
    "network_dim": "train.network_dim",
    "learning_rate": "train.learning_rate",
    "optimizer_type": "train.optimizer_type",
    "seed": "train.seed",
    "validation_split": "train.validation_split (lorawizard writes it per [[datasets]] of the dataset config)",
    "validation_seed": "train.seed (the validation split and its noise use the run's seed)",
    "validate_every_n_epochs": "train.validation_every_n_epochs",
    "mixed_precision": "train.mixed_precision (the launcher and its config must agree with the trainer)",
    "huggingface_token": "nowhere: tokens never go on a command line",
    "wandb_api_key": "nowhere: keys never go on a command line",
    # lorawizard writes these from [train.samples] each run: an extra_args value was dropped without a word
    "sample_prompts": "train.samples.prompts (lorawizard writes the prompt file per run)",
    "sample_every_n_epochs": "train.samples.every_n_epochs",
    "sample_at_first": "train.samples.at_first",
    # the trainer uploading by itself would slip past [publish] (its checks, its model card, the token store)
    **{name: "[publish] repo (the publish step uploads the kept LoRA; the trainer never uploads)"
       for name in ("huggingface_repo_id", "huggingface_repo_type", "huggingface_path_in_repo",
                    "huggingface_repo_visibility", "save_state_to_huggingface", "resume_from_huggingface",
                    "async_upload")},
}

# Known hard incompatibilities in sd-scripts (reference §1): (option, predicate on its value, conflicts-with, why).
_CONFLICTS: tuple[tuple[str, str, str], ...] = (
    ("blocks_to_swap", "cpu_offload_checkpointing", "sd-scripts refuses --blocks_to_swap with --cpu_offload_checkpointing"),
    ("cache_text_encoder_outputs", "shuffle_caption", "cached text-encoder outputs cannot be combined with --shuffle_caption"),
    ("cache_text_encoder_outputs", "caption_dropout_rate", "cached text-encoder outputs cannot be combined with caption dropout"),
    ("cache_text_encoder_outputs", "caption_tag_dropout_rate", "cached text-encoder outputs cannot be combined with tag dropout"),
    ("cache_text_encoder_outputs", "token_warmup_step", "cached text-encoder outputs cannot be combined with --token_warmup_step"),
    ("cache_latents", "color_aug", "cached latents cannot be combined with --color_aug"),
    ("cache_latents", "random_crop", "cached latents cannot be combined with --random_crop"),
    ("persistent_data_loader_workers", "no_data_loader_workers",
     "persistent workers need --max_data_loader_n_workers above 0 (torch refuses them)"),
)


# Options whose value may be a negative number (sd-scripts: the logit-normal mean; merge weights). Any other value
# that starts with "-" is refused: argparse could read it as an option.
NEGATIVE_OK = frozenset({"logit_mean", "base_weights_multiplier"})


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_value(spec: OptionSpec, text: str, *, where: str) -> None:
    if FORBIDDEN_CHARS.search(text):
        raise CommandError(f"{where}: --{spec.name}: a value may not contain NUL, CR or line breaks, got {text!r}")
    base = spec.base_type
    number: float | None = None
    if base == "int":
        try:
            number = int(text)
        except ValueError:
            raise CommandError(f"{where}: --{spec.name} expects an integer, got {text!r}") from None
        if not INT64_MIN <= number <= INT64_MAX:
            raise CommandError(f"{where}: --{spec.name} expects an integer that fits in 64 bits, got {text!r}")
    elif base == "float" or (base == "int_or_float" and not re.fullmatch(r"\d+%", text)):
        try:
            number = float(text)
        except ValueError:
            what = "a step count, a ratio below 1 or 'NN%'" if base == "int_or_float" else "a number"
            raise CommandError(f"{where}: --{spec.name} expects {what}, got {text!r}") from None
        if not math.isfinite(number):
            raise CommandError(f"{where}: --{spec.name} expects a finite number, got {text!r}")
    if text.startswith("-"):
        if number is None:
            raise CommandError(f"{where}: --{spec.name}: the value {text!r} starts with '-' and would be read as an option")
        if spec.name not in NEGATIVE_OK:
            raise CommandError(f"{where}: --{spec.name} takes no negative number, got {text!r}")
    choices = [c for c in spec.choices if c != "None"]
    if choices and text not in choices:
        raise CommandError(f"{where}: --{spec.name} must be one of {', '.join(choices)}; got {text!r}")


def _suggest(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, sd_scripts_options(), n=1, cutoff=0.75)
    return f" (did you mean --{close[0]}?)" if close else ""


def parse_extra_args(args: Iterable[str], *, where: str = "train.extra_args") -> dict[str, Any]:
    """Validate trainer options given as words (`["--noise_offset", "0.05", "--flip_aug"]`) → {name: value}.

    Value is True for a flag, a string for one value, a list of strings for list options. Raises CommandError
    with one line naming the word at fault: unknown options (no abbreviations), missing or extra values,
    wrong types or choices, options lorawizard sets itself.
    """
    options = sd_scripts_options()
    words = list(args)
    parsed: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not isinstance(word, str):
            raise CommandError(f"{where}: expected strings, got {word!r}")
        if not word.startswith("--") or word == "--":
            hint = " (options start with --)" if word.startswith("-") and not _is_number(word) else ""
            raise CommandError(f"{where}: {word!r} is not an option{hint}; values go right after their --option")
        name, eq, inline = word[2:].partition("=")
        spec = options.get(name)
        if spec is None:
            raise CommandError(f"{where}: unknown sd-scripts option --{name}{_suggest(name)}")
        if name in MANAGED_OPTIONS:
            raise CommandError(f"{where}: --{name} is set by lorawizard; change it through {MANAGED_OPTIONS[name]}")
        if name in parsed:
            raise CommandError(f"{where}: --{name} is given twice")
        i += 1
        values: list[str] = []
        if eq:
            values.append(inline)
        elif spec.is_flag:
            if i < len(words) and not words[i].startswith("--"):
                values.append(words[i])
        else:
            while i < len(words) and not (words[i].startswith("--") and not _is_number(words[i])):
                values.append(words[i])
                i += 1
                if not spec.is_list:
                    break
        if spec.is_flag:
            if values:
                raise CommandError(f"{where}: --{name} is a switch and takes no value, got {values[0]!r}")
            parsed[name] = True
        elif spec.is_list:
            for value in values:
                _check_value(spec, value, where=where)
            parsed[name] = values
        else:
            if not values:
                raise CommandError(f"{where}: --{name} needs a value")
            _check_value(spec, values[0], where=where)
            parsed[name] = values[0]
    return parsed


def _render_value(value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError("flags are rendered by presence")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_options(options: Mapping[str, Any], *, where: str = "command") -> list[str]:
    """{name: value} → ["--name", "value", ...]; checks every name and value against sd-scripts' parser."""
    specs = sd_scripts_options()
    argv: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        spec = specs.get(name)
        if spec is None:
            raise CommandError(f"{where}: --{name} is not an option of sd-scripts' {TRAIN_SCRIPT}{_suggest(name)}")
        if spec.is_flag:
            if value is not True:
                raise CommandError(f"{where}: --{name} is a switch; use True to set it, got {value!r}")
            argv.append(f"--{name}")
            continue
        if value is True:
            raise CommandError(f"{where}: --{name} needs a value, not a bare switch")
        values = [_render_value(v) for v in value] if isinstance(value, list | tuple) else [_render_value(value)]
        if not spec.is_list and len(values) != 1:
            raise CommandError(f"{where}: --{name} takes one value, got {len(values)}")
        for text in values:
            _check_value(spec, text, where=where)
        argv.append(f"--{name}")
        argv.extend(values)
    return argv


def check_conflicts(options: Mapping[str, Any]) -> list[str]:
    """One line per known incompatibility between the options (sd-scripts would stop on each)."""

    def on(value: Any) -> bool:
        if value is None or value is False:
            return False
        if isinstance(value, str) and _is_number(value):
            return float(value) != 0
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value != 0
        return True

    active = {name: on(value) for name, value in options.items()}
    workers = options.get("max_data_loader_n_workers")
    active["no_data_loader_workers"] = workers is not None and str(workers) == "0"
    if active.get("cache_text_encoder_outputs_to_disk"):
        active["cache_text_encoder_outputs"] = True  # sd-scripts: _to_disk implies the option itself
    if active.get("cache_latents_to_disk"):
        active["cache_latents"] = True
    return [f"--{first} and --{second}: {why}" for first, second, why in _CONFLICTS if active.get(first) and active.get(second)]


def base_options(session: Session) -> dict[str, Any]:
    """The default trainer options (the notes' command plus what they missed), with the session's values; the
    model files' options, the network module and the fixed options are the family's (core.profile)."""
    from lorawizard.core.models.files import resolved_model_paths

    backend = family_for(session).backend
    models = resolved_model_paths(session)
    return {
        **{option: models[role] for role, option in backend.role_options},
        "tokenizer_cache_dir": session.paths.tokenizers,
        "dataset_config": None,
        "cache_latents_to_disk": True,
        "save_model_as": "safetensors",
        "sdpa": True,
        "persistent_data_loader_workers": True,
        "max_data_loader_n_workers": 2,
        "seed": session.train.seed,
        "gradient_checkpointing": True,
        "mixed_precision": session.train.mixed_precision,
        "save_precision": "bf16",
        "network_module": backend.network_module,
        "network_dim": session.train.network_dim,
        "network_train_unet_only": True,
        "optimizer_type": session.train.optimizer_type,
        "learning_rate": session.train.learning_rate,
        "cache_text_encoder_outputs": True,
        "cache_text_encoder_outputs_to_disk": True,
        "fp8_base": True,
        "highvram": True,
        "max_train_epochs": session.train.max_train_epochs,
        "save_every_n_epochs": session.train.save_every_n_epochs,
        "save_state": True,
        **backend.fixed_options,
    }


def _apply_preset(session: Session, options: dict[str, Any]) -> None:
    """The session's VRAM preset over the defaults (an optimizer the person chose stays theirs)."""
    preset = session_vram_preset(session)
    if preset is None:
        return
    if preset.options.get("blocks_to_swap") or preset.min_gb < 24:
        options["highvram"] = None  # --highvram skips memory clean-ups: only for big GPUs
    for name, value in preset.options.items():
        if name == "optimizer_type" and session.is_set("train.optimizer_type"):
            continue  # the user's explicit choice wins over the preset's
        options[name] = value


def fit_options(session: Session) -> dict[str, Any]:
    """The probe's fit (`gpu.fit` quality/fastest): the swap, base precision, checkpointing and optimizer twin it
    chose, over the preset's. Quality keeps a 16-bit base even before a fit was measured; `train.extra_args` still
    win (applied after)."""
    if session.gpu.fit not in ("quality", "fastest"):
        return {}
    options: dict[str, Any] = {}
    swap = session.gpu.fit_swap
    if swap is not None:
        options["blocks_to_swap"] = swap or None
        if swap:
            options["highvram"] = None  # as with a swapping preset
    if session.gpu.fit_fp8 is not None:
        options["fp8_base"] = True if session.gpu.fit_fp8 else None
    elif session.gpu.fit == "quality":
        options["fp8_base"] = None
    if session.gpu.fit_checkpointing is False:
        options["gradient_checkpointing"] = None
    twin = session.gpu.fit_optimizer
    if twin and twin == eight_bit_twin(session.train.optimizer_type):  # only while it is the twin of today's choice
        options["optimizer_type"] = twin
    return options


def trainer_options(
    session: Session,
    *,
    dataset_config: Path | str | None = None,
    output_dir: Path | str | None = None,
    logging_dir: Path | str | None = None,
    output_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: Path | str | None = None,
    validation: bool = False,
) -> dict[str, Any]:
    """The trainer options in order: defaults → VRAM preset → the probe's fit → extra_args → run paths → overrides (last wins).
    `validation`: a training run (not a probe's trial) of a session with `train.validation_split`."""
    options = base_options(session)
    _apply_preset(session, options)
    options.update(fit_options(session))
    if session.train.base_precision == "16bit":  # the person's choice over the preset's fp8 (extra_args still win)
        options["fp8_base"] = None
    extra = parse_extra_args(session.train.extra_args)
    options.update(extra)
    if options["mixed_precision"] == "no":  # sd-scripts asserts fp8_base/full_bf16 need mixed precision
        for name in ("fp8_base", "fp8_base_unet", "full_bf16"):
            options[name] = None
    options["dataset_config"] = _absolute(dataset_config) if dataset_config is not None else None
    options["output_dir"] = _absolute(output_dir) if output_dir is not None else None
    options["output_name"] = output_name or session.name
    problem = name_problem(options["output_name"])
    if problem:  # checked here too: it becomes a file name in the run folder, whatever set it
        raise CommandError(f"name: expected {problem}, got {options['output_name']!r}")
    options["logging_dir"] = _absolute(logging_dir) if logging_dir is not None else None
    options["resume"] = _absolute(resume) if resume is not None else None
    for name, value in (overrides or {}).items():
        if name not in sd_scripts_options():
            script = family_for(session).backend.script
            raise CommandError(f"overrides: --{name} is not an option of sd-scripts' {script}{_suggest(name)}")
        options[name] = value
    asked = set(extra) | set(overrides or {})
    _refuse_unsupported(session, options)
    if "persistent_data_loader_workers" not in asked and str(options.get("max_data_loader_n_workers")) == "0":
        options["persistent_data_loader_workers"] = None  # our default; torch refuses it without worker processes
    if validation and session.train.validation_split:
        _validation_options(session, options)
    conflicts = check_conflicts(options)
    if conflicts:
        raise CommandError(f"trainer options: {conflicts[0]}")
    return {k: v for k, v in options.items() if v is not None and v is not False}


def _refuse_unsupported(session: Session, options: Mapping[str, Any]) -> None:
    """CommandError (one line) for an option the session's family cannot train with (Chroma: no
    --cpu_offload_checkpointing), wherever it came from."""
    family = family_for(session)
    for name, why in family.unsupported_options.items():
        if options.get(name) not in (None, False):
            raise CommandError(f"--{name}: {family.title} cannot use it: {why}")


# sd-scripts' optimizers with 32-bit state whose bitsandbytes twin keeps the update rule with 8-bit state (a quarter of
# the memory): train_util.get_optimizer's names, compared lower-case as it does.
EIGHT_BIT_TWINS = {"adamw": "AdamW8bit", "pagedadamw": "PagedAdamW8bit", "pagedadamw32bit": "PagedAdamW8bit",
                   "lion": "Lion8bit", "sgdnesterov": "SGDNesterov8bit"}


def eight_bit_twin(optimizer: str) -> str:
    """The 8-bit twin of `optimizer` ("" when it has none or is 8-bit already)."""
    return EIGHT_BIT_TWINS.get(optimizer.lower(), "")


def is_schedule_free(optimizer: str) -> bool:
    """sd-scripts' own test (train_util.is_schedulefree_optimizer): the optimizer's name ends in "schedulefree"."""
    return optimizer.lower().endswith("schedulefree")


def _validation_options(session: Session, options: dict[str, Any]) -> None:
    """sd-scripts' validation options for `train.validation_split` (the split itself goes in the dataset config);
    CommandError where sd-scripts cannot validate: a schedule-free optimizer, latents not cached."""
    optimizer = str(options.get("optimizer_type") or "")
    if is_schedule_free(optimizer):
        raise CommandError(
            f"train.validation_split: sd-scripts does not support validation loss with a schedule-free optimizer "
            f"({optimizer}); choose another optimizer (e.g. AdamW8bit) or unset train.validation_split")
    if not (options.get("cache_latents") or options.get("cache_latents_to_disk")):
        raise CommandError("train.validation_split: validation needs cached latents (--cache_latents_to_disk): "
                           "uncached FLUX latents make the validation loss differ from run to run")
    options["validation_seed"] = session.train.seed
    options["validate_every_n_epochs"] = session.train.validation_every_n_epochs


def validation_images(images: int, split: float) -> int:
    """How many of a bucket's `images` sd-scripts holds out for validation (train_util.split_train_val: Python's
    round, half to even)."""
    return round(images * split)


def images_for_validation(split: float) -> int:
    """The fewest images a bucket needs for one validation image at `split`."""
    images = max(1, math.floor(0.5 / split))
    while validation_images(images, split) < 1:
        images += 1
    return images


def library_path_env(session: Session, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`{"LD_LIBRARY_PATH": …}` with `paths.ld_library_path`'s folders first, then the inherited value (`base`, else
    this process's environment); {} when the setting is empty. The trainer, its check and the printed command use it."""
    folders = [str(Path(entry).expanduser()) for entry in session.path_settings.ld_library_path]
    if not folders:
        return {}
    inherited = (os.environ if base is None else base).get("LD_LIBRARY_PATH", "")
    rest = [part for part in inherited.split(":") if part and part not in folders]
    return {"LD_LIBRARY_PATH": ":".join([*folders, *rest])}


def _absolute(path: Path | str) -> Path:
    return Path(path).expanduser().absolute()


def build_train_command(
    session: Session,
    *,
    dataset_config: Path | str,
    accelerate_config: Path | str,
    output_dir: Path | str,
    logging_dir: Path | str | None = None,
    output_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: Path | str | None = None,
    launch: Any = None,
    nvml: NvmlAdapter | None = None,
    validation: bool = False,
) -> TrainCommand:
    """`python -m accelerate.commands.launch --config_file CFG … <sd_scripts>/<the family's script> <options>`.

    `launch` (core.multigpu.Launch) says which GPUs and how many processes; by default the session's choice, checked
    with `nvml` (None: the process-wide adapter).
    Raises CommandError (one line) when sd-scripts or its Python is not known, or an option is wrong.
    """
    paths = session.paths
    if paths.sd_scripts is None:
        raise CommandError("paths.sd_scripts is not set: run the environment step to find or clone sd-scripts")
    if paths.python is None:
        raise CommandError("paths.python is not set: run the environment step to find or create the trainer's Python")
    launch = launch if launch is not None else plan_launch(session, nvml=nvml)
    extra_launch = {k: v for k, v in launch.options().items()
                    if k not in parse_extra_args(session.train.extra_args) and k not in (overrides or {})}
    options = trainer_options(
        session,
        dataset_config=dataset_config,
        output_dir=output_dir,
        logging_dir=logging_dir,
        output_name=output_name,
        overrides={**extra_launch, **(overrides or {})},
        resume=resume,
        validation=validation,
    )
    sd_scripts = _absolute(paths.sd_scripts)
    script = str(sd_scripts / family_for(session).backend.script)
    argv = [
        str(_absolute(paths.python)),
        "-m",
        LAUNCH_MODULE,
        "--config_file",
        str(_absolute(accelerate_config)),
        "--num_cpu_threads_per_process",
        "1",
        "--mixed_precision",
        str(options["mixed_precision"]),
        script,
        *render_options(options),
    ]
    env = {"PYTHONUNBUFFERED": "1", **launch.env, **library_path_env(session)}
    bad = next((word for word in [*argv, *env.values()] if FORBIDDEN_CHARS.search(word)), None)
    if bad is not None:  # paths from the session: NUL cannot be passed, CR/LF would break logs and copies
        raise CommandError(f"the command would contain NUL, CR or a line break: {bad!r}")
    return TrainCommand(argv=argv, env=env, cwd=sd_scripts, options=options, script=script)


def plan_launch(session: Session, **kwargs: Any) -> Any:
    """core.multigpu.plan_launch with its SelectionError as a CommandError (one line either way)."""
    from lorawizard.core.launch import multigpu

    try:
        return multigpu.plan_launch(session, **kwargs)
    except multigpu.SelectionError as exc:
        raise CommandError(str(exc)) from None


# ---------------------------------------------------------------- accelerate config


def accelerate_config_text(session: Session, launch: Any = None, *, machine: Any = None) -> str:
    """The project-local accelerate YAML: one process as before, or MULTI_GPU over the chosen GPUs.

    `machine` (core.machines.Machine) writes one machine's file of a multi-machine run.
    """
    uuid = session.gpu.uuid
    if uuid and not re.fullmatch(r"[A-Za-z0-9._:-]+", uuid):
        raise CommandError(f"gpu.uuid: {uuid!r} does not look like an NVML GPU UUID (GPU-xxxxxxxx-…)")
    launch = launch if launch is not None else plan_launch(session)
    header = "# accelerate config written by lorawizard for this project; passed with `accelerate launch --config_file`.\n"
    if not launch.distributed and machine is None:
        uuids = launch.uuids or ([uuid] if uuid else [])
        gpu = f"'{uuids[0]}'" if uuids else "all"
        note = "the GPU chosen in the GPU step (by UUID)" if uuids else "no GPU chosen yet: the GPU step pins one by UUID"
        body = (
            "# Your global accelerate config is never read or changed. One process, one machine, no dynamo, bf16.\n"
            "compute_environment: LOCAL_MACHINE\n"
            "distributed_type: 'NO'\n"
            "num_processes: 1\n"
            "num_machines: 1\n"
            "machine_rank: 0\n"
            f"gpu_ids: {gpu}  # {note}\n"
        )
    elif machine is not None:
        body = (
            f"# Machine {machine.rank} of {machine.count} ({machine.host}): run the same command on every machine.\n"
            "compute_environment: LOCAL_MACHINE\n"
            "distributed_type: MULTI_GPU\n"
            f"num_processes: {machine.total_processes}  # every machine's processes together\n"
            f"num_machines: {machine.count}\n"
            f"machine_rank: {machine.rank}\n"
            f"main_process_ip: {machine.main_ip}\n"
            f"main_process_port: {machine.port}\n"
            f"gpu_ids: {machine.gpu_ids}\n"
        )
    else:
        gpu = "all" if launch.cpu else "'" + ",".join(launch.uuids) + "'"
        note = ("test mode: processes on the CPU" if launch.cpu
                else "rank order: largest memory first, then PCI order (rank 0 saves and samples)")
        body = (
            f"# Your global accelerate config is never read or changed. {launch.processes} processes (data-parallel), "
            "one machine, no dynamo, bf16.\n"
            "compute_environment: LOCAL_MACHINE\n"
            "distributed_type: MULTI_GPU\n"
            f"num_processes: {launch.processes}\n"
            "num_machines: 1\n"
            "machine_rank: 0\n"
            f"gpu_ids: {gpu}  # {note}\n"
            f"main_process_port: {launch.port}  # free when the run was prepared\n"
        )
    same_network = "true" if machine is None or session.gpu.same_network else "false"
    return header + body + (
        f"mixed_precision: {session.train.mixed_precision}\n"
        "use_cpu: false\n"
        "debug: false\n"
        "downcast_bf16: 'no'\n"
        "dynamo_config:\n"
        "  dynamo_backend: 'NO'\n"
        "main_training_function: main\n"
        "enable_cpu_affinity: false\n"
        "rdzv_backend: static\n"
        f"same_network: {same_network}\n"
        "tpu_env: []\n"
        "tpu_use_cluster: false\n"
        "tpu_use_sudo: false\n"
    )


def write_accelerate_config(session: Session, path: Path | str, launch: Any = None) -> Path:
    """Write the project-local accelerate YAML (atomically) and return its path."""
    path = Path(path)
    atomic_write_text(path, accelerate_config_text(session, launch))
    return path


# ---------------------------------------------------------------- dataset config


def batch_size_for(session: Session, bucket: str, batch_sizes: Mapping[str, int] | None = None) -> int:
    """Probed (`batch_sizes`, else the session's `[gpu.batch_size]`) → the VRAM preset's → 1."""
    if batch_sizes and bucket in batch_sizes:
        return int(batch_sizes[bucket])
    probed = session.batch_sizes()
    if bucket in probed:
        return probed[bucket]
    preset = session_vram_preset(session)
    return int(preset.batch_size) if preset else 1


def _schema_type_ok(spec: SchemaKey, value: Any) -> bool:
    kind = spec.type
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int":
        return is_int
    if kind == "float":
        return isinstance(value, float)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":
        return isinstance(value, dict)
    if kind.startswith("Any(float, int"):
        return is_int or isinstance(value, float)
    if kind == "int | [int, int]":
        return is_int or (
            isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        )
    if kind == "[float, float]":
        return isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value)
    return False


def check_dataset_config(data: Mapping[str, Any]) -> None:
    """Check a dataset config (plain dicts) against sd-scripts' schema; CommandError names the first bad key."""
    schema = dataset_schema()
    unknown_top = [key for key in data if key not in ("general", "datasets")]
    if unknown_top:
        raise CommandError(f"dataset config: [{unknown_top[0]}] is not allowed at the top (only [general] and [[datasets]])")

    def check(table: Mapping[str, Any], level: str, where: str) -> None:
        for key, value in table.items():
            if level == "datasets" and key == "subsets":
                continue
            spec = schema.get(key)
            if spec is None or level not in spec.levels:
                raise CommandError(f"dataset config: {where}.{key} is not allowed there (sd-scripts: extra keys not allowed)")
            if not _schema_type_ok(spec, value):
                raise CommandError(f"dataset config: {where}.{key} must be {spec.type}, got {value!r}")

    check(data.get("general", {}), "general", "general")
    for i, dataset in enumerate(data.get("datasets", [])):
        check(dataset, "datasets", f"datasets[{i}]")
        subsets = dataset.get("subsets", [])
        if not subsets:
            raise CommandError(f"dataset config: datasets[{i}] has no subsets")
        for j, subset in enumerate(subsets):
            check(subset, "subset", f"datasets[{i}].subsets[{j}]")
            if "image_dir" not in subset:
                raise CommandError(f"dataset config: datasets[{i}].subsets[{j}] needs image_dir")
            if not Path(subset["image_dir"]).is_absolute():
                raise CommandError(f"dataset config: image_dir must be absolute, got {subset['image_dir']!r}")


def dataset_config_data(
    session: Session,
    *,
    buckets: Iterable[str] | None = None,
    batch_sizes: Mapping[str, int] | None = None,
    num_repeats: int | None = None,
    validation: bool = False,
) -> dict[str, Any]:
    """The dataset config as plain data (checked against sd-scripts' schema). `validation`: a training run's, with
    `train.validation_split` on each `[[datasets]]` when the session sets it (CommandError: a bucket too small)."""
    split = session.train.validation_split if validation else None
    counts: dict[str, int] = {}
    if buckets is None or split:
        from lorawizard.core.dataset.step import bucket_counts  # imports Pillow: only when needed

        counts = bucket_counts(session)
    chosen = list(counts if buckets is None else buckets)
    if not chosen:
        raise CommandError(
            f"no prepared images in {session.paths.dataset} (no <W>x<H> folder with PNGs): run the dataset step first"
        )
    for bucket in chosen:
        if not BUCKET_RE.match(bucket):
            raise CommandError(f"dataset config: {bucket!r} is not a bucket such as \"1024x512\"")
    repeats = int(num_repeats if num_repeats is not None else session.dataset.num_repeats)
    if repeats < 1:
        raise CommandError(f"dataset config: num_repeats must be at least 1, got {repeats}")
    root = _absolute(session.paths.dataset)
    data: dict[str, Any] = {
        "general": {"shuffle_caption": False, "caption_extension": ".txt", "keep_tokens": 1},
        "datasets": [],
    }
    for bucket in chosen:
        width, height = parse_bucket(bucket)
        batch = batch_size_for(session, bucket, batch_sizes)
        if batch < 1:
            raise CommandError(f"dataset config: batch size for {bucket} must be at least 1, got {batch}")
        entry: dict[str, Any] = {"resolution": [width, height], "batch_size": batch, "num_repeats": repeats}
        if split:
            images = counts.get(bucket, 0)
            if validation_images(images, split) < 1:
                raise CommandError(
                    f"train.validation_split = {split:g}: bucket {bucket} has {images} image(s), too few for one "
                    f"validation image (sd-scripts holds out round({images} × {split:g}) = "
                    f"{validation_images(images, split)}); it needs at least {images_for_validation(split)} per bucket "
                    "at this split: add images, raise the split (at most 0.5) or unset train.validation_split")
            entry["validation_split"] = float(split)
        entry["subsets"] = [{"image_dir": str(root / bucket)}]
        data["datasets"].append(entry)
    check_dataset_config(data)
    return data


def _comment(table: Table, key: str, text: str) -> None:
    cast(Item, table.item(key)).comment(text)  # a plain key of a table we just built: an Item


def dataset_config_text(data: Mapping[str, Any]) -> str:
    doc = tomlkit.document()
    doc.add(tomlkit.comment("sd-scripts dataset config written by lorawizard for one run (see --dataset_config)."))
    doc.add(tomlkit.comment("One [[datasets]] per bucket: images are already exactly W x H, so sd-scripts uses them as is."))
    doc.add(tomlkit.nl())
    general = tomlkit.table()
    general.add(tomlkit.comment("captions: <image>.txt beside each image; the trigger word is the first token and stays first"))
    for key, value in data["general"].items():
        general.add(key, value)
    _comment(general, "shuffle_caption", "must stay off: text-encoder outputs are cached")
    _comment(general, "keep_tokens", "the trigger word")
    doc.add("general", general)
    datasets = tomlkit.aot()
    for entry in data["datasets"]:
        table = tomlkit.table()
        width, height = entry["resolution"]
        table.add(tomlkit.comment(f"bucket {width}x{height}"))
        table.add("resolution", entry["resolution"])
        _comment(table, "resolution", "[width, height]")
        table.add("batch_size", entry["batch_size"])
        table.add("num_repeats", entry["num_repeats"])
        _comment(table, "num_repeats", "times each image is seen per epoch")
        if "validation_split" in entry:
            table.add("validation_split", entry["validation_split"])
            _comment(table, "validation_split", "held out for the validation loss (train.validation_split)")
        subsets = tomlkit.aot()
        for subset in entry["subsets"]:
            sub = tomlkit.table()
            for key, value in subset.items():
                sub.add(key, value)
            _comment(sub, "image_dir", "absolute: sd-scripts resolves relative paths against its own folder")
            subsets.append(sub)
        table.add("subsets", subsets)
        datasets.append(table)
    doc.add("datasets", datasets)
    return tomlkit.dumps(doc)


def write_dataset_config(
    session: Session,
    path: Path | str,
    *,
    buckets: Iterable[str] | None = None,
    batch_sizes: Mapping[str, int] | None = None,
    num_repeats: int | None = None,
    validation: bool = False,
) -> Path:
    """Write the dataset config.toml (checked against sd-scripts' schema, atomically) and return its path."""
    data = dataset_config_data(session, buckets=buckets, batch_sizes=batch_sizes, num_repeats=num_repeats,
                               validation=validation)
    text = dataset_config_text(data)
    if tomlkit.parse(text).unwrap() != data:  # what a TOML reader gets back is exactly what we checked
        raise CommandError("dataset config: internal error, the written TOML does not read back the same")
    path = Path(path)
    atomic_write_text(path, text)
    return path


# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class PreparedRun:
    command: TrainCommand
    dataset_config: Path
    accelerate_config: Path
    launch: Any = None  # core.multigpu.Launch: processes, GPUs in rank order, notes for a person

    @property
    def files(self) -> list[Path]:
        return [self.dataset_config, self.accelerate_config]

    def __iter__(self) -> Iterator[Any]:  # `command, files = prepare_run(...)` works too
        return iter((self.command, self.files))


def prepare_run(
    session: Session,
    run_dir: Path | str,
    *,
    overrides: Mapping[str, Any] | None = None,
    resume: Path | str | None = None,
    buckets: Iterable[str] | None = None,
    batch_sizes: Mapping[str, int] | None = None,
    num_repeats: int | None = None,
    output_name: str | None = None,
    launch: Any = None,
) -> PreparedRun:
    """Write `run_dir/dataset_config.toml` and `run_dir/accelerate.yaml`; return them with the exact command.

    The command trains into `run_dir` (checkpoints, states) and logs to `run_dir/logs`. Nothing is launched.
    The command is built (and validated) before any file is written.
    """
    run_dir = _absolute(run_dir)
    dataset_config = run_dir / DATASET_CONFIG_NAME
    accelerate_config = run_dir / ACCELERATE_CONFIG_NAME
    launch = launch if launch is not None else plan_launch(session)
    command = build_train_command(
        session,
        dataset_config=dataset_config,
        accelerate_config=accelerate_config,
        output_dir=run_dir,
        logging_dir=run_dir / "logs",
        output_name=output_name,
        overrides=overrides,
        resume=resume,
        launch=launch,
        validation=True,
    )
    data = dataset_config_data(session, buckets=buckets, batch_sizes=batch_sizes, num_repeats=num_repeats,
                               validation=True)
    accelerate_text = accelerate_config_text(session, launch)
    atomic_write_text(dataset_config, dataset_config_text(data))
    atomic_write_text(accelerate_config, accelerate_text)
    return PreparedRun(command, dataset_config, accelerate_config, launch)
