"""LoRA tools screen (issue 28), over the Samples gallery (t): resize, convert, merge, check with stand-ins for
sd-scripts' tools (tests/support/standin/lora_tools.py), at 80×24."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import OptionList, SelectionList, Static

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.loras import LoraToolsScreen, MergePicker, MergeWeights, SamplePair
from tests.support.model_files import write_model
from tests.support.sessions import save
from tests.support.standin import make_fake_sd_scripts
from tests.support.standin.lora_tools import install_lora_tools
from tests.support.waiting import pilot_until as wait_until
from tests.unit.test_loratools import sd_lora

pytestmark = pytest.mark.tui


def _project(tmp_path: Path) -> Session:
    sd, python = make_fake_sd_scripts(tmp_path)
    install_lora_tools(sd)
    session = Session.new(tmp_path / "project" / "session.toml", name="mychar")
    session.set("paths.sd_scripts", str(sd))
    session.set("paths.python", str(python))
    session.set("tools.device", "cpu")
    session.set("tools.check_steps", 2)
    session.set("tools.check_size", 64)
    for role in ("flux", "ae", "clip_l", "t5xxl"):
        path = write_model(tmp_path / "project" / "models" / f"{role}.safetensors", role)
        session.set(f"models.{role}", str(path))
    sd_lora(tmp_path / "project" / "loras" / "mychar-e8.safetensors", 8)
    save(session)
    return Session.open_project(tmp_path / "project")


def _text(screen: LoraToolsScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def test_resize_from_the_keys_and_see_the_samples_side_by_side(tmp_path: Path) -> None:
    app = LoraWizardApp(_project(tmp_path), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = LoraToolsScreen()
        await app.push_screen(screen)
        await pilot.pause()
        assert "mychar-e8.safetensors" in _text(screen, "#loras-title")
        assert "sd-scripts layout, rank 8" in _text(screen, "#loras-file")
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("backspace", "9", "9", "enter")  # not below rank 8: the step refuses in one line
        await pilot.pause()
        await wait_until(pilot, lambda: screen.running is None and "failed" in _text(screen, "#loras-result"))
        assert "rank 99 is not below mychar-e8.safetensors's own rank 8" in _text(screen, "#loras-result")
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("enter")  # the question offers half the LoRA's rank: 4
        await wait_until(pilot, lambda: screen.running is None and "mychar-e8-r4" in _text(screen, "#loras-result"),
                         timeout=30)
        result = _text(screen, "#loras-result")
        assert "rank 4 from rank 8" in result and "check: loads, sample " in result and "% off" in result
        assert app.session.tools.rank == 4  # the choice is in session.toml, as replay would read it
        made = screen.query_one("#loras-made", OptionList)
        assert made.option_count == 1 and "resize · mychar-e8-r4.safetensors" in str(made.get_option_at_index(0).prompt)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SamplePair)
        pair = app.screen
        assert pair.original is not None and pair.original.name.startswith("mychar-e8-") and pair.original.is_file()
        assert pair.result.name.startswith("mychar-e8-r4-") and pair.result.is_file()
        titles = [str(title.render()) for title in pair.query(".pair-title").results(Static)]
        assert titles == ["the original: mychar-e8.safetensors", "the result: mychar-e8-r4.safetensors"]
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, LoraToolsScreen)


async def test_convert_merge_and_escape_back(tmp_path: Path) -> None:
    app = LoraWizardApp(_project(tmp_path), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = LoraToolsScreen()
        await app.push_screen(screen)
        await pilot.pause()
        await pilot.press("c")
        await wait_until(pilot, lambda: screen.running is None and "aitoolkit" in _text(screen, "#loras-result"),
                         timeout=30)
        assert "ai-toolkit / diffusers (transformer.…lora_A) layout" in _text(screen, "#loras-result")
        sd_lora(tmp_path / "project" / "loras" / "style-e4.safetensors", 4)
        await pilot.press("m")
        await pilot.pause()
        picker = app.screen.query_one(SelectionList)
        assert [str(picker.get_option_at_index(i).prompt) for i in range(picker.option_count)] == [
            "mychar-e8.safetensors", "style-e4.safetensors"]  # the ai-toolkit file is not offered: it cannot merge
        await pilot.press("space", "down", "space", "enter")
        await pilot.pause()
        assert isinstance(app.screen, MergeWeights)  # equal weights offered: Enter takes them
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.running is None and "+" in _text(screen, "#loras-result"), timeout=30)
        assert "mychar-e8-w0.5+style-e4-w0.5.safetensors: 0.5×mychar-e8.safetensors + 0.5×style-e4.safetensors" in \
            _text(screen, "#loras-result")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, LoraToolsScreen)


async def test_escape_stops_a_running_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_TOOL_SLEEP", "0.5")
    app = LoraWizardApp(_project(tmp_path), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = LoraToolsScreen()
        await app.push_screen(screen)
        await pilot.pause()
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("enter")
        await wait_until(pilot, lambda: "resize:" in _text(screen, "#loras-progress"), timeout=20)
        await pilot.press("escape")
        await wait_until(pilot, lambda: screen.running is None, timeout=20)
        assert "resize stopped: nothing was written" in _text(screen, "#loras-result")
        assert isinstance(app.screen, LoraToolsScreen)
        loras = tmp_path / "project" / "loras"
        assert sorted(p.name for p in loras.iterdir()) == ["mychar-e8.safetensors"]


def _made(tmp_path: Path) -> Session:
    """A project whose kept LoRA was resized once (through the step, with the stand-in tools)."""
    from lorawizard.core.contract import StepContext
    from lorawizard.core.loratools.step import run_resize

    session = _project(tmp_path)
    assert run_resize(StepContext(session=Session.load(session.path, read_only=True))).ok
    return Session.open_project(tmp_path / "project")


def _push_tools(app: LoraWizardApp):  # noqa: ANN202
    async def run_before(pilot) -> None:  # noqa: ANN001
        await pilot.app.push_screen(LoraToolsScreen())
        await pilot.pause(0.3)

    return run_before


def test_snapshot_tools_80x24(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = LoraWizardApp(_made(tmp_path), start_step="train")
    assert snap_compare(app, terminal_size=(80, 24), run_before=_push_tools(app))


def test_snapshot_tools_120x40(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = LoraWizardApp(_made(tmp_path), start_step="train")
    assert snap_compare(app, terminal_size=(120, 40), run_before=_push_tools(app))


async def test_merge_weights_typed_checked_live_and_saved(tmp_path: Path) -> None:
    from textual.widgets import Input

    session = _project(tmp_path)
    sd_lora(tmp_path / "project" / "loras" / "style-e4.safetensors", 4)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = LoraToolsScreen()
        await app.push_screen(screen)
        await pilot.pause()
        await pilot.press("m")
        await pilot.pause()
        await pilot.press("space", "enter")  # one ticked: the picker stays and says so
        await pilot.pause()
        assert isinstance(app.screen, MergePicker)
        await pilot.press("down", "space", "enter")
        await pilot.pause()
        weights = app.screen
        assert isinstance(weights, MergeWeights)
        fields = list(weights.query(Input).results(Input))
        assert [f.value for f in fields] == ["0.5", "0.5"] and app.focused is fields[0]
        said = lambda: str(weights.query_one("#weights-said", Static).render())  # noqa: E731
        assert said() == "sum 1"
        await pilot.press("1", ".", "5", "down", "1", ".", "5")  # select_on_focus: typing replaces the value
        await pilot.pause()
        assert [f.value for f in fields] == ["1.5", "1.5"]
        assert said().startswith("sum 3 · the weights sum to 3: the merged LoRA is as strong as 3 LoRAs")
        await pilot.press("backspace", "backspace", "backspace", "x")
        await pilot.pause()
        assert said() == "style-e4.safetensors: 'x' is not a weight: a number such as 0.5 (negative subtracts the LoRA)"
        await pilot.press("enter")  # refused while a field is no number
        await pilot.pause()
        assert app.screen is weights
        await pilot.press("backspace", "-", "1", ".", "5")
        await pilot.pause()
        assert said().startswith("sum 0 · the weights sum to 0: the merged LoRA cancels itself out")
        await pilot.press("up", "0", ".", "7", "down", "0", ".", "3")
        await pilot.pause()
        assert said() == "sum 1"
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.running is None and "+" in _text(screen, "#loras-result"), timeout=30)
        assert "mychar-e8-w0.7+style-e4-w0.3.safetensors: 0.7×mychar-e8.safetensors + 0.3×style-e4.safetensors" in \
            _text(screen, "#loras-result")
        assert app.session.tools.merge == ["loras/mychar-e8.safetensors;0.7", "loras/style-e4.safetensors;0.3"]
        # the picker opens on [tools] merge: both ticked, their weights offered
        await pilot.press("m")
        await pilot.pause()
        assert sorted(app.screen.query_one(SelectionList).selected) == [
            str(tmp_path / "project" / "loras" / name) for name in ("mychar-e8.safetensors", "style-e4.safetensors")]
        await pilot.press("enter")
        await pilot.pause()
        assert [f.value for f in app.screen.query(Input).results(Input)] == ["0.7", "0.3"]
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
    saved = Session.load(tmp_path / "project" / "session.toml")
    assert saved.tools.merge == ["loras/mychar-e8.safetensors;0.7", "loras/style-e4.safetensors;0.3"]


def _merge_weights(app: LoraWizardApp, tmp_path: Path):  # noqa: ANN202
    async def run_before(pilot) -> None:  # noqa: ANN001
        files = [tmp_path / "project" / "loras" / name for name in ("mychar-e8.safetensors", "style-e4.safetensors")]
        await pilot.app.push_screen(LoraToolsScreen())
        await pilot.app.push_screen(MergeWeights(files, [1.5, 1.0]))
        await pilot.pause(0.3)

    return run_before


def test_snapshot_merge_weights_80x24(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    session = _made(tmp_path)
    sd_lora(tmp_path / "project" / "loras" / "style-e4.safetensors", 4)
    app = LoraWizardApp(session, start_step="train")
    assert snap_compare(app, terminal_size=(80, 24), run_before=_merge_weights(app, tmp_path))
