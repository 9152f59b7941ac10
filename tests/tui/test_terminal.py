"""The terminal's replies: asked after the first frame, parsed into a renderer, never typed into a widget."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest
from textual import events

from lorawizard.tui import terminal
from lorawizard.tui.terminal import ProbeResult, ReplyCollector, _textual_parser_class, parse_replies
from tests.support.pty_terminal import PtyTerminal

TGP_OK = "\x1b_Gi=31;OK\x1b\\"


def test_replies_choose_the_renderer_like_textual_image() -> None:
    assert parse_replies("\x1b[?62;4;22c").renderer == "sixel"
    assert parse_replies(TGP_OK + "\x1b[?62;22c").renderer == "tgp"
    assert parse_replies("\x1b[?1;2c").renderer == "halfcell"  # tmux
    silent = parse_replies("")
    assert silent.renderer == "halfcell" and not silent.answered


def test_cell_size_from_the_report_or_the_ioctl() -> None:
    assert parse_replies("\x1b[6;18;9t\x1b[?1;2c").cell_size == (9, 18)
    assert parse_replies("\x1b[?1;2c", (8, 16)).cell_size == (8, 16)
    assert parse_replies("\x1b[?1;2c").cell_size == (10, 20)


def _keys(chunks: list[str]) -> list[str]:
    parser = _textual_parser_class()()
    keys: list[str] = []
    for chunk in chunks:
        keys += [event.key for event in parser.feed(chunk) if isinstance(event, events.Key)]
    return keys


def test_the_parser_hands_the_replies_it_drops_to_the_collector() -> None:
    answers: list[ProbeResult] = []
    terminal.listen(ReplyCollector(answers.append, (8, 16)))
    try:
        assert _keys(["a", TGP_OK, "\x1b[?62", ";4;22c", "b"]) == ["a", "b"]  # DA1 split across reads
        assert _keys(["\x1b[?1;2c"]) == []  # a second answer: dropped, not collected again
    finally:
        terminal.listen(None)
    assert answers == [ProbeResult("sixel", (8, 16))]


def test_no_da1_in_time_decides_from_what_came() -> None:
    answers: list[ProbeResult] = []
    collector = ReplyCollector(answers.append)
    collector.add(TGP_OK)
    collector.give_up()
    collector.add("\x1b[?1;2c")  # too late: the answer was given
    assert answers == [ProbeResult("tgp", (10, 20), answered=False)]


@pytest.mark.parametrize("chunks", [
    ["\x1b[?1;2c"],  # a whole DA1 reply in one read
    ["\x1b[?1", ";2c"],  # split across reads
    ["\x1b", "[", "?", "1", ";", "2", "c"],  # one byte at a time
    ["\x1b[6;20;10t", "\x1b[?62;4c"],  # cell size report, then sixel DA1
    [TGP_OK],
])
def test_late_terminal_replies_are_not_keys(chunks: list[str]) -> None:
    assert _keys([*chunks, "4"]) == ["4"]


def test_real_keys_still_parse() -> None:
    assert _keys(["a", "\x1b[A", "\x1b[1;5C", "5"]) == ["a", "up", "ctrl+right", "5"]


@pytest.mark.parametrize("chunks", [
    ["\x1b[31mred\x1b[0m"],  # a coloured word pasted (not bracketed): issue 23, the `1` of `[31m` switched steps
    ["\x1b[", "3", "1", "m", "red", "\x1b[0", "m"],  # the same, a byte or two per read
    ["\x1b[1;38;5;208mred\x1b[m"],  # 256 colours, a reset without parameters
])
def test_colour_codes_in_a_paste_are_not_keys(chunks: list[str]) -> None:
    assert _keys(chunks) == ["r", "e", "d"]


def test_mouse_and_mode_reports_still_reach_the_parser() -> None:
    parser = _textual_parser_class()()
    got = list(parser.feed("\x1b[<0;10;5M\x1b[<0;10;5m"))
    assert [type(event).__name__ for event in got] == ["MouseDown", "MouseUp"]


# -- the real app in a real pty: a step key pressed at once, for every --images mode (started side by side)

MODES = ("auto", "halfcell", "unicode", "sixel", "tgp")


def _linger(terms: dict[str, PtyTerminal], seconds: float) -> None:
    for term in terms.values():
        term.linger(seconds / len(terms))


@pytest.mark.skipif(sys.platform == "win32", reason="pty")
def test_a_step_key_pressed_at_once_goes_to_the_app_and_no_reply_is_typed(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), TERM="xterm-256color",
               TEXTUAL_ANIMATIONS="none")
    terms: dict[str, PtyTerminal] = {}
    try:
        for mode in MODES:
            project = tmp_path / mode
            (project / "photos").mkdir(parents=True)
            argv = [sys.executable, "-m", "lorawizard", str(project), "--images", mode]
            # cwd: not the repo, as `-m` puts the working folder first on sys.path
            terms[mode] = PtyTerminal.start(argv, env=dict(env, LORAWIZARD_IMAGES=mode), cwd=str(tmp_path))
            terms[mode].send(b"3")  # before the app has drawn anything
        for term in terms.values():
            term.wait_for(b"Choose the folder with your photos")  # the Dataset screen is on screen
        _linger(terms, 0.5)  # time for a renderer that asks the terminal from inside the app (the old bug)
        for term in terms.values():
            term.send(b"\x1b[?1;2c")  # a reply arriving late, after the app started
        _linger(terms, 0.3)
        for term in terms.values():
            term.send(b"\x11")  # ctrl+q
        exits = {mode: term.wait_exit() for mode, term in terms.items()}
    finally:
        for term in terms.values():
            term.close()
    assert exits == dict.fromkeys(MODES, 0)
    auto = terms["auto"].output
    assert b"\x1b[c" in auto and auto.index(b"\x1b[c") > auto.index(b"Train")  # asked after the first frame
    assert all(b"\x1b[c" not in term.output for mode, term in terms.items() if mode != "auto")
    for mode, term in terms.items():
        assert b"[?1;2c" not in term.output, mode  # the app never draws a reply as text
        session = tmp_path / mode / "session.toml"
        saved = tomllib.loads(session.read_text()) if session.exists() else {}
        assert not saved.get("dataset", {}).get("source"), (mode, saved)


@pytest.mark.skipif(sys.platform == "win32", reason="pty")
def test_a_terminal_that_never_answers_does_not_hold_the_first_frame(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), TERM="xterm-256color",
               TEXTUAL_ANIMATIONS="none", LORAWIZARD_IMAGES="auto")
    term = PtyTerminal.start([sys.executable, "-m", "lorawizard", str(tmp_path / "p")], env=env, cwd=str(tmp_path),
                             answer_da1=False)
    try:
        term.wait_for(b"Train")
        assert b"\x1b[c" not in term.output  # drawn before the terminal was asked
        term.wait_for(b"\x1b[c")
        term.linger(terminal.TIMEOUT_S + 0.3)  # the app gives up waiting (halfcell) and stays usable
        term.send(b"\x11")
        assert term.wait_exit() == 0
    finally:
        term.close()


async def test_a_screen_drawn_before_the_answer_swaps_its_image_widget(isolated_home: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.core.session.document import Session
    from lorawizard.tui import images
    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.messages import TerminalAnswered

    (isolated_home / "p" / "photos").mkdir(parents=True)
    monkeypatch.setattr(images, "_awaiting_terminal", True)
    monkeypatch.setattr(images, "_cell_size", images._cell_size)
    widget = images._textual_image_widget()
    from textual_image import _terminal

    monkeypatch.setattr(_terminal.get_cell_size, "_result", _terminal.get_cell_size())  # the answer changes it
    app = LoraWizardApp(Session.open_project(isolated_home / "p"), start_step="dataset")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen.query_one("#ds-image"), widget.HalfcellImage)
        app.post_message(TerminalAnswered(ProbeResult("sixel", (9, 18))))
        await pilot.pause(0.1)
        assert isinstance(app.screen.query_one("#ds-image"), widget.SixelImage)
        assert len(app.screen.query("#ds-image")) == 1
    assert not images.awaiting_terminal()
