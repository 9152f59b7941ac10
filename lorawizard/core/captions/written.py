"""What lorawizard last wrote to each caption file, so that a caption file a person edited is taken in as their
caption and never replaced (issue 23 A8).

`<project>/.lorawizard/caption-files.json` keeps, per image (its source, so a caption the dataset step moves to a new
number keeps its record): a hash of the caption file's bytes as written, a hash of the session's caption it was
written from (as the person's session.toml holds it: in replay, without that run's decisions), and whether that
caption was an unreviewed draft. The captions step and the Captions screen's load then read each caption file:

* it differs from what was written: a person's edit. Imported as their caption (`caption_auto` false), so it is never
  redrafted or overwritten; the file is only rewritten from it (the trigger first, one line).
* it is what was written and the session's caption has not changed since: the file still holds that caption (a
  replay never writes it into session.toml), taken again as it was: a draft stays a draft, a person's stays theirs.
* the session's caption changed since (an edit in the wizard): the session's caption is written.

A caption file without a record (put there by a person, or written before this record was kept) is imported
unless the session holds a caption of a person's for that image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lorawizard.core.captions.captionset import (
    MAX_IMPORT_BYTES,
    CaptionSet,
    Prepared,
    captions_not_written,
    compose,
    decode_caption,
    one_line,
    prepared_images,
    save_import_notes,
    strip_trigger,
)
from lorawizard.core.common.fsutil import atomic_write_json
from lorawizard.core.session.document import Session
from lorawizard.core.session.store import SessionStore, save_change

RECORD_FILE = "caption-files.json"  # in the project's .lorawizard/
VERSION = 1


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def caption_digest(caption: str | None, auto: bool = False) -> str | None:
    """A session caption as the record keeps it: its text and whether it is a draft (accepting one changes it)."""
    if caption is None:
        return None
    return digest(caption.encode("utf-8", "surrogatepass") + (b"\0auto" if auto else b""))


@dataclass(frozen=True)
class Written:
    """One caption file as lorawizard last left it."""

    file: str  # digest of its bytes
    session: str | None  # caption_digest of the session's caption it was written from (None: none)
    auto: bool  # that caption was an unreviewed draft


@dataclass
class WrittenRecord:
    dataset: str  # the dataset folder the record is about (another folder: no record)
    trigger: str  # the trigger word the files were written with
    entries: dict[str, Written] = field(default_factory=dict)  # source → its caption file


def load_record(session: Session) -> WrittenRecord | None:
    """The record for the session's dataset folder; None when there is none (or it is about another folder)."""
    try:
        data = json.loads((session.paths.state / RECORD_FILE).read_text(encoding="utf-8"))
        if data.get("dataset") != str(session.paths.dataset):
            return None
        entries = {
            str(source): Written(str(value[0]), None if value[1] is None else str(value[1]), bool(value[2]))
            for source, value in data["files"].items()
        }
        return WrittenRecord(str(data["dataset"]), str(data.get("trigger", "")), entries)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def save_record(session: Session, record: WrittenRecord) -> None:
    atomic_write_json(session.paths.state / RECORD_FILE, {
        "version": VERSION,
        "dataset": record.dataset,
        "trigger": record.trigger,
        "files": {source: [w.file, w.session, w.auto] for source, w in record.entries.items()},
    })


def session_captions(session: Session) -> dict[str, str | None]:
    """source → caption_digest of its caption in the session now (what `remember_written` records)."""
    out: dict[str, str | None] = {}
    for source, entry in session.images().items():
        caption = entry.get("caption")
        out[source] = None if caption is None else caption_digest(str(caption), bool(entry.get("caption_auto")))
    return out


def remember_written(session: Session, captions: CaptionSet, base: dict[str, str | None]) -> None:
    """After the caption files were written: what each holds now, and the session caption (`base`) it came from."""
    entries = {
        item.file: Written(digest(item.on_disk), base.get(item.file), item.auto)
        for item in captions.items
        if item.on_disk is not None
    }
    save_record(session, WrittenRecord(str(session.paths.dataset), one_line(captions.trigger), entries))


# ---------------------------------------------------------------- reading the files back


@dataclass
class HandEdits:
    captions: dict[str, tuple[str, bool]] = field(default_factory=dict)  # source → (body, auto) to take in
    taken: dict[str, tuple[str, bool]] = field(default_factory=dict)  # the same for every file read (changed or not)
    edited: list[str] = field(default_factory=list)  # sources whose caption file a person changed
    notes: dict[str, str] = field(default_factory=dict)  # source → what was odd about the file
    files: dict[str, str] = field(default_factory=dict)  # source → digest of its file as read (edited or taken)
    before: dict[str, str | None] = field(default_factory=dict)  # source → digest of the session's caption before
    contents: dict[Path, bytes | None] = field(default_factory=dict)  # caption files read (CaptionSet's on_disk)


Verdict = Literal["edited", "kept"]


def _verdict(data: bytes, written: Written | None, caption: str | None, auto: bool) -> Verdict | None:
    if written is None:  # no record: the person's file, unless the session holds a caption of the person's
        return None if caption is not None and not auto else "edited"
    if digest(data) != written.file:
        return "edited"
    if caption_digest(caption, auto) == written.session:
        return "kept"  # neither side changed: the file holds the caption (in replay, only the file does)
    return None  # the session's caption changed since: it is written


