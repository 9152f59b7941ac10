"""Scanning `dataset.source`: every file becomes an image, a caption sidecar, or ignored with a reason.

The walk follows symlinked folders once (a loop is noticed by device and inode, never followed twice), and only
those that stay inside the source folder: a link that leads out of it (`everything -> /`) is not followed, and the
kernel's pseudo-filesystems (/proc, /sys, /dev, …) are never scanned.
Content hashes and header probes are cached in `<project>/.lorawizard/dataset-scan.json` by size and
mtime, so an unchanged re-scan opens no file at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat as statmod
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json
from lorawizard.core.common.progress import ProgressCallback, ProgressMeter, ignore_progress
from lorawizard.core.dataset.imaging import Probe, probe_image

SIDECAR_EXTENSIONS = (".txt", ".caption")
# Names that promise an image: a file with one of these that Pillow cannot read is bad input, not "ignored".
IMAGE_EXTENSIONS = frozenset(
    [".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".heic", ".heif", ".avif", ".psd", ".tga", ".mpo", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".dng"]
)
CACHE_FILE = "dataset-scan.json"
CACHE_VERSION = 1


# The kernel's pseudo-filesystems: never photos, and reading them can hang or never end (/proc/kcore, /dev/zero).
PSEUDO_ROOTS = ("/proc", "/sys", "/dev")
PSEUDO_FS_TYPES = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore", "bpf",
    "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs", "efivarfs", "binfmt_misc", "rpc_pipefs", "nsfs", "selinuxfs",
})


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process sees; [] where /proc/self/mounts is unreadable."""
    try:
        text = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:  # spaces in a mount point are written \040
            mounts.append((re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1]), parts[2]))
    return mounts


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def pseudo_filesystem(path: Path) -> str | None:
    """What `path` is when it lies on one of the kernel's pseudo-filesystems ("/proc (the kernel's …)"), else None."""
    resolved = str(path.resolve())
    for root in PSEUDO_ROOTS:
        if _under(resolved, root):
            return f"{root} (a pseudo-filesystem of the kernel)"
    best, kind = "", ""
    for point, fstype in _mounts():
        if _under(resolved, point) and len(point) >= len(best):
            best, kind = point, fstype
    return f"a {kind} pseudo-filesystem ({best})" if kind in PSEUDO_FS_TYPES else None


def _pseudo_mount_keys() -> set[tuple[int, int]]:
    """(device, inode) of every pseudo-filesystem mount point: a source of `/` never walks into /proc."""
    keys = set()
    for point, fstype in _mounts():
        if fstype in PSEUDO_FS_TYPES or point in PSEUDO_ROOTS:
            try:
                st = os.stat(point)
            except OSError:
                continue
            keys.add((st.st_dev, st.st_ino))
    for root in PSEUDO_ROOTS:
        try:
            st = os.stat(root)
        except OSError:
            continue
        keys.add((st.st_dev, st.st_ino))
    return keys


def _leaves(entry: os.DirEntry[str], inside: str) -> str | None:
    """Where a symlinked folder leads when that is outside the source folder (resolved `inside`), else None."""
    if not entry.is_symlink():
        return None
    target = os.path.realpath(entry.path)
    return None if _under(target, inside) else target


@dataclass
class SourceFile:
    rel: str  # posix path relative to the source folder
    path: Path
    size: int
    mtime_ns: int
    sha256: str = ""
    probe: Probe | None = None


@dataclass
class ScanResult:
    root: Path
    images: list[SourceFile] = field(default_factory=list)  # identified by Pillow (probe.ok or not)
    sidecars: dict[str, str] = field(default_factory=dict)  # rel of the sidecar → rel of its image
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (rel, reason)
    orphan_sidecars: list[str] = field(default_factory=list)


def _walk(root: Path, exclude: list[Path], cancelled: Callable[[], bool]) -> tuple[list[tuple[str, Path, os.stat_result]], list[tuple[str, str]]]:
    """Every regular file under root (symlinks followed, loops cut), sorted; plus what was skipped and why."""
    files: list[tuple[str, Path, os.stat_result]] = []
    skipped: list[tuple[str, str]] = []
    excluded = set()
    for path in exclude:
        try:
            st = path.stat()
            excluded.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    root_stat = root.stat()
    seen = {(root_stat.st_dev, root_stat.st_ino)}
    inside = os.path.realpath(root)
    pseudo = _pseudo_mount_keys()
    stack = [(root, "")]
    while stack:
        if cancelled():
            break
        folder, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError:
            skipped.append((prefix.rstrip("/") or ".", "unreadable folder: permission denied"))
            continue
        except OSError as exc:
            skipped.append((prefix.rstrip("/") or ".", f"unreadable folder: {exc.strerror or exc}"))
            continue
        subfolders = []
        for entry in entries:
            rel = prefix + entry.name
            try:
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                skipped.append((rel, "broken symlink"))
                continue
            except OSError as exc:
                skipped.append((rel, f"unreadable: {exc.strerror or exc}"))
                continue
            if statmod.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in excluded:
                    continue  # our own output or bookkeeping inside the source: never read back
                outside = _leaves(entry, inside)
                if outside is not None:
                    skipped.append((rel + "/", f"a link to {outside}, outside the source folder: not followed"))
                    continue
                if key in pseudo:
                    skipped.append((rel + "/", "a pseudo-filesystem of the kernel: not scanned"))
                    continue
                if entry.name.startswith("."):
                    skipped.append((rel + "/", "hidden folder"))
                    continue
                if key in seen:
                    skipped.append((rel + "/", "symlink loop or folder already scanned"))
                    continue
                seen.add(key)
                subfolders.append((Path(entry.path), rel + "/"))
            elif statmod.S_ISREG(st.st_mode):
                if entry.name.startswith("."):
                    skipped.append((rel, "hidden file"))
                    continue
                files.append((rel, Path(entry.path), st))
            else:
                skipped.append((rel, "not a regular file"))
        stack.extend(reversed(subfolders))
    files.sort(key=lambda item: item[0])
    return files, skipped


