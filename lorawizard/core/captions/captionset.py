"""The caption set: import sidecar captions, keep them in session.toml, write the files sd-scripts reads.

Where captions live
* session.toml `[[dataset.images]]` `caption` (keyed by `file`, the source path relative to dataset.source)
  holds the caption *body*; the trigger word (`dataset.trigger`) is kept apart and written first in every
  caption file, followed by ", " (sd-scripts' `keep_tokens = 1` keeps the first comma-separated token).
* `<paths.dataset>/<W>x<H>/<NNNN>.txt` beside each prepared image: one line, UTF-8, never empty — sd-scripts
  reads only the first line and fails on an empty caption file.

What sd-scripts does not notice
* It caches text-encoder outputs in `<stem>_flux_te.npz` and never checks them against the caption, so
  whenever an image's caption file changes its `_flux_te.npz` is deleted (and the folder's
  `metadata_cache.json`, which caches captions when `cache_info = true`). Unchanged captions keep theirs.

Everything here is plain Python (no Textual); the screen, the headless replay and the bench share it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorawizard.core.captions.tokens import TokenCounter, load_counter
from lorawizard.core.common.fsutil import atomic_write_bytes, atomic_write_json
from lorawizard.core.common.progress import ProgressMeter
from lorawizard.core.common.text import one_line as escaped
from lorawizard.core.dataset.manifest import MANIFEST_FILE, load_manifest
from lorawizard.core.dataset.scan import SIDECAR_EXTENSIONS
from lorawizard.core.profile import DEFAULT_FAMILY, family_for
from lorawizard.core.session.document import Session
from lorawizard.core.session.store import SessionStore, save_change

MAX_IMPORT_BYTES = 64 * 1024  # a caption is a sentence or three; a bigger file is a mistake, read its start
IMPORT_NOTES = "captions-import.json"  # in the project's .lorawizard/
TE_CACHE_SUFFIX = DEFAULT_FAMILY.backend.text_encoder_cache_suffix  # "_flux_te.npz"
METADATA_CACHE = "metadata_cache.json"
SEPARATORS = ",;:.!?"

# Status flags of one caption (a bit mask, so filtering 5,000 captions is one comparison each).
MISSING = 1  # no caption in the session
EMPTY = 2  # a caption that is blank
EDITED = 4  # the person changed the caption here and it is not in the caption file yet
OVER_CLIP = 8  # over the family's CLIP-L budget (77): CLIP cuts the rest off
OVER_T5 = 16  # over the family's T5 budget (512; schnell 256)
NO_TRIGGER = 32  # no trigger word is set
TRIGGER_TWICE = 64  # the trigger appears again after its place at the front
IMPORT_NOTE = 128  # the sidecar was not clean UTF-8, was cut, or had several lines
UNWRITTEN = 256  # what would be written differs from the caption file on disk (a missing one too)
AUTO = 512  # a captioner's draft nobody has reviewed yet (session: caption_auto = true)
REVIEWED = 1024  # a caption a person wrote, edited, imported or accepted
OVER = OVER_CLIP | OVER_T5

FILTERS: dict[str, tuple[str, int]] = {  # name → (label, mask); 0 = everything
    "all": ("all", 0),
    "missing": ("missing/empty", MISSING | EMPTY),
    "edited": ("edited", EDITED),
    "over": ("over budget", OVER),
    "trigger": ("trigger issues", NO_TRIGGER | TRIGGER_TWICE),
    "imported": ("import notes", IMPORT_NOTE),
    "auto": ("auto drafts", AUTO),
    "reviewed": ("reviewed", REVIEWED),
}


# ---------------------------------------------------------------- text rules


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\u200b\ufeff]")


def one_line(text: str) -> str:
    """Any caption → one line: lines are joined with ", " (or " " after punctuation), whitespace collapsed."""
    out = ""
    for raw in _CONTROL.sub("", text).splitlines():
        part = " ".join(raw.split())
        if not part:
            continue
        if not out:
            out = part
        elif out[-1] in SEPARATORS:
            out += " " + part
        else:
            out += ", " + part
    return out


def _trigger_re(trigger: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)", re.IGNORECASE)


def starts_with_trigger(body: str, trigger: str) -> bool:
    if not trigger or not body.startswith(trigger):
        return False
    rest = body[len(trigger) :]
    return rest == "" or rest[0] in SEPARATORS or rest[0].isspace()


def strip_trigger(body: str, trigger: str) -> str:
    """The body without a leading trigger and the separator after it (imported captions often have one)."""
    if not starts_with_trigger(body, trigger):
        return body
    return body[len(trigger) :].lstrip(SEPARATORS + " \t")


def compose(trigger: str, body: str | None) -> str:
    """The one line written to the caption file: the trigger first, then the body."""
    text = one_line(body or "")
    trigger = one_line(trigger)
    if not trigger or starts_with_trigger(text, trigger):
        return text
    return f"{trigger}, {text}" if text else trigger


# ---------------------------------------------------------------- reading sidecar files


@dataclass(frozen=True)
class Decoded:
    text: str
    notes: tuple[str, ...] = ()


def decode_caption(data: bytes, *, limit: int = MAX_IMPORT_BYTES) -> Decoded:
    """Bytes of a caption file → text. Never raises: non-UTF-8 falls back to cp1252/latin-1 and says so."""
    notes: list[str] = []
    size = len(data)
    if size > limit:
        data = data[:limit]
        notes.append(f"file is {size:,} bytes: only the first {limit // 1024} KB were read")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
        notes.append("decoded as UTF-16 (written back as UTF-8)")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            if size > limit and exc.start >= len(data) - 3:  # the cut split a character: drop the partial one
                text = data[: exc.start].decode("utf-8-sig", errors="replace")
            else:
                try:
                    text, encoding = data.decode("cp1252"), "cp1252"
                except UnicodeDecodeError:
                    text, encoding = data.decode("latin-1"), "latin-1"
                notes.append(f"not UTF-8: decoded as {encoding}, check accented letters")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        notes.append(f"{len(lines)} lines joined into one (sd-scripts reads only the first line)")
    if not lines:
        notes.append("the file was empty")
    return Decoded(one_line(text), tuple(notes))


def find_sidecar(source_root: Path, source: str) -> Path | None:
    """`sub/a.jpg` → `<source_root>/sub/a.txt` or `a.caption` (or `a.jpg.txt`), the first that exists."""
    original = source_root / source
    for candidate in (
        *(original.with_suffix(ext) for ext in SIDECAR_EXTENSIONS),
        *(original.with_name(original.name + ext) for ext in SIDECAR_EXTENSIONS),
    ):
        if candidate.is_file():
            return candidate
    return None


def read_sidecar(path: Path) -> Decoded:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_IMPORT_BYTES + 1)
            size = path.stat().st_size
    except OSError as exc:
        return Decoded("", (f"cannot read {path.name}: {exc.strerror or exc}",))
    decoded = decode_caption(data, limit=MAX_IMPORT_BYTES)
    if size > MAX_IMPORT_BYTES:  # decode_caption saw only limit+1 bytes: name the real size
        notes = tuple(
            f"file is {size:,} bytes: only the first {MAX_IMPORT_BYTES // 1024} KB were read" if n.startswith("file is ") else n
            for n in decoded.notes
        )
        decoded = Decoded(decoded.text, notes)
    return decoded


# ---------------------------------------------------------------- the prepared images


@dataclass(frozen=True)
class Prepared:
    output: Path  # absolute path of the prepared PNG
    source: str  # the original, relative to dataset.source (the session key)


def captions_not_written(session: Session) -> list[str]:
    """The images whose caption file differs from their caption as it is now (edited, drafted or a new trigger since
    the files were written): training reads the files, so it would learn the old text. Reads every caption file;
    images without a caption in the session are left to the captions step (it says what it does with them)."""
    from lorawizard.core.captions.tokens import estimate_counter

    captions = CaptionSet.from_session(session, counter=estimate_counter())

    def differs(item: Caption) -> bool:  # the text the trainer reads (a final newline or not is the same caption)
        on_disk = "" if item.on_disk is None else item.on_disk.decode("utf-8", errors="replace").strip()
        return on_disk != item.line.strip()  # no file and an empty one read alike

    return [item.file for item in captions.items if not item.flags & MISSING and differs(item)]


def stale_captions_line(files: list[str]) -> str:
    """One line for `captions_not_written`'s answer (the Train screen's question, replay's warning)."""
    count = len(files)
    return (f"{count} caption file{'s' if count != 1 else ''} differ{'s' if count == 1 else ''} from the "
            f"caption{'s' if count != 1 else ''} in session.toml (e.g. {escaped(files[0])}): training reads the files, "
            "so it would learn the old text; the captions step writes them (4, Ctrl+G)")


