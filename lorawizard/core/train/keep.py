"""Keep one epoch's LoRA: copy it out of the run folder to `<project>/loras/<name>-e<N>.safetensors` with a sidecar.

sd-scripts names epoch checkpoints `<name>-<NNNNNN>.safetensors` and never numbers the last epoch: the final
`<name>.safetensors` is that epoch. Epoch 0 (or none chosen) means the final LoRA, the default. Which epoch and step a
file holds is read from its own safetensors metadata (`ss_epoch`, `ss_steps`), not from the session's settings, and
a file is kept only from one run chain (the run and the runs it resumed from): never silently from another run.
The sidecar `<name>-e<N>.json` says where it came from: epoch, step, run id (and chain), settings, trigger, samples.
A variant's run (`record.extra["variant"]` = V, output name `<name>-V`) is kept as `<name>-V-e<N>.safetensors`; the
LoRA a person last kept in the gallery is named in `.lorawizard/kept.json`, so publish takes it (base or variant)
while `train.keep_epoch` still names its epoch.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json, new_file_mode, read_json_object
from lorawizard.core.launch import runs
from lorawizard.core.profile import family_for
from lorawizard.core.session.document import STATE_DIR, Session

LORAS_DIR = "loras"
KEPT_FILE = "kept.json"  # in .lorawizard/: the LoRA last kept (its file name, epoch and variant)


class KeepError(Exception):
    """The epoch cannot be kept; one line for a person."""


@dataclass(frozen=True)
class Kept:
    lora: Path
    sidecar: Path
    epoch: int
    run_id: str
    step: int | None = None
    variant: str | None = None


def epoch_exists_in_plan(session: Session, epoch: int) -> str | None:
    """Whether the session's settings ever write epoch `epoch` (a one-line reason when not, else None)."""
    epochs, every = session.train.max_train_epochs, session.train.save_every_n_epochs
    if epoch == 0 or epoch == epochs or (0 < epoch < epochs and epoch % every == 0):
        return None
    saved = [e for e in range(every, epochs, every)] + [epochs]
    return (f"train.keep_epoch = {epoch}: no such epoch file; with {epochs} epochs saved every {every} the epochs "
            f"are {', '.join(map(str, saved))}")


@dataclass(frozen=True)
class LoraFile:
    """One complete LoRA file of a run: its epoch and absolute step as its own metadata says (sd-scripts writes
    `ss_epoch` and `ss_steps`); from its name (and the run's command for the final file) only when it has none."""

    path: Path
    epoch: int | None
    step: int | None  # absolute: the run's state offset + ss_steps (sd-scripts restarts its step on resume)
    record: Any  # runs.RunRecord
    final: bool


