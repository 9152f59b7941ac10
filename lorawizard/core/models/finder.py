"""Find model files the user already has: never download 20 GB twice.

Where we look, per role: the session's override, `paths.models`, the Hugging Face cache (huggingface_hub's own
cache API), ComfyUI layouts under the home folder, and folders the user added. A candidate matches on size
first (a stat), then sha256 — remembered in a hash cache keyed by path + size + mtime + inode, so the second
look is instant. Found files are used in place: never copied, moved or modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json
from lorawizard.core.models.catalog import COMFY_FOLDERS, MODEL_SUFFIXES, ModelFile
from lorawizard.core.models.identify import Identity, from_record, identify
from lorawizard.core.profile import FAMILIES, ModelFamily

COMFY_ROOTS = ("ComfyUI", "comfyui", "ComfyUI_windows_portable/ComfyUI", "stable-diffusion-webui-forge")


class HashCancelled(Exception):
    """The user stopped a hash; nothing was remembered for that file."""


class HashCache:
    """sha256 of files by path, valid while size, mtime_ns and inode are unchanged. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        self._dirty = False
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self._data = {k: v for k, v in loaded.items() if isinstance(v, dict)}
        except (OSError, ValueError):
            pass

    @staticmethod
    def _stamp(st: os.stat_result) -> dict[str, int]:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}

    def get(self, file: Path) -> str | None:
        try:
            st = file.stat()
        except OSError:
            return None
        with self._lock:
            entry = self._data.get(str(file))
        if entry and all(entry.get(k) == v for k, v in self._stamp(st).items()):
            return entry.get("sha256")
        return None

    def put(self, file: Path, st: os.stat_result, sha256: str) -> None:
        self._merge(file, st, {"sha256": sha256})

    def _merge(self, file: Path, st: os.stat_result, values: dict[str, Any]) -> None:
        """Add to the file's entry while it is the same file (stamp unchanged), else start it afresh."""
        stamp = self._stamp(st)
        with self._lock:
            entry = self._data.get(str(file))
            same = entry is not None and all(entry.get(k) == v for k, v in stamp.items())
            self._data[str(file)] = {**(entry if same and entry else {}), **stamp, **values}
            self._dirty = True

    def get_identity(self, file: Path, st: os.stat_result, rules: str) -> Identity | None:
        """What the file's header said, while size/mtime/inode and the family's rules are unchanged."""
        with self._lock:
            entry = self._data.get(str(file))
        if entry and all(entry.get(k) == v for k, v in self._stamp(st).items()) and entry.get("rules") == rules:
            return from_record(entry.get("identity"))
        return None

    def put_identity(self, file: Path, st: os.stat_result, rules: str, identity: Identity) -> None:
        self._merge(file, st, {"rules": rules, "identity": identity.record()})

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            data = dict(self._data)
            self._dirty = False
        try:
            atomic_write_json(self.path, data)
        except OSError:
            pass  # a cache: losing it costs time, never correctness


