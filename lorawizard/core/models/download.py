"""Hub metadata through huggingface_hub, and our own resumable, hash-while-downloading transfer.

huggingface_hub gives the endpoint, auth headers, metadata (size, sha256 etag, CDN location), access checks and
its error classes. The transfer itself is ours, because huggingface_hub (≥ 1.18) throws a partial file away
between runs: we keep a stable `<file>.<etag16>.part` next to the destination, continue it with
`Range: bytes=N-` after any restart, hash while the bytes arrive (in a second thread, so hashing overlaps the
network), verify before the final rename, and retry when the server drops the connection.

Every failure becomes a `DownloadError` whose message is one line: what happened and what to do.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHUNK = 1 << 20  # bytes per read; also the most a restart can fetch twice
DISK_MARGIN = 512 << 20  # free space kept beyond what the downloads need
META_TIMEOUT = 10.0  # seconds for a metadata request (fails fast when the hub is unreachable)
READ_TIMEOUT = 30.0
RETRIES = 5  # attempts per file when the connection drops; reset whenever bytes arrive
STALL_LIMIT = 45.0  # seconds without a byte after which retrying stops and the hub counts as unreachable
_HEX = set("0123456789abcdef")


class DownloadCancelled(Exception):
    """The user asked to stop; the `.part` file stays for the next run."""


class DownloadError(Exception):
    """A download problem for a person: `kind` for code, the message is one line with what to do."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # gated | unauthorized | not_found | offline | unreachable | disk_full | checksum | permission | network


def is_sha256(text: str | None) -> bool:
    return text is not None and len(text) == 64 and set(text) <= _HEX


def is_sha1(text: str | None) -> bool:
    return text is not None and len(text) == 40 and set(text) <= _HEX


# ---------------------------------------------------------------- environment (read at call time)


def hub_endpoint() -> str:
    """HF_ENDPOINT at call time (huggingface_hub itself reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def is_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) and "HF_HUB_OFFLINE" not in os.environ


def hub_token() -> str | None:
    """HF_TOKEN, else huggingface_hub's stored token. Never logged, never shown."""
    from huggingface_hub import get_token

    return get_token()


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def offline_error(what: str) -> DownloadError:
    return DownloadError(
        "offline",
        f"offline mode is on (HF_HUB_OFFLINE is set), so {what} cannot be fetched: unset HF_HUB_OFFLINE, "
        "or point the step at a file you already have",
    )


# ---------------------------------------------------------------- metadata


@dataclass
class RemoteFile:
    repo: str
    filename: str
    revision: str
    size: int | None
    sha256: str | None  # of the whole file (LFS etag), None for small git files
    git_sha1: str | None  # git blob sha1 (the etag of small, non-LFS files)
    commit: str | None
    location: str  # where the bytes are (often a CDN)
    url: str  # the hub's /resolve URL

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_sha1 or "noetag"

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("location")  # signed CDN URLs expire; re-resolved on every run
        return {k: v for k, v in data.items() if v is not None}


def fetch_metadata(repo: str, filename: str, revision: str = "main", *, token: str | bool | None = None) -> RemoteFile:
    """One HEAD through huggingface_hub; raises DownloadError for every known failure."""
    what = f"{repo}/{filename}"
    if is_offline():
        raise offline_error(what)
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    endpoint = hub_endpoint()
    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token, timeout=META_TIMEOUT, endpoint=endpoint)
    except Exception as exc:  # noqa: BLE001 - mapped to one line below
        raise explain(exc, repo, filename, revision) from exc
    etag = (meta.etag or "").lower()
    sha256 = etag if is_sha256(etag) else None
    git_sha1 = etag if is_sha1(etag) else None
    if sha256 is None and meta.size and meta.size > (10 << 20):
        sha256 = _lfs_sha256(repo, filename, revision, token)
    return RemoteFile(repo, filename, revision, meta.size, sha256, git_sha1, meta.commit_hash, meta.location or url, url)


