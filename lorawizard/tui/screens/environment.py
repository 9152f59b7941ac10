"""Environment screen: findings (ok / warning / error, each with its fix), one-key fixes streamed live, and the
exact training command, shell-quoted and copyable.

The check and the fixes run through the screen's StepRunner (a thread worker) with the core env step; this screen
only turns the step's result into widgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.cells import cell_len, set_cell_size
from rich.table import Table
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Input, Label, Log, Select, Static

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.environment import step as core_env
from lorawizard.core.session.document import FIELDS
from lorawizard.tui.messages import StepFinished
from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.text_fit import shell_tilde, wrap_shell
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.settings_form import SettingInput, SettingsForm, placeholder_of

ACTION_KEYS = {"clone": "c", "venv": "v", "install": "i", "libpath": "l", "fp32": "p"}
PATH_STARTS = ("/", "~")  # a path typed outside the fields begins the sd-scripts path
LABEL_WIDTH = 16  # a finding's title takes at most this many cells (longer ones end with …)


def _fit(label: str, width: int) -> str:
    """`label` in at most `width` cells: cut with an ellipsis when longer."""
    return label if cell_len(label) <= width else set_cell_size(label, width - 1).rstrip() + "…"


def _style(status: str) -> str:
    """A finding's colour: ok, warning, or error (bold)."""
    return {"ok": tone("success"), "warning": tone("warning")}.get(status) or tone("error", bold=True)


