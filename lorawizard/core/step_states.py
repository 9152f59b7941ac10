"""Each step's state at start-up, guessed from the project as it is on disk (stat, the manifest, run folders).

The registry (core/registry.py) names one guess per step; `registry.session_step_states` asks them all. They share
one `OnDisk`, so the manifest is read at most once. Everything here is light: the first frame uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from lorawizard.core.contract import StepState
from lorawizard.core.dataset.manifest import MANIFEST_FILE, PreparedImage, as_crop, load_manifest
from lorawizard.core.launch import runs
from lorawizard.core.models.files import models_ready
from lorawizard.core.session.document import Session


class OnDisk:
    """What the guesses look at, each read once and only when a guess asks."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @cached_property
    def prepared(self) -> bool:
        return (self.session.paths.dataset / MANIFEST_FILE).exists()  # written by the dataset step

    @cached_property
    def images(self) -> list[PreparedImage]:
        return load_manifest(self.session) if self.prepared else []


Guess = Callable[[OnDisk], StepState | None]  # None: nothing to say (the bar shows "todo")


def guess_env(disk: OnDisk) -> StepState | None:
    python = disk.session.paths.python
    return "done" if python is not None and python.exists() else None


def guess_models(disk: OnDisk) -> StepState | None:
    return "done" if models_ready(disk.session) else None  # stat only: found/downloaded files and tokenizers


def guess_dataset(disk: OnDisk) -> StepState | None:
    if not disk.prepared or dataset_decisions_pending(disk.session, disk.images):
        return None  # a crop, bucket or skip decided after the last Apply is not in dataset/ yet
    return "done"


def guess_captions(disk: OnDisk) -> StepState | None:
    return "done" if disk.prepared and _captions_written(disk.session, disk.images) else None


def guess_probe(disk: OnDisk) -> StepState | None:
    if not disk.session.batch_sizes():
        return None
    return "done" if not disk.prepared or probe_covers(disk.session, disk.images) else None


def guess_train(disk: OnDisk) -> StepState | None:
    return "done" if _has_finished_run(disk.session) else None


def dataset_decisions_pending(session: Session, images: list[PreparedImage]) -> list[str]:
    """The sources whose crop, bucket or skip in the session differs from the prepared dataset: decided after the
    last Apply (QA: a moved crop, then quit; the step bar said Dataset ✓ and training used the old crop)."""
    prepared = {image.source: image for image in images}
    pending = []
    for source, entry in session.images().items():
        image = prepared.get(source)
        if image is None:
            continue  # not prepared: skipped, unreadable, or new (the dataset screen's scan says which)
        try:
            crop = as_crop(entry["crop"]) if "crop" in entry else image.crop
        except (TypeError, ValueError):
            crop = image.crop
        if entry.get("skip") is True or crop != image.crop or str(entry.get("bucket", image.bucket)) != image.bucket:
            pending.append(source)
    return pending


def probe_covers(session: Session, images: list[PreparedImage] | None = None) -> bool:
    """Every bucket of the prepared dataset has a batch size (a new max_side makes other buckets: the probe's
    numbers are for the old ones, and the step bar showed GPU ✓)."""
    images = load_manifest(session) if images is None else images
    return {image.bucket for image in images} <= set(session.batch_sizes())


def _captions_written(session: Session, images: list[PreparedImage]) -> bool:
    """Every prepared image has a caption (or captionless training is intended) and its caption file on disk."""
    entries = session.images()
    captionless = session.dataset.captionless

    def captioned(source: str) -> bool:
        return captionless or bool(str(entries.get(source, {}).get("caption") or "").strip())

    return bool(images) and all(
        captioned(image.source) and image.output.with_suffix(".txt").is_file() for image in images
    )


def _has_finished_run(session: Session) -> bool:
    try:
        return any(run.status() == "finished" for run in reversed(runs.list_runs(session.paths.runs)))  # newest first
    except Exception:  # noqa: BLE001 - start-up must never fail on a damaged runs folder
        return False


def training_is_live(session: Session) -> bool:
    """Whether a training run of this project is still running (pid + create-time; never a reused pid)."""
    try:
        return runs.live_run(session.paths.runs) is not None
    except Exception:  # noqa: BLE001 - start-up must never fail on a damaged runs folder
        return False