def _lfs_sha256(repo: str, filename: str, revision: str, token: str | bool | None) -> str | None:
    """The sha256 from the paths-info API, for big files whose etag is not one (best effort)."""
    from huggingface_hub import HfApi

    try:
        infos = HfApi(endpoint=hub_endpoint()).get_paths_info(repo, [filename], revision=revision, token=token)
    except Exception:  # noqa: BLE001 - optional extra; the download still checks its size
        return None
    for info in infos:
        lfs = getattr(info, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        if is_sha256(sha):
            return sha
    return None


def check_access(repo: str, *, token: str | bool | None = None) -> None:
    """For gated repositories: raise DownloadError (gated/unauthorized/…) unless this token may download."""
    if is_offline():
        raise offline_error(repo)
    from huggingface_hub import HfApi

    try:
        HfApi(endpoint=hub_endpoint()).auth_check(repo, token=token)
    except Exception as exc:  # noqa: BLE001
        raise explain(exc, repo, None, "main") from exc


def explain(exc: BaseException, repo: str, filename: str | None, revision: str = "main") -> DownloadError:
    """Any exception from a hub call or a transfer → one line: what happened, what to do."""
    if isinstance(exc, DownloadError):
        return exc
    from huggingface_hub import errors

    what = f"{repo}/{filename}" if filename else repo
    page = f"https://huggingface.co/{repo}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return offline_error(what)
    if isinstance(exc, errors.GatedRepoError):
        if status == 403:
            return DownloadError(
                "gated",
                f"{repo} is gated and your token has no access yet: accept the license at {page} "
                "(logged in as the token's owner), then try again",
            )
        return DownloadError(
            "gated",
            f"{repo} is gated and needs a token: accept the license at {page}, create a read token at "
            "https://huggingface.co/settings/tokens, then enter it here (key t) or set HF_TOKEN",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return DownloadError("not_found", f"revision {revision!r} of {repo} does not exist: check the revision")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return DownloadError(
            "not_found", f"repository {repo} was not found (or is private): check the name, or log in if it is yours"
        )
    if isinstance(exc, errors.EntryNotFoundError | getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)):
        return DownloadError("not_found", f"{filename} is not in {repo} at {revision!r}: choose another preset or file")
    if isinstance(exc, errors.HfHubHTTPError) and status == 401:
        return DownloadError(
            "unauthorized",
            "the hub refused the token (invalid credentials): enter a fresh read token (key t) or fix HF_TOKEN",
        )
    if isinstance(exc, errors.HfHubHTTPError) and status == 403:
        return DownloadError("unauthorized", f"the hub denied access to {what} (403): check the token's permissions")
    if isinstance(exc, errors.HfHubHTTPError) and status == 404:
        return DownloadError("not_found", f"{what} was not found on the hub (404): check the repository and file name")
    if isinstance(exc, errors.HfHubHTTPError) and status is not None:
        return DownloadError("network", f"the hub answered {status} for {what}: try again later")
    if isinstance(exc, PermissionError):
        return DownloadError("permission", f"permission denied writing {exc.filename}: choose a writable models folder")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError("disk_full", f"the disk is full while writing {exc.filename or what}: free space, then resume")
    if is_network_error(exc):
        return DownloadError(
            "unreachable",
            f"the hub at {hub_endpoint()} is unreachable ({short_error(exc)}): check the network (or HF_ENDPOINT); "
            "the download resumes where it stopped",
        )
    return DownloadError("network", f"{what}: {short_error(exc)}")


def is_network_error(exc: BaseException) -> bool:
    name = type(exc).__name__
    if isinstance(exc, ConnectionError | TimeoutError | socket.timeout | socket.gaierror | HTTPException | urllib.error.URLError):
        return True
    return any(word in name for word in ("Connect", "Timeout", "Protocol", "Network", "ReadError"))


def short_error(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


# ---------------------------------------------------------------- disk and tokens


def free_bytes(folder: Path) -> int:
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk_space(folder: Path, need: int, *, margin: int = DISK_MARGIN) -> None:
    free = free_bytes(folder)
    if need > 0 and free < need + margin:
        raise DownloadError(
            "disk_full",
            f"not enough disk space in {folder}: the missing files need {need / 1e9:.1f} GB (+{margin / 1e9:.1f} GB "
            f"margin), {free / 1e9:.1f} GB free — free space or choose another models folder",
        )


def store_token(token: str) -> str:
    """Check a token typed into the wizard and keep it in huggingface_hub's own token storage.

    Returns the user name. The token is never written to session.toml, logs or the screen.
    """
    token = token.strip()
    if not token:
        raise DownloadError("unauthorized", "no token entered")
    if is_offline():
        raise offline_error("the token check")
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=hub_endpoint()).whoami(token=token)
    except Exception as exc:  # noqa: BLE001
        problem = explain(exc, "whoami", None)
        if problem.kind in ("not_found", "network") or getattr(getattr(exc, "response", None), "status_code", 0) == 401:
            raise DownloadError("unauthorized", "the hub refused this token: copy a read token from "
                                "https://huggingface.co/settings/tokens and try again") from None
        raise problem from None
    name = str(info.get("name", "?"))
    token_name = ((info.get("auth") or {}).get("accessToken") or {}).get("displayName") or f"lorawizard-{name}"
    try:
        from huggingface_hub import _login
        from huggingface_hub.utils._auth import _save_token

        _save_token(token=token, token_name=token_name)
        _login._set_active_token(token_name=token_name, add_to_git_credential=False)
    except (ImportError, AttributeError, TypeError):  # another huggingface_hub version: its public API
        from huggingface_hub import login

        login(token=token, add_to_git_credential=False)
    return name


# ---------------------------------------------------------------- the transfer


def part_path(dest: Path, remote: RemoteFile) -> Path:
    return dest.with_name(f"{dest.name}.{remote.etag[:16]}.part")


_RESET = object()  # a queue marker: start the hashes over


class _Hasher:
    """sha256 (and the git blob sha1 for small files) in a second thread; hashlib releases the GIL."""

    def __init__(self, git_size: int | None) -> None:
        self.sha256 = hashlib.sha256()
        self._git_prefix = b"blob %d\0" % (git_size or 0)
        self.sha1 = hashlib.sha1(self._git_prefix) if git_size is not None else None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="lorawizard-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if block is _RESET:
                self.sha256 = hashlib.sha256()
                self.sha1 = hashlib.sha1(self._git_prefix) if self.sha1 is not None else None
                continue
            self.sha256.update(block)
            if self.sha1 is not None:
                self.sha1.update(block)

    def update(self, block: bytes) -> None:
        self._queue.put(block)

    def reset(self) -> None:
        """Start over (the server ignored Range and sends the whole file again)."""
        self._queue.put(_RESET)

    def finish(self) -> tuple[str, str | None]:
        self._queue.put(None)
        self._thread.join()
        return self.sha256.hexdigest(), self.sha1.hexdigest() if self.sha1 is not None else None


class _Flusher:
    """Pushes written bytes to the disk every FLUSH_EVERY bytes from a background thread, so the fsync before
    the final rename has little left to wait for (a 12 GB file otherwise leaves gigabytes of dirty pages)."""

    FLUSH_EVERY = 64 << 20

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY) if path.exists() else -1
        self._pending = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="lorawizard-flush", daemon=True)
        if self._fd >= 0:
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            try:
                os.fdatasync(self._fd)
            except OSError:
                return  # best effort; the final fsync still runs

    def wrote(self, amount: int) -> None:
        self._pending += amount
        if self._pending >= self.FLUSH_EVERY:
            self._pending = 0
            self._wake.set()

    def close(self) -> None:
        if self._fd < 0:
            return
        self._stop = True
        self._wake.set()
        self._thread.join()
        os.close(self._fd)
        self._fd = -1


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def download_file(
    remote: RemoteFile,
    dest: Path,
    *,
    token: str | bool | None = None,
    progress: Callable[[int], None] = lambda done: None,
    cancel: threading.Event | None = None,
    chunk_size: int = CHUNK,
    retries: int = RETRIES,
    log: Callable[[str], object] = lambda line: None,
    _attempt: int = 1,
) -> Path:
    """Download `remote` to `dest` (resuming a `.part`), verify it, rename it into place. Returns `dest`.

    `progress(done_bytes)` is called as bytes arrive (done counts bytes already on disk). On a checksum
    mismatch the part is deleted and the download tried once more, then DownloadError("checksum").
    """
    dest = Path(dest)
    part = part_path(dest, remote)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _cleanup_stale_parts(dest, part)
        sha256, sha1 = _transfer(remote, part, token, progress, cancel, chunk_size, retries, log)
        expected_ok = True
        if remote.sha256:
            expected_ok = sha256 == remote.sha256
        elif remote.git_sha1 and sha1 is not None:
            expected_ok = sha1 == remote.git_sha1
        if not expected_ok:
            part.unlink(missing_ok=True)
            if _attempt < 2:
                log(f"{remote.filename}: checksum mismatch, the file was deleted; downloading it once more")
                return download_file(remote, dest, token=token, progress=progress, cancel=cancel, chunk_size=chunk_size,
                                     retries=retries, log=log, _attempt=_attempt + 1)
            raise DownloadError(
                "checksum",
                f"{remote.filename} from {remote.repo} failed its sha256 check twice and was not installed: "
                "try again later (the hub or a proxy is sending wrong bytes)",
            )
        with part.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(part, dest)
        _fsync_dir(dest.parent)
        return dest
    except (DownloadError, DownloadCancelled):
        raise
    except Exception as exc:  # noqa: BLE001
        raise explain(exc, remote.repo, remote.filename, remote.revision) from exc


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _cleanup_stale_parts(dest: Path, keep: Path) -> None:
    """A part for an older version of the remote file (another etag) can never be continued."""
    for stale in dest.parent.glob(f"{dest.name}.*.part"):
        if stale != keep:
            stale.unlink(missing_ok=True)


