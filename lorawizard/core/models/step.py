"""Models step: find what the user already has, download the rest resumably with sha256 checks, and fetch
the tokenizers so training never needs the network.

Bookkeeping under `<project>/.lorawizard/`:
  models.json        per remote file: size, sha256, commit (recorded at first contact with the hub, so later
                     checks work offline), and per preset the file chosen for each role
  hash-cache.json    sha256 of local files by path + size + mtime + inode
  model-folders.json folders the user added to the search
Options (`ctx.options`): `action` = "download" (default) or "find" (look and verify only);
`on_state(RoleState)` is called whenever a row changes (the screen uses it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from lorawizard.core.common.fsutil import atomic_write_json, display_path
from lorawizard.core.common.progress import ProgressMeter, format_bytes, ignore_progress
from lorawizard.core.contract import Cancelled, StepContext, StepResult
from lorawizard.core.models.captioners import after_model_files, captioner_step
from lorawizard.core.models.catalog import ModelFile
from lorawizard.core.models.download import (
    DownloadCancelled,
    DownloadError,
    RemoteFile,
    check_access,
    check_disk_space,
    download_file,
    fetch_metadata,
    hf_cache_dir,
    hub_token,
    is_offline,
    part_path,
)
from lorawizard.core.models.files import (
    METADATA_FILE,
    load_metadata,
    model_file_problem,
    preset_name,
    save_metadata,
    state_file,
    tokenizer_dir,
    tokenizer_problem,
)
from lorawizard.core.models.finder import (
    Candidate,
    HashCache,
    HashCancelled,
    HeaderSearch,
    candidates,
    identify_cached,
    search_by_header,
    sha256_of,
)
from lorawizard.core.models.identify import role_problem
from lorawizard.core.models.rows import ModelsOptions, RoleState
from lorawizard.core.profile import ModelFamily, all_role_names, family_for
from lorawizard.core.session.document import Session

HASH_CACHE_FILE = "hash-cache.json"
FOLDERS_FILE = "model-folders.json"
TOKENIZER_ROLE = "tokenizers"


# ---------------------------------------------------------------- bookkeeping


def search_folders(session: Session) -> list[Path]:
    try:
        data = json.loads(state_file(session, FOLDERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [Path(p) for p in data if isinstance(p, str) and not p.startswith("~")] if isinstance(data, list) else []


def add_search_folder(session: Session, folder: Path | str) -> str | None:
    """Remember a folder to search. Returns a one-line problem, or None."""
    try:
        path = Path(folder).expanduser()
    except RuntimeError:  # ~nouser
        return f"{folder}: no such user on this machine (the ~user part)"
    if not path.is_dir():
        return f"{path} is not a folder"
    path = path.resolve()
    folders = search_folders(session)
    if path not in folders:
        atomic_write_json(state_file(session, FOLDERS_FILE), [str(p) for p in [*folders, path]])
    return None


# ---------------------------------------------------------------- row state


class _Rows:
    """The rows of the screen, kept here so the worker can report each change."""

    def __init__(self, notify: Callable[[RoleState], None]) -> None:
        self.notify = notify
        self.rows: dict[str, RoleState] = {}

    def set(self, state: RoleState) -> RoleState:
        self.rows[state.role] = state
        try:
            self.notify(replace(state))
        except Exception:  # noqa: BLE001 - a display callback never breaks the step
            pass
        return state

    def update(self, role: str, **changes: Any) -> RoleState:
        return self.set(replace(self.rows[role], **changes))


# ---------------------------------------------------------------- the step


@dataclass
class _Plan:
    session: Session
    family: ModelFamily  # the session's base model: its roles and tokenizers
    entries: dict[str, ModelFile]
    meta: dict[str, Any]
    hashes: HashCache
    rows: _Rows
    ctx: StepContext
    remote: dict[str, RemoteFile] = field(default_factory=dict)  # role → fresh metadata of this run
    hub_problem: str | None = None  # offline / unreachable: say it once, do not retry per file
    contact_notes: dict[str, str] = field(default_factory=dict)  # role → why its metadata is unknown (gated, …)
    header_search: HeaderSearch | None = None  # every model file told by its header: made when a name is not enough


# "download" (the default), "find" (look and verify only), "captioner" (the captioner's folder)


def _options(ctx: StepContext) -> ModelsOptions:
    return cast(ModelsOptions, ctx.options)


def run_step(ctx: StepContext) -> StepResult:
    """The base model's files and tokenizers, then the captioner's row (downloaded too with `[captions] auto = true`)."""
    if _options(ctx).get("action") == "captioner":
        return captioner_step(ctx)
    return after_model_files(ctx, _model_files_step(ctx))


def _model_files_step(ctx: StepContext) -> StepResult:
    session = ctx.session
    family = family_for(session)
    roles = family.role_names
    preset = family.preset(preset_name(session))
    action = _options(ctx).get("action", "download")
    rows = _Rows(_options(ctx).get("on_state") or (lambda state: None))
    plan = _Plan(session, family, {f.role: f for f in preset.files}, load_metadata(session),
                 HashCache(state_file(session, HASH_CACHE_FILE)), rows, ctx)
    for role in roles:
        entry = plan.entries[role]
        rows.set(RoleState(role, entry.filename, entry.repo, size=_known(plan, entry).get("size")))
    rows.set(RoleState(TOKENIZER_ROLE, ", ".join(t.repo for t in family.tokenizers), "", note="sd-scripts tokenizers"))
    ctx.log(f"preset {preset.name}: {preset.title}")
    if family.note:  # what a person should know about this base model (schnell's distillation, Krea's header)
        ctx.log(f"{family.title}: {family.note}")
    for role in all_role_names():
        if not family.has_role(role) and session.get(f"models.{role}"):  # CLIP-L in a Chroma session
            ctx.log(f"models.{role}: {family.title} has no {role} file; ignored (kept in session.toml)")

    try:
        _first_contact(plan)
        for role in roles:
            ctx.check_cancelled()
            _find(plan, role)
        if _options(ctx).get("header_search"):
            _header_search(plan)  # a folder was just added: say what its files are, even when nothing was missing
        _check_tokenizers(plan)
    finally:
        plan.hashes.save()
        _save(plan)

    missing = [role for role in roles if rows.rows[role].state == "missing"]
    tok_missing = rows.rows[TOKENIZER_ROLE].state != "found"
    if action == "find" or ctx.dry_run:
        return _report(plan, missing, tok_missing, dry_run=ctx.dry_run, find_only=action == "find")

    try:
        if missing:
            _download_models(plan, missing)
        if tok_missing:
            _download_tokenizers(plan)
    except DownloadCancelled:
        raise Cancelled() from None
    except DownloadError as exc:
        _save(plan)
        return StepResult(False, str(exc), [rows.rows[r].line() for r in [*roles, TOKENIZER_ROLE]])
    finally:
        plan.hashes.save()
    _save(plan)
    return _report(plan, [], False, dry_run=False, find_only=False)


def _meter_callback(meter: ProgressMeter) -> Callable[[int, int], None]:
    """sha256_of's (done, total) → the meter (bound now: the caller's loop moves on)."""
    return lambda done, total: meter.update(done)


def _known(plan: _Plan, entry: ModelFile) -> dict[str, Any]:
    known: dict[str, Any] = plan.meta.get("files", {}).get(entry.key, {})
    return known


def _first_contact(plan: _Plan) -> None:
    """Size and sha256 from the hub for files we know nothing about yet; recorded for offline checks later."""
    token = hub_token()
    for role in plan.family.role_names:
        entry = plan.entries[role]
        if _known(plan, entry).get("size") is not None or plan.hub_problem:
            continue
        if is_offline():
            plan.hub_problem = "offline mode (HF_HUB_OFFLINE): sizes unknown, looking for files by name"
            plan.ctx.log(plan.hub_problem)
            return
        try:
            remote = fetch_metadata(entry.repo, entry.filename, entry.revision, token=token)
        except DownloadError as exc:
            if exc.kind in ("unreachable", "offline"):
                plan.hub_problem = str(exc)
                plan.ctx.log(f"hub not reachable, looking for files by name: {exc}")
                return
            plan.contact_notes[role] = str(exc)  # gated etc.: shown on the row; said again if a download is needed
            continue
        plan.remote[role] = remote
        _remember(plan, entry, remote)
        plan.rows.update(role, size=remote.size)


def _remember(plan: _Plan, entry: ModelFile, remote: RemoteFile) -> None:
    plan.meta.setdefault("files", {})[entry.key] = remote.record()


def _save(plan: _Plan) -> None:
    resolved = plan.meta.setdefault("resolved", {}).setdefault(preset_name(plan.session), {})
    for role in plan.family.role_names:
        row = plan.rows.rows.get(role)
        if row is not None and row.state == "found" and row.path is not None:
            resolved[role] = str(row.path)
    try:
        save_metadata(plan.session, plan.meta)
    except OSError as exc:
        plan.ctx.log(f"could not write {state_file(plan.session, METADATA_FILE)}: {exc.strerror or exc}")


def _find(plan: _Plan, role: str) -> None:
    session, entry = plan.session, plan.entries[role]
    known = _known(plan, entry)
    size, sha = known.get("size"), known.get("sha256")
    override = session.resolve(session.get(f"models.{role}"))
    plan.rows.update(role, state="checking", note="", what="")
    if override is not None and not override.is_file():
        plan.rows.update(role, state="error", note=f"models.{role} points at {override}, which does not exist")
        return
    if override is not None and (problem := model_file_problem(override)) is not None:
        plan.rows.update(role, state="error", note=f"models.{role}: {problem}")
        return
    found = candidates(
        entry, override=override, models_dir=session.paths.models, cache_dir=hf_cache_dir(), home=Path.home(),
        extra_folders=search_folders(session), size=size,
    )
    for candidate in found:
        mine = candidate.source == "your choice"
        if sha is not None and size is not None and candidate.path.stat().st_size == size:
            actual = _sha256(plan, role, candidate.path, size)
            if actual == sha:
                plan.rows.update(role, state="found", path=candidate.path, source=candidate.source, verified=True,
                                 note="sha256 verified")
                return
            if not mine:
                if actual is not None:
                    plan.ctx.log(f"{role}: {candidate.path} has the right size but another sha256; not used")
                continue
            _take_by_header(plan, role, candidate, "your file: not the preset's (sha256 differs)")
            return
        if mine:  # used whatever its size, if its header says it is this role's file
            note = ("your file; not checked (hub metadata unknown)" if size is None or sha is None
                    else "your file: not the preset's (size differs)")
            _take_by_header(plan, role, candidate, note)
            return
        if sha is not None:
            continue  # the preset's file has another size: not it
        note = "size matches, no sha256 known" if size is not None else "same name, unverified (hub not contacted)"
        if _take_by_header(plan, role, candidate, note):
            return
    if _take_from_header_search(plan, role):
        return
    plan.rows.update(role, state="missing", size=size, note=plan.contact_notes.get(role, ""))


def _sha256(plan: _Plan, role: str, path: Path, size: int) -> str | None:
    """The file's sha256, remembered (the second look is instant), else hashed with progress; None: unreadable."""
    actual = plan.hashes.get(path)
    if actual is not None:
        return actual
    meter = ProgressMeter(plan.ctx.progress, "models", f"verifying {path.name}", size, "B")
    try:
        actual = sha256_of(path, plan.hashes, cancel=plan.ctx.cancel, progress=_meter_callback(meter))
    except HashCancelled:
        raise Cancelled() from None
    except OSError as exc:
        plan.ctx.log(f"{role}: cannot read {path}: {exc.strerror or exc}")
        return None
    meter.finish()
    return actual


