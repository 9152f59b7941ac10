"""What the step bar shows at start-up, guessed from the project as it is on disk (stat, the manifest, run folders)."""

from __future__ import annotations

from lorawizard.core.manifest import MANIFEST_FILE, PreparedImage, as_crop, load_manifest
from lorawizard.core.model_files import models_ready
from lorawizard.core import runs
from lorawizard.core.session import Session
from lorawizard.core.steps import StepState


def session_step_states(session: Session) -> dict[str, StepState]:
    """Cheap guesses from the session alone (no I/O beyond stat): enough for the step bar at start-up."""
    states: dict[str, StepState] = {}
    paths = session.paths
    if paths.python is not None and paths.python.exists():
        states["env"] = "done"
    if session.batch_sizes():
        states["probe"] = "done"
    if (paths.dataset / MANIFEST_FILE).exists():  # written by the dataset step
        states["dataset"] = "done"
    if models_ready(session):  # stat only: found/downloaded files and tokenizers are on disk
        states["models"] = "done"
    if states.get("dataset") == "done":
        images = load_manifest(session)  # read once: the captions and the probe both look at it
        if _captions_written(session, images):
            states["captions"] = "done"
        if states.get("probe") == "done" and not probe_covers(session, images):
            del states["probe"]
        if dataset_decisions_pending(session, images):
            del states["dataset"]  # a crop, bucket or skip decided after the last Apply: not in dataset/ yet
    if _has_finished_run(session):
        states["train"] = "done"
    return states


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
    captionless = bool(session.get("dataset.captionless"))

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
