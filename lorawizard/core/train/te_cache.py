"""Text-encoder caches made for other settings: removed before a run, because sd-scripts would read them.

sd-scripts caches each caption's text-encoder outputs beside its image (`<stem>_flux_te.npz`, written by
`--cache_text_encoder_outputs_to_disk`) and, when it starts, checks such a cache only for `apply_t5_attn_mask`
(strategy_flux.is_disk_cached_outputs_expected). Everything else the outputs depend on goes unchecked: the T5 token
length (FLUX.1-dev 512, schnell 256, or `--t5xxl_max_token_length`), the T5-XXL file and the CLIP-L file (Chroma has
none: a dummy). Switching FLUX.1-dev → schnell would train on 512-token caches of the old setting.

So `<paths.dataset>/lorawizard-te-cache.json` notes what the caches there were made with (the family too, for a
person reading it: FLUX.1-dev and Krea [dev] encode alike, so the family itself is not compared). Before a run (the
train step, the Train screen, the probe's trials) the record is compared with what the run will use; when it differs,
the caches are removed — only `NNNN_flux_te.npz` files in the bucket folders, never images, captions or latents — and
the trainer encodes the captions again. Without a record (caches older than it), one cache's own header says its T5
length and mask; the files it cannot say anything about are taken as they are.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json, display_path
from lorawizard.core.profile import family_for
from lorawizard.core.session.document import BUCKET_RE, Session

RECORD_FILE = "lorawizard-te-cache.json"  # in the dataset folder, beside the bucket folders it describes
VERSION = 1
T5_ROLE, CLIP_ROLE = "t5xxl", "clip_l"
DUMMY = "dummy"  # no CLIP-L file: sd-scripts builds a dummy (Chroma)


@dataclass(frozen=True)
class CacheKey:
    """What the text-encoder outputs cached for a run depend on."""

    family: str  # said, not compared (FLUX.1-dev and Krea [dev] encode alike)
    t5_tokens: int
    attn_mask: bool
    t5: str | None  # the T5-XXL file: "<name> <bytes>" (moved files keep their caches); None: unknown (not there)
    clip_l: str | None  # the CLIP-L file likewise; "dummy" for a family without one (Chroma)

    def changes_from(self, old: CacheKey) -> list[str]:
        """What differs from the caches' `old` key, in a few words each; [] when the caches fit."""
        changes = []
        if old.t5_tokens != self.t5_tokens:
            changes.append(f"T5 {old.t5_tokens} → {self.t5_tokens} tokens")
        if old.attn_mask != self.attn_mask:
            changes.append(f"T5 attention mask {_on(old.attn_mask)} → {_on(self.attn_mask)}")
        if old.t5 != self.t5 and old.t5 is not None and self.t5 is not None:
            changes.append(f"T5-XXL file {_name(old.t5)} → {_name(self.t5)}")
        if old.clip_l != self.clip_l and old.clip_l is not None and self.clip_l is not None:
            changes.append(f"CLIP-L {_name(old.clip_l)} → {_name(self.clip_l)}")
        return changes


def _on(value: bool) -> str:
    return "on" if value else "off"


def _name(identity: str) -> str:
    return identity.rsplit(" ", 1)[0] if " " in identity else identity


def _identity(value: Any) -> str | None:
    if not value:
        return None
    path = Path(str(value))
    try:
        return f"{path.name} {path.stat().st_size}"
    except OSError:
        return None


def cache_key(session: Session, options: Mapping[str, Any]) -> CacheKey:
    """The key of the caches a run with these trainer `options` (core.launch.command.trainer_options) writes."""
    family = family_for(session)
    files = {role: options.get(option) for role, option in family.backend.role_options}
    tokens = options.get("t5xxl_max_token_length") or family.budget(T5_ROLE) or 512
    clip_l = _identity(files.get(CLIP_ROLE)) if family.has_role(CLIP_ROLE) else DUMMY
    return CacheKey(family.name, int(tokens), bool(options.get("apply_t5_attn_mask")), _identity(files.get(T5_ROLE)),
                    clip_l)


def cache_files(session: Session) -> list[Path]:
    """The text-encoder caches in the dataset's bucket folders (only the names lorawizard's images give them)."""
    suffix = family_for(session).backend.text_encoder_cache_suffix
    own = re.compile(rf"^\d+{re.escape(suffix)}$")
    dataset = session.paths.dataset
    try:
        folders = [p for p in dataset.iterdir() if p.is_dir() and BUCKET_RE.match(p.name)]
        return sorted(f for folder in folders for f in folder.iterdir() if own.match(f.name))
    except OSError:
        return []