def _take_by_header(plan: _Plan, role: str, candidate: Candidate, note: str) -> bool:
    """Use an unverified file when its header says it is this role's file (the row says what it is); else your
    choice is an error naming what it is and the role, and a file found elsewhere is passed over with a log line."""
    identity = identify_cached(candidate.path, plan.family, plan.hashes)
    wrong = role_problem(candidate.path, role, identity, plan.family)
    if wrong is None:
        plan.rows.update(role, state="found", path=candidate.path, source=candidate.source, note=note,
                         what=identity.cell())
        return True
    if candidate.source == "your choice":
        plan.rows.update(role, state="error", note=f"models.{role}: {wrong}")
    else:
        plan.ctx.log(f"{role}: {display_path(candidate.path)} not used: {wrong}")
    return False


def _header_search(plan: _Plan) -> HeaderSearch:
    """Every model file in the places searched, told by its header (once per run, when a name is not enough)."""
    if plan.header_search is None:
        session = plan.session
        plan.header_search = search_by_header(plan.family, models_dir=session.paths.models, home=Path.home(),
                                              extra_folders=search_folders(session), cache=plan.hashes)
        plan.ctx.log(plan.header_search.line(plan.family))
    return plan.header_search


def _take_from_header_search(plan: _Plan, role: str) -> bool:
    """A file under another name that is this role's file by its header (the first found), unverified."""
    files = _header_search(plan).found.get(role)
    if not files:
        return False
    candidate, identity = files[0]
    plan.rows.update(role, state="found", path=candidate.path, source=candidate.source, what=identity.cell(),
                     note="found by its header (another name than the preset's: unverified)")
    return True


