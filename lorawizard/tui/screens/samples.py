"""Samples view of the Train screen: one row per prompt, one column per (run, epoch), filling in live.

A thread worker rescans the run's `sample/` folders (core.samples.gallery: sd-scripts' real names, foreign and
half-written files skipped), and every few seconds the project's other runs (core.train.compare.project_runs: the
base run, each variant, earlier runs), and posts the grid only when it changed. With one run the columns are its
epochs (baseline first); with several, epoch by epoch (`base` epoch 8 beside `fp16` epoch 8), a line of run labels
above the epochs. Columns page to fit the terminal (80×24: four a page). Keys: ←/→ column, ↑/↓ prompt, [ / ] page,
, / . the same run's previous/next epoch, Enter one image large, k keeps the focused run's epoch; with several runs
r picks the runs shown (the queue's newest runs at first, earlier ones hidden) and e shows one epoch across the
runs (e again: every epoch); t opens the LoRA tools on the kept LoRA (resize, convert, merge, check it loads:
tui/screens/loras.py); Esc (or g again) back to the Train screen; ? and q as everywhere (help, quit).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import SelectionList, Static

from lorawizard.core.session.document import SessionError
from lorawizard.core.train.compare import Comparison, RunGroup, compare
from lorawizard.core.train.samples import Gallery
from lorawizard.tui.messages import Notice
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.fit_footer import FitFooter

LABEL_WIDTH = 14
RESCAN_S = 1.0
RESCAN_OTHERS_EVERY = 5  # the project's other runs: every 5th rescan


@dataclass
class GalleryChanged(Message):
    gallery: Gallery  # the followed run's
    groups: list[RunGroup] | None = None  # the project's runs (None: unchanged)
    suggestions: dict[str, tuple[str, int | None]] | None = None  # run label → (line, epoch to keep)


def suggestions_for(groups: list[RunGroup]) -> dict[str, tuple[str, int | None]]:
    """Each run's suggested epoch (core.train.suggest: its line and the epoch `K` keeps); {} where that module is not
    there or a run's curves cannot be read."""
    try:
        from lorawizard.core.train import suggest
    except ImportError:
        return {}
    found: dict[str, tuple[str, int | None]] = {}
    for group in groups:
        if not group.records:
            continue
        try:
            result = suggest.for_run(group.tip)
            line = result.line if result is not None else suggest.summary_line(group.tip)
            epoch = None if result is None else (result.keep_epoch or result.epoch)
        except Exception:  # noqa: BLE001 - a run's curves unreadable: no suggestion for it
            continue
        if line:
            found[group.label] = (line, epoch)
    return found


