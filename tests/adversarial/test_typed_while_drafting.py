"""Issue 23 A9: a caption typed while drafting runs stays the person's, and Esc never stops drafting.

Seen twice in tmux: F5 "Draft missing", then typing into an image's editor before its draft arrived; the draft then
replaced the typed text and marked it `caption_auto = true`. And Esc, pressed to leave the editor while the header
read "auto-caption: starting · Esc stops", cancelled the whole drafting job without a word.

The captioner here is a stand-in for `core.autocaption.draft` driven by the test: the draft of each image is delivered
exactly when the test says so, after the person typed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from textual.widgets import TextArea

from lorawizard.core.captions import autocaption as ac
from lorawizard.core.contract import Cancelled
from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.captions import CaptionsScreen
from tests.support.captions_fixtures import make_project
from tests.support.waiting import pilot_until

TYPED = "typed by me while it drafted"


class ScriptedCaptioner:
    """`ac.draft` as the test drives it: each `deliver(file)` hands one draft to the wizard; it ends on `finish()` or
    when the wizard cancels (then Cancelled, as the real one)."""

    def __init__(self) -> None:
        self.wanted: list[str] = []
        self.cancel: threading.Event | None = None
        self._todo: list[str] = []
        self._wake = threading.Condition()
        self._finished = False

    def __call__(self, session: Session, images: list[tuple[str, Path]], *, on_draft: Any, cancel: threading.Event,
                 meter: Any = None, **_: Any) -> ac.DraftReport:
        self.wanted = [file for file, _ in images]
        self.cancel = cancel
        report = ac.DraftReport(device="cpu")
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._todo or self._finished or cancel.is_set(), timeout=0.05)
                todo, self._todo = self._todo, []
                finished = self._finished
            for file in todo:
                text = f"A draft of {file}."
                report.drafted[file] = text
                on_draft(file, text)
                if meter is not None:
                    meter.advance(1, file)
            if cancel.is_set():
                raise Cancelled()
            if finished and not todo:
                return report

    def deliver(self, *files: str) -> None:
        with self._wake:
            self._todo.extend(files)
            self._wake.notify_all()

    def finish(self) -> None:
        with self._wake:
            self._finished = True
            self._wake.notify_all()


async def test_a_caption_typed_while_drafting_stays_and_esc_in_the_editor_does_not_stop_drafting(
        isolated_home: Path, monkeypatch) -> None:
    project = isolated_home / "p"
    project.mkdir()
    make_project(project, ["a.jpg", "b.jpg", "c.jpg"], captions={"a.jpg": "mine already"}, trigger="tok")
    captioner = ScriptedCaptioner()
    monkeypatch.setattr(ac, "draft", captioner)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot_until(pilot, lambda: isinstance(app.screen, CaptionsScreen) and app.screen.captions is not None,
                          60, "the captions")
        screen = app.screen
        assert isinstance(screen, CaptionsScreen) and screen.captions is not None
        captions = screen.captions
        screen.start_drafting([1, 2])  # as the dialog's "Draft missing (2)" does
        await pilot_until(pilot, lambda: captioner.wanted == ["b.jpg", "c.jpg"], 60, "drafting to start")
        assert "F5 stops" in str(screen.query_one("#cap-header").render())

        await pilot.press("down", "enter")  # b.jpg, into its editor
        assert screen.current == 1 and isinstance(screen.focused, TextArea)
        await pilot.press(*TYPED)
        captioner.deliver("b.jpg", "c.jpg")  # b's draft arrives after the person typed
        await pilot_until(pilot, lambda: captions.items[2].auto, 60, "c's draft")
        await pilot.pause()
        assert captions.items[1].body == TYPED and not captions.items[1].auto  # what was typed stays, as theirs
        assert screen.editor.text == TYPED
        assert captions.items[2].body == "A draft of c.jpg." and captions.items[2].auto  # the others are drafted

        await pilot.press("escape")  # leaves the editor ...
        await pilot.pause()
        assert not isinstance(screen.focused, TextArea)
        assert screen.drafting and captioner.cancel is not None and not captioner.cancel.is_set()  # ... nothing else
        await pilot.press("escape")  # outside the editor too: drafting goes on, and the person is told how to stop it
        await pilot.pause()
        assert screen.drafting and not captioner.cancel.is_set()
        assert any("F5 stops it" in n.message for n in app._notifications)

        await pilot.press("f5")  # the stop key: said in one line
        await pilot_until(pilot, lambda: not screen.drafting, 60, "drafting to stop")
        stopped = [n.message for n in app._notifications if "auto-caption stopped" in n.message]
        assert stopped == ["auto-caption stopped: 1 draft kept · 1 caption you typed meanwhile kept"]
        await pilot.press("ctrl+q")
    saved = Session.load(project / "session.toml").images()
    assert saved["b.jpg"]["caption"] == TYPED and "caption_auto" not in saved["b.jpg"]
    assert saved["c.jpg"]["caption_auto"] is True and saved["a.jpg"]["caption"] == "mine already"


async def test_a_key_typed_a_moment_before_the_draft_arrives_counts(isolated_home: Path, monkeypatch) -> None:
    """The draft's message handled before the editor's Changed message: the editor's text is taken first."""
    from lorawizard.tui.screens.autocaption import _Drafted

    project = isolated_home / "p"
    project.mkdir()
    make_project(project, ["a.jpg", "b.jpg"], trigger="tok")
    captioner = ScriptedCaptioner()
    monkeypatch.setattr(ac, "draft", captioner)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot_until(pilot, lambda: isinstance(app.screen, CaptionsScreen) and app.screen.captions is not None,
                          60, "the captions")
        screen = app.screen
        assert isinstance(screen, CaptionsScreen) and screen.captions is not None
        screen.start_drafting([0, 1])
        await pilot_until(pilot, lambda: captioner.wanted == ["a.jpg", "b.jpg"], 60, "drafting to start")
        assert screen.current == 0
        screen.editor.insert("x")  # a key: the text is in the editor, its Changed message not handled yet
        screen.auto_captioner._drafted(_Drafted("a.jpg", "A draft of a.jpg.", {0, 1}))  # the draft's handler first
        await pilot.pause()
        assert screen.captions.items[0].body == "x" and not screen.captions.items[0].auto
        assert screen.editor.text == "x"
        captioner.finish()
        await pilot_until(pilot, lambda: not screen.drafting, 60, "drafting to end")
        await pilot.press("ctrl+q")
