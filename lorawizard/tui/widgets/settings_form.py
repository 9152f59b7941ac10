"""A form over session keys: each edit is validated by the core schema and saved at once.

Esc in a text field whose text changed since focus entered it undoes the edit: the field gets back the text it had,
the session the value it had (saved as any edit), and focus leaves the field. Enter keeps the new value.

Each row is `label  field` with the labels in one column (LABEL_WIDTH cells, right-aligned, two blanks before
the field), the same on every screen. An empty field shows a short placeholder (the default when the schema's doc
names one, else the doc), cut at a word with "…" when the field is narrower; the line under the form shows the
focused field's whole hint (its `hint`: the doc, or what a screen says about a guess), or the last error.

Screens that follow a setting listen for `SettingsForm.Saved(key, value)`, posted after the value is in the
session, never for the form's inner Input/Select events (those reach a screen before or after the save,
depending on handler order).
"""

from __future__ import annotations

import re
import shlex

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.strip import Strip
from textual.widgets import Input, Label, Select, Switch

from lorawizard.core.session.document import FIELDS, Field
from lorawizard.tui.text_fit import fit_words
from lorawizard.tui.typed_app import wizard_app

# Lists of sentences, not of arguments: one field holds them separated by " | " (shlex split a typed sample prompt
# into one prompt per word: issue 24 item 3). Other lists (extra_args) are argv words, split as a shell would.
PROSE_LISTS = {"train.samples.prompts": " | "}


def _text_of(spec: Field, value: object) -> str:
    if value is None:
        return ""
    if spec.kind == "str_list" and isinstance(value, list):
        if spec.key in PROSE_LISTS:
            return PROSE_LISTS[spec.key].join(str(item) for item in value)
        return shlex.join(str(item) for item in value)
    return f"{value:g}" if spec.kind == "float" else str(value)


LABEL_WIDTH = 22  # the label column: labels of up to 20 cells, right-aligned, then two blanks before the field


def placeholder_of(spec: Field) -> str:
    """What an empty field shows: the default its doc names ("default: <sd_scripts>/.venv/bin/python"), else the
    doc ("kohya-ss/sd-scripts checkout"). Never the doc's first words beside a label that says the same."""
    named = re.search(r"\(default:? ([^)]*)\)", spec.doc)
    return f"default: {named.group(1)}" if named else spec.doc


class FitInput(Input):
    """An Input whose `placeholder` keeps the whole text but is drawn cut at a word with "…" when the field is
    narrower (Textual cuts it at the edge, mid-word: "(Enter adds it, Esc")."""

    def render_line(self, y: int) -> Strip:
        whole = self.placeholder
        fitted = fit_words(whole, self.scrollable_content_region.width)
        if self.value or y != 0 or fitted == whole:
            return super().render_line(y)
        self.set_reactive(Input.placeholder, fitted)  # drawn cut, without a refresh; the attribute keeps it whole
        try:
            return super().render_line(y)
        finally:
            self.set_reactive(Input.placeholder, whole)


# A key pressed before its screen was drawn, or this soon after, was typed before the person could see the field
# (`3` `4` at once, keys typed during start-up): it goes to the key's binding (`4` opens Captions), never into a
# field the screen focused. Judged by when the key was read from the terminal, not when it is handled (a busy CPU).
TYPED_AHEAD_S = 0.15


class SettingInput(FitInput):
    """A setting's text field; it remembers what it held when focus entered it (Esc goes back to that).

    `hint` is what the line under the form says while this field has focus. `save_each_keystroke`: False for a
    field whose value starts work (Dataset's source starts a scan): it is saved on Enter or on leaving the field,
    as its hint says, not half-typed or half-pasted."""

    save_each_keystroke = True

    def __init__(self, key: str, value: str, *, placeholder: str = "", hint: str = "", id: str | None = None,
                 compact: bool = False) -> None:
        super().__init__(value, placeholder=placeholder, id=id, compact=compact)
        self.key = key
        self.hint = hint
        self.entered: tuple[str, bool, object] | None = None  # text, key set in the session, its value

    def on_focus(self) -> None:
        self.mark_entered()

    async def _on_key(self, event: events.Key) -> None:
        if event.is_printable and self._typed_ahead(event):
            event.stop()
            event.prevent_default()
            self.screen.set_focus(None)  # out of the field, so the key's binding (a step key) applies
            await self.app._check_bindings(event.key)  # Textual's own dispatch (private; textual==8.2.8 pinned)
            return
        await super()._on_key(event)

    def _typed_ahead(self, event: events.Key) -> bool:
        shown_at = getattr(self.screen, "shown_at", 0.0)  # a screen that does not say: long ago
        return shown_at is None or event.time < shown_at + TYPED_AHEAD_S

    def mark_entered(self) -> None:
        """Now is what Esc goes back to (focus entering; Enter keeping a value)."""
        session = wizard_app(self).session
        self.entered = (self.value, session.is_set(self.key), session.get(self.key))

    @property
    def edited(self) -> bool:
        return self.entered is not None and self.value != self.entered[0]


