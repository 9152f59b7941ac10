"""Atomic writes: a temp file in the same folder, fsync, then rename.

kill -9 at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

# A write that fails for these is the disk's fault, never the data's: a step stops with one line (storage_problem).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} TB"


def storage_problem(exc: OSError, folder: Path | str, needed: int | None = None) -> str | None:
    """One line for a write that failed because of the disk (full, read-only, over quota): where, and how much space
    is needed when that is known; None for any other error (that one is the data's, or a bug's)."""
    if exc.errno not in STORAGE_ERRNOS:
        return None
    where = display_path(folder)
    if exc.errno == errno.EROFS:
        return f"{where} is on a read-only filesystem: nothing can be written there; choose a writable folder"
    import shutil

    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    what = "the disk quota is used up" if exc.errno == errno.EDQUOT else "the disk is full"
    need = f"about {_size(needed)} more is needed" if needed else "more space is needed"
    return f"cannot write in {where}: {what} ({exc.strerror or exc}; {free}); {need}: free some and run it again"


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            # Keep the permission bits of the file we replace (a user's session.toml may be 0600).
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json_object(path: Path | str) -> dict[str, Any]:
    """A JSON file's top-level object; {} when it is missing, unreadable, malformed or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode a newly created file gets here (0o666 less the umask): for a temp file that becomes one."""
    return 0o666 & ~_umask()


def display_path(path: Path | str) -> str:
    """A path as a person reads it: `~/…` under the home folder, else as it is."""
    path = Path(path)
    try:
        inside = path.relative_to(Path.home())
    except ValueError:
        return str(path)
    return "~" if inside == Path(".") else f"~/{inside}"


def shell_path(path: Path | str) -> str:
    """A path to paste into a shell: `~/…` under the home folder when that needs no quoting, else shell-quoted."""
    import shlex

    shown = display_path(path)
    rest = shown[2:] if shown.startswith("~/") else None
    if rest is not None and rest and shlex.quote(rest) == rest:
        return shown
    return shlex.quote(str(path))


def tilde_paths(text: str) -> str:
    """Every path under the home folder in a line of text (a trainer's log) written `~/…`, as display_path does."""
    home = str(Path.home()).rstrip("/")
    if len(home) < 2 or home not in text:
        return text
    return re.sub(r"(?<![\w./~-])" + re.escape(home) + r"(?=/|[^\w.-]|$)", "~", text)
