"""Which model files training uses, answered cheaply (stat and one small JSON file, no hashing, no network).

Split from the models step so the step bar (before the wizard's first frame), the command builder and the doctor
can ask without importing the downloader (urllib, http, ssl) or the file finder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json, display_path
from lorawizard.core.models.catalog import MODEL_SUFFIXES, Tokenizer
from lorawizard.core.profile import family_for
from lorawizard.core.session.document import Session

METADATA_FILE = "models.json"  # under .lorawizard/: remote sizes/sha256/commits, and the file chosen per role


def state_file(session: Session, name: str) -> Path:
    return session.paths.state / name


def load_metadata(session: Session) -> dict[str, Any]:
    try:
        data = json.loads(state_file(session, METADATA_FILE).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_metadata(session: Session, data: dict[str, Any]) -> None:
    atomic_write_json(state_file(session, METADATA_FILE), data)


def preset_name(session: Session) -> str:
    """The file set training uses: `models.preset` when it is one of the session's family's, else that family's
    default (a FLUX.1-dev preset left in a Chroma session is not Chroma's)."""
    return family_for(session).preset(session.models.preset).name


def resolved_model_paths(session: Session) -> dict[str, Path]:
    """role → the file training uses: the session's override, else the file the models step found or downloaded
    for the current preset, else `<paths.models>/<preset file>`. Cheap: no hashing, no network."""
    chosen = load_metadata(session).get("resolved", {}).get(preset_name(session), {})
    family = family_for(session)
    files = family.preset(preset_name(session))
    paths: dict[str, Path] = {}
    for role in family.role_names:
        override = session.resolve(session.get(f"models.{role}"))
        found = Path(chosen[role]) if isinstance(chosen.get(role), str) else None
        if override is not None:
            paths[role] = override
        elif found is not None and found.is_file():
            paths[role] = found
        else:
            paths[role] = session.paths.models / files.file_for(role).filename
    return paths


def model_file_problem(path: Path) -> str | None:
    """Why a file a person chose for a model role cannot be one (one line), or None. Only the format is checked: a
    file of another size or hash is allowed (a fine-tune, another quantisation), a text file or an archive is not."""
    if Path(path).suffix.lower() not in MODEL_SUFFIXES:
        return f"{display_path(path)} is not a .safetensors file (the trainer reads the base model's files only in that format)"
    return None


def tokenizer_dir(session: Session) -> Path:
    """The folder to pass as `--tokenizer_cache_dir`."""
    return session.paths.tokenizers


def tokenizer_complete(folder: Path, tokenizer: Tokenizer) -> bool:
    return all((folder / name).is_file() for name in tokenizer.required)


def tokenizer_problem(folder: Path, tokenizers: tuple[Tokenizer, ...]) -> str | None:
    """What `paths.tokenizers` lacks (one line), or None when every tokenizer's required files are there.

    The trainer reads `<folder>/<repo with _>/` per tokenizer (`--tokenizer_cache_dir`); a folder that is one
    tokenizer's own folder (its files directly inside) is named as such."""
    where = display_path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{where} is a file, not a folder"
    if not folder.is_dir():
        return f"none yet: {where} does not exist (Ctrl+G downloads them into it)"
    for tokenizer in tokenizers:
        if tokenizer_complete(folder, tokenizer) and not tokenizer_complete(folder / tokenizer.folder, tokenizer):
            return (f"{where} is the {tokenizer.repo} tokenizer's own folder: choose the folder that holds "
                    + " and ".join(f"{t.folder}/" for t in tokenizers))
    lacking = [f"{t.folder}/{name}" for t in tokenizers for name in t.required if not (folder / t.folder / name).is_file()]
    if not lacking:
        return None
    total = sum(len(t.required) for t in tokenizers)
    return f"{len(lacking)} of {total} files missing from {where}, e.g. {lacking[0]} (Ctrl+G downloads them)"


def models_ready(session: Session) -> bool:
    """Cheap (stat only): every role has a file and the tokenizers are complete. For the step bar at start-up."""
    if not all(path.is_file() for path in resolved_model_paths(session).values()):
        return False
    base = tokenizer_dir(session)
    return all(tokenizer_complete(base / t.folder, t) for t in family_for(session).tokenizers)