# ---------------------------------------------------------------- tokenizers


def _check_tokenizers(plan: _Plan) -> None:
    base = tokenizer_dir(plan.session)
    problem = tokenizer_problem(base, plan.family.tokenizers)
    if problem is None:
        plan.rows.update(TOKENIZER_ROLE, state="found", path=base, source="tokenizers folder", verified=False,
                         note="complete")
    elif base.exists() and not base.is_dir():
        plan.rows.update(TOKENIZER_ROLE, state="error", path=base, note=f"paths.tokenizers: {problem}")
    else:
        plan.rows.update(TOKENIZER_ROLE, state="missing", path=base, file="", note=problem)  # the folder's problem


def _download_tokenizers(plan: _Plan) -> None:
    ctx, base = plan.ctx, tokenizer_dir(plan.session)
    if is_offline():
        from lorawizard.core.models.download import offline_error

        raise offline_error("the tokenizers")
    token = hub_token()
    plan.rows.update(TOKENIZER_ROLE, state="downloading", done=0)
    fetched = 0
    for tokenizer in plan.family.tokenizers:
        folder = base / tokenizer.folder
        for name, required in tokenizer.files():
            ctx.check_cancelled()
            if (folder / name).is_file():
                continue
            try:
                remote = fetch_metadata(tokenizer.repo, name, tokenizer.revision, token=token)
            except DownloadError as exc:
                if exc.kind == "not_found" and not required:
                    continue
                plan.rows.update(TOKENIZER_ROLE, state="error", note=str(exc))
                raise
            try:
                download_file(remote, folder / name, token=token, cancel=ctx.cancel, log=ctx.log)
            except DownloadError as exc:
                plan.rows.update(TOKENIZER_ROLE, state="error", note=str(exc))
                raise
            fetched += remote.size or 0
            plan.rows.update(TOKENIZER_ROLE, done=fetched)
    ctx.log(f"tokenizers ready in {base} ({format_bytes(fetched)} fetched)")
    plan.rows.update(TOKENIZER_ROLE, state="found", source="downloaded", note="complete")


