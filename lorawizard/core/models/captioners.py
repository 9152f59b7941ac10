"""Captioner models: a whole transformers folder (config, weight shards, tokenizer, processor) fetched with the
models step's own resumable, sha256-checked transfer (core.download) into `<paths.models>/captioners/<name>/`.

The shards are the ones the downloaded `model.safetensors.index.json` names (not guessed). A file already there
is kept when its size and sha256 match the hub's (hashes remembered in the models step's hash cache); one that
differs is never overwritten: the step says so.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from lorawizard.core.common.progress import Progress, ProgressCallback, ProgressMeter, format_bytes, ignore_progress
from lorawizard.core.contract import Cancelled, StepContext, StepResult
from lorawizard.core.models import catalog
from lorawizard.core.models.captioner_folders import captioner_folder, folder_problem
from lorawizard.core.models.download import (
    DownloadError,
    RemoteFile,
    check_disk_space,
    download_file,
    fetch_metadata,
    hub_token,
    part_path,
)
from lorawizard.core.models.finder import HashCache, HashCancelled, sha256_of
from lorawizard.core.models.rows import ModelsOptions, RoleState
from lorawizard.core.session.document import Session

REQUIRED = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")
INDEX = "model.safetensors.index.json"
HASH_CACHE_FILE = "hash-cache.json"  # shared with the models step


@dataclass
class CaptionerState:
    spec: catalog.Captioner
    folder: Path
    problem: str | None  # None: complete

    @property
    def ready(self) -> bool:
        return self.problem is None

    def line(self) -> str:
        spec = self.spec
        state = "ready" if self.ready else "not downloaded" if not self.folder.exists() else "incomplete"
        return (f"captioner {spec.name}: {state} · {spec.approx_gb:g} GB · needs ~{spec.vram_gb:g} GB VRAM · "
                f"{spec.license}")


def state_of(session: Session, name: str) -> CaptionerState:
    spec = catalog.CAPTIONERS[name]
    folder = captioner_folder(session, spec)
    return CaptionerState(spec, folder, folder_problem(folder))


def chosen_catalog_name(session: Session) -> str | None:
    """The catalog captioner `[captions] model` names (None: a folder of the user's)."""
    value = (session.captions.model or catalog.DEFAULT_CAPTIONER).strip()
    return value if value in catalog.CAPTIONERS else None


def _remote_files(spec: catalog.Captioner, folder: Path, token: str | None,
                  log: Callable[[str], object]) -> list[RemoteFile]:
    """Metadata of every file the folder needs; the index is fetched first to learn the shard names."""
    remotes: list[RemoteFile] = []
    for name in catalog.CAPTIONER_SMALL_FILES:
        try:
            remotes.append(fetch_metadata(spec.repo, name, spec.revision, token=token))
        except DownloadError as exc:
            if exc.kind == "not_found" and name not in REQUIRED and name != INDEX:
                continue  # optional in some repositories (generation_config, chat_template, vocab/merges)
            raise
    index = next(r for r in remotes if r.filename == INDEX)
    download_file(index, folder / INDEX, token=token, log=log)
    try:
        shards = sorted(set(json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DownloadError("checksum", f"{spec.repo}/{INDEX} is not a weight index ({exc})") from None
    for shard in shards:
        if "/" in shard or shard.startswith("."):
            raise DownloadError("checksum", f"{spec.repo}/{INDEX} names an unsafe file {shard!r}")
        remotes.append(fetch_metadata(spec.repo, shard, spec.revision, token=token))
    return remotes


def _have(path: Path, remote: RemoteFile, hashes: HashCache, cancel: threading.Event) -> bool | None:
    """True: already there and verified; False: absent; None: there but different (never overwritten)."""
    if not path.is_file():
        return False
    if remote.size is not None and path.stat().st_size != remote.size:
        return None
    if remote.sha256 is None:
        return True  # small git files: the size is what the hub tells
    actual = hashes.get(path) or sha256_of(path, hashes, cancel=cancel)
    return True if actual == remote.sha256 else None


def download_captioner(
    session: Session,
    name: str,
    *,
    progress: ProgressCallback = ignore_progress,
    log: Callable[[str], object] = lambda line: None,
    cancel: threading.Event | None = None,
) -> CaptionerState:
    """Fetch (or finish, or verify) the captioner folder. Raises DownloadError / DownloadCancelled."""
    cancel = cancel or threading.Event()
    spec = catalog.CAPTIONERS[name]
    folder = captioner_folder(session, spec)
    folder.mkdir(parents=True, exist_ok=True)
    token = hub_token()
    hashes = HashCache(session.paths.state / HASH_CACHE_FILE)
    try:
        remotes = _remote_files(spec, folder, token, log)
        wanted: list[RemoteFile] = []
        for remote in remotes:
            have = _have(folder / remote.filename, remote, hashes, cancel)
            if have is None:
                raise DownloadError("exists", f"{folder / remote.filename} exists but is not {spec.repo}'s file "
                                              "(size or sha256 differs): move or delete it")
            if not have:
                wanted.append(remote)
        remaining = sum(max(0, (r.size or 0) - _part_size(folder / r.filename, r)) for r in wanted)
        check_disk_space(folder, remaining)
        total = sum(r.size or 0 for r in wanted)
        if wanted:
            log(f"captioner {spec.name}: downloading {len(wanted)} files ({format_bytes(total)}) into {folder}")
        meter = ProgressMeter(progress, "models", f"captioner {spec.name}", total or None, "B", interval=0.25)
        finished = 0
        for remote in wanted:
            base = finished

            def update(done: int, base: int = base) -> None:
                meter.update(base + done)

            path = download_file(remote, folder / remote.filename, token=token, progress=update, cancel=cancel,
                                 log=log)
            if remote.sha256:
                hashes.put(path, path.stat(), remote.sha256)  # hashed while downloading
            finished += remote.size or 0
        meter.finish()
    finally:
        hashes.save()
    state = state_of(session, name)
    if state.problem:
        raise DownloadError("checksum", f"captioner {spec.name}: {state.problem}")
    return state


def _part_size(dest: Path, remote: RemoteFile) -> int:
    part = part_path(dest, remote)
    return part.stat().st_size if part.exists() else 0


# ---------------------------------------------------------------- in the models step

CAPTIONER_ROLE = "captioner"


def _row(captioner: CaptionerState, **changes: object) -> RoleState:
    state, spec = captioner, captioner.spec
    row = RoleState(CAPTIONER_ROLE, spec.repo, "", size=int(spec.approx_gb * 1e9),
                    note=f"{spec.approx_gb:g} GB · ~{spec.vram_gb:g} GB VRAM · {spec.license}")
    if state.ready:
        row.state, row.path, row.source = "found", state.folder, "captioner folder"
    else:
        row.state = "missing"
    for key, value in changes.items():
        setattr(row, key, value)
    return row


def _notify(ctx: StepContext, row: RoleState) -> None:
    callback = cast(ModelsOptions, ctx.options).get("on_state")
    if callback is not None:
        try:
            callback(row)
        except Exception:  # noqa: BLE001 - a display callback never breaks the step
            pass


def captioner_step(ctx: StepContext) -> StepResult:
    """`action = "captioner"`: fetch the captioner `[captions] model` names (the screen's key c)."""
    name = chosen_catalog_name(ctx.session)
    if name is None:
        return StepResult(True, f"captions.model is your own folder ({ctx.session.captions.model}): "
                                "nothing to download")
    return _fetch(ctx, name, StepResult(True, ""))


def own_folder_row(session: Session) -> RoleState:
    """The captioner row when `[captions] model` is a folder of the user's: found when it is a complete
    transformers folder, else an error saying what it lacks (nothing to download)."""
    value = (session.captions.model or "").strip()
    folder = session.resolve(value) or Path(value)
    problem = folder_problem(folder)
    if problem is None:
        return RoleState(CAPTIONER_ROLE, value, "", state="found", path=folder, source="captions.model folder",
                         note="a complete transformers folder", what="your folder")
    return RoleState(CAPTIONER_ROLE, value, "", state="error", path=folder, note=f"captions.model: {problem}")


def captioner_row(session: Session) -> RoleState:
    """The captioner's row as it is on disk (light: stat and one small JSON file)."""
    name = chosen_catalog_name(session)
    return own_folder_row(session) if name is None else _row(state_of(session, name))


def after_model_files(ctx: StepContext, result: StepResult) -> StepResult:
    """Show the captioner's row; with `[captions] auto = true` a download run fetches it too."""
    name = chosen_catalog_name(ctx.session)
    if name is None:
        _notify(ctx, own_folder_row(ctx.session))
        return result
    state = state_of(ctx.session, name)
    _notify(ctx, _row(state))
    if not ctx.session.captions.auto:
        return result
    action = cast(ModelsOptions, ctx.options).get("action", "download")
    if state.ready or not result.ok or action == "find" or ctx.dry_run:
        verb = "would download" if ctx.dry_run and not state.ready else ""
        result.details.append(f"{verb} {state.line()}".strip())
        return result
    return _fetch(ctx, name, result)


def _fetch(ctx: StepContext, name: str, result: StepResult) -> StepResult:
    from lorawizard.core.models.download import DownloadCancelled

    state = state_of(ctx.session, name)
    if ctx.dry_run:
        result.details.append(f"would download {state.line()}")
        return result
    last = [0.0]

    def progress(event: Progress) -> None:
        ctx.progress(event)
        now = time.monotonic()
        if now - last[0] >= 0.2 or event.finished:
            last[0] = now
            _notify(ctx, _row(state, state="downloading", size=int(event.total or 0) or None, done=int(event.done),
                              rate=event.rate, eta_s=event.eta_s))

    _notify(ctx, _row(state, state="downloading", done=0))
    try:
        state = download_captioner(ctx.session, name, progress=progress, log=ctx.log, cancel=ctx.cancel)
    except (DownloadCancelled, HashCancelled):
        _notify(ctx, _row(state, note="paused: the next download resumes"))
        raise Cancelled() from None
    except OSError as exc:
        _notify(ctx, _row(state, state="error", note=str(exc)))
        return StepResult(False, f"captioner {name}: {exc.strerror or exc}", result.details, result.data)
    except DownloadError as exc:
        _notify(ctx, _row(state, state="error", note=str(exc)))
        return StepResult(False, str(exc), [*result.details, state.line()], result.data)
    _notify(ctx, _row(state, verified=True, note=f"sha256 verified · {_row(state).note}"))
    summary = f"{result.summary}; " if result.summary else ""
    return StepResult(result.ok, f"{summary}captioner {name} ready in {state.folder}", [*result.details, state.line()],
                      result.data)
