"""The Models screen: rows per role, downloads that survive switching steps, the token prompt, snapshots."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input, Label

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from tests.support.fakehub import FakeHub
from tests.support.model_files import write_model
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
    mine = write_model(home_project / "mine.safetensors", "clip_l")  # a CLIP-L by its header
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
    write_model(models / "ae.safetensors", "ae")  # found by name (offline: unverified), an AE by its header
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
    write_model(folder / "t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp8")  # offline: matched by name
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


def problem_line(app: LoraWizardApp) -> str:
    return str(app.screen.query_one("#model-problem", Label).render())


async def test_a_file_of_another_role_is_refused_naming_both(home_project: Path) -> None:
    """QA: the T5 file on the CLIP-L row gave `✓ found (unverified)`. Its header says what it is: refused, one line."""
    t5 = write_model(home_project / "t5xxl_fp16.safetensors", "t5xxl")
    app = _app(home_project)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        table.focus()
        table.move_cursor(row=2)  # CLIP-L
        await pilot.press("f")
        app.screen.query_one("#model-ask", Input).value = str(t5)
        await pilot.press("enter")
        await settle(app, pilot)
        assert problem_line(app) == "t5xxl_fp16.safetensors is a T5-XXL text encoder (fp16), not CLIP-L"
        assert "t5xxl_fp16" not in cell(app, "clip_l", "where")
        assert app.session.get("models.clip_l") is None
        table.move_cursor(row=3)  # the same file on its own row is taken, and the row says what it is
        await pilot.press("f")
        app.screen.query_one("#model-ask", Input).value = str(t5)
        await pilot.press("enter")
        await settle(app, pilot)
        assert cell(app, "t5xxl", "state") == "✓ T5-XXL fp16"
        assert "t5xxl_fp16.safetensors (your choice)" in cell(app, "t5xxl", "where")


async def test_add_folder_finds_files_by_header_and_says_how_many(home_project: Path, isolated_home: Path) -> None:
    """QA: "Add folder" on a folder whose files have other names found nothing and said nothing."""
    folder = isolated_home / "e2e-models"
    write_model(folder / "flux1-dev-tiny-1d1s.safetensors", "flux")
    write_model(folder / "ae-random.safetensors", "ae")
    write_model(folder / "clip_l-random.safetensors", "clip_l")
    write_model(folder / "t5xxl-random_bf16.safetensors", "t5xxl")
    write_model(folder / "ohwx-lora.safetensors", "lora")
    app = _app(home_project)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert cell(app, "flux", "state") == "missing"
        app.screen.query_one(DataTable).focus()
        await pilot.press("a")
        app.screen.query_one("#model-ask", Input).value = "~/e2e-models"
        await pilot.press("enter")
        await settle(app, pilot)
        assert problem_line(app) == "searched 5 files by header, matched 4: FLUX transformer, AE, CLIP-L, T5-XXL"
        assert cell(app, "flux", "state") == "✓ FLUX transformer bf16"
        assert cell(app, "flux", "where") == "~/e2e-models/flux1-dev-tiny-1d1s.safetensors (added folder)"
        assert cell(app, "t5xxl", "state") == "✓ T5-XXL fp16"


async def test_the_tokenizers_row_has_a_field_and_a_folder_check(home_project: Path, isolated_home: Path) -> None:
    """QA: the tokenizers row said "set paths.tokenizers instead" with no way to do it."""
    from lorawizard.core.profile import FLUX1_DEV

    tok = isolated_home / "tok"
    (tok / FLUX1_DEV.tokenizers[0].folder).mkdir(parents=True)
    app = _app(home_project)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        table.focus()
        table.move_cursor(row=4)  # tokenizers
        await pilot.press("f")
        field = app.screen.query_one("#set-paths-tokenizers", Input)
        assert field.has_focus
        field.value = "~/tok"
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.session.get("paths.tokenizers") == "~/tok"
        assert cell(app, "tokenizers", "state") == "missing"
        assert cell(app, "tokenizers", "where") == ("7 of 7 files missing from ~/tok, e.g. "
                                                    "openai_clip-vit-large-patch14/vocab.json (Ctrl+G downloads them)")
        for tokenizer in FLUX1_DEV.tokenizers:
            for name in tokenizer.required:
                (tok / tokenizer.folder).mkdir(exist_ok=True)
                (tok / tokenizer.folder / name).write_text("{}")
        field.focus()
        await pilot.press("enter")
        await settle(app, pilot)
        assert cell(app, "tokenizers", "state") == "✓ found"
        assert cell(app, "tokenizers", "where").startswith("~/tok ")


async def test_the_captioner_row_follows_captions_model(home_project: Path) -> None:
    """QA: after captions.model pointed at a local folder the row still showed "missing (7.5 GB) Qwen/…"."""
    folder = home_project / "qwen-local"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        (folder / name).write_text("{}")
    app = _app(home_project)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert cell(app, "captioner", "state").startswith("missing")
        app.decide("captions.model", str(folder))  # as the Captions screen's field does
        app.screen.set_focus(None)
        await pilot.press("3")
        await pilot.pause()
        await app.workers.wait_for_complete()
        app.screen.set_focus(None)
        await pilot.press("2")
        await settle(app, pilot)
        assert cell(app, "captioner", "state") == "✓ your folder"
        assert "qwen-local (captions.model folder)" in cell(app, "captioner", "where")
        assert "Qwen" not in cell(app, "captioner", "where")


# ---------------------------------------------------------------- the base model (issue 27)


async def _choose(pilot, select_id: str, value: str) -> None:
    from textual.widgets import Select

    select = pilot.app.screen.query_one(f"#{select_id}", Select)
    select.focus()
    await pilot.press("enter")  # opens the list
    await pilot.pause()
    values = [v for _, v in select._options]
    steps = values.index(value) - values.index(select.value)
    for _ in range(abs(steps)):
        await pilot.press("down" if steps > 0 else "up")
    await pilot.press("enter")
    await _wait(pilot)


async def test_choosing_a_family_shows_its_roles_and_files(home_project: Path) -> None:
    """Chroma by keys: its rows (no CLIP-L), its 16-bit file sets, saved as [models] family and preset."""
    from textual.widgets import Select

    app = _app(_offline_project(home_project))
    async with app.run_test(size=(80, 24)) as pilot:
        await _wait(pilot)
        assert str(app.screen.query_one("#set-models-family", Select).selection) == "flux1-dev"
        await _choose(pilot, "set-models-family", "chroma")
        table = app.screen.query_one(DataTable)
        assert [str(key.value) for key in table.rows] == ["flux", "ae", "t5xxl", "tokenizers", "captioner"]
        assert cell(app, "flux", "role") == "Chroma" and "Chroma1-HD.safetensors" in cell(app, "flux", "where")
        files = app.screen.query_one("#set-models-preset", Select)
        assert [v for _, v in files._options] == ["chroma1-hd-bf16", "chroma1-base-bf16"]
        await _choose(pilot, "set-models-preset", "chroma1-base-bf16")
        assert "Chroma1-Base.safetensors" in cell(app, "flux", "where")
        await _choose(pilot, "set-models-family", "flux1-schnell")
        await _choose(pilot, "set-models-preset", "flux1-schnell-bf16")  # the 16-bit file of schnell
        assert "flux1-schnell.safetensors" in cell(app, "flux", "where")
        assert [str(key.value) for key in table.rows][:4] == ["flux", "ae", "clip_l", "t5xxl"]
    saved = Session.load(home_project / "session.toml")
    assert (saved.get("models.family"), saved.get("models.preset")) == ("flux1-schnell", "flux1-schnell-bf16")


async def test_a_transformer_of_another_family_is_refused_on_the_row(home_project: Path) -> None:
    from tests.support.model_files import write_safetensors
    from tests.unit.test_family_identify import flux_schnell

    schnell = write_safetensors(home_project / "flux1-schnell.safetensors", flux_schnell())
    (home_project / "session.toml").write_text('version = 1\n[models]\nfamily = "chroma"\n', encoding="utf-8")
    app = _app(home_project)
    async with app.run_test(size=(120, 40)) as pilot:
        await _wait(pilot)
        table = app.screen.query_one(DataTable)
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("f")
        app.screen.query_one("#model-ask", Input).value = str(schnell)
        await pilot.press("enter")
        await _wait(pilot)
        line = str(app.screen.query_one("#model-problem", Label).render())
        assert "is a FLUX.1 schnell transformer (bf16), not Chroma's" in line
    assert not Session.load(home_project / "session.toml").is_set("models.flux")


def test_snapshot_chroma_80x24(snap_compare, home_project: Path) -> None:
    project = _offline_project(home_project)
    (project / "session.toml").write_text('version = 1\n[models]\nfamily = "chroma"\n', encoding="utf-8")
    assert snap_compare(_app(project), terminal_size=(80, 24), run_before=_wait)
