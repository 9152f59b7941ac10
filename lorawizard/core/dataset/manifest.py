"""The dataset step's manifest (`<paths.dataset>/lorawizard-manifest.json`): every prepared image and its source.

A light module on purpose (json and pathlib only): the step bar reads it before the wizard's first frame, and the
captions step reads it, neither of which should import the image pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from lorawizard.core.session.document import Session

MANIFEST_FILE = "lorawizard-manifest.json"
MANIFEST_VERSION = 1


class PreparedImage(NamedTuple):
    output: Path  # absolute
    source: str  # relative to dataset.source
    sha256: str
    bucket: str
    crop: tuple[int, int, int, int]


def read_manifest(dataset_dir: Path) -> dict[str, Any]:
    """The raw manifest, or an empty one when there is none (or it is unreadable)."""
    try:
        data = json.loads((dataset_dir / MANIFEST_FILE).read_text("utf-8"))
        if isinstance(data, dict) and data.get("version") == MANIFEST_VERSION and isinstance(data.get("images"), list):
            return data
    except (OSError, ValueError):
        pass
    return {"version": MANIFEST_VERSION, "images": []}


def as_crop(values: Any) -> tuple[int, int, int, int]:
    """[left, top, right, bottom] from session.toml or the manifest as a crop (TypeError/ValueError otherwise)."""
    left, top, right, bottom = (int(v) for v in values)
    return left, top, right, bottom


def load_manifest(session: Session) -> list[PreparedImage]:
    """Every prepared image of the last dataset run ([] when the step has not run)."""
    dataset_dir = session.paths.dataset
    images = []
    for record in read_manifest(dataset_dir)["images"]:
        try:
            images.append(
                PreparedImage(
                    output=dataset_dir / record["output"],
                    source=str(record["source"]),
                    sha256=str(record["sha256"]),
                    bucket=str(record["bucket"]),
                    crop=as_crop(record["crop"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return images
