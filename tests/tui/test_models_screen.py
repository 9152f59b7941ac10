"""The Models screen: rows per role, downloads that survive switching steps, the token prompt, snapshots."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input, Label

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from tests.support.fakehub import FakeHub
from tests.support.sessions import save


def cell(app: LoraWizardApp, role: str, column: str) -> str:
    return str(app.screen.query_one(DataTable).get_cell(role, column))


async def settle(app: LoraWizardApp, pilot) -> None:
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def test_download_keeps_running_on_another_step(hub: FakeHub, home_project: Path) -> None:
    app = LoraWizardApp(Session.open_project(home_project), start_step="models")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert cell(app, "flux", "state") == "missing (3.1 MB)"
        assert app.step_states["models"] != "done"
        hub.throttle_bps = 3 << 20  # ~1 s for the 3 MB file
        await pilot.press("ctrl+g")
        for _ in range(50):  # the row turns into a progress line once the bytes flow
            await pilot.pause(0.05)
            if cell(app, "flux", "state").startswith("↓ "):
                break
        assert cell(app, "flux", "state").startswith("↓ ")
        app.screen.set_focus(None)
        await pilot.press("3")  # look at the dataset step meanwhile
        await pilot.pause()
        assert app.current_mode == "dataset"
        await app.workers.wait_for_complete()
        app.screen.set_focus(None)  # the dataset screen may have focused a field that would take the "2"
        await pilot.press("2")
        await pilot.pause()
        assert app.current_mode == "models"
        for role in ("flux", "ae", "clip_l", "t5xxl"):
            assert cell(app, role, "state") == "✓ verified"
        assert cell(app, "tokenizers", "state") == "✓ found"
        assert app.step_states["models"] == "done"
    assert (home_project / "models" / "flux1-dev-fp8.safetensors").stat().st_size == 3 << 20


async def test_token_is_stored_and_never_shown(hub: FakeHub, home_project: Path) -> None:
    from huggingface_hub import get_token

    app = LoraWizardApp(Session.open_project(home_project), start_step="models")
    token = "hf_approvedtoken000000000000"
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.screen.query_one(DataTable).focus()
        await pilot.press("t")
        ask = app.screen.query_one("#model-ask", Input)
        assert ask.has_focus and ask.password
        ask.value = token
        await pilot.press("enter")
        await settle(app, pilot)
        assert get_token() == token
        assert token not in app.export_screenshot()
        assert any("logged in to Hugging Face as alice" in n.message for n in app._notifications)
    assert token not in (home_project / "session.toml").read_text() if (home_project / "session.toml").exists() else True


async def test_choose_a_file_sets_the_override_and_rechecks(home_project: Path) -> None:
    mine = home_project / "mine.safetensors"
    mine.write_bytes(b"x" * 100)
    app = LoraWizardApp(Session.open_project(home_project), start_step="models")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        table.focus()
        table.move_cursor(row=2)  # CLIP-L
        await pilot.press("f")
        app.screen.query_one("#model-ask", Input).value = str(mine)
        await pilot.press("enter")
        await settle(app, pilot)
        assert "mine.safetensors (your choice)" in cell(app, "clip_l", "where")
    assert Session.load(home_project / "session.toml").get("models.clip_l") == str(mine)


def _offline_project(home_project: Path) -> Path:
    models = home_project / "models"
    models.mkdir()
    (models / "ae.safetensors").write_bytes(b"a" * 1000)  # found by name (offline: unverified)
    return home_project


def _app(home_project: Path) -> LoraWizardApp:
    return LoraWizardApp(Session.open_project(home_project), start_step="models")


async def _wait(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_snapshot_80x24(snap_compare, home_project: Path) -> None:
    assert snap_compare(_app(_offline_project(home_project)), terminal_size=(80, 24), run_before=_wait)


def test_snapshot_120x40(snap_compare, home_project: Path) -> None:
    assert snap_compare(_app(_offline_project(home_project)), terminal_size=(120, 40), run_before=_wait)


async def _download_and_wait(pilot) -> None:
    await _wait(pilot)
    await pilot.press("ctrl+g")
    await _wait(pilot)


def test_snapshot_gated_error_80x24(snap_compare, hub: FakeHub, home_project: Path) -> None:
    session = Session.open_project(home_project)
    session.set("models.preset", "flux1-dev-bf16")
    save(session)
    app = LoraWizardApp(Session.open_project(home_project), start_step="models")
    assert snap_compare(app, terminal_size=(80, 24), run_before=_download_and_wait)


async def test_add_folder_searches_it(home_project: Path, isolated_home: Path) -> None:
    folder = isolated_home / "stash"
    folder.mkdir()
    (folder / "t5xxl_fp8_e4m3fn.safetensors").write_bytes(b"t" * 10)  # offline: matched by name
    app = LoraWizardApp(Session.open_project(home_project), start_step="models")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert cell(app, "t5xxl", "state") == "missing"
        app.screen.query_one(DataTable).focus()
        await pilot.press("a")
        app.screen.query_one("#model-ask", Input).value = "~/stash"
        await pilot.press("enter")
        await settle(app, pilot)
        assert cell(app, "t5xxl", "where") == "~/stash/t5xxl_fp8_e4m3fn.safetensors (added folder)"


async def test_another_preset_relabels_the_rows(home_project: Path) -> None:
    from textual.widgets import Select

    app = LoraWizardApp(Session.open_project(home_project), start_step="models")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.screen.query_one("#set-models-preset", Select).value = "flux1-dev-bf16"
        await settle(app, pilot)
        assert cell(app, "flux", "where") == "black-forest-labs/FLUX.1-dev/flux1-dev.safetensors"
        assert cell(app, "t5xxl", "where") == "comfyanonymous/flux_text_encoders/t5xxl_fp16.safetensors"
    assert Session.load(home_project / "session.toml").get("models.preset") == "flux1-dev-bf16"


async def _show_a_download(pilot) -> None:
    """Rows as the worker reports them mid-download (posted directly: fixed numbers, no timing)."""
    from lorawizard.core.models.rows import RoleState
    from lorawizard.tui.screens.models import ModelRowChanged

    await _wait(pilot)
    home = Path.home()
    screen = pilot.app.screen
    gb = 1_000_000_000
    for state in (
        RoleState("flux", "flux1-dev-fp8.safetensors", "Kijai/flux-fp8", "found",
                  home / "ComfyUI/models/unet/flux1-dev-fp8.safetensors", "ComfyUI", True, "sha256 verified"),
        RoleState("ae", "ae.safetensors", "camenduru/FLUX.1-dev", "downloading", size=335_304_388,
                  done=144_180_887, rate=85e6, eta_s=130),
        RoleState("clip_l", "clip_l.safetensors", "camenduru/FLUX.1-dev", "missing", size=246_144_152),
        RoleState("t5xxl", "t5xxl_fp8_e4m3fn.safetensors", "camenduru/FLUX.1-dev", "missing", size=int(4.89 * gb)),
    ):
        screen.post_message(ModelRowChanged(state))
    await pilot.pause()


def test_snapshot_downloading_120x40(snap_compare, home_project: Path) -> None:
    assert snap_compare(_app(home_project), terminal_size=(120, 40), run_before=_show_a_download)


async def test_a_file_that_is_no_model_is_refused(home_project: Path) -> None:
    """QA: f on FLUX.1-dev, then ~/sd-scripts/requirements.txt: the row said "✓ found (unverified)" and the training
    would have failed much later. Now the chooser says why and nothing is recorded."""
    text = home_project / "requirements.txt"
    text.write_text("torch\n")
    app = LoraWizardApp(Session.open_project(home_project), start_step="models")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        table.focus()
        table.move_cursor(row=0)  # FLUX.1-dev
        await pilot.press("f")
        app.screen.query_one("#model-ask", Input).value = str(text)
        await pilot.press("enter")
        await settle(app, pilot)
        assert "is not a .safetensors file" in str(app.screen.query_one("#model-problem", Label).render())
        assert "requirements" not in cell(app, "flux", "where")
        assert app.session.get("models.flux") is None