def load_record(session: Session) -> CacheKey | None:
    try:
        data = json.loads((session.paths.dataset / RECORD_FILE).read_text(encoding="utf-8"))
        return CacheKey(str(data["family"]), int(data["t5_tokens"]), bool(data["attn_mask"]),
                        None if data["t5"] is None else str(data["t5"]),
                        None if data["clip_l"] is None else str(data["clip_l"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_record(session: Session, key: CacheKey) -> None:
    atomic_write_json(session.paths.dataset / RECORD_FILE, {"version": VERSION, **asdict(key)})


def read_cache_header(path: Path) -> tuple[int, bool] | None:
    """(T5 tokens, apply_t5_attn_mask) from an sd-scripts cache's own arrays (np.savez: a zip of .npy files, read
    without numpy: the header of `t5_out.npy` and the one byte of `apply_t5_attn_mask.npy`); None when unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open("t5_out.npy") as handle:
                tokens = int(_npy_header(handle.read(4096))["shape"][0])
            with archive.open("apply_t5_attn_mask.npy") as handle:
                data = handle.read(4096)
                header = _npy_header(data)
                if header.get("descr") != "|b1" or header.get("shape") != ():
                    return None
                return tokens, data[-1:] == b"\x01"
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError, IndexError, SyntaxError):
        return None


def _npy_header(data: bytes) -> dict[str, Any]:
    if not data.startswith(b"\x93NUMPY"):
        raise ValueError("not an .npy array")
    size_bytes = 2 if data[6] == 1 else 4
    size = int.from_bytes(data[8:8 + size_bytes], "little")
    header = ast.literal_eval(data[8 + size_bytes:8 + size_bytes + size].decode("latin-1"))
    if not isinstance(header, dict):
        raise ValueError("not an .npy header")
    return header


@dataclass(frozen=True)
class Verdict:
    files: list[Path]  # the caches to remove ([] when they fit, or there are none)
    changes: list[str]  # why, in a few words each
    key: CacheKey  # what the run's caches will be
    caching: bool = True  # the run caches text-encoder outputs to disk (else it neither reads nor writes them)


def check(session: Session, options: Mapping[str, Any]) -> Verdict:
    """Whether the dataset's text-encoder caches were made for what a run with `options` uses. Reads only."""
    key = cache_key(session, options)
    if not options.get("cache_text_encoder_outputs_to_disk"):
        return Verdict([], [], key, caching=False)
    files = cache_files(session)
    if not files:
        return Verdict([], [], key)
    old = load_record(session)
    if old is None:  # caches older than the record: what the first one's arrays say
        header = read_cache_header(files[0])
        if header is None:
            return Verdict(files, [f"{files[0].name} cannot be read"], key)
        old = CacheKey(key.family, header[0], header[1], key.t5, key.clip_l)
    changes = key.changes_from(old)
    return Verdict(files if changes else [], changes, key)


def describe(verdict: Verdict, *, done: bool) -> str:
    """The one line a person reads: what changed, what is (or would be) removed, and that it is made again."""
    count = len(verdict.files)
    what = f"{count} text-encoder cache{'s' if count != 1 else ''} (*_flux_te.npz)"
    where = display_path(verdict.files[0].parent.parent) if verdict.files else ""
    verb = "removed" if done else "would be removed before the run"
    return (f"{what} in {where} {verb}: made for other settings ({'; '.join(verdict.changes)}), which sd-scripts "
            f"does not check; it encodes the captions again (images and captions are kept)")


def refresh(session: Session, options: Mapping[str, Any], *, others_running: bool = False) -> str | None:
    """Before a run: remove the caches made for other settings and note what the run's will be. The one line to say
    when something was removed, else None. `others_running` (a queue's run beside another of this project): stale
    caches are refused in one line (ValueError) rather than removed under the other run."""
    verdict = check(session, options)
    if verdict.files and others_running:
        raise ValueError(f"the text-encoder caches in {display_path(session.paths.dataset)} were made for other "
                         f"settings ({'; '.join(verdict.changes)}) and another run of this project is reading them: "
                         "run this one when it has ended")
    for path in verdict.files:
        path.unlink(missing_ok=True)
    if verdict.caching and session.paths.dataset.is_dir() and (verdict.files or load_record(session) != verdict.key):
        try:
            save_record(session, verdict.key)
        except OSError:
            pass  # a read-only dataset folder: the next run checks the caches' own arrays again
    return describe(verdict, done=True) if verdict.files else None
