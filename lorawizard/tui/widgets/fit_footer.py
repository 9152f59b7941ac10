"""The footer of every step screen: the keys that work now, fitted to the width.

At 80 columns a screen's own keys can fill the line and push the global ones (? Help, q Quit) off its end. Here the
global keys (the app's) always show; a screen's keys that do not fit are left out, first those the screen names in
`FOOTER_DROP_FIRST` (action names, without arguments), then from the end of the line. Every key stays in the help (?).
The command palette's hint shows only from PALETTE_MIN_WIDTH columns (below, it covered the last keys; ctrl+p still
works).
"""

from __future__ import annotations

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.binding import Binding
from textual.events import Resize
from textual.widgets import Footer

from lorawizard.tui._textual_hacks import footer_bindings_ready, footer_key

PALETTE_MIN_WIDTH = 100


def key_width(key_display: str, description: str) -> int:
    """Cells one key takes in the (non-compact) footer: ` key ` + `description `."""
    return cell_len(key_display) + cell_len(description) + 3


class FitFooter(Footer):
    def __init__(self, *, show_command_palette: bool = True, id: str | None = None) -> None:
        super().__init__(show_command_palette=show_command_palette, id=id)
        self._width = 0

    def compose(self) -> ComposeResult:
        if not footer_bindings_ready(self):
            return
        app = self.app
        active = self.screen.active_bindings
        by_action: dict[str, tuple[object, Binding, bool, str]] = {}
        for node, binding, enabled, tooltip in active.values():
            if binding.show:
                by_action.setdefault(binding.action, (node, binding, enabled, tooltip))
        items = list(by_action.values())
        width = self._width = self.size.width or app.size.width
        palette = (active.get(app.COMMAND_PALETTE_BINDING)
                   if self.show_command_palette and app.ENABLE_COMMAND_PALETTE and width >= PALETTE_MIN_WIDTH else None)
        room = width - (key_width(app.get_key_display(palette.binding), palette.binding.description) + 1 if palette else 0)
        drop_first = tuple(getattr(self.screen, "FOOTER_DROP_FIRST", ()))

        def used() -> int:
            return sum(key_width(app.get_key_display(b), b.description) for _, b, _, _ in items)

        # the screen's keys that go first, then from the end; never the app's own (? Help, q Quit)
        order = [item for action in drop_first for item in items if item[1].action.partition("(")[0] == action]
        order += [item for item in reversed(items) if item[0] is not app and item not in order]
        for item in order:
            if used() <= room:
                break
            items.remove(item)
        for _, binding, enabled, tooltip in items:
            yield footer_key(binding.key, app.get_key_display(binding), binding.description, binding.action,
                             disabled=not enabled, tooltip=tooltip)
        if palette is not None:
            yield footer_key(palette.binding.key, app.get_key_display(palette.binding), palette.binding.description,
                             palette.binding.action, classes="-command-palette", compact=True,
                             disabled=not palette.enabled, tooltip=palette.binding.tooltip or palette.binding.description)

    def on_resize(self, event: Resize) -> None:
        if footer_bindings_ready(self) and event.size.width != self._width:
            self.call_after_refresh(self.recompose)