# ---------------------------------------------------------------- downloads


def _download_models(plan: _Plan, missing: list[str]) -> None:
    """Download every missing file (checked first, all together), with a total across the files."""
    if is_offline():
        from lorawizard.core.models.download import offline_error

        error = offline_error(", ".join(plan.entries[r].filename for r in missing))
        for role in missing:
            plan.rows.update(role, state="error", note="offline")
        raise error
    token = hub_token()
    remaining = _before_download(plan, missing, token)
    grand = sum((plan.remote[r].size or 0) for r in missing)
    total = ProgressMeter(plan.ctx.progress, "models", "total", grand or None, "B", interval=0.25)
    finished_bytes = 0
    for role in missing:
        _download_one(plan, role, missing, token, total, finished_bytes, remaining[role])
        finished_bytes += plan.remote[role].size or 0
    total.finish()


def _before_download(plan: _Plan, missing: list[str], token: str | None) -> dict[str, int]:
    """Before any byte moves: access to gated repositories, fresh metadata (CDN links expire; recorded), no file in
    the way, enough disk space. Returns the bytes still to fetch per role (a partial file resumes)."""
    for repo in sorted({plan.entries[r].repo for r in missing if plan.entries[r].gated}):  # once per repository
        try:
            check_access(repo, token=token)
        except DownloadError as exc:
            for role in missing:
                if plan.entries[role].repo == repo:
                    plan.rows.update(role, state="error", note=str(exc))
            raise
    for role in missing:
        entry = plan.entries[role]
        try:
            remote = fetch_metadata(entry.repo, entry.filename, entry.revision, token=token)
        except DownloadError as exc:
            plan.rows.update(role, state="error", note=str(exc))
            raise
        plan.remote[role] = remote
        _remember(plan, entry, remote)
    dest_dir = plan.session.paths.models
    for role in missing:  # never overwrite a file that is there but is not this one
        dest = dest_dir / plan.entries[role].filename
        if dest.exists():
            problem = (f"{dest} exists but is not the preset's file (size or sha256 differs): move or delete it, "
                       f"or choose it as your {role} file")
            plan.rows.update(role, state="error", note=problem)
            raise DownloadError("exists", problem)
    remaining = {r: _remaining(plan.remote[r], dest_dir / plan.entries[r].filename) for r in missing}
    try:
        check_disk_space(dest_dir, sum(remaining.values()))
    except DownloadError as exc:
        for role in missing:
            plan.rows.update(role, state="error", note="not enough disk space")
        raise exc
    return remaining


