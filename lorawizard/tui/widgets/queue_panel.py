"""The Train screen's queue: the base run and each `[[train.variants]]` entry, what it changes and its state.

A head line (the forecast before the queue starts, its state while it runs), a table with one row per run of the
queue (label, what differs from the base run, state from `.lorawizard/queue.json`, the latest run id) and the
one-line prompt that adds a variant ("same, but: network_dim 16"), with the reason above it when the session
refuses it. The screen owns the keys and the writes; this widget only draws what it is handed (`show`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Static

from lorawizard.core.session.variants import BASE
from lorawizard.tui.tones import Tone, tone
from lorawizard.tui.widgets.settings_form import FitInput
from lorawizard.tui.widgets.tables import Table

if TYPE_CHECKING:
    from lorawizard.core.session.variants import Variant
    from lorawizard.core.train.queue import QueueRecord

ASK_HINT = "same, but: network_dim 16  (or name: key value, …; Enter adds, Esc cancels)"
STATE_TONES: dict[str, Tone] = {"running": "info", "finished": "success", "failed": "error", "stopped": "warning",
                                "skipped": "other", "lost": "warning"}


class QueueRow(NamedTuple):
    label: str  # "base" or the variant's name
    what: str  # what differs from the base run
    state: str  # pending, running, finished, failed, stopped, skipped; "" before any queue ran it
    run_id: str  # the latest run of it in the queue, "" when none


def queue_rows(variants: list[Variant], record: QueueRecord | None) -> list[QueueRow]:
    """The base run, then each variant, with its state in the project's last queue (where that queue had it)."""
    rows = []
    for label, what in [(BASE, "the base run (settings below)"), *((v.name, v.describe()) for v in variants)]:
        entry = record.entry(label) if record is not None else None
        state = entry.status if entry is not None else ""
        if state == "running" and record is not None and record.status() == "lost":
            state = "lost"
        run_id = entry.run_ids[-1] if entry is not None and entry.run_ids else ""
        rows.append(QueueRow(label, what, state, run_id))
    return rows


class QueuePanel(Vertical):
    """Head line, one row per run, the add-a-variant prompt and its reason (hidden until asked)."""

    DEFAULT_CSS = """
    QueuePanel { height: auto; border-top: solid $primary 50%; border-title-color: $text-muted; padding: 0 1; }
    QueuePanel #queue-head { height: auto; max-height: 2; color: $text-muted; }
    QueuePanel #queue-table { height: auto; max-height: 6; scrollbar-size-vertical: 1; }
    QueuePanel #variant-ask { display: none; border: none; height: 1; padding: 0; }
    QueuePanel #variant-ask.-shown { display: block; }
    QueuePanel #variant-problem { width: 1fr; height: auto; display: none; color: $text-error; }
    QueuePanel #variant-problem.-shown { display: block; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[QueueRow] = []
        self.border_title = "queue · v adds a variant · x removes · ⇧↑↓ moves"

    def compose(self) -> ComposeResult:
        yield Static("", id="queue-head", markup=False)
        yield Table(id="queue-table", cursor_type="row", zebra_stripes=False, show_header=False)
        yield Label("", id="variant-problem", markup=False)  # above the prompt: in sight while the prompt is
        yield FitInput(placeholder=ASK_HINT, id="variant-ask")

    @property
    def table(self) -> Table:
        return self.query_one("#queue-table", Table)

    def on_mount(self) -> None:
        self._columns()

    def on_resize(self) -> None:
        current = self.cursor_label()
        self._columns()
        self._fill(current)

    def _columns(self) -> None:
        table = self.table
        width = max(40, (self.size.width or self.app.size.width) - 3)  # padding, a scrollbar
        state, run = 9, 15 if width >= 76 else 0
        label = min(16, max(8, max((len(r.label) for r in self.rows), default=4) + 1))
        what = max(10, width - label - state - run - 2 * (3 if run else 2) - 2)
        table.clear(columns=True)
        table.add_column("run", width=label, key="run")
        table.add_column("differs from the base run", width=what, key="what")
        table.add_column("state", width=state, key="state")
        if run:
            table.add_column("run id", width=run, key="id")

    def show(self, rows: list[QueueRow], head: str) -> None:
        """Draw `rows` and `head`, keeping the cursor on the row it was on (by label)."""
        self.query_one("#queue-head", Static).update(head)
        relabel = max((len(r.label) for r in rows), default=4) != max((len(r.label) for r in self.rows), default=4)
        current = self.cursor_label()
        self.rows = rows
        if relabel:
            self._columns()
        self._fill(current)

    def _fill(self, current: str | None) -> None:
        table = self.table
        columns = len(table.columns)
        table.clear()
        for row in self.rows:
            shown = row.state or "—"
            cells: list[object] = [row.label, row.what, Text(shown, style=tone(STATE_TONES[row.state]))
                                   if row.state in STATE_TONES else Text(shown)]
            if columns > 3:
                cells.append(row.run_id)
            table.add_row(*cells, key=row.label)
        labels = [r.label for r in self.rows]
        if current in labels:
            table.move_cursor(row=labels.index(current), animate=False)

    def cursor_label(self) -> str | None:
        """The label of the row under the table's cursor (None when the table is empty)."""
        row = self.table.cursor_row
        return self.rows[row].label if 0 <= row < len(self.rows) else None

    def move_cursor_to(self, label: str) -> None:
        labels = [r.label for r in self.rows]
        if label in labels:
            self.table.move_cursor(row=labels.index(label), animate=False)

    def say(self, problem: str) -> None:
        """The reason a typed variant was refused (one line), or "" to clear it."""
        line = self.query_one("#variant-problem", Label)
        line.update(problem)
        line.set_class(bool(problem), "-shown")
        if problem:
            self.call_after_refresh(self.query_one("#variant-ask").scroll_visible, animate=False)
