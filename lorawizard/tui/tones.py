"""Colours by meaning, taken from the running app's theme: no colour names in the TUI's code.

Stylesheets say `$error`, `$text-warning`, …; Rich `Text` styles cannot name a CSS variable, so `tone("error")`
looks the colour up in the theme when the text is made (the app's `theme_variables`, refreshed with every theme
change): `Text("✗ failed", style=tone("error", bold=True))`. Outside a running app (unit tests) the default
theme's values stand in.
"""

from __future__ import annotations

from typing import Literal

from textual._context import active_app  # Textual internal: the app of the current task (what `node.app` reads)

Tone = Literal["error", "warning", "success", "accent", "info", "other"]

_VARIABLE: dict[Tone, str] = {
    "error": "text-error",  # failed, bad, over a limit
    "warning": "text-warning",  # needs a look, missing, unverified
    "success": "text-success",  # done, fits, verified
    "accent": "text-accent",  # the thing to press or notice
    "info": "text-primary",  # running, in progress, machine-made (auto drafts), the loss line
    "other": "text-secondary",  # a third kind beside success and error (edited, killed)
}
_DEFAULT: dict[Tone, str] = {  # textual-dark's values
    "error": "#D17E92", "warning": "#FFC473", "success": "#8AD4A1", "accent": "#FFC473", "info": "#57A5E2",
    "other": "#5684A5",
}


def tone(name: Tone, *, bold: bool = False) -> str:
    """A Rich style for `name` in the running app's theme, e.g. "bold #D17E92"."""
    colour = _DEFAULT[name]
    try:
        colour = active_app.get().theme_variables.get(_VARIABLE[name], colour)
    except (LookupError, AttributeError):  # no app (unit tests), or one whose CSS is not set up yet
        pass
    return f"bold {colour}" if bold else colour
