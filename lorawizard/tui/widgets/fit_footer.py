"""The footer of every step screen: the keys that work now, fitted to the width.

At 80 columns a screen's own keys can fill the line and push the global ones (? Help, q Quit) off its end. Here some
keys always stay: the app's (? Help, q Quit), the screen's primary action (^g), the filter and the bulk undo where a
screen has them (KEEP_ACTIONS) and whatever the screen names in `FOOTER_KEEP`. When the keys do not fit, the footer
first leaves out those the screen names in `FOOTER_DROP_FIRST` (action names, without arguments), then draws the keys
tighter (one blank between keys instead of two), then uses the short descriptions the screen gives in `FOOTER_SHORT`
(action → word: "Write" for "Write files"), and only then leaves out other keys, from the end of the line. Every key stays in the help
(?). The command palette's hint shows only from PALETTE_MIN_WIDTH columns (below, it took the room of a screen's own
keys); ctrl+p still works and the help lists it.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.binding import Binding
from textual.events import Resize
from textual.widgets import Footer

from lorawizard.tui._textual_hacks import footer_bindings_ready, footer_key

PALETTE_MIN_WIDTH = 100
KEEP_ACTIONS = ("primary", "cycle_filter", "filter", "undo_bulk")  # on every screen that has them
Item = tuple[object, Binding, bool, str]  # a shown key: its node, binding, whether enabled, its tooltip


def key_width(key_display: str, description: str, *, tight: bool = False) -> int:
    """Cells one key takes in the footer: ` key ` + `description ` (tight: ` key` + ` description`)."""
    return cell_len(key_display) + cell_len(description) + (2 if tight else 3)


def _action(binding: Binding) -> str:
    return binding.action.partition("(")[0]


class FitFooter(Footer):
    DEFAULT_CSS = """
    FitFooter FooterKey.-tight .footer-key--key { padding: 0 0 0 1; }
    FitFooter FooterKey.-tight .footer-key--description { padding: 0 0 0 1; }
    """

    def __init__(self, *, show_command_palette: bool = True, id: str | None = None) -> None:
        super().__init__(show_command_palette=show_command_palette, id=id)
        self._width = 0

    def compose(self) -> ComposeResult:
        if not footer_bindings_ready(self):
            return
        app = self.app
        active = self.screen.active_bindings
        by_action: dict[str, Item] = {}
        for node, binding, enabled, tooltip in active.values():
            if binding.show:
                by_action.setdefault(binding.action, (node, binding, enabled, tooltip))
        items = list(by_action.values())
        width = self._width = self.size.width or app.size.width
        palette = (active.get(app.COMMAND_PALETTE_BINDING)
                   if self.show_command_palette and app.ENABLE_COMMAND_PALETTE and width >= PALETTE_MIN_WIDTH else None)
        room = width - (key_width(app.get_key_display(palette.binding), palette.binding.description) + 1 if palette else 0)
        items, described, tight = self._fitted(items, room)
        for _, binding, enabled, tooltip in items:
            yield footer_key(binding.key, app.get_key_display(binding), described(binding), binding.action,
                             disabled=not enabled, tooltip=tooltip or binding.description,
                             classes="-tight" if tight else "")
        if palette is not None:
            yield footer_key(palette.binding.key, app.get_key_display(palette.binding), palette.binding.description,
                             palette.binding.action, classes="-command-palette", compact=True,
                             disabled=not palette.enabled, tooltip=palette.binding.tooltip or palette.binding.description)

    def _fitted(self, items: list[Item], room: int) -> tuple[list[Item], Callable[[Binding], str], bool]:
        """The keys that fit in `room` cells, how each is described, and whether they are drawn tight."""
        app, screen = self.app, self.screen
        drop_first = tuple(getattr(screen, "FOOTER_DROP_FIRST", ()))
        keep = (*KEEP_ACTIONS, *getattr(screen, "FOOTER_KEEP", ()))
        short: dict[str, str] = dict(getattr(screen, "FOOTER_SHORT", {}))
        items = list(items)
        tight = shorten = False

        def described(binding: Binding) -> str:
            return short.get(_action(binding), binding.description) if shorten else binding.description

        def fits() -> bool:
            return sum(key_width(app.get_key_display(b), described(b), tight=tight) for _, b, _, _ in items) <= room

        # never the app's own keys (? Help, q Quit) nor the kept ones; the screen's FOOTER_DROP_FIRST go first, then
        # (once drawn tight and short) the others from the end
        droppable = [item for item in items if item[0] is not app and _action(item[1]) not in keep]
        for item in [item for action in drop_first for item in droppable if _action(item[1]) == action]:
            if fits():
                break
            items.remove(item)
        tight = not fits()
        shorten = not fits()
        for item in reversed(droppable):
            if fits():
                break
            if item in items:
                items.remove(item)
        return items, described, tight

    def on_resize(self, event: Resize) -> None:
        if footer_bindings_ready(self) and event.size.width != self._width:
            self.call_after_refresh(self.recompose)