def parse_input(spec: Field, text: str) -> object:
    """Text from an Input → the value the schema expects. ValueError carries a one-line reason."""
    text = text.strip()
    if text == "":
        return None
    if spec.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{spec.key}: expected an integer, got {text!r}") from None
    if spec.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{spec.key}: expected a number, got {text!r}") from None
    if spec.kind == "str_list" and spec.key in PROSE_LISTS:
        return [part.strip() for part in text.split(PROSE_LISTS[spec.key].strip()) if part.strip()]
    if spec.kind == "str_list":
        try:
            return shlex.split(text)
        except ValueError as exc:
            raise ValueError(f"{spec.key}: {exc}") from None
    return text


class SettingsForm(Vertical):
    """Rows of `label  [input]`; Enter or leaving a field saves it through `app.decide`."""

    class Saved(Message):
        """A field was committed (Enter or leaving a text field, Esc undoing its edit, a choice, a switch) and `value`
        is in the session.

        Posted whether or not the value differs from before (Enter on an unchanged field re-submits it); never for
        a value the schema refused (the form shows why) nor for each keystroke (those are saved silently).
        """

        def __init__(self, form: SettingsForm, key: str, value: object, *, submitted: bool = False) -> None:
            super().__init__()
            self.form = form
            self.key = key
            self.value = value
            self.submitted = submitted  # Enter in a text field (not leaving it, a choice or a switch)

        @property
        def control(self) -> SettingsForm:
            return self.form

    BINDINGS = [Binding("escape", "undo_edit", "Undo edit", show=True)]

    DEFAULT_CSS = """
    SettingsForm { height: auto; }
    SettingsForm > Horizontal { height: auto; }
    SettingsForm Label.setting-label { width: %d; padding: 0 2 0 0; text-align: right; color: $text-muted;
                                       text-wrap: nowrap; text-overflow: ellipsis; }
    SettingsForm Input, SettingsForm Select { width: 1fr; }
    SettingsForm Switch { height: 1; border: none; padding: 0; }
    SettingsForm Label.setting-state { padding: 0 0 0 1; text-style: bold; }
    SettingsForm Label.setting-error { color: $error; width: 1fr; height: auto; padding: 0 0 0 %d; }
    SettingsForm Label.setting-error.-hint { color: $text-muted; }
    """ % (LABEL_WIDTH, LABEL_WIDTH)

    def __init__(self, keys: list[str], labels: dict[str, str] | None = None, *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.keys = keys
        self.labels = labels or {}
        self._undone: Input | None = None  # the field Esc just restored: its blur saves nothing more
        self._edit_shown = False  # whether the footer shows "esc Undo edit"
        self._error = ""  # the last refused value's reason: the line under the form shows it before any hint

    def compose(self) -> ComposeResult:
        session = wizard_app(self).session
        for key in self.keys:
            spec = FIELDS[key]
            with Horizontal():
                yield Label(self.labels.get(key, key.split(".")[-1]), classes="setting-label")
                widget_id = "set-" + key.replace(".", "-")
                value = session.get(key)
                if spec.choices:
                    yield Select([(c, c) for c in spec.choices], value=value, allow_blank=False, id=widget_id, compact=True)
                elif spec.kind == "bool":  # the switch's look alone does not say on or off: the word beside it does
                    yield Switch(value=bool(value), id=widget_id)
                    yield Label(_on_off(bool(value)), id=f"{widget_id}-state", classes="setting-state")
                else:
                    yield SettingInput(key, _text_of(spec, value), placeholder=placeholder_of(spec), hint=spec.doc,
                                       id=widget_id, compact=True)
        yield Label("", classes="setting-error")

    def _key_of(self, widget_id: str | None) -> str:
        rest = (widget_id or "").removeprefix("set-")
        nested = rest.replace("-", ".")  # train.samples.prompts
        return nested if nested in FIELDS else rest.replace("-", ".", 1)

    # -- the line under the form: the last error, else the focused field's hint

    def _show_note(self, error: str | None = None) -> None:
        """`error`: the line says it (until a value is saved); None: it keeps the error it has, or shows a hint."""
        if error is not None:
            self._error = error
        notes = self.query(".setting-error").results(Label)
        note = next(notes, None)
        if note is None or not self.is_attached:
            return  # the form is gone (a dialog closed) before its focus change was shown
        focused = self.screen.focused
        hint = ""
        if not self._error and focused is not None and self in focused.ancestors and focused.id:
            key = self._key_of(focused.id)
            hint = focused.hint if isinstance(focused, SettingInput) else FIELDS[key].doc if key in FIELDS else ""
            if isinstance(focused, SettingInput) and not focused.value and focused.placeholder == hint and \
                    fit_words(hint, focused.scrollable_content_region.width) == hint:
                hint = ""  # the empty field says it whole already
        note.set_class(not self._error and bool(hint), "-hint")
        note.update(self._error or hint)

    @on(events.DescendantFocus)
    @on(events.DescendantBlur)
    def _focus_moved(self) -> None:
        self.call_after_refresh(self._show_note)  # after focus has settled (a blur comes before the next focus)

    def _save(self, key: str, value: object, *, submitted: bool = False) -> None:
        error = wizard_app(self).decide(key, value)
        self._show_note(error or "")
        if error is None:
            self.post_message(self.Saved(self, key, value, submitted=submitted))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self._save_input(event.input, submitted=True)
        if isinstance(event.input, SettingInput):
            event.input.mark_entered()  # Enter keeps the new value: Esc no longer goes back past it
            self._show_undo()

    # -- Esc: undo the edit

    def _edited_field(self) -> SettingInput | None:
        focused = self.screen.focused
        if isinstance(focused, SettingInput) and focused.edited and self in focused.ancestors:
            return focused
        return None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "undo_edit":
            return self._edited_field() is not None  # else Esc does what the screen does (leave the field, close)
        return True

    def _show_undo(self) -> None:
        shown = self._edited_field() is not None
        if shown != self._edit_shown:
            self._edit_shown = shown
            self.refresh_bindings()

    def action_undo_edit(self) -> None:
        """Esc: the field's text and the session's value as they were when focus entered the field; focus leaves."""
        field = self._edited_field()
        if field is None or field.entered is None:
            return
        text, was_set, value = field.entered
        self._undone = field
        field.value = text
        self._save(field.key, value if was_set else None)
        focus_main = getattr(self.screen, "focus_main", None)
        if callable(focus_main):
            focus_main()
        else:
            self.screen.set_focus(None)

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        """Save every keystroke that forms a valid value, so quitting mid-edit loses nothing."""
        self._show_undo()
        if not getattr(event.input, "save_each_keystroke", True):
            return
        key = self._key_of(event.input.id)
        try:
            value = parse_input(FIELDS[key], event.value)
        except ValueError:
            return  # half-typed; the reason is shown when the field is left or submitted
        if value != wizard_app(self).session.get(key):
            wizard_app(self).decide(key, value)

    @on(Input.Blurred)
    def _blurred(self, event: Input.Blurred) -> None:
        if event.input is self._undone:
            self._undone = None
            return  # Esc restored and saved it already
        self._save_input(event.input)

    def _save_input(self, widget: Input, *, submitted: bool = False) -> None:
        key = self._key_of(widget.id)
        try:
            value = parse_input(FIELDS[key], widget.value)
        except ValueError as exc:
            self._show_note(str(exc))
            return
        session = wizard_app(self).session
        if value == session.get(key) and not session.dirty:
            self._show_note("")
            self.post_message(self.Saved(self, key, value, submitted=submitted))
            return  # leaving a field unchanged writes nothing (the value is in the session already)
        self._save(key, value, submitted=submitted)

    @on(Select.Changed)
    def _selected(self, event: Select.Changed) -> None:
        key = self._key_of(event.select.id)
        if event.value != wizard_app(self).session.get(key):  # Select posts Changed on mount
            self._save(key, event.value)

    @on(Switch.Changed)
    def _switched(self, event: Switch.Changed) -> None:
        self._save(self._key_of(event.switch.id), event.value)
        for state in self.query(f"#{event.switch.id}-state").results(Label):
            state.update(_on_off(bool(wizard_app(self).session.get(self._key_of(event.switch.id)))))


def _on_off(value: bool) -> str:
    return "on" if value else "off"
