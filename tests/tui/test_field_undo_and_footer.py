"""Settings fields: every keystroke is saved (quitting mid-edit loses nothing), Esc undoes the edit, Enter keeps it;
and at 80 columns the footer of every step screen keeps ? Help and q Quit."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Static, TextArea

from lorawizard.core.registry import STEP_ORDER
from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from tests.support.sessions import save
from tests.support.svg_cells import runs


def _saved(project: Path, **values: object) -> Session:
    session = Session.open_project(project)
    for key, value in values.items():
        session.set(key.replace("__", "."), value)
    save(session)
    return session


def _file(project: Path) -> str:
    return (project / "session.toml").read_text()


async def test_esc_undoes_a_path_typed_over_the_saved_one(project: Path) -> None:
    _saved(project, paths__sd_scripts="/opt/sd-scripts")
    app = LoraWizardApp(Session.open_project(project), start_step="env")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        field = app.screen.query_one("#set-paths-sd_scripts", Input)
        field.focus()  # focus selects the whole path: typing replaces it
        await pilot.pause()
        await pilot.press(*"xyz")
        await pilot.pause()
        app.flush_decisions()
        assert 'sd_scripts = "xyz"' in _file(project)  # every keystroke is saved: quitting now loses nothing
        await pilot.press("escape")
        await pilot.pause()
        assert field.value == "/opt/sd-scripts"
        assert app.screen.focused is not field  # Esc left the field
        command = str(app.screen.query_one("#command", Static).render()) + str(
            app.screen.query_one("#command-note", Static).render())
        assert "xyz" not in command and "/opt/sd-scripts" in command  # the command follows the restored path
        app.flush_decisions()
        assert 'sd_scripts = "/opt/sd-scripts"' in _file(project) and "xyz" not in _file(project)
        await pilot.press("escape")  # Esc outside a field: nothing more to undo, nothing changes
        await pilot.pause()
    assert 'sd_scripts = "/opt/sd-scripts"' in _file(project) and "xyz" not in _file(project)


async def test_esc_after_enter_keeps_the_entered_value_and_an_unset_key_goes_back_to_unset(project: Path) -> None:
    _saved(project, name="keys")
    before = _file(project)
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        field = app.screen.query_one("#set-train-network_dim", Input)
        field.focus()
        await pilot.pause()
        await pilot.press(*"64", "escape")  # not set before: Esc leaves it unset
        await pilot.pause()
        assert app.session.get("train.network_dim") != 64 and not app.session.is_set("train.network_dim")
        app.flush_decisions()
        assert _file(project) == before
        field.focus()
        await pilot.pause()
        await pilot.press(*"32", "enter")  # Enter keeps
        await pilot.pause()
        assert app.session.get("train.network_dim") == 32 and app.screen.focused is not field
        field.focus()
        await pilot.pause()
        await pilot.press("backspace", "backspace", *"8")
        await pilot.pause()
        assert app.session.get("train.network_dim") == 8
        await pilot.press("escape")
        await pilot.pause()
        assert field.value == "32" and app.session.get("train.network_dim") == 32
    assert "network_dim = 32" in _file(project)


def _footer_line(app: LoraWizardApp) -> str:
    svg = app.export_screenshot()
    cells = runs(svg)
    last = max(run.line for run in cells)
    line = [" "] * app.size.width
    for run in cells:
        if run.line == last:
            for offset, char in enumerate(run.text):
                if run.column + offset < len(line):
                    line[run.column + offset] = char
    return "".join(line).replace("\u00a0", " ")


@pytest.mark.parametrize("step", STEP_ORDER)
async def test_help_and_quit_stay_in_the_footer_at_80_columns(project: Path, step: str) -> None:
    _saved(project, name="keys")
    app = LoraWizardApp(Session.open_project(project), start_step=step)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        if isinstance(app.screen.focused, (Input, TextArea)):  # in a field ? and q are characters (not in the footer)
            await pilot.press("escape")
        await pilot.pause()
        await pilot.pause()
        line = _footer_line(app)
        assert "? Help" in line and "q Quit" in line, line


async def test_the_footer_says_esc_undoes_an_edit_while_there_is_one(project: Path) -> None:
    _saved(project, paths__sd_scripts="/opt/sd-scripts")
    app = LoraWizardApp(Session.open_project(project), start_step="env")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen.query_one("#set-paths-sd_scripts", Input).focus()
        await pilot.pause()
        assert "Undo edit" not in _footer_line(app)  # nothing edited yet: Esc just leaves the field
        await pilot.press("x")
        await pilot.pause()
        await pilot.pause()
        assert "esc Undo edit" in _footer_line(app)  # first, before the screen's keys
        await pilot.press("escape")
        await pilot.pause()
        await pilot.pause()
        line = _footer_line(app)
        assert "Undo edit" not in line and "? Help" in line and "q Quit" in line, line


async def test_footer_keys_are_styled_once_not_restyled_for_compactness(project: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A FooterKey starts compact; the Footer turned it off after mount, restyling every key twice (~100 ms of a
    start-up). FitFooter decides it before mount: no key restyles on its way to the screen."""
    from textual.widgets._footer import FooterKey

    restyled: list[str] = []
    original = FooterKey.update_node_styles

    def counting(self: FooterKey, animate: bool = True) -> None:
        restyled.append(self.description)
        original(self, animate)

    monkeypatch.setattr(FooterKey, "update_node_styles", counting)
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        keys = list(app.screen.query(FooterKey))
        assert len(keys) > 3
        assert all(key.compact == key.has_class("-compact") for key in keys)
        assert [key.compact for key in keys if key.has_class("-command-palette")] == [True]  # as Textual's Footer
    assert restyled == []
