"""Which terminal image renderer the wizard uses, chosen once before the app starts.

textual-image probes the terminal when `textual_image.renderable` is imported and cannot probe once the
app owns the terminal, so `choose_renderer` runs first (cli.py). Tests and screenshots force halfcell,
which renders the same everywhere (truecolor `▀` cells) and works over any SSH connection.
"""

from __future__ import annotations

import os
from typing import Any

_chosen: str = "halfcell"


def choose_renderer(name: str | None = None) -> str:
    global _chosen
    name = name or os.environ.get("LORAWIZARD_IMAGES", "auto")
    if name == "auto":
        import textual_image.renderable  # noqa: F401  (probes the terminal now, before App.run)
    _chosen = name
    return name


def image_widget_class() -> Any:
    from textual_image import widget

    return {
        "auto": widget.Image,
        "tgp": widget.TGPImage,
        "sixel": widget.SixelImage,
        "halfcell": widget.HalfcellImage,
        "unicode": widget.UnicodeImage,
    }[_chosen]