def page_layout(width: int, height: int, rows: int, extra: int = 0) -> tuple[int, int, int]:
    """(cell width, cell height, columns per page) for a grid of `rows` prompts in a width×height area; `extra`:
    lines above the grid besides the title and the epochs (the run labels)."""
    rows = max(1, rows)
    cell_h = max(3, min(12, (height - 3 - extra) // rows))
    cell_w = 2 * cell_h  # half-cell blocks: two pixels per row, so 2h columns draw a square image
    columns = max(1, (width - LABEL_WIDTH) // (cell_w + 1))
    return cell_w, cell_h, columns


def epoch_label(epoch: int, last: int | None, width: int | None = None) -> str:
    """`epoch 8 (final)`, shortened to fit `width` cells without losing "final" (80x24: "epoch 8 (final" was cut)."""
    if epoch == 0:
        return "baseline"
    if not (last and epoch == last):
        return f"epoch {epoch}"
    for label in (f"epoch {epoch} (final)", f"epoch {epoch} final", f"final ({epoch})", f"final {epoch}"):
        if width is None or len(label) <= width:
            return label
    return f"e{epoch} final"


class SampleCell(Vertical):
    """One sample image (or its placeholder) in the gallery grid; the cursor's cell is `-cursor`."""


class SamplesScreen(Screen[None]):
    HELP_TITLE = "Samples"  # the help's "Keys on …" (it said Train, the screen below)
    BINDINGS = [
        Binding("escape,g", "dismiss", "Back"),  # q quits, as on every screen (the app's action_quit: flushes first)
        Binding("left,h", "move(0, -1)", "Column ←", show=False),
        Binding("right,l", "move(0, 1)", "Column →", show=False),
        Binding("up", "move(-1, 0)", "Prompt ↑", show=False),
        Binding("down", "move(1, 0)", "Prompt ↓", show=False),
        Binding("comma", "epoch(-1)", "Epoch ←", show=False),
        Binding("full_stop", "epoch(1)", "Epoch →", show=False),
        Binding("left_square_bracket,pageup", "page(-1)", "Page ←"),
        Binding("right_square_bracket,pagedown", "page(1)", "Page →"),
        Binding("enter", "open", "Large"),
        Binding("k", "keep", "Keep epoch"),
        Binding("r", "pick_runs", "Runs"),
        Binding("e", "across", "Same epoch"),
        Binding("K", "keep_suggested", "Keep suggested"),
        Binding("t", "lora_tools", "LoRA tools"),
    ]
    CSS_PATH = "samples.tcss"
    FOOTER_DROP_FIRST = ("page",)  # the title says [ ] where there are pages
    FOOTER_SHORT = {"keep": "Keep", "across": "Epoch N", "keep_suggested": "Keep sugg.", "lora_tools": "Tools"}

    def __init__(self, run_dirs: list[Path], output_name: str, prompts: list[str], *, last_epoch: int | None = None,
                 gallery: Gallery | None = None, live: bool = True, groups: list[RunGroup] | None = None) -> None:
        """`run_dirs`/`output_name`/`prompts`: the run the Train screen follows (its chain, oldest first); `groups`:
        the project's runs (core.train.compare.project_runs; found by the live rescan when not given)."""
        super().__init__()
        self.run_dirs, self.output_name, self.prompts = run_dirs, output_name, prompts
        self.last_epoch = last_epoch
        self.gallery = gallery or Gallery(prompts=list(prompts), rows=len(prompts))
        self.live = live
        self.others: list[RunGroup] = list(groups or [])
        self.hidden: set[str] = set()  # run labels not shown
        self._hidden_set = groups is not None  # earlier runs are hidden once, when first found
        self.across: int | None = None  # "epoch N across runs": the one epoch shown
        self.grid = Comparison()
        self.suggestions: dict[str, tuple[str, int | None]] = suggestions_for(self.others) if groups else {}
        self.row = 0
        self.col = 0  # index into grid.columns
        self.first = 0  # first column shown
        self._stop = threading.Event()
        self._chosen = False  # the person moved to, paged to or opened an epoch: new epochs no longer move the cursor
        self._drawn: tuple[Any, ...] | None = None
        if groups is not None:
            self.hidden = {g.label for g in self.groups if not g.latest and g.label != self.current.label}
        self._update_grid()

    def compose(self) -> ComposeResult:
        yield Static("", id="samples-title")
        yield Static("", id="samples-runs")
        yield Static("", id="samples-epochs")
        yield Vertical(id="samples-grid")
        yield Static("", id="samples-info")
        yield Static("", id="samples-suggest")
        yield FitFooter()  # as on the step screens: ? Help and q Quit kept, the palette hint only when it fits

    def on_mount(self) -> None:
        if self.live:
            try:
                session = wizard_app(self).session
            except Exception:  # noqa: BLE001 - an app without a session (a test's): the followed run alone
                session = None
            self._scan(self._stop, session)
        self.call_after_refresh(self.redraw)

    def on_unmount(self) -> None:
        self._stop.set()

    def on_resize(self) -> None:
        self.call_after_refresh(self.redraw)

    @work(thread=True, exclusive=True, group="samples-scan", exit_on_error=False)
    def _scan(self, stop: threading.Event, session: Any) -> None:
        from lorawizard.core.train.compare import project_runs
        from lorawizard.core.train.samples import gallery

        seen = seen_others = None
        turn = 0
        while not stop.is_set():
            grid = gallery(self.run_dirs, self.output_name, self.prompts)
            signature = tuple(sorted((k, v.path) for k, v in grid.cells.items()))
            others = suggested = None
            if session is not None and turn % RESCAN_OTHERS_EVERY == 0:
                found = project_runs(session)
                found_suggested = suggestions_for(found)
                found_signature = (tuple((g.label, g.run_id, tuple(sorted(g.gallery.cells))) for g in found),
                                   tuple(sorted(found_suggested.items())))
                if found_signature != seen_others:
                    seen_others, others, suggested = found_signature, found, found_suggested
            if signature != seen or others is not None:
                seen = signature
                self.post_message(GalleryChanged(grid, others, suggested))
            turn += 1
            stop.wait(RESCAN_S)

    @on(GalleryChanged)
    def _changed(self, message: GalleryChanged) -> None:
        following_newest = not self.grid.columns or (self.col == len(self.grid.columns) - 1 and not self._chosen)
        focused = self._focused()
        self.gallery = message.gallery
        if message.groups is not None:
            self.others = message.groups
        if message.suggestions is not None:
            self.suggestions = message.suggestions
        self._update_grid()
        if message.groups is not None and not self._hidden_set:
            self._hidden_set = True  # the queue's newest runs shown, earlier ones hidden (r shows them)
            self.hidden = {g.label for g in self.groups if not g.latest and g.label != self.current.label}
            self._update_grid()
        if following_newest:
            self.col = max(0, len(self.grid.columns) - 1)
        elif focused in self.grid.columns:
            self.col = self.grid.columns.index(focused)  # a column arriving before it does not move the cursor
        self.redraw()

    # -- the model

    @property
    def current(self) -> RunGroup:
        """The followed run: its project group's label when the project knows it, else `base`/its variant's name."""
        tip = Path(self.run_dirs[-1]) if self.run_dirs else None
        known = next((g for g in self.others if tip is not None and tip in g.run_dirs), None)
        if known is not None:
            return RunGroup(known.label, known.variant, self.output_name, known.records, self.gallery,
                            tuple(self.prompts), known.latest)
        name = self._session_name()
        variant = self.output_name[len(name) + 1:] if name and self.output_name.startswith(f"{name}-") else None
        return RunGroup(variant or "base", variant, self.output_name, (), self.gallery, tuple(self.prompts))

    def _session_name(self) -> str:
        try:
            return str(wizard_app(self).session.name)
        except Exception:  # noqa: BLE001 - not mounted yet, or an app without a session
            return ""

    @property
    def groups(self) -> list[RunGroup]:
        """The followed run first, then the project's others (base, variants, earlier runs)."""
        current = self.current
        return [current] + [g for g in self.others if g.label != current.label]

    @property
    def comparing(self) -> bool:
        """More than one run in the project: the run labels, r and e."""
        return len(self.groups) > 1

    def _update_grid(self) -> None:
        shown = [g for g in self.groups if g.label not in self.hidden]
        self.grid = compare(shown, epochs=None if self.across is None else [self.across])

    def _focused(self) -> tuple[str, int] | None:
        columns = self.grid.columns
        return columns[self.col] if 0 <= self.col < len(columns) else None

    def focused_group(self) -> RunGroup | None:
        focused = self._focused()
        return None if focused is None else self.grid.group(focused[0])

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pick_runs", "across"):
            return self.comparing  # with one run: neither in the footer nor working
        if action == "keep_suggested":
            return self._suggested() is not None
        return True

    def _suggestion(self) -> tuple[RunGroup, str, int | None] | None:
        """The focused run's suggestion: (its group, the line, the epoch K keeps or None)."""
        group = self.focused_group() or (self.groups[0] if self.groups else None)
        found = self.suggestions.get(group.label) if group is not None else None
        return None if group is None or found is None else (group, found[0], found[1])

    def _suggested(self) -> tuple[RunGroup, int] | None:
        found = self._suggestion()
        return None if found is None or not found[2] else (found[0], int(found[2]))

    # -- drawing

    def _layout(self) -> tuple[int, int, int]:
        return page_layout(self.size.width or 80, self.size.height or 24, self.grid.rows or self.gallery.rows,
                           (1 if self.comparing else 0) + (1 if self.suggestions else 0))

    def _last_epoch(self, label: str) -> int | None:
        if label == self.current.label:
            return self.last_epoch
        group = self.grid.group(label)
        return group.planned_epochs if group is not None else None

    def redraw(self) -> None:
        grid = self.grid
        cell_w, cell_h, per_page = self._layout()
        columns = grid.columns
        self.col = min(self.col, max(0, len(columns) - 1))
        self.row = min(self.row, max(0, grid.rows - 1))
        if self.col < self.first:
            self.first = self.col
        elif self.col >= self.first + per_page:
            self.first = self.col - per_page + 1
        self.first = max(0, min(self.first, max(0, len(columns) - per_page)))
        shown = columns[self.first : self.first + per_page]
        pages = max(1, -(-len(columns) // per_page))
        # counted from the newest epoch: the window that ends with it is the last page (it opens there)
        page = pages - -(-max(0, len(columns) - self.first - per_page) // per_page)
        columns_text = f"{len(columns)} column" + ("" if len(columns) == 1 else "s")
        if self.comparing:
            runs_shown = len({label for label, _ in columns}) if columns else 0
            what = f"{runs_shown} of {len(self.groups)} runs (r)"
            if self.across is not None:
                what += f" · {epoch_label(self.across, None)} across runs (e: every epoch)"
            title = Text(f" samples · {what} · {columns_text}", no_wrap=True, overflow="ellipsis")
        else:
            title = Text(f" samples · {self.output_name} · {columns_text}", no_wrap=True, overflow="ellipsis")
        if pages > 1:
            title.append(f" · page {page}/{pages} ([ ])")
        self.query_one("#samples-title", Static).update(title)
        runs_line = Text(" " * LABEL_WIDTH, no_wrap=True, overflow="ellipsis")
        header = Text(" " * LABEL_WIDTH, no_wrap=True, overflow="ellipsis")
        for index, (label, epoch) in enumerate(shown):
            style = "bold reverse" if self.first + index == self.col else "bold"
            runs_line.append(label[:cell_w].ljust(cell_w + 1), style=style)
            text = epoch_label(epoch, self._last_epoch(label), cell_w)[:cell_w].ljust(cell_w + 1)
            header.append(text, style=style)
        runs_widget = self.query_one("#samples-runs", Static)
        runs_widget.display = self.comparing
        runs_widget.update(runs_line)
        self.query_one("#samples-epochs", Static).update(header)
        drawn = (tuple(shown), self.first, cell_w, cell_h, tuple(grid.prompts),
                 tuple(sorted((k, v.path) for k, v in grid.cells.items() if (k[1], k[2]) in shown)))
        if drawn != self._drawn:
            self._drawn = drawn
            self._rebuild(shown, cell_w, cell_h)
        for cell in self.query(SampleCell):
            cell.set_class(cell.name == f"{self.row}:{self.col}", "-cursor")
        self._info()
        self.refresh_bindings()

    def _rebuild(self, shown: list[tuple[str, int]], cell_w: int, cell_h: int) -> None:
        from lorawizard.tui.images import image_widget_class

        box = self.query_one("#samples-grid", Vertical)
        box.remove_children()
        rows: list[Widget] = []
        for row in range(self.grid.rows):
            prompt = self.grid.prompts[row]
            label = Static(Text(f"{row + 1} {' '.join(prompt.split())}", overflow="ellipsis"), classes="samples-label")
            cells = []
            for offset, (run, epoch) in enumerate(shown):
                image = self.grid.image(row, run, epoch)
                if image is not None:
                    try:
                        inner = image_widget_class()(str(image.path))
                    except Exception:  # noqa: BLE001 - an unreadable image shows as a gap
                        inner = Static("?", classes="empty")
                else:
                    inner = Static("·", classes="empty")
                cell = SampleCell(inner, name=f"{row}:{self.first + offset}")
                cell.styles.width, cell.styles.height = cell_w, cell_h
                cells.append(cell)
            line = Horizontal(label, *cells, classes="samples-row")
            line.styles.height = cell_h
            rows.append(line)
        if not rows or not shown:
            text = ("no samples yet: sd-scripts writes them at the first sampling (baseline) and every "
                    "train.samples.every_n_epochs epochs")
            if self.comparing and self.hidden:
                text = "no samples in the runs shown: r picks the runs"
            rows = [Static(text, classes="samples-label")]
        box.mount_all(rows)

    def _info(self) -> None:
        info = Text(no_wrap=True, overflow="ellipsis")
        focused = self._focused()
        if focused is not None:
            label, epoch = focused
            prompt = self.grid.prompts[self.row] if self.row < self.grid.rows else ""
            run = f"{label} · " if self.comparing else ""
            info.append(f" {run}{epoch_label(epoch, self._last_epoch(label))} · prompt {self.row + 1}: ")
            info.append(" ".join(prompt.split()), style="italic")
            if self.across is not None:
                missing = [g.label for g in self.groups if g.label not in self.hidden
                           and g.label not in {c[0] for c in self.grid.columns}]
                if missing:
                    info.append(f" · no epoch {self.across}: {', '.join(missing)}")
        self.query_one("#samples-info", Static).update(info)
        line = self.query_one("#samples-suggest", Static)
        line.display = bool(self.suggestions)
        found = self._suggestion()
        text = Text(no_wrap=True, overflow="ellipsis")
        if found is not None:
            text.append(f" {found[0].label}: " if self.comparing else " ", style="bold")
            text.append(found[1])
            if found[2]:
                text.append(" · K keeps it")
        line.update(text)

    # -- actions

    def action_move(self, rows: int, cols: int) -> None:
        self._chosen = True
        self.row = max(0, min(self.grid.rows - 1, self.row + rows))
        self.col = max(0, min(len(self.grid.columns) - 1, self.col + cols))
        self.redraw()

    def action_epoch(self, step: int) -> None:
        """The focused run's previous/next epoch (in "epoch N across runs": N itself)."""
        focused = self._focused()
        if focused is None:
            return
        self._chosen = True
        label, epoch = focused
        if self.across is not None:
            epochs = sorted({e for g in self.groups if g.label not in self.hidden for e in g.epochs})
            index = epochs.index(epoch) + step if epoch in epochs else 0
            if 0 <= index < len(epochs):
                self._show_across(epochs[index], label)
            return
        mine = [i for i, (run, _) in enumerate(self.grid.columns) if run == label]
        here = mine.index(self.col)
        if 0 <= here + step < len(mine):
            self.col = mine[here + step]
        self.redraw()

    def action_page(self, pages: int) -> None:
        """Moves the window a page of columns, never past either end (so a page is always full: the last one ends
        with the newest epoch, the first one begins with the oldest); the cursor moves along with it."""
        self._chosen = True
        _, _, per_page = self._layout()
        count = len(self.grid.columns)
        first = max(0, min(count - per_page, self.first + pages * per_page))
        self.col = max(first, min(first + per_page - 1, count - 1, self.col + first - self.first))
        self.first = first
        self.redraw()

    def action_across(self) -> None:
        """Epoch N (the focused column's) across every run shown; again: every epoch, the cursor on the same cell."""
        focused = self._focused()
        if self.across is not None:
            self.across = None
            self._update_grid()
            if focused in self.grid.columns:
                self.col = self.grid.columns.index(focused)
            self._chosen = True
            self.redraw()
            return
        if focused is None:
            self.notify("no samples to compare yet")
            return
        self._chosen = True
        self._show_across(focused[1], focused[0])

    def _show_across(self, epoch: int, label: str) -> None:
        self.across = epoch
        self._update_grid()
        labels = [run for run, _ in self.grid.columns]
        self.col = labels.index(label) if label in labels else 0
        self.first = 0
        self.redraw()

    def action_pick_runs(self) -> None:
        choices = [(g, g.label not in self.hidden) for g in self.groups]
        self.app.push_screen(RunPicker(choices), self._picked)

    def _picked(self, shown: set[str] | None) -> None:
        if shown is None:
            return
        focused = self._focused()
        self.hidden = {g.label for g in self.groups if g.label not in shown}
        self._update_grid()
        self.col = self.grid.columns.index(focused) if focused in self.grid.columns else 0
        self._chosen = True
        self.redraw()

    def selected(self) -> tuple[int, Any] | None:
        """(epoch, image or None) of the focused cell; None without samples."""
        focused = self._focused()
        if focused is None:
            return None
        return focused[1], self.grid.image(self.row, *focused)

    def action_open(self) -> None:
        chosen = self.selected()
        focused = self._focused()
        if chosen is None or chosen[1] is None or focused is None:
            self.notify("no image here yet")
            return
        self._chosen = True  # k after the large view keeps this epoch, even if a newer one arrived meanwhile
        epoch, image = chosen
        prompt = self.grid.prompts[self.row] if self.row < self.grid.rows else ""
        run = f"{focused[0]} · " if self.comparing else ""
        caption = f"{run}{epoch_label(epoch, self._last_epoch(focused[0]))} · {' '.join(prompt.split())}"
        self.app.push_screen(LargeSample(image.path, caption))

    def action_lora_tools(self) -> None:
        """Resize, convert, merge and check the kept LoRA (tui/screens/loras.py)."""
        from lorawizard.tui.screens.loras import LoraToolsScreen

        self.app.push_screen(LoraToolsScreen())

    def action_keep(self) -> None:
        chosen = self.selected()
        group = self.focused_group()
        if chosen is None or group is None:
            self.notify("no epoch to keep yet")
            return
        if chosen[0] == 0:
            self.notify("the baseline is the untrained model: choose an epoch", severity="warning")
            return
        self._keep(chosen[0], group.tip if group.records else None, group.label if self.comparing else "")

    def action_keep_suggested(self) -> None:
        found = self._suggested()
        if found is None:
            self.notify("no suggested epoch for this run (it needs train.validation_split)", severity="warning")
            return
        group, epoch = found
        self._keep(epoch, group.tip if group.records else None, group.label if self.comparing else "")

    @work(thread=True, exclusive=True, group="samples-keep", exit_on_error=False)
    def _keep(self, epoch: int, record: Any, label: str) -> None:
        from lorawizard.core.train.keep import KeepError, keep_epoch

        store = wizard_app(self).store
        try:
            kept = keep_epoch(store.session, epoch, record, note=True)  # the person's choice: publish takes it
            store.decide("train.keep_epoch", epoch)  # the store is thread-safe: no hop to the UI thread
        except (KeepError, SessionError) as exc:
            self.post_message(Notice(str(exc), "error"))  # shown by the App
            return
        run = f"{label} " if label else ""
        self.post_message(Notice(f"kept {run}epoch {kept.epoch}: {kept.lora} (+ {kept.sidecar.name})"))


class RunPicker(ModalScreen[set[str] | None]):
    """Which runs the gallery shows: space toggles a run, Enter shows the ticked ones, Esc changes nothing."""

    BINDINGS = [Binding("enter", "done", "Show", priority=True), Binding("escape", "dismiss", "Cancel"),
                Binding("a", "all", "All")]
    CSS_PATH = "samples.tcss"

    def __init__(self, choices: list[tuple[RunGroup, bool]]) -> None:
        super().__init__()
        self.choices = choices

    def compose(self) -> ComposeResult:
        box = Vertical(id="run-picker")
        box.border_title = "Runs shown"
        box.border_subtitle = "space toggles · a all · Enter shows · Esc"
        with box:
            yield SelectionList[str](*[(self._line(g), g.label, on) for g, on in self.choices])

    @staticmethod
    def _line(group: RunGroup) -> Text:
        epochs = [e for e in group.epochs if e]
        span = f"epochs {epochs[0]}–{epochs[-1]}" if len(epochs) > 1 else (f"epoch {epochs[0]}" if epochs else
                                                                              "no epochs sampled")
        line = Text(group.label, style="bold", no_wrap=True, overflow="ellipsis")
        line.append(f"  {group.run_id or 'this run'} · {span}" + (" · baseline" if 0 in group.epochs else ""))
        return line

    def action_done(self) -> None:
        self.dismiss(set(self.query_one(SelectionList).selected))

    def action_all(self) -> None:
        self.query_one(SelectionList).select_all()

    async def action_dismiss(self, result: Any = None) -> None:
        self.dismiss(None)


class LargeSample(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]
    CSS_PATH = "samples.tcss"

    def __init__(self, path: Path, caption: str) -> None:
        super().__init__()
        self.path, self.caption = path, caption

    def compose(self) -> ComposeResult:
        from lorawizard.tui.images import image_widget_class

        box = Vertical()
        box.border_title = self.caption
        box.border_subtitle = f"{self.path.name} · Esc closes"
        with box:
            yield image_widget_class()(str(self.path))