def _load_cache(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("version") == CACHE_VERSION and isinstance(data.get("files"), dict):
            files: dict[str, Any] = data["files"]
            return files
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def scan_source(
    root: Path,
    *,
    cache_dir: Path | None = None,
    exclude: list[Path] | None = None,
    progress: ProgressCallback = ignore_progress,
    cancel: threading.Event | None = None,
    step: str = "dataset",
    write_cache: bool = True,
) -> ScanResult:
    """Walk, classify, hash and probe. Raises OSError only when `root` itself cannot be read."""
    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    files, skipped = _walk(root, exclude or [], cancelled)
    result = ScanResult(root=root, ignored=list(skipped))
    cache_path = cache_dir / CACHE_FILE if cache_dir is not None else None
    cache = _load_cache(cache_path)
    fresh: dict[str, Any] = {}

    candidates: list[SourceFile] = []
    sidecar_files: list[str] = []
    for rel, path, st in files:
        if path.suffix.lower() in SIDECAR_EXTENSIONS:
            sidecar_files.append(rel)
            continue
        candidates.append(SourceFile(rel, path, st.st_size, st.st_mtime_ns))

    meter = ProgressMeter(progress, step, "scanning photos", len(candidates), "files")
    lock = threading.Lock()

    def examine(item: SourceFile) -> SourceFile:
        hit = cache.get(item.rel)
        if hit and hit.get("size") == item.size and hit.get("mtime_ns") == item.mtime_ns:
            item.sha256 = hit["sha256"]
            item.probe = Probe.from_json(hit["probe"])
        elif not cancelled():
            try:
                item.sha256 = _sha256(item.path) if item.size else ""
            except PermissionError:
                item.probe = Probe(False, "unreadable: permission denied")
            except OSError as exc:
                item.probe = Probe(False, f"unreadable: {exc.strerror or exc}")
            if item.probe is None:
                item.probe = probe_image(item.path)
        with lock:
            meter.advance(1, item.rel)
        return item

    if candidates:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="scan") as pool:
            examined = list(pool.map(examine, candidates))
    else:
        examined = []
    meter.finish(f"{len(examined)} files")

    for item in examined:
        if item.probe is None:  # cancelled before it was looked at
            continue
        if item.sha256 or not item.probe.ok:
            fresh[item.rel] = {"size": item.size, "mtime_ns": item.mtime_ns, "sha256": item.sha256, "probe": item.probe.to_json()}
        reason = item.probe.reason
        if not item.probe.ok and reason == "not an image Pillow can read":
            if item.path.suffix.lower() not in IMAGE_EXTENSIONS:
                result.ignored.append((item.rel, "not an image (Pillow cannot read it)"))
                continue
            item.probe = Probe(False, "not a readable image: corrupt, or a format Pillow does not know")
        result.images.append(item)

    # Sidecars belong to the one image with the same stem in the same folder.
    by_stem: dict[str, list[str]] = {}
    for item in result.images:
        by_stem.setdefault(_stem_key(item.rel), []).append(item.rel)
    for rel in sidecar_files:
        owners = by_stem.get(_stem_key(rel), [])
        if len(owners) == 1:
            result.sidecars[rel] = owners[0]
        elif owners:
            result.ignored.append((rel, f"caption sidecar for {len(owners)} images with the same name: ambiguous"))
        else:
            result.orphan_sidecars.append(rel)
            result.ignored.append((rel, "caption sidecar without an image of the same name"))

    if write_cache and cache_path is not None and not cancelled() and fresh != cache:
        try:
            atomic_write_json(cache_path, {"version": CACHE_VERSION, "files": fresh})
        except OSError:
            pass  # a cache is a nicety
    return result


def _stem_key(rel: str) -> str:
    folder, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{folder}/{stem}"


def guess_photo_folder(project: Path, exclude: Iterable[Path] = ()) -> Path | None:
    """The project folder's one subfolder with images in it (at any depth), or None: when there are several (the
    person chooses), none, or images directly in the project folder (it is not a photo folder: lorawizard writes
    there). Hidden folders and `exclude` (the dataset and runs folders) are not candidates. Stops at each folder's
    first image, so a big photo folder costs a few directory reads."""
    skip = {path.resolve() for path in exclude}
    try:
        entries = sorted(os.scandir(project), key=lambda entry: entry.name)
    except OSError:
        return None
    found: list[Path] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            return None  # photos in the project folder itself
        if entry.is_dir() and Path(entry.path).resolve() not in skip and _holds_images(Path(entry.path)):
            found.append(Path(entry.path))
    return found[0] if len(found) == 1 else None


def _holds_images(folder: Path, max_folders: int = 200) -> bool:
    """An image somewhere below `folder`, looking into at most `max_folders` folders (a checkout or a venv in the
    project is not a photo folder, and the screen asks on its own thread)."""
    for seen, (_root, dirs, files) in enumerate(os.walk(folder)):
        if seen >= max_folders or "pyvenv.cfg" in files:
            return False
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in files):
            return True
    return False