def _hash_existing(part: Path, hasher: _Hasher, cancel: threading.Event | None) -> None:
    with part.open("rb") as handle:
        while block := handle.read(8 << 20):
            hasher.update(block)
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(str(part))


def _transfer(
    remote: RemoteFile,
    part: Path,
    token: str | bool | None,
    progress: Callable[[int], None],
    cancel: threading.Event | None,
    chunk_size: int,
    retries: int,
    log: Callable[[str], object],
) -> tuple[str, str | None]:
    total = remote.size
    have = part.stat().st_size if part.exists() else 0
    if total is not None and have > total:
        part.unlink()
        have = 0
    hasher = _Hasher(total if remote.git_sha1 and total is not None else None)
    try:
        if have:
            _hash_existing(part, hasher, cancel)  # local bytes, not the network
            log(f"{remote.filename}: resuming at {have / 1e6:.0f} MB")
        progress(have)
        failures = 0
        last_gain = time.monotonic()
        while total is None or have < total:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(str(part))
            try:
                have, finished = _stream_once(remote, part, have, token, hasher, progress, cancel, chunk_size)
            except (DownloadCancelled, DownloadError):
                raise
            except (OSError, HTTPException) as exc:
                if not is_network_error(exc) or isinstance(exc, PermissionError):
                    raise
                now_have = part.stat().st_size if part.exists() else 0  # every byte on disk is also hashed
                if now_have > have:
                    failures, last_gain = 0, time.monotonic()
                have = now_have
                failures += 1
                if failures >= retries or _refused(exc) or time.monotonic() - last_gain > STALL_LIMIT:
                    raise explain(exc, remote.repo, remote.filename, remote.revision) from exc
                log(f"{remote.filename}: connection lost at {have / 1e6:.0f} MB ({short_error(exc)}); retrying")
                time.sleep(min(0.25 * 2 ** (failures - 1), 4.0))
                continue
            if finished:
                break
            failures = 0  # bytes arrived: a new budget for the next drop
        return hasher.finish()
    finally:
        if hasher._thread.is_alive():
            hasher.finish()