def _meta_int(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _argv_epochs(record: Any) -> int | None:
    argv = list(record.argv)
    for index, word in enumerate(argv[:-1]):
        if word == "--max_train_epochs":
            return _meta_int(argv[index + 1])
    return None


def lora_files(record: Any, name: str) -> list[LoraFile]:
    """The run's epoch LoRAs and its final LoRA that are complete on disk (a file cut short is never kept), by mtime."""
    output = record.output_name or name
    found = []
    for path, named, _size in runs.checkpoints(record.dir, output):
        final = named is None and path.stem == output
        if named is None and not final:
            continue  # a step checkpoint (`-step00000040`) is not an epoch's LoRA
        meta = runs.lora_metadata(path)
        if meta is None:
            continue
        epoch = _meta_int(meta.get("ss_epoch"))
        if epoch is None:
            epoch = named if named is not None else _argv_epochs(record)
        steps = _meta_int(meta.get("ss_steps"))
        offset = _meta_int(record.extra.get("state_step_offset", record.base_step)) or 0
        found.append(LoraFile(path, epoch, None if steps is None else offset + steps, record, final))
    return found


def source_chain(session: Session, record: Any = None) -> list[Any]:
    """The runs a LoRA is kept from, newest first: `record` (the run just followed) and the runs it resumed from;
    without one, the newest run that wrote a complete LoRA, and its chain."""
    if record is None:
        name = session.name
        record = next((r for r in reversed(runs.list_runs(session.paths.runs)) if lora_files(r, name)), None)
        if record is None:
            return []
    return list(reversed(run_chain(record)))


def find_lora(session: Session, epoch: int, record: Any = None) -> LoraFile:
    """The LoRA of `epoch` (0: the final LoRA, whatever epoch it is) from one run chain, chosen by the epoch in the
    file's own metadata; never silently from another run. Raises KeepError with one line."""
    name = session.name
    chain = source_chain(session, record)
    files = [f for r in chain for f in reversed(lora_files(r, name))]  # newest run first, newest file first
    match = next((f for f in files if f.final), None) if epoch == 0 else next(
        (f for f in files if f.epoch == epoch), None)
    if match is not None:
        return match
    what = "the final LoRA" if epoch == 0 else f"epoch {epoch}"
    if not chain:
        raise KeepError(f"{what} is not on disk under {session.paths.runs} (no run has written a complete LoRA)")
    have = sorted({f.epoch for f in files if f.epoch is not None})
    where = f"run {chain[0].run_id}" + (" or the runs it resumed from" if len(chain) > 1 else "")
    listed = f" (epochs on disk: {', '.join(map(str, have))})" if have else ""
    ids = {r.run_id for r in chain}
    other = next((r for r in reversed(runs.list_runs(session.paths.runs)) if r.run_id not in ids and any(
        (f.final if epoch == 0 else f.epoch == epoch) for f in lora_files(r, name))), None)
    elsewhere = f"; run {other.run_id} has one, but it is not kept from another run" if other else ""
    raise KeepError(f"{what} is not on disk in {where} under {session.paths.runs}{listed}{elsewhere}")


def find_epoch(session: Session, epoch: int, record: Any = None) -> tuple[Path, Any]:
    """(LoRA file, run record) of `epoch` (0: the final LoRA); see find_lora."""
    found = find_lora(session, epoch, record)
    return found.path, found.record


def keep_epoch(session: Session, epoch: int | None, record: Any = None, *, note: bool = False) -> Kept:
    """Copy `epoch`'s LoRA (0/None: the final LoRA) of `record`'s chain (default: the newest run's) to loras/, named
    and described by the epoch and step its own metadata gives. `note`: a person chose it (the gallery's k): it
    becomes the LoRA publish takes for its epoch (`.lorawizard/kept.json`), a variant's too; the keep at the end of
    each run of a queue leaves that note alone."""
    from lorawizard.core.train import samples, statesave

    found = find_lora(session, int(epoch or 0), record)
    source, record = found.path, found.record
    name = session.name
    variant = run_variant(record)
    shown = found.epoch if found.epoch is not None else (epoch or session.train.max_train_epochs)
    folder = session.project_dir / LORAS_DIR
    target = folder / f"{kept_stem(name, variant)}-e{shown}.safetensors"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _copy_atomic(source, target)
    except OSError as exc:
        raise KeepError(f"cannot copy {source.name} to {target}: {exc.strerror or exc}") from None
    step = found.step
    if step is None:
        per_epoch = statesave.steps_per_epoch(record.log_path)
        step = shown * per_epoch if per_epoch else None
    chain = run_chain(record)
    prompts = samples.read_prompts(record.dir)
    grid = samples.gallery([r.dir for r in chain], record.output_name or name, prompts)
    train = {key.removeprefix("train."): session.get(key) for key in SETTINGS_KEYS}
    if variant:
        train.update(_argv_settings(record))  # the variant's own values, as its command line had them
    sidecar = target.with_suffix(".json")
    atomic_write_json(sidecar, {
        "epoch": shown, "step": step, "run_id": record.run_id, "runs": [r.run_id for r in chain],
        "source": str(source), "trigger": session.dataset.trigger, "settings": train,
        "base_model": family_for(session).base_model(session.models.preset), "sample_prompts": prompts,
        "samples": [str(p) for p in grid.files(shown)], "variant": variant,
        "output_name": record.output_name or name,
    })
    try:
        if note:
            atomic_write_json(session.project_dir / STATE_DIR / KEPT_FILE,
                              {"lora": target.name, "epoch": shown, "variant": variant, "run_id": record.run_id})
    except OSError as exc:
        raise KeepError(f"kept {target.name}, but cannot note it in {STATE_DIR}/{KEPT_FILE}: "
                        f"{exc.strerror or exc}") from None
    return Kept(target, sidecar, shown, record.run_id, step, variant)


SETTINGS_KEYS = ("train.network_dim", "train.learning_rate", "train.max_train_epochs", "train.save_every_n_epochs",
                 "train.optimizer_type", "train.seed", "train.extra_args")


def run_variant(record: Any) -> str | None:
    """The variant a run belongs to (`run.json`'s extra.variant, else its `variants/<V>/<run-id>` folder)."""
    value = record.extra.get("variant") if isinstance(record.extra, dict) else None
    if isinstance(value, str) and value:
        return value
    folder = Path(record.dir)
    if folder.parent.parent.name == "variants":
        return folder.parent.name
    return None


def kept_stem(name: str, variant: str | None) -> str:
    """`<name>` or `<name>-<variant>`: the kept file's name before `-e<N>` (a variant's own session is already named
    `<name>-<variant>`: the queue keeps through it, and the variant is not named twice)."""
    return f"{name}-{variant}" if variant and not name.endswith(f"-{variant}") else name


def _argv_settings(record: Any) -> dict[str, Any]:
    """The settings a run's command line set (`--network_dim 16` → network_dim 16), as strings."""
    argv = [str(word) for word in record.argv]
    found: dict[str, Any] = {}
    for key in SETTINGS_KEYS:
        option = "--" + key.removeprefix("train.")
        if option in argv[:-1]:
            found[key.removeprefix("train.")] = argv[argv.index(option) + 1]
    return found


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


def last_kept(session: Session) -> dict[str, Any]:
    """`.lorawizard/kept.json`: the LoRA last kept ({} when none or unreadable)."""
    return read_json_object(session.project_dir / STATE_DIR / KEPT_FILE)


def kept_lora(session: Session) -> Path | None:
    """The kept LoRA publish uses: train.keep_epoch's copy (the variant's when the last one kept, of that epoch, was a
    variant's), else the newest copy in loras/ (base or variant)."""
    folder = session.project_dir / LORAS_DIR
    name = session.name
    chosen = session.train.keep_epoch
    last = last_kept(session)
    noted = folder / str(last.get("lora") or "")
    noted_ok = bool(last.get("lora")) and noted.parent == folder and noted.is_file()
    if chosen:
        if noted_ok and last.get("epoch") == chosen:
            return noted
        path = folder / f"{name}-e{chosen}.safetensors"
        return path if path.is_file() else None
    pattern = re.compile(re.escape(name) + r"(-[A-Za-z0-9_][A-Za-z0-9_-]*)?-e\d+")
    try:
        files = [p for p in folder.glob(f"{name}-*.safetensors") if p.is_file() and pattern.fullmatch(p.stem)]
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
