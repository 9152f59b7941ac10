"""Which terminal image renderer the wizard uses, chosen once before the app starts.

`choose_renderer` runs before App.run (cli.py): for `auto` it asks the terminal in one round trip (terminal.py).
textual-image would probe the terminal itself when `textual_image.renderable` is first imported, which inside the
running app races Textual for stdin (a swallowed key, a reply typed into a field); so it is imported here only with
its probe switched off and the answer we already have. Tests and screenshots force halfcell, which renders the
same everywhere (truecolor `▀` cells) and works over any SSH connection.
"""

from __future__ import annotations

import os
import sys
from typing import Any

RENDERERS = ("auto", "tgp", "sixel", "halfcell", "unicode")

_chosen: str = "halfcell"
_cell_size: tuple[int, int] = (10, 20)  # VT340's, textual-image's own fallback
typed_ahead: str = ""  # keys pressed while the terminal was being asked; the app replays them


def choose_renderer(name: str | None = None) -> str:
    """Fix the renderer (asking the terminal for `auto`). Returns the renderer used."""
    global _chosen, _cell_size, typed_ahead
    name = name or os.environ.get("LORAWIZARD_IMAGES", "auto")
    if name not in RENDERERS:
        name = "auto"
    if name == "auto":
        from lorawizard.tui.terminal import probe

        result = probe()
        name, _cell_size, typed_ahead = result.renderer, result.cell_size, result.typed
    _chosen = name
    return name


def image_widget_class() -> Any:
    widget = _textual_image_widget()
    return {
        "tgp": widget.TGPImage,
        "sixel": widget.SixelImage,
        "halfcell": widget.HalfcellImage,
        "unicode": widget.UnicodeImage,
    }[_chosen]


def _textual_image_widget() -> Any:
    """Import textual-image without letting it talk to the terminal (textual-image==0.12.0 internals, pinned):
    `get_cell_size` returns its cached `_result` when set, and `renderable/__init__` probes only when
    `sys.__stdout__.isatty()` at import time."""
    if "textual_image.widget" in sys.modules:
        return sys.modules["textual_image.widget"]
    from textual_image import _terminal

    if not hasattr(_terminal.get_cell_size, "_result"):
        _terminal.get_cell_size._result = _terminal.CellSize(*_cell_size)  # type: ignore[attr-defined]
    real_stdout = sys.__stdout__
    sys.__stdout__ = _NotATerminal(real_stdout)  # type: ignore[misc,assignment]
    try:
        from textual_image import widget
    finally:
        sys.__stdout__ = real_stdout  # type: ignore[misc]
    return widget


class _NotATerminal:
    """Stands in for sys.__stdout__ while textual-image is imported: says "not a terminal", so it does not probe."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def isatty(self) -> bool:
        return False

    def __bool__(self) -> bool:
        return self._real is not None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