def prepared_images(session: Session) -> list[Prepared]:
    """What the dataset step prepared, in manifest order ([] before the dataset step has run)."""
    return [Prepared(image.output, image.source) for image in load_manifest(session)]


# ---------------------------------------------------------------- the caption set


@dataclass
class Caption:
    file: str  # session key: source path relative to dataset.source
    output: Path  # the prepared image
    body: str | None  # caption from the session; None = missing
    on_disk: bytes | None = None  # the caption file as it is now (None: no file)
    base: str | None = field(default=None, repr=False)  # the body before the person's edits (see `settle`)
    note: str = ""  # import notes, for people
    auto: bool = False  # the body is a captioner's draft nobody reviewed yet
    line: str = ""  # what would be written (trigger first, one line)
    clip: int = 0
    t5: int = 0
    flags: int = 0

    def __post_init__(self) -> None:
        if self.base is None:
            self.base = self.body

    @property
    def name(self) -> str:
        return Path(self.file).name

    def settle(self, trigger: str) -> None:
        """Take the caption file's body as the unedited one (the body as loaded where no file is readable).

        "edited" then counts what the person changed, not each caption that has no file yet (a fresh
        project of 1,500 images is not "edited 1500").
        """
        written = _body_in_file(self.on_disk, trigger)
        self.base = self.body if written is None else written

    @property
    def txt_path(self) -> Path:
        return self.output.with_suffix(".txt")

    @property
    def te_cache(self) -> Path:
        return self.output.with_name(self.output.stem + TE_CACHE_SUFFIX)

    @property
    def wanted_bytes(self) -> bytes | None:
        """The caption file's content, or None when no file should exist (nothing to write)."""
        return (self.line + "\n").encode("utf-8") if self.line else None


