"""Which terminal image renderer the wizard uses, chosen once before the app starts.

`choose_renderer` runs before App.run (cli.py). For `auto` the app draws its first frame with halfcell, asks the
terminal in one round trip (terminal.py) and switches when the answer comes (`answer`), a few milliseconds later.
textual-image would probe the terminal itself when `textual_image.renderable` is first imported, which inside the
running app races Textual for stdin (a swallowed key, a reply typed into a field); so it is imported here only with
its probe switched off and the answer we already have. Tests and screenshots force halfcell, which renders the
same everywhere (truecolor `▀` cells) and works over any SSH connection.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from textual.widget import Widget

RENDERERS = ("auto", "tgp", "sixel", "halfcell", "unicode")

_chosen: str = "halfcell"
_cell_size: tuple[int, int] = (10, 20)  # VT340's, textual-image's own fallback
_awaiting_terminal = False  # `auto` on a terminal: the app asks it after the first frame


def choose_renderer(name: str | None = None) -> str:
    """Fix the renderer, or for `auto` on a terminal start with halfcell until the terminal answers (the app asks
    after its first frame). Returns the renderer used now."""
    global _chosen, _awaiting_terminal
    name = name or os.environ.get("LORAWIZARD_IMAGES", "auto")
    if name not in RENDERERS:
        name = "auto"
    _awaiting_terminal = False
    if name == "auto":
        stdin, stdout = sys.__stdin__, sys.__stdout__
        if stdin is None or stdout is None or not (stdin.isatty() and stdout.isatty()):
            name = "unicode"
        else:
            name, _awaiting_terminal = "halfcell", True
    _chosen = name
    return name


def awaiting_terminal() -> bool:
    return _awaiting_terminal


def answer(renderer: str, cell_size: tuple[int, int]) -> bool:
    """The terminal's answer (terminal.ReplyCollector). True when the renderer changed (image widgets made before
    show halfcell: their screens swap them)."""
    global _chosen, _cell_size, _awaiting_terminal
    if not _awaiting_terminal:
        return False
    _awaiting_terminal = False
    changed = renderer != _chosen
    _chosen, _cell_size = renderer, cell_size
    if "textual_image._terminal" in sys.modules:  # imported by a screen drawn before the answer: its cached size
        cached = sys.modules["textual_image._terminal"]
        cached.get_cell_size._result = cached.CellSize(*cell_size)
    return changed


class ImageView(Protocol):
    """textual-image's widget as the screens use it (the package ships no type information)."""

    image: Any


def image_view(widget: Widget) -> ImageView:
    """A mounted image widget (of `image_widget_class()`), typed for what the screens do with it."""
    return cast(ImageView, widget)


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