def _refused(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, ConnectionRefusedError | socket.gaierror)


def _stream_once(
    remote: RemoteFile,
    part: Path,
    have: int,
    token: str | bool | None,
    hasher: _Hasher,
    progress: Callable[[int], None],
    cancel: threading.Event | None,
    chunk_size: int,
) -> tuple[int, bool]:
    """One GET from `have` on. Returns (bytes on disk, complete)."""
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=token)
    if _origin(remote.location) != _origin(remote.url):
        headers.pop("authorization", None)  # never send the token to the CDN
    headers["Accept-Encoding"] = "identity"
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(remote.location, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=READ_TIMEOUT)  # noqa: S310 - https/http hub URLs only
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and remote.size is not None and have == remote.size:
            return have, True
        if exc.code in (403, 410) and _origin(remote.location) != _origin(remote.url):
            # an expired signed CDN URL: resolve it again and carry on
            fresh = fetch_metadata(remote.repo, remote.filename, remote.revision, token=token)
            remote.location = fresh.location
            raise ConnectionResetError("the download link expired") from None
        if exc.code >= 500:
            raise ConnectionResetError(f"server error {exc.code}") from None
        raise DownloadError("network", f"{remote.filename}: the server answered {exc.code}: try again later") from None
    with response:
        status = response.status
        mode = "ab"
        if have and status == 200:  # the server ignored Range: start over, hash from zero
            mode, have = "wb", 0
            hasher.reset()
            progress(0)
        elif status == 206:
            start = int(response.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
            if start != have:
                raise ConnectionResetError(f"server resumed at byte {start}, expected {have}")
        with part.open(mode) as handle:
            flusher = _Flusher(part)
            try:
                while True:
                    block = response.read(chunk_size)
                    if not block:
                        break
                    handle.write(block)
                    hasher.update(block)
                    flusher.wrote(len(block))
                    have += len(block)
                    progress(have)
                    if cancel is not None and cancel.is_set():
                        handle.flush()
                        raise DownloadCancelled(str(part))
            finally:
                flusher.close()
    if remote.size is not None and have < remote.size:
        raise ConnectionResetError(f"connection closed at byte {have} of {remote.size}")
    return have, True