def _read(path: Path, contents: dict[Path, bytes | None]) -> bytes | None:
    """The caption file's bytes (its start, for a huge one); None when there is none or it cannot be read."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_IMPORT_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        contents[path] = None
        return None
    except OSError:
        return None
    if len(data) <= MAX_IMPORT_BYTES:
        contents[path] = data
    return data


def find_hand_edits(session: Session, images: Sequence[Prepared] | None = None) -> HandEdits:
    """The caption files in the dataset folder whose caption the session should take in (see the module's doc)."""
    record = load_record(session)
    entries = record.entries if record is not None else {}
    trigger = one_line(session.dataset.trigger)
    triggers = [t for t in dict.fromkeys([record.trigger if record else "", trigger]) if t]  # taken off a file's start
    existing = session.images()
    result = HandEdits()
    for prepared in images if images is not None else prepared_images(session):
        entry = existing.get(prepared.source, {})
        if not entry.get("skip"):
            _look_at(prepared, entry, entries.get(prepared.source), (trigger, triggers), result)
    return result


def _look_at(prepared: Prepared, entry: dict[str, Any], written: Written | None, triggers: tuple[str, list[str]],
             result: HandEdits) -> None:
    """One image's caption file: into `result` when the session should take it in (or note it as seen)."""
    path = prepared.output.with_suffix(".txt")
    data = _read(path, result.contents)
    if data is None:
        return
    caption = None if entry.get("caption") is None else str(entry.get("caption"))
    auto = bool(entry.get("caption_auto")) and caption is not None
    verdict = _verdict(data, written, caption, auto)
    if verdict is None:
        return
    source = prepared.source
    trigger, known_triggers = triggers  # the session's; and the one the files were written with too
    line = compose(trigger, caption)
    if data == (line + "\n").encode("utf-8") or (not line and not data.strip()):
        return  # the file says what the session says: nothing to take (most files, read once)
    decoded = decode_caption(data)
    body = decoded.text
    for known in known_triggers:
        body = strip_trigger(body, known)
    result.files[source] = digest(data)
    result.before[source] = caption_digest(caption, auto)
    if caption is not None and compose(trigger, body) == line:
        # the session says so already (e.g. a write cut short before the record was kept): only noted as seen
        result.taken[source] = (body, auto)
        return
    taken_auto = verdict == "kept" and written is not None and written.auto
    result.taken[source] = result.captions[source] = (body, taken_auto)
    if verdict == "edited":
        result.edited.append(source)
        if decoded.notes:
            result.notes[source] = f"{path.name}: " + "; ".join(decoded.notes)


def store_hand_edits(session: Session, edits: HandEdits, record: Callable[[str, Any], None] | None = None, *,
                     store: SessionStore | None = None, remember: bool = True) -> int:
    """Take the captions of `edits` into the session (replay: through `record`; else through the store, as
    `store_imports` does) and note the files as seen, so that the next run does not take them again over a newer
    edit in the wizard. Returns how many captions changed."""
    if record is not None:
        for file, (body, auto) in edits.captions.items():
            record(f"dataset.images:{file}", {"caption": body, "caption_auto": auto})
    elif edits.captions:
        changes = [(file, {"caption": body, "caption_auto": True if auto else None})
                   for file, (body, auto) in edits.captions.items()]
        save_change(session, lambda changed: changed.update_images(changes), store)
    save_import_notes(session, edits.notes)
    if remember and edits.files:
        _remember_seen(session, edits, user_session_changed=record is None)
    return len(edits.captions)


def _remember_seen(session: Session, edits: HandEdits, *, user_session_changed: bool) -> None:
    kept = load_record(session) or WrittenRecord(str(session.paths.dataset), one_line(session.dataset.trigger))
    for source, file in edits.files.items():
        body, auto = edits.taken[source]
        if source in edits.captions and user_session_changed:
            base = caption_digest(body, auto)  # the session holds the taken caption now
        else:  # the session said so already; or replay: the person's session.toml still says what it said
            base = edits.before.get(source)
        kept.entries[source] = Written(file, base, auto)
    save_record(session, kept)


# ---------------------------------------------------------------- before training


def files_before_training(session: Session) -> tuple[list[str], list[str]]:
    """The caption files training would read that differ from the session's captions, told apart: (stale, edited).
    Stale: written before the session's caption changed (a new trigger, an edit in the wizard): training would learn
    the old text. Edited: a person changed the file by hand since lorawizard wrote it: training reads what they wrote
    (the captions step takes it into session.toml), so it is said, not asked about."""
    differing = captions_not_written(session)
    if not differing:
        return [], []
    edited = set(find_hand_edits(session).edited)
    return [f for f in differing if f not in edited], [f for f in differing if f in edited]


def edited_files_line(files: list[str]) -> str:
    count = len(files)
    return (f"{count} caption file{'s' if count != 1 else ''} edited by hand (e.g. {files[0]}): training reads "
            f"{'them' if count != 1 else 'it'} as edited; the captions step (4) takes {'them' if count != 1 else 'it'} "
            "into session.toml")
