"""LoRA tools, pushed over the Samples gallery (key t): resize, convert, merge and check the kept LoRA.

The LoRA worked on is `[tools] lora`, else the kept one (the gallery's k). Keys: r resize (asks `4`, or `fro 0.9`),
c convert to the other key layout, m merge LoRAs (pick two or more, then a weight for each), b merge into the base model
(asks first, with the disk space it needs), l check it loads; Enter shows the focused result's sample beside the
original's; Esc stops a running tool (its whole process group) or goes back. Each tool runs core.loratools.step's
step in a thread worker; its progress (with ETA) and its result are one line each, and the list below shows every
result the tools made (core.loratools.results), with its check.
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
from textual.widgets import OptionList, SelectionList, Static
from textual.widgets.option_list import Option

from lorawizard.core.common.text import one_line
from lorawizard.tui.messages import Notice
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.fit_footer import FitFooter


@dataclass
class ToolProgress(Message):
    text: str
    done: bool = False
    ok: bool = True


class LoraToolsScreen(Screen[None]):
    HELP_TITLE = "LoRA tools"
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "resize", "Resize"),
        Binding("c", "convert", "Convert"),
        Binding("m", "merge", "Merge"),
        Binding("b", "merge_base", "Into base"),
        Binding("l", "check", "Check"),
        Binding("enter", "show", "Samples", show=False),
    ]
    CSS_PATH = "loras.tcss"
    FOOTER_SHORT = {"merge_base": "Base", "check": "Check"}

    def __init__(self) -> None:
        super().__init__()
        self.cancel = threading.Event()
        self.running: str | None = None
        self.rank = 0  # the LoRA's rank: the resize question's default is half of it

    def compose(self) -> ComposeResult:
        yield Static("", id="loras-title")
        yield Static("", id="loras-file")
        yield Static(self._menu(), id="loras-menu")
        yield Static("", id="loras-progress")
        yield Static("", id="loras-result")
        yield OptionList(id="loras-made")
        yield FitFooter()

    @staticmethod
    def _menu() -> Text:
        text = Text()
        for key, what in (("r", "resize to a lower rank (4, or fro 0.9: keep 90% of the weights' energy)"),
                          ("c", "convert to the other key layout (sd-scripts ↔ ai-toolkit/diffusers)"),
                          ("m", "merge LoRAs into one (pick two or more, then their weights)"),
                          ("b", "merge into the base model (a full model file)"),
                          ("l", "check it loads: one image beside the original's")):
            text.append(f" {key} ", style="bold reverse")
            text.append(f" {what}\n")
        return text

    def on_mount(self) -> None:
        self.refresh_file()

    # -- what is shown

    def refresh_file(self) -> None:
        from lorawizard.core.contract import StepFailed
        from lorawizard.core.loratools.results import made
        from lorawizard.core.loratools.step import read_lora, source_lora

        session = wizard_app(self).session
        title = Text(" LoRA tools", style="bold", no_wrap=True, overflow="ellipsis")
        self.rank = 0
        try:
            path = source_lora(session)
            title.append(f" · {path.name}")
            info = read_lora(session, path)
            self.rank = info.rank
            line = info.line().split(": ", 1)[1]
        except StepFailed as exc:
            line = str(exc)
        self.query_one("#loras-title", Static).update(title)
        self.query_one("#loras-file", Static).update(Text(f" {line}", no_wrap=True, overflow="ellipsis"))
        options = self.query_one("#loras-made", OptionList)
        highlighted = options.highlighted
        options.clear_options()
        results = list(reversed(made(session)))
        for item in results:
            options.add_option(Option(Text(item.short(), no_wrap=True, overflow="ellipsis"), id=str(item.path)))
        if not results:
            options.add_option(Option(Text("nothing made yet", style="dim"), disabled=True))
        else:
            options.highlighted = min(highlighted or 0, len(results) - 1)
        options.border_title = f"made ({len(results)}) · Enter: samples side by side"

    # -- actions

    def _busy(self) -> bool:
        if self.running:
            self.notify(f"{self.running} is running: Esc stops it", severity="warning")
            return True
        return False

    def action_back(self) -> None:
        if self.running:
            self.cancel.set()
            self.query_one("#loras-progress", Static).update(f" stopping {self.running}…")
            return
        self.dismiss(None)

    def action_resize(self) -> None:
        from lorawizard.core.loratools.step import parse_resize
        from lorawizard.tui.screens.confirm import AskScreen

        if self._busy():
            return
        half = str(max(1, self.rank // 2)) if self.rank > 1 else "4"
        self.app.push_screen(AskScreen(f"Resize to which rank? ({half}; or fro 0.9 to keep 90% of the Frobenius "
                                       "norm)", half, check=lambda text: parse_resize(text)[1]), self._resize)

    def _resize(self, answer: str | None) -> None:
        from lorawizard.core.loratools.step import parse_resize

        if answer is None:
            return
        settings, _problem = parse_resize(answer)
        self._start("resize", settings)

    def action_convert(self) -> None:
        if not self._busy():
            self._start("convert", {"tools.convert_to": "other"})

    def action_check(self) -> None:
        if not self._busy():
            self._start("check", {})

    def action_merge(self) -> None:
        from lorawizard.core.loratools import naming

        if self._busy():
            return
        from lorawizard.core.loratools.commands import family_tools
        from lorawizard.core.loratools.header import LoraError, inspect

        session = wizard_app(self).session
        folder = naming.loras_dir(session.project_dir)
        family, tools = family_tools(session)
        files = []
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            try:
                if inspect(path, family).layout == tools.layouts[0].name:  # the merge tool adds the trainer's
                    files.append(path)
            except LoraError:
                continue
        if len(files) < 2:
            self.notify(f"merging needs two or more {tools.layouts[0].name} LoRAs in loras/ (keep epochs with k, "
                        "resize one, or convert one back)", severity="warning")
            return
        from lorawizard.core.loratools.step import merge_weights

        earlier = merge_weights(session)  # [tools] merge: ticked, with its weights, when the picker opens
        self.app.push_screen(MergePicker(files, [path for path in files if path in earlier]), self._merge)

    def _merge(self, chosen: list[str] | None) -> None:
        from lorawizard.core.loratools.step import merge_weights

        if not chosen:
            return
        files = [Path(path) for path in chosen]
        earlier = merge_weights(wizard_app(self).session)
        weights = ([earlier[path] for path in files] if all(path in earlier for path in files)
                   else [round(1 / len(files), 4)] * len(files))
        self.app.push_screen(MergeWeights(files, weights), self._merge_with)

    def _merge_with(self, weighted: list[tuple[Path, float]] | None) -> None:
        from lorawizard.core.loratools.step import merge_entry

        if not weighted:
            return
        project = wizard_app(self).session.project_dir
        self._start("merge", {"tools.merge": [merge_entry(project, path, weight) for path, weight in weighted]})

    def action_merge_base(self) -> None:
        from lorawizard.core.common.progress import format_bytes
        from lorawizard.core.loratools.commands import family_tools
        from lorawizard.core.loratools.step import MERGE_BASE_MARGIN, MERGE_BASE_SPARE
        from lorawizard.core.models.files import resolved_model_paths
        from lorawizard.tui.screens.confirm import ConfirmScreen

        if self._busy():
            return
        session = wizard_app(self).session
        try:
            _family, tools = family_tools(session)
        except Exception as exc:  # noqa: BLE001 - one line, whatever the profile says
            self.notify(one_line(str(exc)), severity="error")
            return
        base = resolved_model_paths(session).get(tools.merge_role)
        size = base.stat().st_size if base is not None and base.is_file() else 0
        need = f"about {format_bytes(size * MERGE_BASE_MARGIN + MERGE_BASE_SPARE)}" if size else "as much as the base"
        name = base.name if base is not None else tools.merge_role
        self.app.push_screen(ConfirmScreen(
            f"Merge the LoRA into {name}?",
            f"Writes a full model file into merged/ ({need} of disk, checked first); the merge holds the whole model "
            "in memory. Use it in place of the base model, without the LoRA."), self._merge_base)

    def _merge_base(self, yes: bool | None) -> None:
        if yes:
            self._start("merge_base", {})

    def action_show(self) -> None:
        from lorawizard.core.common.fsutil import read_json_object
        from lorawizard.core.loratools import naming

        options = self.query_one("#loras-made", OptionList)
        if options.highlighted is None:
            return
        option = options.get_option_at_index(options.highlighted)
        if option.id is None:
            return
        sidecar = read_json_object(naming.sidecar_of(Path(option.id)))
        check = sidecar.get("check") or {}
        image = Path(str(check.get("image") or ""))
        if not check or not image.is_file():
            self.notify("no sample for this one: l checks the LoRA the tools work on", severity="warning")
            return
        original = Path(str(check.get("original_image") or ""))
        source = Path(str(sidecar.get("source") or "")).name  # the images are named by a key: say the LoRAs' names
        self.app.push_screen(SamplePair(original if original.is_file() else None, image, str(check.get("line", "")),
                                        names=(source or original.name, Path(option.id).name)))

    @on(OptionList.OptionSelected, "#loras-made")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.action_show()

    # -- running one tool

    def _start(self, name: str, settings: dict[str, Any]) -> None:
        from lorawizard.core.session.document import SessionError

        store = wizard_app(self).store
        try:
            for key, value in settings.items():
                store.decide(key, value)
        except SessionError as exc:
            self.notify(one_line(str(exc)), severity="error")
            return
        self.running = name
        self.cancel = threading.Event()
        self.query_one("#loras-progress", Static).update(f" {name}: starting…")
        self.query_one("#loras-result", Static).update("")
        self._run(name, self.cancel)

    @work(thread=True, exclusive=True, group="lora-tools", exit_on_error=False)
    def _run(self, name: str, cancel: threading.Event) -> None:
        from lorawizard.core.common.progress import format_progress
        from lorawizard.core.contract import Cancelled, StepContext, StepFailed
        from lorawizard.core.loratools import step

        app = wizard_app(self)
        refused = app.store.sync()
        if refused is not None:
            self.post_message(ToolProgress(f"{name} not started: {one_line(refused)}", done=True, ok=False))
            return
        ctx = StepContext(session=app.session, progress=lambda e: self.post_message(ToolProgress(format_progress(e))),
                          log=lambda line: self.post_message(ToolProgress(one_line(line))), cancel=cancel)
        runner = {"resize": step.run_resize, "convert": step.run_convert, "merge": step.run_merge,
                  "merge_base": step.run_merge_base, "check": step.run_check}[name]
        try:
            result = runner(ctx)
        except Cancelled:
            self.post_message(ToolProgress(f"{name} stopped: nothing was written", done=True, ok=False))
            return
        except StepFailed as exc:
            self.post_message(ToolProgress(f"{name} failed: {one_line(str(exc))}", done=True, ok=False))
            return
        except Exception as exc:  # noqa: BLE001 - a worker error must reach the person, not end the app
            self.post_message(ToolProgress(f"{name} failed: {type(exc).__name__}: {exc}", done=True, ok=False))
            return
        from lorawizard.core.loratools.results import check_words

        check = result.data.get("check")
        said = one_line(result.summary)
        if isinstance(check, dict):
            said += f"\ncheck: {check_words(check)} · Enter on it below: the samples side by side"
        self.post_message(ToolProgress(said, done=True, ok=result.ok))
        self.post_message(Notice(said.split("\n")[0].split("; ")[0], "information" if result.ok else "warning"))

    @on(ToolProgress)
    def _progress(self, message: ToolProgress) -> None:
        if not message.done:
            self.query_one("#loras-progress", Static).update(Text(f" {message.text}", no_wrap=True,
                                                                  overflow="ellipsis"))
            return
        self.running = None
        self.query_one("#loras-progress", Static).update("")
        result = Text(no_wrap=True, overflow="ellipsis")
        for number, line in enumerate(message.text.split("\n")):
            result.append(("\n" if number else "") + f" {line}", style="" if message.ok else "bold")
        self.query_one("#loras-result", Static).update(result)
        self.refresh_file()
        self.query_one("#loras-made", OptionList).highlighted = 0


class MergePicker(ModalScreen[list[str] | None]):
    """The LoRAs to merge: space ticks (those of `[tools] merge` come ticked), Enter goes on to their weights
    (MergeWeights), Esc changes nothing."""

    BINDINGS = [Binding("enter", "done", "Weights", priority=True), Binding("escape", "cancel", "Cancel")]
    CSS_PATH = "loras.tcss"

    def __init__(self, files: list[Path], ticked: list[Path] | None = None) -> None:
        super().__init__()
        self.files = files
        self.ticked = set(ticked or [])

    def compose(self) -> ComposeResult:
        box = Vertical(id="merge-picker")
        box.border_title = "Merge which LoRAs?"
        box.border_subtitle = "space ticks · Enter: their weights · Esc"
        with box:
            yield SelectionList[str](*[(path.name, str(path), path in self.ticked) for path in self.files])

    def action_done(self) -> None:
        chosen = list(self.query_one(SelectionList).selected)
        if len(chosen) < 2:
            self.notify("pick two or more LoRAs (space), then Enter", severity="warning")
            return
        self.dismiss(chosen)

    def action_cancel(self) -> None:
        self.dismiss(None)


class MergeWeights(ModalScreen[list[tuple[Path, float]] | None]):
    """A weight for each LoRA to merge, one field each (`[tools] merge`'s when it has them all, else equal). What
    they make is said live under them: their sum and the warnings the merge step gives headless (a sum of 0 or less,
    or above 2; a weight of 0; a negative one), or the field that is no number. Enter merges when every field reads
    (a warning does not stop it, as headless), Esc goes back; the weights go into `[tools] merge`."""

    BINDINGS = [Binding("enter", "done", "Merge", priority=True), Binding("escape", "cancel", "Back", priority=True),
                Binding("down", "app.focus_next", "Next", show=False),
                Binding("up", "app.focus_previous", "Previous", show=False)]
    CSS_PATH = "loras.tcss"

    def __init__(self, files: list[Path], weights: list[float]) -> None:
        super().__init__()
        self.files, self.weights = files, weights

    def compose(self) -> ComposeResult:
        from textual.widgets import Input

        box = Vertical(id="merge-weights")
        box.border_title = "Merge with which weights?"
        box.border_subtitle = "Tab / ↓: next · Enter merges · Esc back"
        with box:
            yield Static("Each LoRA applies with its weight: summing to 1 averages them.", id="weights-intro")
            with Vertical(id="weights-rows"):
                for number, (path, weight) in enumerate(zip(self.files, self.weights, strict=True)):
                    with Horizontal(classes="weight-row"):
                        yield Static(Text(path.name, no_wrap=True, overflow="ellipsis"), classes="weight-name")
                        yield Input(f"{weight:.10g}", id=f"weight-{number}", classes="weight",
                                    select_on_focus=True)
            yield Static("", id="weights-said")

    def on_mount(self) -> None:
        self._say()

    def _read(self) -> tuple[list[float], str | None]:
        """The weights typed, or a one-line problem naming the first field that is no number."""
        from textual.widgets import Input

        from lorawizard.core.loratools.step import parse_weight

        weights = []
        for number, path in enumerate(self.files):
            try:
                weights.append(parse_weight(self.query_one(f"#weight-{number}", Input).value))
            except ValueError as exc:
                return [], f"{path.name}: {exc}"
        return weights, None

    def _say(self) -> bool:
        from lorawizard.core.loratools.step import weight_warnings

        weights, problem = self._read()
        said = self.query_one("#weights-said", Static)
        if problem is not None:
            said.update(Text(problem, style=tone("error", bold=True)))
            return False
        warnings = [w.removeprefix("warning: ") for w in weight_warnings(weights)]
        text = Text(f"sum {sum(weights):.4g}")
        if warnings:
            text.append(" · " + " · ".join(warnings), style=tone("warning", bold=True))
        said.update(text)
        return True

    def on_input_changed(self, _event: object) -> None:
        self._say()

    def action_done(self) -> None:
        if not self._say():
            self.app.bell()
            return
        weights, _problem = self._read()
        self.dismiss(list(zip(self.files, weights, strict=True)))

    def action_cancel(self) -> None:
        self.dismiss(None)


class SamplePair(ModalScreen[None]):
    """The original's sample and the result's, side by side, drawn with one prompt and seed."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]
    CSS_PATH = "loras.tcss"

    def __init__(self, original: Path | None, result: Path, caption: str,
                 names: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.original, self.result, self.caption = original, result, caption
        # what each side shows: the LoRA files (their images are named by a key of the file: loras/checks/)
        self.names = names or (original.name if original is not None else "", result.name)

    def compose(self) -> ComposeResult:
        from lorawizard.tui.images import image_widget_class

        box = Vertical(id="sample-pair")
        box.border_title = one_line(self.caption)
        box.border_subtitle = "left: the original · right: the result · Esc closes"
        with box, Horizontal():
            for title, path, name in (("the original", self.original, self.names[0]),
                                      ("the result", self.result, self.names[1])):
                with Vertical(classes="pair-side"):
                    yield Static(Text(f"{title}: {name}" if path is not None and name else title, no_wrap=True,
                                      overflow="ellipsis"), classes="pair-title")
                    yield (image_widget_class()(str(path)) if path is not None
                           else Static("no original to compare with", classes="empty"))

    async def action_dismiss(self, result: Any = None) -> None:
        self.dismiss(None)
