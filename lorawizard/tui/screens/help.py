"""? — the keys, the same on every screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# lorawizard keys

| key | does |
|---|---|
| `1`…`6` | jump to a step (Environment, Models, Dataset, Captions, GPU, Train) |
| `enter` / `ctrl+g` | run this screen's primary action (`ctrl+g` works inside a text field too) |
| `esc` | cancel what is running / close a dialog |
| `tab` / `shift+tab` | move between fields |
| `/` | filter the list on screens that have one |
| `space` | toggle the selected row |
| `ctrl+p` | command palette (jump to any step) |
| `f8` | save a screenshot (SVG) into the project folder |
| `?` | this help |
| `q` / `ctrl+q` | quit — every decision is already saved; a training run keeps running |

Every change is saved to `session.toml` the moment you make it.
`lorawizard --replay session.toml` does the same work without the wizard.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 90%;
        border: round $accent; background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)
