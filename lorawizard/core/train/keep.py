"""Keep one epoch's LoRA: copy it out of the run folder to `<project>/loras/<name>-e<N>.safetensors` with a sidecar.

sd-scripts names epoch checkpoints `<name>-<NNNNNN>.safetensors` and never numbers the last epoch: the final
`<name>.safetensors` is that epoch. Epoch 0 (or none chosen) means the final LoRA, the default.
The sidecar `<name>-e<N>.json` says where it came from: epoch, step, run id, settings, trigger, sample files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json, new_file_mode
from lorawizard.core.launch import runs
from lorawizard.core.profile import family_for
from lorawizard.core.session.document import Session

LORAS_DIR = "loras"


class KeepError(Exception):
    """The epoch cannot be kept; one line for a person."""


@dataclass(frozen=True)
class Kept:
    lora: Path
    sidecar: Path
    epoch: int
    run_id: str


def epoch_exists_in_plan(session: Session, epoch: int) -> str | None:
    """Whether the session's settings ever write epoch `epoch` (a one-line reason when not, else None)."""
    epochs, every = session.train.max_train_epochs, session.train.save_every_n_epochs
    if epoch == 0 or epoch == epochs or (0 < epoch < epochs and epoch % every == 0):
        return None
    saved = [e for e in range(every, epochs, every)] + [epochs]
    return (f"train.keep_epoch = {epoch}: no such epoch file; with {epochs} epochs saved every {every} the epochs "
            f"are {', '.join(map(str, saved))}")


def find_epoch(session: Session, epoch: int) -> tuple[Path, Any]:
    """(LoRA file, run record) of `epoch` (0: the final LoRA) in the newest run that has it."""
    name = session.name
    last = session.train.max_train_epochs
    for record in reversed(runs.list_runs(session.paths.runs)):
        output = record.output_name or name
        for path, found, _size in reversed(runs.checkpoints(record.dir, output)):
            if epoch and found == epoch:
                return path, record
            if found is None and path.stem == output and (epoch in (0, last)) and runs.log_has_model_saved(record.log_path):
                return path, record
    have = sorted({e for r in runs.list_runs(session.paths.runs)
                   for _, e, _ in runs.checkpoints(r.dir, r.output_name or name) if e is not None})
    what = "the final LoRA" if epoch in (0, last) else f"epoch {epoch}"
    listed = f" (epochs on disk: {', '.join(map(str, have))})" if have else ""
    raise KeepError(f"{what} is not on disk under {session.paths.runs}{listed}")


def keep_epoch(session: Session, epoch: int | None) -> Kept:
    from lorawizard.core.train import samples

    epoch = int(epoch or 0)
    source, record = find_epoch(session, epoch)
    name = session.name
    shown = epoch or session.train.max_train_epochs
    folder = session.project_dir / LORAS_DIR
    target = folder / f"{name}-e{shown}.safetensors"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _copy_atomic(source, target)
    except OSError as exc:
        raise KeepError(f"cannot copy {source.name} to {target}: {exc.strerror or exc}") from None
    from lorawizard.core.train import statesave

    per_epoch = statesave.steps_per_epoch(record.log_path)
    chain = run_chain(record)
    prompts = samples.read_prompts(record.dir)
    grid = samples.gallery([r.dir for r in chain], record.output_name or name, prompts)
    train = {key.removeprefix("train."): session.get(key) for key in (
        "train.network_dim", "train.learning_rate", "train.max_train_epochs", "train.save_every_n_epochs",
        "train.optimizer_type", "train.seed", "train.extra_args")}
    sidecar = target.with_suffix(".json")
    atomic_write_json(sidecar, {
        "epoch": shown, "step": shown * per_epoch if per_epoch else None, "run_id": record.run_id,
        "source": str(source), "trigger": session.dataset.trigger, "settings": train,
        "base_model": family_for(session).hub_repo, "sample_prompts": prompts,
        "samples": [str(p) for p in grid.files(shown)],
    })
    return Kept(target, sidecar, shown, record.run_id)


def run_chain(record: Any) -> list[Any]:
    """The run and the runs it resumed from, oldest first."""
    chain, seen = [record], {record.run_id}
    while chain[0].resumed_from:
        parent_dir = Path(chain[0].resumed_from).parent
        try:
            parent = runs.RunRecord.load(parent_dir)
        except runs.RunError:
            break
        if parent.run_id in seen:
            break
        seen.add(parent.run_id)
        chain.insert(0, parent)
    return chain


def kept_lora(session: Session) -> Path | None:
    """The kept LoRA publish uses: train.keep_epoch's copy, else the newest copy in loras/."""
    folder = session.project_dir / LORAS_DIR
    name = session.name
    chosen = session.train.keep_epoch
    if chosen:
        path = folder / f"{name}-e{chosen}.safetensors"
        return path if path.is_file() else None
    try:
        files = [p for p in folder.glob(f"{name}-e*.safetensors") if p.is_file()]
    except OSError:
        return None
    return max(files, key=lambda p: p.stat().st_mtime, default=None)


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy through a temp file and a rename; the copy gets a new file's usual mode (umask), not mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
