"""Colours in the TUI come from the theme: no colour names in its code, and `tone` follows the running theme."""

from __future__ import annotations

import re
from pathlib import Path

from textual.app import App

from lorawizard.tui.tones import tone

TUI = Path(__file__).resolve().parents[2] / "lorawizard" / "tui"
COLOUR_WORD = re.compile(r"""["'\[][^"'\]\n]*\b(red|green|yellow|cyan|magenta|blue|white|black|orange|purple)\b[^"'\]\n]*["'\]]""")


def test_no_colour_names_in_the_tui_code() -> None:
    found = [f"{path.relative_to(TUI)}:{number}: {line.strip()}" for path in sorted(TUI.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if COLOUR_WORD.search(line.split("#")[0]) and '"""' not in line]
    assert found == []


def test_the_colour_check_finds_one() -> None:  # the test above can fail
    assert COLOUR_WORD.search('text.append(problem, style="bold red")')
    assert COLOUR_WORD.search('Text.from_markup("[yellow]careful[/]")')


async def test_tone_follows_the_theme() -> None:
    app = App()
    async with app.run_test() as pilot:
        app.theme = "textual-dark"
        await pilot.pause()
        dark = tone("error", bold=True)
        assert dark == f"bold {app.theme_variables['text-error']}"
        app.theme = "nord"
        await pilot.pause()
        assert tone("error") == app.theme_variables["text-error"] != dark.split()[-1]
    assert tone("success").startswith("#")  # no app: the default theme's colour