def _download_one(plan: _Plan, role: str, missing: list[str], token: str | None, total: ProgressMeter,
                  base: int, remaining: int) -> None:
    """One file: its row and the total follow the bytes; a pause keeps the partial file for the next run."""
    ctx = plan.ctx
    entry, remote = plan.entries[role], plan.remote[role]
    dest = plan.session.paths.models / entry.filename
    already = (remote.size or 0) - remaining
    # the screen shows each file in its row and the total in its status line; replay prints both
    file_events = ignore_progress if _options(ctx).get("rows_only") else ctx.progress
    meter = ProgressMeter(file_events, "models", entry.filename, remote.size, "B", start=already)
    plan.rows.update(role, state="downloading", size=remote.size, done=already)
    ctx.log(f"{role}: downloading {entry.repo}/{entry.filename} ({format_bytes(remote.size or 0)})")
    last_row = 0.0

    def progress(done: int) -> None:
        nonlocal last_row
        meter.update(done)
        total.update(base + done)
        now = time.monotonic()
        if now - last_row >= 0.2:
            last_row = now
            plan.rows.update(role, done=done, rate=meter.rate, eta_s=meter.snapshot().eta_s)

    try:
        path = download_file(remote, dest, token=token, progress=progress, cancel=ctx.cancel, log=ctx.log)
    except DownloadError as exc:
        plan.rows.update(role, state="error", note=str(exc))
        raise
    except DownloadCancelled:
        kept = _have(remote, dest)
        ctx.log(f"{entry.filename}: paused at {format_bytes(kept)}; the partial file is kept and the next "
                "download resumes from there")
        for other in missing:
            if plan.rows.rows[other].state == "downloading" or other == role:
                plan.rows.update(other, state="missing", note=f"paused at {format_bytes(kept)}"
                                 if other == role else "")
        raise
    meter.finish()
    if remote.sha256:
        st = path.stat()
        plan.hashes.put(path, st, remote.sha256)  # hashed while downloading: no second pass later
    plan.rows.update(role, state="found", path=path, source="downloaded", verified=bool(remote.sha256),
                     note="sha256 verified" if remote.sha256 else "size checked", done=remote.size or 0)
    _save(plan)


