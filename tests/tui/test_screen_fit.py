"""What a person reads at 80×24: settings labels apart from their fields, placeholders whole or ending with "…",
paths `~/…` cut in the middle, and the Samples view's keys and footer like every other screen's."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from textual.containers import Horizontal
from textual.widgets import Input, Label

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.text_fit import FitPaths, cut_middle, fit_words
from lorawizard.tui.widgets.settings_form import SettingInput, SettingsForm
from tests.support.sessions import save
from tests.tui.test_train_layout import svg_cells


def _screen_rows(app: LoraWizardApp) -> list[str]:
    grid, _ = svg_cells(app.export_screenshot(), app.size.width, app.size.height)
    return ["".join(row) for row in grid]


def _form_problems(app: LoraWizardApp, rows: list[str]) -> list[str]:
    """Each visible form row: its label ends two blanks before its field, and an empty field shows its placeholder
    whole or cut after a word with "…" (never cut mid-word at the field's edge, reading on into the next text)."""
    problems = []
    for form in app.screen.query(SettingsForm):
        for row in (child for child in form.children if isinstance(child, Horizontal)):
            label, field = row.children[0], row.children[1]
            y, x = field.region.y, field.region.x
            if not (0 <= y < len(rows)) or field.region.height == 0:
                continue
            line = rows[y]
            said = line[label.region.x : x].rstrip()
            if line[x - 2 : x] != "  ":
                problems.append(f"label {said!r} runs into its field: {line.strip()!r}")
            if isinstance(field, Input) and not field.value and field.placeholder:
                shown = line[x : field.region.right].rstrip()
                whole = field.placeholder
                if shown != whole and not (shown.endswith("…") and whole.startswith(shown[:-1].rstrip())):
                    problems.append(f"placeholder of {said!r} cut: {shown!r} (of {whole!r})")
    return problems


# ---------------------------------------------------------------- settings form


async def test_environment_labels_and_placeholders_read_apart_at_80x24(project: Path, isolated_home: Path) -> None:
    """QA: 'trainer Python the trainer's Python (default' — label, one blank, then the doc cut at the field's edge.
    Now the label column ends two blanks before the field, and the field says what an empty value means."""
    app = LoraWizardApp(Session.open_project(project), start_step="env")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        rows = _screen_rows(app)
        assert _form_problems(app, rows) == [], "\n".join(rows)
        python_row = next(row for row in rows if "trainer Python" in row)
        assert python_row.split("trainer Python", 1)[1].strip() == "default: <sd_scripts>/.venv/bin/python"
        field = app.screen.query_one("#set-paths-python", SettingInput)
        field.focus()
        await pilot.pause()
        await pilot.pause()
        note = str(app.screen.query_one(SettingsForm).query_one(".setting-error", Label).render())
        assert note.startswith("the trainer's Python (default")  # the whole doc, under the form, while in it


@pytest.mark.parametrize("step", ["train", "models", "dataset"])
async def test_every_form_row_keeps_label_and_field_apart_at_80x24(project: Path, isolated_home: Path,
                                                                   step: str) -> None:
    session = Session.open_project(project)
    session.set("name", "fit")
    save(session)
    app = LoraWizardApp(Session.open_project(project), start_step=step)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        form = app.screen.query_one(SettingsForm)
        if step == "dataset":
            app.screen.set_class(True, "-settings")  # the settings panel (key s)
        form.scroll_visible(animate=False)
        await pilot.pause()
        await pilot.pause()
        rows = _screen_rows(app)
        assert _form_problems(app, rows) == [], "\n".join(rows)


async def test_a_placeholder_wider_than_its_field_ends_with_an_ellipsis(project: Path, isolated_home: Path) -> None:
    app = LoraWizardApp(Session.open_project(project), start_step="env")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        field = app.screen.query_one("#set-paths-sd_scripts", SettingInput)
        field.placeholder = "a placeholder much longer than the field is wide, so that it cannot be shown whole here"
        await pilot.pause()
        rows = _screen_rows(app)
        shown = rows[field.region.y][field.region.x : field.region.right].rstrip()
        assert shown.endswith("…") and field.placeholder.startswith(shown[:-1]) and " " not in shown[-2:], shown
        assert field.placeholder.startswith("a placeholder much longer")  # the attribute keeps the whole text


def test_fit_words_cuts_after_a_word() -> None:
    assert fit_words("short", 10) == "short"
    assert fit_words("the trainer's Python (default <sd_scripts>/.venv/bin/python)", 30) == "the trainer's Python (default…"
    assert fit_words("averyveryverylongword", 8) == "averyve…"


# ---------------------------------------------------------------- paths


def test_cut_middle_keeps_both_ends_and_the_file_name() -> None:
    path = "~/loras/demo/models/captioners/Qwen2.5-VL-3B-Instruct"
    assert cut_middle(path, 80) == path
    assert cut_middle(path, 40) == "~/loras/demo/…/Qwen2.5-VL-3B-Instruct"
    assert cut_middle("~/ComfyUI/models/unet/flux1-dev-fp8.safetensors", 30) == "~/…/flux1-dev-fp8.safetensors"
    for width in range(1, 60):
        assert len(cut_middle(path, width)) <= width


def test_fit_paths_shows_home_as_tilde_and_cuts_in_the_middle(isolated_home: Path) -> None:
    folder = isolated_home / "loras" / "demo" / "models" / "captioners" / "Qwen2.5-VL-3B-Instruct"
    console = Console(width=40, record=True, color_system=None)
    console.print(FitPaths(f"✗ {folder} does not exist — the Models step (2) downloads it"))
    lines = console.export_text().splitlines()
    assert lines[0].rstrip() == "✗ ~/loras/demo/…/Qwen2.5-VL-3B-Instruct", lines
    assert str(isolated_home) not in console.export_text()


async def test_autocaption_dialog_shows_the_model_folder_from_home_cut_in_the_middle(isolated_home: Path) -> None:
    """QA: the dialog said '/tmp/…/home/loras/demo/models/captioners/Qwen2.5-VL-3B-Instruct' (the home folder
    written out), wrapped over two lines with the ✗ alone above it."""
    from tests.support.captions_fixtures import make_project
    from tests.tui.test_autocaption_screen import SOURCES

    project = isolated_home / "loras" / ("a-project-with-a-rather-long-folder-name-" * 2).rstrip("-")
    project.mkdir(parents=True)
    save(make_project(project, SOURCES, trigger="ohwx", image_size=48))
    app = LoraWizardApp(Session.open_project(project), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("f5")
        await pilot.pause()
        await pilot.pause()
        rows = _screen_rows(app)
    text = "\n".join(rows)
    assert str(isolated_home) not in text, text
    line = next((row for row in rows if "✗ ~/loras/" in row), None)
    assert line is not None and "…/" in line and "/Qwen2.5-VL-3B-Instruct does not exist" in line, text


async def test_models_where_column_keeps_the_file_name(isolated_home: Path, project: Path) -> None:
    from lorawizard.core.models import catalog
    from tests.support.model_files import write_model

    folder = isolated_home / "ComfyUI" / "models" / "unet"
    folder.mkdir(parents=True)
    name = catalog.preset(None).file_for("flux").filename
    write_model(folder / name, "flux")  # a FLUX transformer by its header (an empty file is refused)
    session = Session.open_project(project)
    session.set("models.flux", str(folder / name))
    save(session)
    app = LoraWizardApp(Session.open_project(project), start_step="models")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        rows = _screen_rows(app)
    flux = next(row for row in rows if row.startswith(" FLUX.1-dev"))
    assert flux.rstrip().endswith(name) and "~/" in flux and "…" in flux, "\n".join(rows)


# ---------------------------------------------------------------- samples view


async def test_samples_view_footer_and_keys_match_the_other_screens(isolated_home: Path) -> None:
    """QA: the Samples view's footer showed '^p palette' at 80 columns and no 'q Quit'; q went back instead."""
    from tests.tui.test_field_undo_and_footer import _footer_line
    from tests.tui.test_samples_screen import _screen

    folder = isolated_home / "loras" / "mychar"
    folder.mkdir(parents=True)
    session = Session.open_project(folder)
    session.set("name", "mychar")
    save(session)
    app = LoraWizardApp(Session.open_project(folder), start_step="train")
    quit_calls: list[bool] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.app.push_screen(_screen(folder, [0, 4, 8]))
        await pilot.pause(0.3)
        line = _footer_line(app)
        assert "? Help" in line and "q Quit" in line and "palette" not in line, line
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ == "TrainScreen"  # Esc goes back
        await pilot.app.push_screen(_screen(folder, [0, 4, 8]))
        await pilot.pause(0.3)
        app.decide("train.seed", 7)  # a decision not yet written: q writes it before quitting
        flushed = app.flush_decisions

        def flush() -> None:
            quit_calls.append(True)
            flushed()

        app.flush_decisions = flush  # type: ignore[method-assign]
        await pilot.press("q")
        await pilot.pause()
    assert quit_calls == [True]  # q quit through the app's action_quit (before: it went back to the Train screen)
    assert Session.load(folder / "session.toml").get("train.seed") == 7


# ---------------------------------------------------------------- one-line texts, table columns, paths in toasts


async def test_the_caption_token_line_ends_with_an_ellipsis_at_80x24(isolated_home: Path) -> None:
    """QA: 'CLIP 19/77 · T5 19/512 · estimated (no tokenizers' — a one-line Static wrapped at a word and the rest
    fell below its one row, with no mark (Textual ignores a Rich Text's no_wrap/overflow; CSS text-wrap does it)."""
    from tests.tui.test_captions_screen import demo_project, ready

    app = LoraWizardApp(Session.open_project(demo_project(isolated_home)), start_step="captions")
    async with app.run_test(size=(72, 24)) as pilot:
        await ready(pilot)
        tokens = app.screen.query_one("#cap-tokens")
        rows = _screen_rows(app)
        shown = rows[tokens.region.y][tokens.region.x : tokens.region.right].rstrip()
    assert shown.startswith("CLIP ") and "estimated" in shown and shown.endswith("…"), shown


async def test_dataset_notes_end_with_an_ellipsis_beside_the_preview(isolated_home: Path) -> None:
    """QA: the note column was as wide as its longest note and ran under the preview, cut there without a mark
    ('rotated (EXIF 6', 'too small · 4.3× up: sk'). It takes what the table leaves; a longer note ends with …."""
    from textual.widgets import DataTable

    from tests.tui.test_dataset_screen import make_app, settle

    app = make_app(isolated_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.pause()
        table = app.screen.query_one("#ds-table", DataTable)
        used = sum(column.get_render_width(table) for column in table.columns.values())
        assert used <= table.size.width, (used, table.size.width)
        rows = _screen_rows(app)
        notes = [row[table.region.x : table.region.right].rstrip() for row in rows[table.region.y : table.region.bottom]]
    assert any(line.endswith("…") for line in notes), "\n".join(notes)


async def test_dataset_footer_says_plus_minus_crop_size(isolated_home: Path) -> None:
    from tests.tui.test_dataset_screen import make_app, settle
    from tests.tui.test_field_undo_and_footer import _footer_line

    app = make_app(isolated_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        line = _footer_line(app)
    assert "+/- Crop size" in line and "+ +/-" not in line, line


async def test_toasts_and_step_logs_write_home_as_tilde(isolated_home: Path, project: Path) -> None:
    from lorawizard.core.contract import StepResult
    from lorawizard.tui.messages import StepFinished, StepLog
    from lorawizard.tui.widgets.step_runner import StepRunner

    app = LoraWizardApp(Session.open_project(project), start_step="models")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        app.notify(f"kept epoch 2: {isolated_home}/loras/mychar-e2.safetensors")
        runner = app.screen.query_one(StepRunner)
        runner.post_message(StepLog("models", [f"downloading to {isolated_home}/models/ae.safetensors"]))
        runner.post_message(StepFinished("models", StepResult(ok=False, summary=f"{isolated_home}/models is full",
                                                              details=[f"free: {isolated_home}/models 0 B"])))
        await pilot.pause()
        await pilot.pause()
        toasts = [n.message for n in app._notifications]
        shown = "\n".join(_screen_rows(app))
        status = str(runner.query_one(".runner-status", Label).render())
    assert "kept epoch 2: ~/loras/mychar-e2.safetensors" in toasts
    assert status == "✗ ~/models is full"
    assert "downloading to ~/models/ae.safetensors" in shown and str(isolated_home) not in shown, shown


async def test_a_long_project_folder_is_cut_in_the_middle_and_every_step_stays_on_the_bar(tmp_path: Path) -> None:
    """QA: at 120 columns a project outside the home folder (/tmp/…/project) pushed '6 Train' off the step bar."""
    project = tmp_path / ("a-rather-long-folder-name-" * 3) / "project"
    project.mkdir(parents=True)
    app = LoraWizardApp(Session.open_project(project), start_step="env")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        bar = _screen_rows(app)[0].rstrip()
    assert bar.endswith("6○ Train") and "…" in bar and bar.split(" · ", 1)[1].split("  ")[0].endswith("/project"), bar


async def test_full_log_names_its_file_on_one_line_cut_in_the_middle(isolated_home: Path, project: Path) -> None:
    """QA: at 80 columns the full log's header ('~/…/train.log  (Esc closes; '\\r' redraws collapsed, last 20000
    lines)') wrapped onto the log's first line; a long path ran over it."""
    from lorawizard.tui.screens.train import FullLogScreen

    log = isolated_home / "loras" / ("a-long-project-folder-name-" * 3) / "runs" / "20261203-092642" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1/16\n")
    app = LoraWizardApp(Session.open_project(project), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.push_screen(FullLogScreen(log))
        await pilot.pause()
        await pilot.pause()
        rows = _screen_rows(app)
    text = "\n".join(rows)
    header = next(row for row in rows if "train.log" in row)
    assert "~/loras/" in header and "…" in header and "/20261203-092642/train.log" in header, text
    assert "Esc closes" in text and str(isolated_home) not in text
    assert next(i for i, row in enumerate(rows) if "epoch 1/16" in row) == rows.index(header) + 1, text


async def test_help_over_the_samples_view_names_it(isolated_home: Path) -> None:
    from lorawizard.tui.screens.help import HelpScreen
    from tests.tui.test_samples_screen import _screen

    folder = isolated_home / "loras" / "mychar"
    folder.mkdir(parents=True)
    app = LoraWizardApp(Session.open_project(folder), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(_screen(folder, [0, 4]))
        await pilot.pause(0.3)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = "\n".join(_screen_rows(app))
    assert "Keys on Samples" in text and "Keys on Train" not in text, text


async def test_ask_and_filter_fields_show_their_placeholder_whole_or_with_an_ellipsis(isolated_home: Path,
                                                                                     project: Path) -> None:
    """QA at 80 columns: Models' a showed 'a folder to search, e.g. ~/ComfyUI or /data/models (Enter adds it, Esc' and
    t '… (kept in huggingface_hub's token store, never' — cut at the field's edge, mid-sentence."""
    app = LoraWizardApp(Session.open_project(project), start_step="models")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        for key, end in (("a", "(Enter adds it, Esc cancels)"), ("t", "never shown)")):
            await pilot.press(key)
            await pilot.pause()
            field = app.screen.query_one("#model-ask", Input)
            shown = _screen_rows(app)[field.content_region.y]
            assert end in shown, shown
            await pilot.press("escape")
            await pilot.pause()
        field.placeholder = "a placeholder much longer than the field is wide, so that it cannot be shown whole here"
        await pilot.press("a")
        field.placeholder = "a placeholder much longer than the field is wide, so that it cannot be shown whole here"
        await pilot.pause()
        region = field.content_region
        shown = _screen_rows(app)[region.y][region.x : region.right].strip()
    assert shown.endswith("…") and field.placeholder.startswith(shown[:-1].strip()), shown


def test_shell_tilde_only_where_a_shell_expands_it(isolated_home: Path) -> None:
    from lorawizard.tui.text_fit import shell_tilde

    home = str(isolated_home)
    command = (f"cd {home}/sd-scripts && HF_HOME={home}/.cache {home}/sd-scripts/.venv/bin/python -m x "
               f"--config_file '{home}/my loras/a.yaml' --out {home}x/y")
    assert shell_tilde(command) == (f"cd ~/sd-scripts && HF_HOME=~/.cache ~/sd-scripts/.venv/bin/python -m x "
                                    f"--config_file '{home}/my loras/a.yaml' --out {home}x/y")


async def test_the_training_command_is_shown_from_home_and_copied_in_full(isolated_home: Path, project: Path) -> None:
    from textual.widgets import Static

    from tests.support.standin import make_ready_trainer

    sd_scripts, python = make_ready_trainer(isolated_home)
    session = Session.open_project(project)
    session.set("paths.sd_scripts", str(sd_scripts))
    session.set("paths.python", str(python))
    save(session)
    app = LoraWizardApp(Session.open_project(project), start_step="env")
    copied: list[str] = []
    app.copy_to_clipboard = copied.append  # type: ignore[method-assign]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        shown = str(app.screen.query_one("#command", Static).render())
        await pilot.press("y")
        await pilot.pause()
    assert "cd ~/sd-scripts &&" in shown and str(isolated_home) + "/sd-scripts" not in shown, shown
    assert copied and f"cd {sd_scripts} &&" in copied[0]