class CommandView(Static):
    """The training command, wrapped to its width by wrap_shell: every line but the last ends ` \\` (the first, long
    line too), so what is shown still pastes as one command."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self._text, self._shell, self._width = "", False, 0

    def show(self, text: str, *, shell: bool) -> None:
        self._text, self._shell = text, shell
        self._draw()

    def _draw(self) -> None:
        self._width = self.content_size.width
        width = self._width or max(20, self.app.size.width - 6)  # before its first layout: about the body's width
        self.update(Text(wrap_shell(self._text, width) if self._shell else self._text))

    def on_resize(self) -> None:
        if self.content_size.width != self._width:
            self._draw()


class EnvironmentScreen(StepScreen):
    STEP = "env"
    INTRO = "Finds sd-scripts and its Python, checks torch, CUDA and accelerate, and fixes what is missing."

    BINDINGS = [
        Binding("c", "fix('clone')", "Clone", show=True),
        Binding("v", "fix('venv')", "Venv", show=True),
        Binding("i", "fix('install')", "Install", show=True),
        Binding("l", "fix('libpath')", "Driver libs", show=False),  # NixOS only: its finding says [l]
        Binding("p", "fix('fp32')", "fp32", show=False),  # a CPU without native bf16: its finding says [p]
        Binding("y", "copy_command", "Copy cmd", show=True),
    ]

    CSS_PATH = "environment.tcss"

    def __init__(self) -> None:
        super().__init__()
        self.command: Any = None  # core.command.TrainCommand
        self.findings: list[core_env.Finding] = []
        self._fixing = False
        self._guessed = False  # sd-scripts found in a usual place, not yet kept

    def compose_body(self) -> ComposeResult:
        yield Static("", id="lead")  # above the findings: what to do when sd-scripts is missing
        yield Static(Text("Press Enter (here or in a field below) to check the environment.", style="dim"),
                     id="findings")
        yield SettingsForm(["paths.sd_scripts", "paths.python"], labels={"paths.sd_scripts": "sd-scripts",
                                                                        "paths.python": "trainer Python"})
        with Horizontal(id="branch-row"):
            yield Label("clone release")
            yield Select([(b, b) for b in core_env.BRANCHES], value=core_env.DEFAULT_BRANCH, allow_blank=False, id="branch")
            yield Static(f"{core_env.PINNED_TAG}: a release with every base model (Chroma since v0.10.0); "
                         "main and sd3 move", id="branch-note")
        yield Static("Training command", classes="section-title")
        yield CommandView(id="command")
        yield Static("", id="command-note")

    def on_mount(self) -> None:
        self.when_mounted(self._show_found, "set-paths-sd_scripts", "set-paths-python")
        self._show_command_preview()

    def _show_found(self) -> None:
        """The guesses into the form's fields and the findings line."""
        found = self._show_guesses()
        if found is not None:
            self.query_one("#findings", Static).update(Text(
                f"Found sd-scripts in {display_path(found)}. Press Enter to check the environment "
                "(or type another path below).", style="dim"))

    def _show_guesses(self) -> Path | None:
        """sd-scripts in a usual place and the venv inside it, shown as guesses (placeholders): the check (Enter)
        keeps them in session.toml; typing a path replaces them."""
        session = wizard_app(self).session
        sd_scripts = None if session.is_set("paths.sd_scripts") else core_env.find_sd_scripts(session)
        guesses = {"paths.sd_scripts": sd_scripts}
        if not session.is_set("paths.python"):
            python = core_env.find_python(session, sd_scripts or session.paths.sd_scripts)
            guesses["paths.python"] = python if python is not None and python.exists() else None
        for key, path in guesses.items():
            field = self.query_one("#set-" + key.replace(".", "-"), SettingInput)
            if path is None:  # no guess any more (another sd-scripts typed): a stale "found" would contradict
                if "(found" in field.placeholder:  # the findings above it
                    field.placeholder, field.hint = placeholder_of(FIELDS[key]), FIELDS[key].doc
                continue
            field.placeholder = f"{display_path(path)} (found)"  # short: the line above says what Enter does
            field.hint = ("found: Enter checks it and keeps it in session.toml"
                          if key == "paths.sd_scripts" else "found: the venv in sd-scripts; Enter keeps it")
        self._guessed = sd_scripts is not None
        return sd_scripts

    def on_key(self, event: events.Key) -> None:
        """A path typed with no field focused goes into the sd-scripts field: the screen says "type another path
        below", and a person does, starting with / or ~ (before, the path's letters ran the screen's keys: c asked to
        clone, y copied, a q quit)."""
        outside = self.focused is None or self.focused.has_class("step-body")  # not in a field, a select, a log
        if event.character in PATH_STARTS and outside and not self.runner.running:
            field = self.query_one("#set-paths-sd_scripts", Input)
            self.set_focus(field)  # now, not later (field.focus() would select the text after this key typed)
            field.post_message(events.Key(event.key, event.character))  # after its Focus: it types over the value
            event.stop()
            event.prevent_default()

    # -- the command

    def _show_command_preview(self) -> None:
        """The command as it stands (nothing written): paths.runs, the preview's config files, the session's values."""
        from lorawizard.core.launch.command import CommandError

        try:
            app = wizard_app(self)
            command = core_env.preview_command(app.session, app.step_options.get("env", {}).get("nvml"))
        except CommandError as exc:
            if self._guessed and not wizard_app(self).session.is_set("paths.sd_scripts"):
                self._set_command(None, "shown once the check (Enter) has kept the sd-scripts found")
            else:
                self._set_command(None, f"✗ {exc}")
            return
        self._set_command(command, "y copies it as one line · its config files are written by the check (Enter)")

    def _set_command(self, command: Any, note: str) -> None:
        self.command = command
        # shown `~/…` (shorter, wraps less at 80 columns); y copies the command with its paths written out
        text = shell_tilde(command.shell_text(multiline=True)) if command is not None else "(not available yet)"
        self.query_one("#command", CommandView).show(text, shell=command is not None)
        self.query_one("#command-note", Static).update(Text(note, style=tone("error") if note.startswith("✗") else ""))

    def action_copy_command(self) -> None:
        if self.command is None:
            self.notify("no training command yet: see the findings above", severity="warning")
            return
        self.app.copy_to_clipboard(self.command.shell_text())
        self.notify("training command copied (one line, via the terminal's clipboard)")

    # -- findings

    def _show_findings(self, findings: list[core_env.Finding]) -> None:
        self.findings = list(findings)
        grid = Table.grid(padding=(0, 1), expand=True)
        label_width = min(LABEL_WIDTH, max((cell_len(f.title) for f in findings), default=1))
        grid.add_column(width=1, no_wrap=True)
        grid.add_column(width=label_width + 1, no_wrap=True)  # + 1: at least two blanks before the value
        grid.add_column(ratio=1, overflow="fold")
        for finding in findings:
            body = Text(finding.message)
            key = ACTION_KEYS.get(finding.action or "")
            hint = finding.fix
            if key:  # the one-key fix, as the footer shows it
                hint = f"[{key}] {hint}" if hint else f"[{key}] fixes it"
            if hint:
                body.append(f"\n→ {hint}", style="dim" if finding.status == "ok" else _style(finding.status))
            for line in finding.command_lines():
                body.append(f"\n$ {line}", style="dim")
            grid.add_row(Text(core_env.STATUS_MARKS[finding.status], style=_style(finding.status)),
                         Text(_fit(finding.title, label_width), style="bold"), body)
        self.query_one("#findings", Static).update(grid)
        self._show_lead(findings)

    def _show_lead(self, findings: list[core_env.Finding]) -> None:
        """No sd-scripts: say the two ways on, above everything else."""
        missing = any(f.action == "clone" and f.status == "error" for f in findings)
        lead = self.query_one("#lead", Static)
        if missing:
            target = display_path(core_env.default_clone_target(self.session))
            lead.update(f"sd-scripts is not on this machine. Press c to clone it into {target} (asks once), "
                        "or type the path of your checkout in the sd-scripts field below and press Enter.")
        lead.set_class(missing, "shown")

    @on(StepFinished)
    def _step_finished(self, message: StepFinished) -> None:
        result = message.result
        log = self.runner.query_one(Log)
        if result is None or message.error:
            self._fixing = False
            return
        findings = result.data.get("findings")
        if findings is not None:
            self._show_findings(findings)
        command = result.data.get("command")
        diagnosis = result.data.get("diagnosis")
        if command is not None:
            written = getattr(diagnosis, "command_files_written", False)
            where = core_env.preview_run_dir(wizard_app(self).session)
            note = (f"y copies it as one line · config files in {where}" if written
                    else "y copies it as one line · the dataset config is written once the dataset step has run")
            self._set_command(command, note)
        elif diagnosis is not None:
            self._set_command(None, f"✗ {diagnosis.command_problem or 'not available yet'}")
        if not self._fixing:
            log.display = False  # the findings say it all; a fix keeps its output visible
        self._fixing = False
        self._refresh_form()

    def _refresh_form(self) -> None:
        """A fix may have recorded paths.sd_scripts / paths.python: show the saved values."""
        session = wizard_app(self).session
        for key in ("paths.sd_scripts", "paths.python"):
            widget = self.query_one("#set-" + key.replace(".", "-"), Input)
            value = session.get(key)
            if value and widget.value != value:
                widget.value = value
        self._show_guesses()

    # -- actions

    def action_fix(self, action: str) -> None:
        """A fix installs or clones: it asks first (a stray letter must never start one)."""
        if not core_env.is_fix(action):  # the bindings c, v and i name one each
            return
        if self.runner.running:
            self.notify("busy: wait for the current check or fix, or press Esc", severity="warning")
            return
        from lorawizard.tui.screens.confirm import ConfirmScreen

        branch = str(self.query_one("#branch", Select).value)
        session = self.session
        questions: dict[core_env.FixAction, str] = {
            "clone": f"Clone kohya-ss/sd-scripts (branch {branch}) into {display_path(core_env.default_clone_target(session))}?",
            "venv": "Create the trainer's Python environment (a venv inside sd-scripts)?",
            "install": "Install torch for your driver and sd-scripts' requirements into the trainer's Python?",
            "libpath": "Run the trainer with NixOS's driver libraries (/run/opengl-driver/lib) on LD_LIBRARY_PATH?",
            "fp32": "Train in fp32 (mixed precision no)? This CPU has no native bf16: bf16 runs about 200× slower.",
        }
        if action == "venv" and any(f.key == "uv_venv" and f.action == "venv" for f in self.findings):
            questions["venv"] = "Create a plain venv (python -m venv) in sd-scripts and use it instead of the uv one?"
        notes = {"libpath": "Saved in session.toml as paths.ld_library_path; the command shows it.",
                 "fp32": 'Saved in session.toml as train.mixed_precision = "no" (the Train screen\'s field); about twice the RAM.'}
        note = notes.get(action, "This downloads and writes files; it can take minutes.")
        self.app.push_screen(ConfirmScreen(questions[action], note),
                             lambda yes: self._run_fix(action, branch) if yes else None)

    def _run_fix(self, action: core_env.FixAction, branch: str) -> None:
        self._fixing = True
        options: core_env.EnvOptions = {**wizard_app(self).step_options.get("env", {}), "fix": action, "branch": branch}
        self.runner.start(options)
        self.runner.scroll_visible()

    @on(SettingsForm.Saved)
    def _setting_saved(self, message: SettingsForm.Saved) -> None:
        """The command follows the paths; Enter in a field also runs the check (the form has nothing else to submit)."""
        self._show_command_preview()
        if message.submitted and not self.runner.running:
            self.call_after_refresh(self.action_primary)
