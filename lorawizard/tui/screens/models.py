"""Models step screen: one row per role with its state, and the actions verify, download all, choose a file,
add a folder to search, log in (token), and the preset.

Everything long runs through the screen's StepRunner (a thread worker): it keeps running while the user looks at
another step, because each step is its own Textual mode and this screen instance persists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input, Label, Select

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.common.progress import format_bytes, format_duration
from lorawizard.core.models import catalog
from lorawizard.core.models.captioners import CAPTIONER_ROLE, captioner_row
from lorawizard.core.models.files import model_file_problem, preset_name
from lorawizard.core.models.identify import identify, role_problem
from lorawizard.core.models.rows import ModelsAction, ModelsOptions, RoleState
from lorawizard.core.models.step import TOKENIZER_ROLE, add_search_folder
from lorawizard.core.profile import FAMILIES, ModelFamily, Preset, family_for
from lorawizard.tui.messages import StepFinished
from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.text_fit import PATH_RE, FitName, FitPaths, cut_middle, shown_path
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.settings_form import FitInput, SettingsForm
from lorawizard.tui.widgets.tables import Table

ROW_TITLES = {**catalog.ROLE_TITLES, TOKENIZER_ROLE: "tokenizers"}
ROWS = (*catalog.ROLES, TOKENIZER_ROLE)  # the default family's; a session's are `ModelsScreen.roles`
PRECISION_WORDS = {"16bit": "16-bit", "fp8": "fp8"}


def preset_label(preset: Preset) -> str:
    """`fp8 · FLUX.1-dev fp8 (default, ungated)`: the file's precision first, the choice the screen offers."""
    return f"{PRECISION_WORDS.get(preset.precision, preset.precision)} · {preset.title}"


@dataclass
class ModelRowChanged(Message):
    """Posted from the worker thread whenever a row's state changes."""

    state: RoleState


@dataclass
class TokenChecked(Message):
    """Posted by the token worker: whom Hugging Face knows the token as, or why it was refused."""

    user: str | None
    problem: str = ""


def state_text(state: RoleState) -> Text:
    """The state column: ✓ verified · ↓ 43% 85 MB/s ETA 2:10 · missing · ✗ reason."""
    if state.state == "found":
        if state.verified:
            return Text("✓ verified", style=tone("success"))
        if state.what:  # its header says it is this role's file: "✓ T5-XXL fp8"
            return Text(f"✓ {state.what}", style=tone("success"))
        return Text("✓ found", style=tone("success")) if state.role == TOKENIZER_ROLE else Text("✓ found (unverified)",
                                                                                                 tone("warning"))
    if state.state == "downloading":
        if state.size:
            pct = f"{state.done / state.size:.0%}"
            rate = f" {format_bytes(state.rate)}/s" if state.rate else ""
            eta = f" ETA {format_duration(state.eta_s)}" if state.eta_s is not None else ""
            return Text(f"↓ {pct}{rate}{eta}", style=tone("info", bold=True))
        return Text(f"↓ {format_bytes(state.done)}", style=tone("info", bold=True))
    if state.state == "missing":
        size = f" ({format_bytes(state.size)})" if state.size else ""
        return Text(f"missing{size}", style=tone("warning"))
    if state.state == "error":
        return Text("✗ error", style=tone("error", bold=True))
    if state.state == "checking":
        return Text("checking…", style="dim")
    return Text("…", style="dim")


class FoundWhere:
    """A found file in the where column, drawn at the column's width: `~/…/unet/flux1-dev-fp8.safetensors (ComfyUI)`;
    narrower, the path loses its middle first, then the source goes, so the file's name stays whole."""

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = display_path(path), source

    @property
    def plain(self) -> str:
        return f"{self.path} ({self.source})"

    def __str__(self) -> str:
        return self.plain

    def fitted(self, width: int) -> Text:
        suffix = f" ({self.source})"
        name = self.path.rsplit("/", 1)[-1]
        beside = cut_middle(self.path, width - cell_len(suffix))
        if beside.endswith("/" + name) or beside == self.path:
            return Text(beside + suffix, no_wrap=True, overflow="ellipsis")
        return Text(cut_middle(self.path, width), no_wrap=True, overflow="ellipsis")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.fitted(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(20, cell_len(self.plain)), cell_len(self.plain))