@dataclass
class BulkPlan:
    """A bulk change, computed but not applied: how many captions change and a few examples."""

    description: str
    changes: dict[int, tuple[str | None, str]]  # index → (old body, new body)
    scope: int  # captions looked at
    error: str | None = None

    def examples(self, count: int = 3) -> list[tuple[str, str]]:
        return [(old or "", new) for old, new in list(self.changes.values())[:count]]


@dataclass
class Undo:
    description: str
    changes: dict[int, tuple[str | None, str | None]]  # index → (body before, body the bulk change set)
    # index → its auto mark before (a captioner's overwrite: undoing it gives back a person's caption, not a draft)
    auto_before: dict[int, bool] = field(default_factory=dict)


@dataclass
class BulkResult:
    """A bulk change or its undo, computed (`CaptionSet.prepare`, `prepare_undo`) but not applied (`commit`)."""

    description: str
    undoing: Undo | None  # the bulk change this reverts (None: a new bulk change)
    changes: dict[int, tuple[str | None, str | None]]  # index → (body it expects, body it sets)
    derived: dict[int, tuple[str, int, int, int]]  # index → (line, clip, t5, flags) with the body it sets
    inputs: dict[int, tuple[Any, ...]]  # index → what else `derived` was computed from (see _inputs)
    trigger: str


def _inputs(item: Caption) -> tuple[Any, ...]:
    """What a caption's flags depend on besides its body and the trigger."""
    return (item.auto, item.on_disk, item.base, item.note)


