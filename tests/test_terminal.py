"""The terminal's replies: parsed into a renderer, never typed into a widget, keys pressed meanwhile not lost."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest
from textual import events

from lorawizard.tui.terminal import _textual_parser_class, parse_replies, typed_keys
from tests.pty_terminal import PtyTerminal

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


def test_keys_pressed_during_the_probe_are_kept_and_replayed_as_keys() -> None:
    result = parse_replies("3" + TGP_OK + "q\x1b[?1;2c")
    assert result.typed == "3q"
    assert [event.key for event in typed_keys(result.typed)] == ["3", "q"]


def _keys(chunks: list[str]) -> list[str]:
    parser = _textual_parser_class()()
    keys: list[str] = []
    for chunk in chunks:
        keys += [event.key for event in parser.feed(chunk) if isinstance(event, events.Key)]
    return keys


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


# -- the real app in a real pty: a step key pressed at once, for every --images mode (started side by side)

MODES = ("auto", "halfcell", "unicode", "sixel", "tgp")


def _linger(terms: dict[str, PtyTerminal], seconds: float) -> None:
    for term in terms.values():
        term.linger(seconds / len(terms))


@pytest.mark.skipif(sys.platform == "win32", reason="pty")
def test_a_step_key_pressed_at_once_goes_to_the_app_and_no_reply_is_typed(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), TERM="xterm-256color",
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
    for mode, term in terms.items():
        assert b"[?1;2c" not in term.output, mode  # the app never draws a reply as text
        session = tmp_path / mode / "session.toml"
        saved = tomllib.loads(session.read_text()) if session.exists() else {}
        assert not saved.get("dataset", {}).get("source"), (mode, saved)