def where_text(state: RoleState) -> Text | FitName | FitPaths | FoundWhere:
    """The where column: a found file `~/…` (FoundWhere), else the repo and file it comes from, or the error (its
    paths cut in the middle)."""
    if state.state == "found" and state.path is not None:
        return FoundWhere(state.path, state.source)
    if state.state == "error":
        return FitPaths(Text(state.note, style=tone("error"), overflow="ellipsis", no_wrap=True), one_line=True)
    repo = f"{state.repo}/" if state.repo else ""
    note = f" · {state.note}" if state.note and state.state == "missing" else ""
    if repo or state.file:  # cut in the middle as the found files are: the file's name stays whole
        return FitName(f"{repo}{state.file}", style="dim", suffix=note)
    # the tokenizers: what the folder lacks; its path whole while it fits, else cut in the middle
    path = PATH_RE.search(state.note)
    if path is None:
        return Text(state.note, style="dim", overflow="ellipsis", no_wrap=True)
    return FitName(shown_path(path.group()), style="dim", prefix=state.note[: path.start()],
                   suffix=state.note[path.end() :])


class ModelsScreen(StepScreen):
    STEP = "models"
    MAIN = "#model-rows"
    AUTO_FOCUS = MAIN
    INTRO = "Uses your files (HF cache, ComfyUI, your folders); downloads the rest."

    BINDINGS = [
        Binding("v", "verify", "Verify", show=True),
        Binding("f", "ask('file')", "Choose file", show=True),
        Binding("a", "ask('folder')", "Add folder", show=True),
        Binding("t", "ask('token')", "Token", show=True),
        Binding("c", "captioner", "Captioner", show=True),
    ]

    CSS_PATH = "models.tcss"

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, RoleState] = {}
        self.asking: str | None = None
        self._next: ModelsAction | None = None  # an action to start once the running one finishes
        self._preset: str | None = None
        self._searching = False  # the running find reads every header (a folder was added): say what it found
        self.family: ModelFamily | None = None  # the session's base model: its roles are the rows
        self.roles: tuple[str, ...] = ROWS

    def compose_body(self) -> ComposeResult:
        yield SettingsForm(["models.family", "models.preset", "paths.models", "paths.tokenizers"],
                           {"models.family": "base model", "models.preset": "files", "paths.models": "models folder",
                            "paths.tokenizers": "tokenizers"})
        table = Table(id="model-rows", cursor_type="row", zebra_stripes=False)
        yield table
        yield Label("", id="model-problem")
        yield Label("Ctrl+G download all · v verify · f choose a file for the row · a add a folder to search · "
                    "t Hugging Face token · c the auto-captions model", id="model-hint")
        yield FitInput(id="model-ask")

    def on_mount(self) -> None:
        table = self.query_one(Table)
        table.add_column("model", key="role", width=18)
        table.add_column("state", key="state", width=24)
        table.add_column("where", key="where")
        self.when_mounted(self._open, "set-models-family", "set-models-preset")

    def _open(self) -> None:
        """The family and file-set choices, the rows, then the files verified (once the form's fields are mounted)."""
        base = self.query_one("#set-models-family", Select)
        with base.prevent(Select.Changed):
            base.set_options([(f"{family.title}{' (default)' if i == 0 else ''}", family.name)
                              for i, family in enumerate(FAMILIES.values())])
        base.value = family_for(wizard_app(self).session).name
        base.mutate_reactive(Select.value)  # type: ignore[misc]  # the reactive itself, not a value
        self._show_family()
        self.call_after_refresh(self._fit_where)
        self.call_after_refresh(self.action_verify)

    def _show_family(self) -> None:
        """The session's family: its file sets in the `files` choice, one row per role it has (no CLIP-L for
        Chroma), its note under the table."""
        session = wizard_app(self).session
        family = self.family = family_for(session)
        preset = family.preset(preset_name(session))
        self._preset = preset.name
        self.roles = (*family.role_names, TOKENIZER_ROLE)
        choice = self.query_one("#set-models-preset", Select)
        with choice.prevent(Select.Changed):
            choice.set_options([(preset_label(p), p.name) for p in family.presets])
        choice.value = preset.name  # a preset of another family left in the session becomes this family's
        choice.mutate_reactive(Select.value)  # type: ignore[misc]  # the same value: redraw its new label
        table = self.query_one(Table)
        table.clear()
        self.rows.clear()
        titles = {role.name: role.title for role in family.roles}
        for role in self.roles:
            if role == TOKENIZER_ROLE:
                state = RoleState(role, "CLIP-L + T5 tokenizers", "")
            else:
                entry = preset.file_for(role)
                state = RoleState(role, entry.filename, entry.repo)
            self.rows[role] = state
            table.add_row(Text(titles.get(role, ROW_TITLES[role])), state_text(state), where_text(state), key=role)
        self._add_captioner_row(table)

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_where)

    def _add_captioner_row(self, table: Table) -> None:
        """The auto-captions model: a catalog one (downloaded by c) or the folder `[captions] model` names."""
        row = captioner_row(wizard_app(self).session)
        self.rows[CAPTIONER_ROLE] = row
        table.add_row(Text("captioner"), state_text(row), where_text(row), key=CAPTIONER_ROLE)

    @on(events.ScreenResume)
    def _captioner_again(self) -> None:
        """`[captions] model` may have changed on the Captions screen (or by hand): the row follows it."""
        if CAPTIONER_ROLE in self.rows and not self.runner.running:
            self._row_changed(ModelRowChanged(captioner_row(wizard_app(self).session)))

    def action_captioner(self) -> None:
        self._start("captioner")

    def _fit_where(self) -> None:
        """The `where` column takes the rest of the width (paths are long; ellipsis at the end)."""
        self.query_one(Table).fill_width("where", 20, unsized=self.size.width - 2)

    # -- running the step

    def _start(self, action: ModelsAction, *, header_search: bool = False) -> None:
        if self.runner.running:
            self._next = action if action != "find" else self._next
            self.notify("busy: the current run finishes first" if action == "find" else f"{action} starts next")
            return
        self._say("")
        options: ModelsOptions = {"action": action, "on_state": self._post_state, "rows_only": True,
                                  "header_search": header_search}
        self._searching = header_search
        self.runner.start(options)

    def _say(self, line: str, *, info: bool = False) -> None:
        """The line under the table: a problem (error colour) or, with `info`, what a search found."""
        label = self.query_one("#model-problem", Label)
        label.set_class(info, "-info")
        label.update(line)

    def _post_state(self, state: RoleState) -> None:  # worker thread
        self.post_message(ModelRowChanged(state))

    def action_primary(self) -> None:
        self._start("download")

    def action_verify(self) -> None:
        self._start("find")

    @on(ModelRowChanged)
    def _row_changed(self, message: ModelRowChanged) -> None:
        state = message.state
        table = self.query_one(Table)
        if state.role not in self.rows:
            return
        self.rows[state.role] = state
        table.update_cell(state.role, "state", state_text(state))
        table.update_cell(state.role, "where", where_text(state), update_width=False)

    @on(StepFinished)
    def _finished(self, message: StepFinished) -> None:
        if message.step != self.STEP:
            return
        errors = [row.note for row in self.rows.values() if row.state == "error" and row.note]
        searched = message.result.data.get("header_search") if message.result is not None else None
        if message.error:
            self._say(message.error)
        elif errors:
            self._say(f"✗ {errors[0]}")  # in full (the status line above the log is cut at the width)
        elif self._searching and searched:
            self._say(str(searched), info=True)  # "searched 6 files by header, matched 3: …"
        self._searching = False
        if self._next:
            action, self._next = self._next, None
            self.call_after_refresh(self._start, action)

    @on(SettingsForm.Saved)
    def _setting_saved(self, message: SettingsForm.Saved) -> None:
        """Another family: its file sets and rows; another preset: new file names, verified again; Enter on the
        models folder: verify again."""
        if message.key == "models.family" and self.family is not None and message.value != self.family.name:
            self._show_family()
            if self.family.note:  # the table's line goes to the files' state next: the note stays a while
                self.notify(self.family.note, title=self.family.title, timeout=12)
            self.call_after_refresh(self._fit_where)
            self.call_after_refresh(self.action_verify)
        elif message.key == "models.preset" and message.value != self._preset:
            self._preset = str(message.value)
            self._relabel()
            self.call_after_refresh(self.action_verify)
        elif message.key in ("paths.models", "paths.tokenizers") and message.submitted:
            self.call_after_refresh(self.action_verify)

    def _relabel(self) -> None:
        session = wizard_app(self).session
        family = family_for(session)
        preset = family.preset(preset_name(session))
        for role in family.role_names:
            entry = preset.file_for(role)
            self._row_changed(ModelRowChanged(RoleState(role, entry.filename, entry.repo)))

    # -- asking for a file, a folder or a token

    def _selected_role(self) -> str:
        table = self.query_one(Table)
        return self.roles[min(max(table.cursor_row, 0), len(self.roles) - 1)]

    def action_ask(self, what: str) -> None:
        ask = self.query_one("#model-ask", Input)
        ask.value = ""
        ask.password = what == "token"
        if what == "file":
            if self.query_one(Table).cursor_row >= len(self.roles):
                self.query_one("#model-problem", Label).update(
                    "the captioner is a folder: set [captions] model to it (F5 on the Captions screen)")
                return
            role = self._selected_role()
            if role == TOKENIZER_ROLE:  # a folder: its field above the table (Enter checks it)
                self.query_one("#set-paths-tokenizers", Input).focus()
                self._say("the tokenizers are a folder: type it here, Enter checks it", info=True)
                return
            ask.placeholder = f"path of your {ROW_TITLES[role]} file (Enter uses it in place, Esc cancels)"
            self.asking = f"file:{role}"
        elif what == "folder":
            ask.placeholder = "a folder to search, e.g. ~/ComfyUI (Enter adds it, Esc cancels)"
            self.asking = "folder"
        else:
            ask.placeholder = "Hugging Face read token (kept in huggingface_hub's store, never shown)"
            self.asking = "token"
        ask.add_class("shown")
        ask.focus()

    def action_cancel(self) -> None:
        if self.asking:
            self._close_ask()
            return
        super().action_cancel()

    def _close_ask(self) -> None:
        ask = self.query_one("#model-ask", Input)
        ask.value = ""
        ask.remove_class("shown")
        self.asking = None
        self.query_one(Table).focus()

    @on(Input.Submitted, "#model-ask")
    def _answered(self, event: Input.Submitted) -> None:
        event.stop()
        value, asking = event.value.strip(), self.asking or ""
        self._close_ask()
        problem = self.query_one("#model-problem", Label)
        if not value:
            return
        if asking.startswith("file:"):
            role = asking.removeprefix("file:")
            try:
                path = Path(value).expanduser()
            except RuntimeError:  # ~nouser
                problem.update(f"{value}: no such user on this machine (the ~user part)")
                return
            if not path.is_file():
                problem.update(f"{display_path(path)} is not a file")
                return
            if (wrong := model_file_problem(path)) is not None:  # a text file taken for FLUX.1: "✓ found"
                problem.update(wrong)
                return
            family = family_for(wizard_app(self).session)  # its header: the T5 file on the CLIP-L row is refused
            if (wrong := role_problem(path, role, identify(path, family), family)) is not None:
                problem.update(wrong)
                return
            error = wizard_app(self).decide(f"models.{role}", str(path.resolve()))
            problem.update(error or "")
            if not error:
                self.action_verify()
        elif asking == "folder":
            error = add_search_folder(wizard_app(self).session, value)
            problem.update(error or "")
            if not error:
                self._start("find", header_search=True)  # then "searched N files by header, matched M"
        elif asking == "token":
            problem.update("checking the token…")
            self._store_token(value)

    @work(thread=True, exclusive=True, group="models-token", exit_on_error=False, description="checking a token")
    def _store_token(self, token: str) -> None:
        from lorawizard.core.models.download import DownloadError, store_token

        try:
            user = store_token(token)
        except DownloadError as exc:
            self.post_message(TokenChecked(None, str(exc)))
            return
        self.post_message(TokenChecked(user))

    @on(TokenChecked)
    def _token_checked(self, message: TokenChecked) -> None:
        self.query_one("#model-problem", Label).update(message.problem)
        if message.user is not None:
            self.notify(f"logged in to Hugging Face as {message.user}")
