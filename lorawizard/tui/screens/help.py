"""? — the keys: the same ones on every screen, then this screen's own."""

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
    ("ctrl+p", "command palette: jump to any step"),
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