@dataclass
class CaptionSet:
    """All captions of the prepared images, their token counts and flags, bulk edits with undo."""

    items: list[Caption]
    trigger: str
    counter: TokenCounter
    captionless: bool = False
    undo_stack: list[Undo] = field(default_factory=list)
    # filter rows and counts, derived from the flags only: valid until the next `refresh` (flags change there)
    _derived: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- building

    @classmethod
    def from_session(
        cls, session: Session, *, counter: TokenCounter | None = None, read_disk: bool = True,
        on_disk: Mapping[Path, bytes | None] | None = None,
    ) -> CaptionSet:
        """`on_disk`: caption files (by path) read a moment ago (find_hand_edits' `contents`), not read again."""
        images = session.images()
        notes = load_import_notes(session)
        items: list[Caption] = []
        for prepared in prepared_images(session):
            entry = images.get(prepared.source, {})
            if entry.get("skip"):
                continue
            body = entry.get("caption")
            items.append(Caption(prepared.source, prepared.output, None if body is None else str(body),
                                 note=notes.get(prepared.source, ""), auto=bool(entry.get("caption_auto")) and body is not None))
        trigger = session.dataset.trigger
        if read_disk:
            known = on_disk or {}
            for item in items:
                path = item.txt_path
                item.on_disk = known[path] if path in known else _read_bytes(path)
                item.settle(trigger)
        captions = cls(
            items,
            trigger,
            counter or load_counter(session.paths.tokenizers, family_for(session)),
            session.dataset.captionless,
        )
        captions.refresh()
        return captions

    def refresh(self, indices: Iterable[int] | None = None) -> None:
        """Recompute line, token counts and flags (of `indices`, or of everything)."""
        chosen = range(len(self.items)) if indices is None else list(indices)
        derived = self.derive(chosen, [self.items[i].body for i in chosen])
        changed = False
        for i, (line, clip, t5, flags) in zip(chosen, derived, strict=True):
            item = self.items[i]
            item.line, item.clip, item.t5 = line, clip, t5
            changed = changed or flags != item.flags
            item.flags = flags
        if changed:  # typing mostly keeps a caption's flags: the filter rows and counts stay valid then
            self._derived.clear()

    def derive(self, indices: Sequence[int], bodies: Sequence[str | None]) -> list[tuple[str, int, int, int]]:
        """(line, CLIP tokens, T5 tokens, flags) of the captions at `indices` if their bodies were `bodies`.

        Reads the set and changes nothing (token counts are cached by the counter), so a worker thread can
        compute a bulk change's results while the UI thread keeps using the set.
        """
        trigger = one_line(self.trigger)
        finder = _trigger_re(trigger) if trigger else None
        lines = [compose(trigger, body) for body in bodies]
        counts = self.counter.count_many(lines)
        out = []
        for i, body, line, (clip, t5) in zip(indices, bodies, lines, counts, strict=True):
            item = self.items[i]
            flags = 0
            flat = None if body is None else one_line(body)
            if body is None:
                flags |= MISSING
            elif not flat:
                flags |= EMPTY
            if ((line + "\n").encode("utf-8") if line else None) != item.on_disk:
                flags |= UNWRITTEN
                if not item.auto and (flat or "") != one_line(item.base or ""):
                    flags |= EDITED  # a captioner's draft is not the person's edit: it counts as auto
            over_clip, over_t5 = self.counter.over(clip, t5)
            if over_clip:
                flags |= OVER_CLIP
            if over_t5:
                flags |= OVER_T5
            if finder is None:
                flags |= NO_TRIGGER
            elif len(finder.findall(line)) > 1:
                flags |= TRIGGER_TWICE
            if item.note:
                flags |= IMPORT_NOTE
            if not flags & (MISSING | EMPTY):
                flags |= AUTO if item.auto else REVIEWED
            out.append((line, clip, t5, flags))
        return out

    def read_disk(self) -> list[bytes | None]:
        """The caption files as they are now (slow part of `sync_disk`; safe in a worker thread)."""
        return [_read_bytes(item.txt_path) for item in self.items]

    def sync_disk(self, contents: list[bytes | None] | None = None) -> None:
        """Take the caption files' current content (e.g. after the step wrote them) and refresh the flags."""
        contents = self.read_disk() if contents is None else contents
        for item, content in zip(self.items, contents, strict=True):
            item.on_disk = content
            item.settle(self.trigger)
        self.refresh()

    # -- reading

    def __len__(self) -> int:
        return len(self.items)

    def filtered(self, name: str = "all") -> list[int]:
        key = ("filtered", name, len(self.items))
        rows = self._derived.get(key)
        if rows is None:
            mask = FILTERS[name][1]
            if not mask:
                rows = list(range(len(self.items)))
            else:
                rows = [i for i, item in enumerate(self.items) if item.flags & mask]
            self._derived[key] = rows
        return list(rows)

    def counts(self) -> dict[str, int]:
        key = ("counts", len(self.items))
        cached = self._derived.get(key)
        if cached is None:
            cached = self._derived[key] = self._count()
        return dict(cached)

    def _count(self) -> dict[str, int]:
        result = dict.fromkeys(FILTERS, 0)
        result["all"] = len(self.items)
        # a handful of distinct flag combinations, however many captions: count those, then the filters
        for flags, count in Counter(item.flags for item in self.items).items():
            for name, (_, mask) in FILTERS.items():
                if mask and flags & mask:
                    result[name] += count
        return result

    def uncaptioned(self) -> list[Caption]:
        return [item for item in self.items if item.flags & (MISSING | EMPTY)]

    # -- editing

    def set_body(self, index: int, body: str | None, *, auto: bool = False) -> bool:
        """A person's edit (the caption counts as reviewed from then on), or a captioner's draft (`auto`)."""
        item = self.items[index]
        if item.body == body and item.auto == auto:
            return False
        item.body = body
        item.auto = auto and body is not None
        self.refresh([index])
        return True

    def is_persons(self, index: int) -> bool:
        """A caption a person wrote, edited, imported or accepted: a captioner never replaces it unasked."""
        item = self.items[index]
        return bool(item.body and one_line(item.body)) and not item.auto

    def record_overwrite(self, description: str, before: dict[int, tuple[str | None, bool]]) -> int:
        """Make a captioner's overwrite undoable (F4) like a bulk change: `before` is each caption's (body, auto)
        before drafting began. Returns how many captions it replaced (0: nothing pushed)."""
        replaced = {i: (body, self.items[i].body) for i, (body, _) in before.items() if self.items[i].body != body}
        if replaced:
            self.undo_stack.append(Undo(description, replaced, {i: before[i][1] for i in replaced}))
            del self.undo_stack[:-20]
        return len(replaced)

    def accept(self, indices: Iterable[int] | None = None) -> list[int]:
        """Mark auto drafts as reviewed (all of them, or those of `indices`). Returns the changed indices."""
        chosen = range(len(self.items)) if indices is None else indices
        changed = [i for i in chosen if self.items[i].auto]
        for i in changed:
            self.items[i].auto = False
        self.refresh(changed)
        return changed

    def count_for_trigger(self, trigger: str) -> None:
        """Count every caption's tokens as they would be under `trigger`, into the counter's cache (reads only:
        safe in a worker), so that `set_trigger(trigger)` afterwards only looks them up."""
        trigger = one_line(trigger)
        self.counter.count_many([compose(trigger, item.body) for item in self.items])

    def set_trigger(self, trigger: str) -> None:
        if trigger != self.trigger:
            self.trigger = trigger
            self.refresh()

    def plan_replace(self, find: str, replace: str, *, regex: bool = False, indices: Sequence[int] | None = None) -> BulkPlan:
        scope = list(range(len(self.items)) if indices is None else indices)
        what = f"replace {'regex ' if regex else ''}{find!r} with {replace!r}"
        if not find:
            return BulkPlan(what, {}, len(scope), "type what to find")
        if regex:
            try:
                pattern = re.compile(find)
                pattern.sub(replace, "")  # a bad group reference shows up here, not mid-way
            except (re.error, IndexError) as exc:
                return BulkPlan(what, {}, len(scope), f"not a valid regular expression: {exc}")

            def change(text: str) -> str:
                return pattern.sub(replace, text)
        else:

            def change(text: str) -> str:
                return text.replace(find, replace)

        changes: dict[int, tuple[str | None, str]] = {}
        for i in scope:
            old = self.items[i].body
            if old is None:
                continue
            try:
                new = change(old)
            except (re.error, IndexError) as exc:
                return BulkPlan(what, {}, len(scope), f"cannot replace: {exc}")
            if new != old:
                changes[i] = (old, new)
        return BulkPlan(what, changes, len(scope))

    def plan_affix(self, prefix: str, suffix: str, *, indices: Sequence[int] | None = None) -> BulkPlan:
        """Add text before and/or after every caption that does not already start/end with it."""
        scope = list(range(len(self.items)) if indices is None else indices)
        what = f"add prefix {prefix!r} / suffix {suffix!r}"
        if not prefix and not suffix:
            return BulkPlan(what, {}, len(scope), "type a prefix or a suffix")
        changes: dict[int, tuple[str | None, str]] = {}
        for i in scope:
            old = self.items[i].body
            if old is None:
                continue
            new = old
            if prefix and not new.startswith(prefix):
                new = prefix + new
            if suffix and not new.endswith(suffix):
                new = new + suffix
            if new != old:
                changes[i] = (old, new)
        return BulkPlan(what, changes, len(scope))

    def apply(self, plan: BulkPlan) -> list[int]:
        """Apply a plan; it becomes the bulk change that `undo` reverts. Returns the changed indices."""
        if plan.error or not plan.changes:
            return []
        return self.commit(self.prepare(plan))[0]

    def undo(self) -> tuple[Undo | None, list[int], int]:
        """Revert the last bulk change. Captions edited by hand since then keep the hand edit.

        Returns (what was undone or None, restored indices, how many were kept because they changed since).
        """
        result = self.prepare_undo()
        if result is None:
            return None, [], 0
        restored, kept = self.commit(result)
        return result.undoing, restored, kept

    # A bulk change in two halves: `prepare` (or `prepare_undo`) does the slow part (new lines, token counts, flags)
    # and only reads the set, so a worker thread runs it while the UI thread goes on; `commit`, on the UI thread,
    # sets what was computed in one pass. A caption changed in between (typed, drafted) keeps that change.

    def prepare(self, plan: BulkPlan) -> BulkResult:
        """`plan` computed but not applied (thread-safe: reads only). `commit` applies it."""
        changes: dict[int, tuple[str | None, str | None]] = {} if plan.error else dict(plan.changes)
        return self._prepare(plan.description, None, changes)

    def prepare_undo(self) -> BulkResult | None:
        """The last bulk change's undo, computed but not applied (None: nothing to undo). Thread-safe: reads only."""
        if not self.undo_stack:
            return None
        last = self.undo_stack[-1]
        changes: dict[int, tuple[str | None, str | None]] = {
            i: (new, old) for i, (old, new) in last.changes.items() if self.items[i].body == new
        }
        return self._prepare(last.description, last, changes)

    def _prepare(self, description: str, undoing: Undo | None,
                 changes: dict[int, tuple[str | None, str | None]]) -> BulkResult:
        indices = list(changes)
        inputs = [_inputs(self.items[i]) for i in indices]  # before deriving: a change meanwhile is then seen
        derived = self.derive(indices, [changes[i][1] for i in indices])
        return BulkResult(description, undoing, changes, dict(zip(indices, derived, strict=True)),
                          dict(zip(indices, inputs, strict=True)), self.trigger)

    def pending(self, result: BulkResult) -> list[int]:
        """The captions of `result` that `commit` would change now (their body is still the one it expects)."""
        return [i for i, (expected, _) in result.changes.items() if self.items[i].body == expected]

    def commit(self, result: BulkResult) -> tuple[list[int], int]:
        """Apply a prepared bulk change (or undo): one pass over the captions it changes, no recount.

        A caption whose body changed since `prepare` keeps it; one whose other inputs changed (its file written,
        its draft accepted, a new trigger) is recounted here. Returns (changed indices, how many were kept).
        """
        applied: list[int] = []
        stale: list[int] = []
        same_trigger = result.trigger == self.trigger
        flags_changed = False
        for i, (expected, body) in result.changes.items():
            item = self.items[i]
            if item.body != expected:
                continue
            item.body = body
            if result.undoing is not None and i in result.undoing.auto_before:
                item.auto = result.undoing.auto_before[i] and body is not None  # recounted below: an input changed
            applied.append(i)
            if same_trigger and _inputs(item) == result.inputs[i]:
                item.line, item.clip, item.t5, flags = result.derived[i]
                flags_changed = flags_changed or flags != item.flags
                item.flags = flags
            else:
                stale.append(i)
        if flags_changed:
            self._derived.clear()
        if stale:
            self.refresh(stale)
        if result.undoing is None:
            kept = len(result.changes) - len(applied)
            if applied:
                self.undo_stack.append(Undo(result.description, {i: result.changes[i] for i in applied}))
                del self.undo_stack[:-20]
        else:
            kept = len(result.undoing.changes) - len(applied)
            if self.undo_stack and self.undo_stack[-1] is result.undoing:
                self.undo_stack.pop()
        return applied, kept

    def session_changes_for(self, result: BulkResult) -> list[tuple[str, dict[str, Any]]]:
        """`Session.update_images` input for what `commit(result)` would set now (thread-safe: reads only).

        Call it under the SessionStore's lock: an edit typed meanwhile then waits for the lock (queued) and lands
        after it, so the session ends with the newest text either way.
        """
        changes = []
        restored = result.undoing.auto_before if result.undoing is not None else {}
        for i in self.pending(result):
            body = result.changes[i][1]
            item = self.items[i]
            auto = True if restored.get(i, item.auto) and body is not None else None
            changes.append((item.file, {"caption": None if body is None else toml_string(body), "caption_auto": auto}))
        return changes

    def session_changes(self, indices: Iterable[int]) -> list[tuple[str, dict[str, Any]]]:
        """`Session.update_images` input for these captions (None removes a caption)."""
        changes = []
        for i in indices:
            body = self.items[i].body
            auto = True if self.items[i].auto and body is not None else None  # None removes the mark
            changes.append((self.items[i].file, {"caption": None if body is None else toml_string(body), "caption_auto": auto}))
        return changes