def sha256_of(
    file: Path,
    cache: HashCache | None = None,
    *,
    progress: Callable[[int, int], None] = lambda done, total: None,
    cancel: threading.Event | None = None,
) -> str:
    """The file's sha256, from the cache when size/mtime/inode are unchanged, else hashed (and remembered)."""
    if cache is not None and (known := cache.get(file)) is not None:
        return known
    st = file.stat()
    digest = hashlib.sha256()
    done = 0
    with file.open("rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
            done += len(block)
            progress(done, st.st_size)
            if cancel is not None and cancel.is_set():
                raise HashCancelled(str(file))
    sha = digest.hexdigest()
    if cache is not None and file.stat().st_mtime_ns == st.st_mtime_ns:
        cache.put(file, st, sha)
    return sha


def rules_of(family: ModelFamily) -> str:
    """A fingerprint of the family's file kinds: a cached identity made under other rules is read again."""
    signatures = [(f.name, f.signature) for f in FAMILIES.values()]  # a transformer's families come from these
    return hashlib.sha256(repr((family.name, family.file_kinds, signatures)).encode()).hexdigest()[:16]


def identify_cached(file: Path, family: ModelFamily, cache: HashCache | None = None) -> Identity:
    """What the file is (its header only), remembered per path + size + mtime + inode beside its sha256."""
    try:
        st = file.stat()
    except OSError:
        return identify(file, family)  # says why it cannot be read
    rules = rules_of(family)
    if cache is not None and (known := cache.get_identity(file, st, rules)) is not None:
        return known
    identity = identify(file, family)
    if cache is not None and identity.readable:
        cache.put_identity(file, st, rules, identity)
    return identity


@dataclass(frozen=True)
class Candidate:
    path: Path
    source: str  # "your choice" | "models folder" | "HF cache" | "ComfyUI" | "added folder"


def _model_files(folder: Path, depth: int = 2) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_file() and entry.name.endswith(MODEL_SUFFIXES):
                yield Path(entry.path)
            elif depth > 0 and entry.is_dir() and not entry.name.startswith("."):
                yield from _model_files(Path(entry.path), depth - 1)
        except OSError:
            continue


def comfy_folders(role: str, roots: list[Path]) -> Iterator[Path]:
    """`<root>/models/<kind>` (and `<root>/<kind>` when the root is a models folder) for this role."""
    for root in roots:
        for kind in COMFY_FOLDERS[role]:
            for folder in (root / "models" / kind, root / kind):
                if folder.is_dir():
                    yield folder


def hf_cache_candidates(entry: ModelFile, cache_dir: Path, size: int | None) -> Iterator[Path]:
    """This exact file via `try_to_load_from_cache`, then any cached file of the same size (same bytes under
    another repository, e.g. ae.safetensors)."""
    if not cache_dir.is_dir():
        return
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    seen: set[Path] = set()
    try:
        hit = try_to_load_from_cache(entry.repo, entry.filename, cache_dir=str(cache_dir), revision=entry.revision)
    except Exception:  # noqa: BLE001 - a broken cache is just no candidate
        hit = None
    if isinstance(hit, str) and os.path.isfile(hit):
        seen.add(Path(hit))
        yield Path(hit)
    try:
        info = scan_cache_dir(cache_dir)
    except Exception:  # noqa: BLE001
        return
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        for revision in repo.revisions:
            for cached in revision.files:
                path = Path(cached.file_path)
                if path in seen:
                    continue
                same = cached.size_on_disk == size if size is not None else cached.file_name == Path(entry.filename).name
                if same and path.name.endswith(MODEL_SUFFIXES):
                    seen.add(path)
                    yield path


def candidates(
    entry: ModelFile,
    *,
    override: Path | None,
    models_dir: Path,
    cache_dir: Path,
    home: Path,
    extra_folders: list[Path],
    size: int | None,
) -> Iterator[Candidate]:
    """Every plausible file for this role, cheapest and most likely first, each path once.

    With a known size, only files of exactly that size are offered; without it, only files with the preset's
    file name (a weaker guess, marked unverified by the caller).
    """
    seen: set[Path] = set()

    def fits(path: Path) -> bool:
        try:
            if not path.is_file():
                return False
            return path.stat().st_size == size if size is not None else path.name == Path(entry.filename).name
        except OSError:
            return False

    def once(path: Path, source: str) -> Iterator[Candidate]:
        key = Path(os.path.realpath(path))
        if key not in seen:
            seen.add(key)
            yield Candidate(path, source)

    if override is not None and override.is_file():
        yield from once(override, "your choice")
    direct = models_dir / entry.filename
    if fits(direct):
        yield from once(direct, "models folder")
    for path in _model_files(models_dir, depth=1):
        if fits(path):
            yield from once(path, "models folder")
    for path in hf_cache_candidates(entry, cache_dir, size):
        if fits(path):
            yield from once(path, "HF cache")
    comfy_roots = [home / name for name in COMFY_ROOTS]
    for folder in comfy_folders(entry.role, comfy_roots):
        for path in _model_files(folder):
            if fits(path):
                yield from once(path, "ComfyUI")
    for folder in extra_folders:
        for sub in [*comfy_folders(entry.role, [folder]), folder]:
            for path in _model_files(sub):
                if fits(path):
                    yield from once(path, "added folder")


@dataclass
class HeaderSearch:
    """Every model file in the searched places, told by its header: for files whose names are not the preset's."""

    searched: int
    found: dict[str, list[tuple[Candidate, Identity]]]  # role → its files, in search order

    def line(self, family: ModelFamily) -> str:
        """`searched 6 files by header, matched 3: FLUX transformer, AE, T5-XXL`."""
        matched = sum(len(files) for files in self.found.values())
        kinds = [files[0][1].short for role in family.role_names if (files := self.found.get(role))]
        noun = "file" if self.searched == 1 else "files"
        return f"searched {self.searched} {noun} by header, matched {matched}" + (f": {', '.join(kinds)}" if kinds else "")


def search_by_header(
    family: ModelFamily,
    *,
    models_dir: Path,
    home: Path,
    extra_folders: list[Path],
    cache: HashCache | None = None,
) -> HeaderSearch:
    """Read the header of every .safetensors/.sft file in the models folder, ComfyUI's model folders and the added
    folders (each file once) and group the ones that are a role's file by role."""
    places: list[tuple[Iterator[Path], str]] = [(_model_files(models_dir, depth=1), "models folder")]
    comfy_roots = [home / name for name in COMFY_ROOTS]
    for role in family.role_names:
        places += [(_model_files(folder), "ComfyUI") for folder in comfy_folders(role, comfy_roots)]
    for folder in extra_folders:
        places.append((_model_files(folder), "added folder"))  # depth 2 covers its ComfyUI-style subfolders
    seen: set[Path] = set()
    found: dict[str, list[tuple[Candidate, Identity]]] = {}
    for files, source in places:
        for path in files:
            key = Path(os.path.realpath(path))
            if key in seen:
                continue
            seen.add(key)
            identity = identify_cached(path, family, cache)
            if identity.kind in family.role_names and identity.fits(family):  # not another family's transformer
                found.setdefault(identity.kind, []).append((Candidate(path, source), identity))
    return HeaderSearch(len(seen), found)
