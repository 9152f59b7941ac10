"""Every use of a private Textual (or textual-image) internal by the screens and widgets, in one place, each with
why it is needed. Pinned versions: textual==8.2.8, textual-image==0.12.0 — after an upgrade, check these first.

Kept elsewhere, beside the start-up code they serve (they must not import Textual early):
`tui/terminal.py` (the Linux driver's module-global `XTermParser`, overriding `_sequence_to_key_events` so late
terminal replies never become keys) and `tui/images.py` (textual-image's `_terminal.get_cell_size._result`, so the
import does not probe the terminal).

Nothing here imports Textual at module level: importing this module costs nothing on the start-up path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textual.binding import BindingsMap
    from textual.dom import DOMNode
    from textual.geometry import Size
    from textual.screen import Screen
    from textual.widget import Widget
    from textual.widgets import DataTable, Footer


def require_update_dimensions(table: DataTable[Any]) -> None:
    """A DataTable column's width changed by hand (`column.width`): the table only recomputes its virtual size when
    this private flag is set (its public API sets it when rows or columns are added, not when a width changes)."""
    table._require_update_dimensions = True


def set_virtual_size(widget: Widget, size: Size) -> None:
    """Change how much a scrolling widget holds without laying out the whole screen.

    Assigning `virtual_size` asks for a layout of the screen (and a repaint of everything it moves), but a
    widget whose box does not depend on its content only needs its scrollbars and its own lines redrawn:
    `_scroll_update` is what Textual's layout would call for this widget. A scrollbar that appears or disappears
    still changes the box: setting its `display` lays out then.
    """
    from textual.widget import Widget

    if widget.virtual_size == size:
        return
    widget.set_reactive(Widget.virtual_size, size)
    if widget.is_mounted and widget.container_size:
        widget._scroll_update(size)
    widget.refresh()


def refresh_scrollbars(widget: Widget) -> None:
    """After `set_virtual_size` from a TextArea's `_refresh_size` override (the caption editor: its box is fixed,
    so a new caption's height needs no screen layout) the scrollbars are updated as TextArea itself does."""
    widget._refresh_scrollbars()


def renderable_class(image_widget: type[Any]) -> Any:
    """The Rich renderable a textual-image widget class draws with (`_Renderable`): the captions screen draws cells
    with it in a worker thread (5-10 ms of Rich styles per image that would otherwise run on the UI thread), and
    subclasses the widget with the same renderable (`Renderable=` class keyword)."""
    return image_widget._Renderable


def shown_image(widget: Any) -> Any:
    """The picture a textual-image widget holds (`_image`; its `image` property returns it too but is typed for
    setting paths, and reading it must not trigger anything)."""
    return widget._image


def clear_dirty_regions(widget: Widget) -> None:
    """A widget that serves pre-drawn lines from `render_line` does what `_render_content` would have done:
    nothing is left to render, so the next refresh does not render the image again."""
    widget._dirty_regions.clear()


def binding_chain(screen: Screen[Any]) -> Iterator[tuple[DOMNode, BindingsMap]]:
    """The (node, bindings) pairs a key is looked up in, focused widget first (`Screen._binding_chain`): the App
    gives an F-key to the screen when the screen binds it itself (Captions: F5 auto-caption), which only this
    chain tells."""
    return iter(screen._binding_chain)


def footer_key(key: str, key_display: str, description: str, action: str, *, disabled: bool, tooltip: str,
               classes: str = "", compact: bool = False) -> Widget:
    """One key of the footer, as Textual's Footer draws it: `FooterKey` is not exported (textual.widgets._footer).
    FitFooter composes its own selection of keys (those that fit the width) with it.

    Its compactness is decided before it mounts (Footer's keys follow a non-compact Footer through data_bind; its
    palette key stays compact): a FooterKey starts compact (its reactive's default) and its watcher restyled it on
    mount and again when the data_bind turned it off, ~1.8 ms a key each time, ~100 ms over a start-up (profiled)."""
    from textual.widgets._footer import FooterKey

    classes = f"{classes} -compact" if compact else classes
    widget = FooterKey(key, key_display, description, action, disabled=disabled, tooltip=tooltip, classes=classes)
    widget.set_reactive(FooterKey.compact, compact)
    return widget


def footer_bindings_ready(footer: Footer) -> bool:
    """Whether a Footer has been told its screen's bindings (`_bindings_ready`): composing before that shows none."""
    return footer._bindings_ready