_TOML_ESCAPES = {code: f"\\u{code:04x}" for code in [*range(0x20), 0x7F]}
_TOML_ESCAPES.update({ord("\\"): "\\\\", ord('"'): '\\"', 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"})


def toml_string(text: str) -> Any:
    """`text` as a ready tomlkit string item (a str subclass).

    tomlkit escapes each plain str it is given with a slow generic routine (about 0.2 ms a caption, most
    of a 5,000-caption bulk edit); a TOML basic string needs only these escapes.
    """
    from tomlkit.items import String, StringType, Trivia

    return String(StringType.SLB, text, text.translate(_TOML_ESCAPES), Trivia())


def _body_in_file(content: bytes | None, trigger: str) -> str | None:
    """The caption body a caption file holds (its first line, the trigger taken off); None if unreadable."""
    if content is None:
        return None
    try:
        line = content.decode("utf-8").split("\n", 1)[0].strip()
    except UnicodeDecodeError:
        return None
    trigger = one_line(trigger)
    return "" if line == trigger else strip_trigger(line, trigger)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return b"\x00unreadable"  # differs from anything we write: it will be rewritten


# ---------------------------------------------------------------- import


@dataclass
class ImportResult:
    captions: dict[str, str]  # file → imported body
    notes: dict[str, str]  # file → what was odd about its sidecar


def find_imports(session: Session, images: Sequence[Prepared] | None = None) -> ImportResult:
    """Sidecar captions next to the originals, for the images that have no caption in the session yet."""
    source = session.resolve(session.dataset.source)
    result = ImportResult({}, {})
    if source is None:
        return result
    existing = session.images()
    trigger = one_line(session.dataset.trigger)
    known = manifest_sidecars(session.paths.dataset)
    for prepared in images if images is not None else prepared_images(session):
        if existing.get(prepared.source, {}).get("caption") is not None:
            continue  # never overwrite a caption the session already has
        if prepared.source in known:  # the dataset step decided (it also refuses ambiguous sidecars)
            sidecar = known[prepared.source]
            path = source / sidecar if sidecar and (source / sidecar).is_file() else None
        else:
            path = find_sidecar(source, prepared.source)
        if path is None:
            continue
        decoded = read_sidecar(path)
        result.captions[prepared.source] = strip_trigger(decoded.text, trigger)
        if decoded.notes:
            result.notes[prepared.source] = f"{path.name}: " + "; ".join(decoded.notes)
    return result


def manifest_sidecars(dataset: Path) -> dict[str, str | None]:
    """source → its sidecar (relative to dataset.source, or None) for manifest records that name one."""
    try:
        data = json.loads((dataset / MANIFEST_FILE).read_text(encoding="utf-8"))
        records = data["images"]
        return {str(r["source"]): (str(r["sidecar"]) if r["sidecar"] else None) for r in records if "sidecar" in r}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def load_import_notes(session: Session) -> dict[str, str]:
    try:
        data = json.loads((session.paths.state / IMPORT_NOTES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_import_notes(session: Session, notes: dict[str, str]) -> None:
    if notes:
        merged = {**load_import_notes(session), **notes}
        atomic_write_json(session.paths.state / IMPORT_NOTES, merged)


def store_imports(session: Session, result: ImportResult, record: Callable[[str, Any], None] | None = None, *,
                  store: SessionStore | None = None) -> int:
    """Put imported captions into the session: through `record` (replay), else as one change through the store (the
    wizard's `store`; without one, written now), which keeps a hand edit made to session.toml meanwhile."""
    if not result.captions:
        return 0
    if record is not None:
        for file, body in result.captions.items():
            record(f"dataset.images:{file}", {"caption": body})
    else:
        changes = [(file, {"caption": body}) for file, body in result.captions.items()]  # a list: made again on a hand edit
        save_change(session, lambda changed: changed.update_images(changes), store)
    save_import_notes(session, result.notes)
    return len(result.captions)


# ---------------------------------------------------------------- writing


@dataclass
class WriteReport:
    written: list[Path] = field(default_factory=list)
    unchanged: int = 0
    removed: list[Path] = field(default_factory=list)  # stale caption files of images that now have none
    caches_deleted: list[Path] = field(default_factory=list)
    missing_images: list[Path] = field(default_factory=list)  # prepared images that are gone (nothing written)


WRITE_THREADS = 16  # fsync dominates writing thousands of small files; parallel fsyncs overlap


def write_captions(
    captions: CaptionSet,
    *,
    dry_run: bool = False,
    progress: ProgressMeter | None = None,
    check_cancelled: Callable[[], None] = lambda: None,
) -> WriteReport:
    """Write each caption file that differs from the wanted line; delete TE caches of exactly those images.

    Each change deletes the image's `_flux_te.npz` *before* its caption file is replaced, so stopping at any
    moment never leaves a cache next to a caption it was not computed from. Files are written atomically
    (core.fsutil) by a small thread pool.
    """
    report = WriteReport()
    jobs: list[tuple[Caption, bytes | None]] = []
    for item in captions.items:
        check_cancelled()
        if not item.output.is_file():
            report.missing_images.append(item.output)
            continue
        wanted = item.wanted_bytes
        current = _read_bytes(item.txt_path)
        item.on_disk = current
        if wanted == current:
            report.unchanged += 1
            if progress is not None:
                progress.advance(1, item.name)
            continue
        (report.removed if wanted is None else report.written).append(item.txt_path)
        if item.te_cache.exists():
            report.caches_deleted.append(item.te_cache)
        jobs.append((item, wanted))
    for folder in sorted({item.output.parent for item, _ in jobs}):
        metadata = folder / METADATA_CACHE  # sd-scripts' cache_info file caches captions too
        if metadata.exists():
            report.caches_deleted.append(metadata)
            if not dry_run:
                metadata.unlink(missing_ok=True)
    if dry_run:
        if progress is not None:
            progress.advance(len(jobs))
        return report

    def apply(job: tuple[Caption, bytes | None]) -> Caption:
        item, wanted = job
        item.te_cache.unlink(missing_ok=True)
        if wanted is None:  # nothing to write: a stale or empty file would mislead sd-scripts
            item.txt_path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(item.txt_path, wanted)
        item.on_disk, item.base = wanted, item.body
        return item

    with ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="captions-write") as pool:
        futures = [pool.submit(apply, job) for job in jobs]
        try:
            for future in as_completed(futures):
                item = future.result()
                if progress is not None:
                    progress.advance(1, item.name)
                check_cancelled()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    captions.refresh()
    return report
