"""The GPU screen's two tables, each drawn from a snapshot of its rows (core.probe): the batch size per bucket with
where it comes from, and the probe's trials. The screen binds their reactives to its own (`data_bind`), so a new
tuple of rows assigned there is all a refresh takes. None: nothing to show yet (the table as composed, or hidden)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.reactive import var

from lorawizard.core.probe.batch_sources import BucketRow, Tone
from lorawizard.core.probe.fit_rows import FitRow, FitTone
from lorawizard.core.probe.trial_rows import TrialRow, TrialTone
from lorawizard.tui.tones import tone
from lorawizard.tui.widgets.tables import Table


def _style(row_tone: Tone | TrialTone | FitTone) -> str:
    return {"good": tone("success"), "warning": tone("warning"), "info": tone("info"), "other": tone("other"),
            "error": tone("error"), "dim": "dim", "plain": "", "chosen": tone("success", bold=True)}[row_tone]


def _cell(text: str, row_tone: Tone | TrialTone | FitTone) -> Text:
    return Text(text, style=_style(row_tone), overflow="ellipsis")


class BucketTable(Table):
    """One row per bucket (core.probe.batch_sources.bucket_rows); hidden when the dataset has no buckets."""

    bucket_rows: var[tuple[BucketRow, ...] | None] = var(None, init=False)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for column, width in (("bucket", 9), ("images", 6), ("batch", 5), ("peak GB", 7), ("s/step", 6), ("source", 32)):
            self.add_column(column, width=width, key=column)  # fixed widths: the header never lags the rows

    def watch_bucket_rows(self, rows: tuple[BucketRow, ...] | None) -> None:
        if rows is None:  # the dataset is not read yet
            return
        cursor = self.cursor_row  # the row a person was on stays highlighted (a batch size set by hand redraws)
        self.clear()
        self.display = bool(rows)
        for row in rows:
            self.add_row(row.bucket, str(row.images), row.batch, row.peak_gb, row.s_per_step,
                         _cell(row.source, row.tone), key=row.bucket)
        if rows and cursor > 0:
            self.move_cursor(row=min(cursor, len(rows) - 1))


class TrialTable(Table):
    """The probe's trials as they run (core.probe.trial_rows); hidden until a probe starts. Rows already shown are
    changed cell by cell, and the newest trial is kept in view."""

    trial_rows: var[tuple[TrialRow, ...] | None] = var(None, init=False)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for column, width in (("#", 3), ("bucket", 9), ("batch", 5), ("peak GB", 7), ("result", 22), ("s/step", 6)):
            self.add_column(column, width=width, key=column)
        self.display = False  # until a probe starts

    def watch_trial_rows(self, before: tuple[TrialRow, ...] | None, rows: tuple[TrialRow, ...] | None) -> None:
        self.display = rows is not None
        shown = {row.number: row for row in before or ()}
        if not rows or not shown.keys() <= {row.number for row in rows}:  # a new probe: start over
            self.clear()
            shown = {}
        for row in rows or ():
            key = f"t{row.number}"
            old = shown.get(row.number)
            if old is None:
                self.add_row(str(row.number), row.bucket, str(row.batch), row.peak_gb, _cell(row.result, row.tone),
                             row.s_per_step, key=key)
                continue
            if old.peak_gb != row.peak_gb:
                self.update_cell(key, "peak GB", row.peak_gb)
            if (old.result, old.tone) != (row.result, row.tone):
                self.update_cell(key, "result", _cell(row.result, row.tone))
            if old.s_per_step != row.s_per_step:
                self.update_cell(key, "s/step", row.s_per_step)
        if rows:
            self.move_cursor(row=self.row_count - 1)


class FitTable(Table):
    """The fastest-fit search's candidates (core.probe.fit_rows): live while it runs, then the saved table with the
    chosen one marked; hidden with `gpu.fit = preset`. Redrawn whole per snapshot (a few tens of rows at most)."""

    fit_rows: var[tuple[FitRow, ...] | None] = var(None, init=False)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._with_state = False
        self._add_columns()
        self.display = False

    def _add_columns(self) -> None:
        """The columns; the optimizer-state one only when a candidate used the 8-bit twin (76 cells without it: the
        table fits 80 columns)."""
        state = [("state", 5)] if self._with_state else []
        for column, width in (("#", 2), ("swap", 4), ("base", 6), ("ckpt", 4), *state, ("batch", 5), ("peak", 5),
                              ("img/s", 5), ("s/step", 5), ("run", 6), ("result", 13)):
            self.add_column(column, width=width, key=column)

    def watch_fit_rows(self, rows: tuple[FitRow, ...] | None) -> None:
        self.display = bool(rows)
        with_state = any(row.state != "own" for row in rows or ())
        self.clear(columns=with_state != self._with_state)
        if with_state != self._with_state:
            self._with_state = with_state
            self._add_columns()
        for row in rows or ():
            state = [row.state] if with_state else []
            self.add_row(row.number, str(row.swap), row.base, row.ckpt, *state, str(row.batch), row.peak_gb,
                         row.images_per_s, row.s_per_step, row.run, _cell(row.result, row.tone))
        if rows:
            self.move_cursor(row=self.row_count - 1)
