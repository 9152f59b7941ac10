"""Where the tools' results go and what they are called, and the sidecar beside each.

* resize: `loras/<stem>-r<rank>.safetensors` (a dynamic resize: `-r<largest rank>-<method><target>`, e.g.
  `mychar-e8-r11-fro0.9`); a stem that already ends in `-r<N>` has it replaced, not repeated;
* convert: `loras/<stem>-<layout suffix>.safetensors` (`-aitoolkit`, `-sdscripts`; an earlier layout suffix replaced);
* merge: `loras/<stem1>+<stem2>….safetensors` (with `-w<weight>` after a stem whose weight is not 1), or
  `loras/<name>-merge-<hash>.safetensors` when that would be too long;
* into the base model: `merged/<lora stem>+<base stem>.safetensors` (a full model file: not among the LoRAs).

Each result has `<same stem>.json` beside it: the tool, its inputs, its argv and what it reported. A file of that
name that has no sidecar of ours is a person's: it is never replaced, the new file gets `-2`, `-3`, … instead.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json, display_path, read_json_object
from lorawizard.core.train.keep import LORAS_DIR

MERGED_DIR = "merged"  # full model files with a LoRA merged in
CHECKS_DIR = "checks"  # under loras/: the check's sample images and checks.json
SUFFIX = ".safetensors"
MAX_STEM = 120
TOOL_KEY = "tool"  # a sidecar written by these tools has it

_RANK_TAIL = re.compile(r"-r\d+(?:-(?:fro|cum|ratio)[0-9.]+)?$")
METHOD_SHORT = {"sv_fro": "fro", "sv_cumulative": "cum", "sv_ratio": "ratio"}


def loras_dir(project_dir: Path) -> Path:
    return project_dir / LORAS_DIR


def _number(value: float) -> str:
    return f"{value:g}"


def resized_stem(stem: str, rank: int, method: str = "fixed", param: float | None = None) -> str:
    """`mychar-e8` → `mychar-e8-r4`; `mychar-e8-r16` → `mychar-e8-r4`; dynamic: `mychar-e8-r11-fro0.9`."""
    base = _RANK_TAIL.sub("", stem) or stem
    tail = f"-r{rank}"
    if method in METHOD_SHORT and param is not None:
        tail += f"-{METHOD_SHORT[method]}{_number(param)}"
    return base + tail


def converted_stem(stem: str, suffix: str, known_suffixes: tuple[str, ...]) -> str:
    """`mychar-e8` → `mychar-e8-aitoolkit`; `mychar-e8-aitoolkit` → `mychar-e8-sdscripts` (one layout suffix)."""
    for known in known_suffixes:
        if stem.endswith(f"-{known}") and len(stem) > len(known) + 1:
            stem = stem[: -len(known) - 1]
            break
    return f"{stem}-{suffix}"


def merged_stem(name: str, parts: list[tuple[str, float]]) -> str:
    """`a+b`, `a-w0.7+b-w0.3`; `<name>-merge-<hash>` when longer than MAX_STEM."""
    stem = "+".join(s if weight == 1 else f"{s}-w{_number(weight)}" for s, weight in parts)
    if len(stem) <= MAX_STEM:
        return stem
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:8]
    return f"{name}-merge-{digest}"


def base_merged_stem(lora_stem: str, base_stem: str) -> str:
    stem = f"{lora_stem}+{base_stem}"
    return stem if len(stem) <= MAX_STEM else f"{lora_stem[:60]}+{base_stem[:59]}"


def shown(project_dir: Path, path: Path) -> str:
    """A path as the project's (`loras/x.safetensors`) when it is inside it, else as a person reads it."""
    try:
        return str(path.relative_to(project_dir))
    except ValueError:
        return display_path(path)


def sidecar_of(path: Path) -> Path:
    return path.with_suffix(".json")


def is_ours(path: Path) -> bool:
    """The file was written by these tools (its sidecar says so)."""
    return bool(read_json_object(sidecar_of(path)).get(TOOL_KEY))


def free_target(folder: Path, stem: str, source: Path | None = None) -> Path:
    """`folder/<stem>.safetensors`, unless a file of that name is a person's (no sidecar of ours, and not a LoRA kept
    by the wizard) or ours made from another `source` (two `mychar-e8` LoRAs from different folders resized to one
    rank): then the first free `<stem>-2`, `-3`, …. Ours from the same source is made again in its place."""
    candidate = folder / f"{stem}{SUFFIX}"
    number = 2
    while candidate.exists() and not _remade(candidate, source):
        candidate = folder / f"{stem}-{number}{SUFFIX}"
        number += 1
    return candidate


def _remade(path: Path, source: Path | None) -> bool:
    """`path` may be written again: ours, and (when `source` is given) made from that same file."""
    data = read_json_object(sidecar_of(path))
    if not data.get(TOOL_KEY):
        return False
    made_from = data.get("source")
    if source is None or not isinstance(made_from, str) or not made_from:
        return True
    return Path(made_from).resolve() == Path(source).resolve()


def write_sidecar(target: Path, data: dict[str, Any]) -> Path:
    sidecar = sidecar_of(target)
    atomic_write_json(sidecar, data)
    return sidecar
