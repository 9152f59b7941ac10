"""Writing a test's session.toml the way lorawizard writes it: through the store (Session itself has no public save).

    session = Session.new(project / "session.toml"); session.set(...); save(session)
"""

from __future__ import annotations

from pathlib import Path

from lorawizard.core.session.document import Session
from lorawizard.core.session.store import save_now


def save(session: Session) -> bool:
    """Write `session` as it stands now (a short-lived store; a hand edit on disk is merged). Whether the file was
    written (False: nothing changed); SessionError with the one-line problem, as the store words it."""
    return save_now(session, lambda _session: None)


HAND_NOTE = "# set by hand while the wizard was open"
HAND_TAGS = ["by-hand"]  # publish.tags: no step touches it


def edit_by_hand(path: Path) -> None:
    """What a person does in an editor while the wizard has `path` open: a comment and a new [publish] table."""
    text = path.read_text(encoding="utf-8")
    path.write_text(f'{text.rstrip()}\n\n{HAND_NOTE}\n[publish]\ntags = ["{HAND_TAGS[0]}"]\n', encoding="utf-8")


def assert_hand_edit_kept(path: Path) -> Session:
    """The file still holds `edit_by_hand`'s edit; returns it, read again."""
    saved = Session.load(path)
    assert HAND_NOTE in path.read_text(encoding="utf-8") and saved.get("publish.tags") == HAND_TAGS
    return saved
