"""Where a captioner model lives in the project and whether its transformers folder is complete (light: json only)."""

from __future__ import annotations

import json
from pathlib import Path

from lorawizard.core.models import catalog
from lorawizard.core.session.document import Session


def captioner_folder(session: Session, spec: catalog.Captioner) -> Path:
    return session.paths.models / "captioners" / spec.folder


def folder_problem(folder: Path) -> str | None:
    """What is missing from a transformers checkpoint folder (one line), or None when it looks complete."""
    if not folder.is_dir():
        if folder.exists():  # captions.model = "/etc/passwd": there is something, just not a model folder
            return f"{folder} is a file, not a model folder (a folder with a transformers model: config.json, weights)"
        return f"{folder} does not exist"
    if not (folder / "config.json").is_file():
        return f"{folder} has no config.json: not a transformers model folder"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"{index} is not readable ({exc})"
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            return f"{folder} lacks {len(missing)} weight file(s), e.g. {missing[0]}: download it again"
    elif not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        return f"{folder} has no weights (model.safetensors or an index of shards)"
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return f"{folder} has no tokenizer files"
    if not (folder / "preprocessor_config.json").is_file():
        return f"{folder} has no preprocessor_config.json (the image processor)"
    return None