def _have(remote: RemoteFile, dest: Path) -> int:
    part = part_path(dest, remote)
    return part.stat().st_size if part.exists() else 0


def _remaining(remote: RemoteFile, dest: Path) -> int:
    return max(0, (remote.size or 0) - _have(remote, dest))


def _report(plan: _Plan, missing: list[str], tok_missing: bool, *, dry_run: bool, find_only: bool) -> StepResult:
    rows, roles = plan.rows.rows, plan.family.role_names
    details = [rows[r].line() for r in roles] + [rows[TOKENIZER_ROLE].line()]
    errors = [r for r in roles if rows[r].state == "error"]
    paths = {r: str(rows[r].path) for r in roles if rows[r].path is not None and rows[r].state == "found"}
    data: dict[str, Any] = {"paths": paths, "missing": missing, "tokenizers": str(tokenizer_dir(plan.session))}
    if plan.header_search is not None:
        data["header_search"] = plan.header_search.line(plan.family)
    if (dry_run or find_only) and (missing or tok_missing):
        return _would_download(plan, missing, tok_missing, details, data, ok=not errors, dry_run=dry_run)
    if dry_run or find_only:
        summary = "all model files are present" + (" and verified" if _all_verified(rows, roles) else "")
        return StepResult(not errors, summary, [] if find_only else details, data)
    if errors:
        return StepResult(False, rows[errors[0]].note, details, data)
    return StepResult(True, "all model files ready" + (" and verified" if _all_verified(rows, roles) else "")
                      + f"; tokenizers in {tokenizer_dir(plan.session)}", details, data)


def _would_download(plan: _Plan, missing: list[str], tok_missing: bool, details: list[str], data: dict[str, Any],
                    *, ok: bool, dry_run: bool) -> StepResult:
    """What a download would fetch (sizes from the recorded metadata): the dry run's lines, or the screen's one line."""
    sizes = [plan.meta.get("files", {}).get(plan.entries[r].key, {}).get("size") for r in missing]
    known = sum(s for s in sizes if s)
    unknown = any(not s for s in sizes)
    amount = (f"{format_bytes(known)}" + (" + files of unknown size" if unknown and known else "")
              if not unknown or known else "size unknown until the hub is reached")
    tokens = " + tokenizers" if tok_missing else ""
    data["would_download"] = {plan.entries[r].filename: s for r, s in zip(missing, sizes, strict=True)}
    if not dry_run:  # find only
        what = f"{len(missing)} model file(s) missing ({amount}){tokens}" if missing else "tokenizers missing"
        if is_offline():  # Ctrl+G cannot fetch anything: say what can be done here
            remedy = ("offline: a adds a folder, f picks a file" if missing else
                      "offline: set the tokenizers field to a folder that has them")
            return StepResult(False, f"{what}: {remedy}", [], data)
        return StepResult(False, f"{what}: Ctrl+G downloads them", [], data)
    lines = [f"would download {plan.entries[r].repo}/{plan.entries[r].filename} "
             f"({format_bytes(s) if s else 'size unknown'})" for r, s in zip(missing, sizes, strict=True)]
    if tok_missing:
        lines.append(f"would download the CLIP-L and T5 tokenizers into {tokenizer_dir(plan.session)} (~3 MB)")
    summary = f"{len(missing)} model file(s) to download: {amount}{tokens}"
    rows = plan.rows.rows
    kept = [line for role, line in zip([*plan.family.role_names, TOKENIZER_ROLE], details, strict=True)
            if rows[role].state != "missing"]
    return StepResult(ok, summary, kept + lines, data)


def _all_verified(rows: dict[str, RoleState], roles: tuple[str, ...]) -> bool:
    return all(rows[r].verified for r in roles)


def find_only(session: Session, *, on_state: Callable[[RoleState], None] | None = None,
              cancel: threading.Event | None = None) -> StepResult:
    """Look and verify without downloading (the screen's "verify")."""
    ctx = StepContext(session=session, options={"action": "find", "on_state": on_state or (lambda s: None)},
                      cancel=cancel or threading.Event())
    return run_step(ctx)

