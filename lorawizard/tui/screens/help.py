"""? — the keys: the same ones on every screen, then this screen's own.

At 80×24 the list is taller than the dialog: its bottom border then says that it scrolls and how far
("↓ more below · ↑↓ PgUp PgDn scroll"), so a cut list never looks complete."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

GLOBAL_KEYS: list[tuple[str, str]] = [
    ("1 … 6", "jump to a step: Environment, Models, Dataset, Captions, GPU, Train (outside text fields)"),
    ("F1 … F6", "the same, from anywhere, text fields included (unless the screen uses the key itself)"),
    ("ctrl+g", "run this screen's primary action (enter too, outside text fields)"),
    ("esc", "undo the edit in a settings field (back to its value when you entered it) · leave a text field · "
            "cancel what is running · close a dialog"),
    ("tab / shift+tab", "move between fields"),
    ("ctrl+p", "command palette: jump to any step (the footer shows ^p palette from 100 columns; below, its room "
               "goes to the screen's own keys)"),
    ("f8", "save a screenshot (SVG) into the project folder"),
    ("?", "this help"),
    ("q / ctrl+q", "quit: every decision is already saved; a training run keeps running"),
]
GLOBAL_ACTIONS = {"primary", "cancel", "app.focus_next", "app.focus_previous", "screen.copy_text", "copy_text"}  # listed above, or universal
FOOTNOTE = (
    "Every change is saved to session.toml the moment you make it. "
    "`lorawizard --replay session.toml` does the same work without the wizard."
)


def keys_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
    table.add_column(style="bold", no_wrap=True, width=16)
    table.add_column(ratio=1)
    for key, does in rows:
        table.add_row(key, does)
    return table


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, screen_keys: list[tuple[str, str]] | None = None, screen_title: str = "") -> None:
        super().__init__()
        self.screen_keys = screen_keys or []
        self.screen_title = screen_title

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("Keys everywhere", classes="help-title")
            yield Static(keys_table(GLOBAL_KEYS))
            if self.screen_keys:
                yield Static(f"Keys on {self.screen_title or 'this screen'}", classes="help-title")
                yield Static(keys_table(self.screen_keys))
            yield Static(Text(FOOTNOTE, style="dim"), classes="help-title")

    def on_mount(self) -> None:
        box = self.query_one(VerticalScroll)
        self.watch(box, "scroll_y", self._show_scroll_hint, init=False)
        self.watch(box, "max_scroll_y", self._show_scroll_hint)

    def on_resize(self) -> None:
        self.call_after_refresh(self._show_scroll_hint)

    def _show_scroll_hint(self, _value: object = None) -> None:
        """The border says what is cut: more below, more above, or both (nothing when all of it shows)."""
        box = self.query_one(VerticalScroll)
        below, above = box.scroll_y < box.max_scroll_y, box.scroll_y > 0
        where = "↑↓ more above and below" if above and below else "↓ more below" if below else "↑ more above"
        box.border_subtitle = f"{where} · ↑↓ PgUp PgDn scroll" if above or below else ""
