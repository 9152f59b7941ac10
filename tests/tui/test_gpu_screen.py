"""The GPU & batch size screen: fake NVML inventories (none, one, two different GPUs), choosing a GPU and a preset,
a live probe with an injected trial runner, snapshots at 80x24 and 120x40."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import DataTable, OptionList, Select

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from tests.support.dataset_fixtures import prepared_buckets
from tests.support.fake_nvml import RTX_3090_BUSY, RTX_3090_FREE, install, none_visible, one_gpu, two_different_gpus
from tests.support.sessions import save
from tests.unit.test_probe import PixelBudgetRunner, budget_gpu


def with_dataset(project: Path, buckets: dict[str, int] | None = None) -> Session:
    session = Session.open_project(project)
    prepared_buckets(project / "dataset", buckets or {"1024x1024": 12, "1024x512": 5, "512x1024": 3}, caption=None)
    save(session)
    return session


async def settle(pilot) -> None:  # noqa: ANN001
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def test_no_gpu_is_a_clear_state(home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, none_visible())
    app = LoraWizardApp(with_dataset(home_project), start_step="probe")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "no GPU: the probe is skipped; batch sizes from b, else 1" in str(
            app.screen.query_one("#gpu-state").render())
        await pilot.press("ctrl+g")
        await settle(pilot)
        assert app.step_states["probe"] == "done"  # skipped, not a failure (issue 24 item 5)


async def test_a_batch_size_of_ones_own_per_bucket_without_a_gpu(home_project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24 item 2: with no GPU to probe (or to override a probed size), `b` sets the highlighted bucket's batch
    size by hand; a wrong one is refused with its reason and nothing saved; empty gives it back."""
    from lorawizard.tui.screens.confirm import AskScreen
    from lorawizard.tui.widgets.probe_tables import BucketTable

    install(monkeypatch, none_visible())
    session = with_dataset(home_project)
    app = LoraWizardApp(session, start_step="probe")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(BucketTable)
        table.focus()
        await pilot.press("down")  # the second bucket, 1024x512
        await pilot.press("b")
        await pilot.pause()
        assert isinstance(app.screen, AskScreen)
        await pilot.press("0", "enter")
        await pilot.pause()
        assert isinstance(app.screen, AskScreen)  # refused: still asking, with the reason
        assert "1 to" in str(app.screen.query_one("#ask-problem").render())
        await pilot.press("backspace", "3", "enter")
        await pilot.pause()
        assert session.batch_sizes() == {"1024x512": 3}
        row = table.get_row("1024x512")
        assert str(row[2]).strip() == "3" and "set by hand" in str(row[5])
        await pilot.press("b")
        await pilot.pause()
        await pilot.press("backspace", "enter")  # empty: back to the estimate / the probe
        await pilot.pause()
        assert session.batch_sizes() == {}
        await pilot.press("ctrl+q")
    assert Session.load(home_project / "session.toml", read_only=True).batch_sizes() == {}


async def test_choose_the_other_gpu_and_a_preset(home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, two_different_gpus())
    app = LoraWizardApp(with_dataset(home_project), start_step="probe")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        options = app.screen.query_one("#gpu-list", OptionList)
        assert options.highlighted == 1  # the one with the most free memory
        options.focus()
        await pilot.press("up", "enter")
        await pilot.pause()
        assert app.session.get("gpu.uuid") == RTX_3090_BUSY.uuid
        app.screen.query_one("#preset-select", Select).value = "12gb"
        await pilot.pause()
        assert app.session.get("gpu.vram_preset") == "12gb"
    saved = Session.load(home_project / "session.toml")
    assert saved.get("gpu.uuid") == RTX_3090_BUSY.uuid and saved.get("gpu.vram_preset") == "12gb"


async def test_probe_runs_live_and_fills_the_tables(home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, one_gpu())
    app = LoraWizardApp(with_dataset(home_project), start_step="probe",
                        step_options={"probe": {"trial_runner": PixelBudgetRunner(budget=3 * 1024 * 1024)}})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+g")
        await settle(pilot)
        trials = app.screen.query_one("#trials", DataTable)
        assert trials.row_count >= 4
        results = [str(trials.get_row_at(i)[4]) for i in range(trials.row_count)]
        assert any("ok" in r for r in results) and any("out of memory" in r for r in results)
        buckets = app.screen.query_one("#buckets", DataTable)
        assert str(buckets.get_cell("1024x1024", "batch")) == "3" and str(buckets.get_cell("1024x512", "batch")) == "6"
        assert str(buckets.get_cell("1024x1024", "source")) == "probed"
        assert app.step_states["probe"] == "done"
    assert Session.load(home_project / "session.toml").batch_sizes() == {"1024x1024": 3, "1024x512": 6, "512x1024": 6}


async def test_the_presets_batch_reads_as_the_starting_guess_then_gives_way_to_the_probed_sizes(
        home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, one_gpu())
    app = LoraWizardApp(with_dataset(home_project), start_step="probe",
                        step_options={"probe": {"trial_runner": PixelBudgetRunner(budget=3 * 1024 * 1024)}})
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        line = str(app.screen.query_one("#estimate").render())
        assert line.startswith("starting guess before the probe: 1024×1024 batch 2 ≈"), line
        await pilot.press("ctrl+g")
        await settle(pilot)
        line = str(app.screen.query_one("#estimate").render())
        assert line == "probed: batch 3 · 6 · 6 per bucket (table below) · the preset's batch 2 was the starting guess"
        assert "≈" not in line  # no estimate beside measured sizes


# ---------------------------------------------------------------- snapshots


def probed_project(project: Path) -> Session:
    """Two different GPUs, the free one chosen, and results of an earlier probe on it."""
    session = with_dataset(project)
    session.set("gpu.uuid", RTX_3090_FREE.uuid)
    session.set("gpu.vram_preset", "24gb")
    session.set_batch_size("1024x1024", 2)
    session.set_batch_size("1024x512", 4)
    save(session)
    state = project / ".lorawizard"
    state.mkdir(exist_ok=True)
    entry = {"batch_size": 2, "peak_gb": 21.6, "s_per_step": 3.91}
    (state / "probe.json").write_text(json.dumps({
        "gpu": {"uuid": RTX_3090_FREE.uuid}, "buckets": {"1024x1024": entry, "1024x512": {**entry, "batch_size": 4}},
    }))
    return session


def test_snapshot_two_gpus_80x24(snap_compare, home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, two_different_gpus())
    app = LoraWizardApp(probed_project(home_project), start_step="probe")
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


def test_snapshot_two_gpus_120x40(snap_compare, home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, two_different_gpus())
    app = LoraWizardApp(probed_project(home_project), start_step="probe")
    assert snap_compare(app, terminal_size=(120, 40), run_before=settle)


def test_snapshot_no_gpu_80x24(snap_compare, home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, none_visible())
    app = LoraWizardApp(with_dataset(home_project), start_step="probe")
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


def test_snapshot_after_a_probe_120x40(snap_compare, home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, budget_gpu(3 * 1024 * 1024))
    session = with_dataset(home_project)
    session.set("gpu.vram_preset", "24gb")
    app = LoraWizardApp(session, start_step="probe",
                        step_options={"probe": {"trial_runner": PixelBudgetRunner(budget=3 * 1024 * 1024)}})

    async def probe(pilot) -> None:  # noqa: ANN001
        await settle(pilot)
        await pilot.press("ctrl+g")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=probe)


async def test_escape_cancels_a_running_trial_and_kills_it(home_project: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The real trial runner with the stand-in trainer hanging at its first step; Esc must kill its process group."""
    from tests.support.standin import make_fake_sd_scripts
    from tests.unit.test_probe_standin import _standin_processes

    sd_scripts, _ = make_fake_sd_scripts(tmp_path)
    session = with_dataset(home_project, {"512x512": 2})
    session.set("paths.sd_scripts", str(sd_scripts))
    session.set("gpu.vram_preset", "24gb")
    save(session)
    monkeypatch.setenv("STANDIN_HANG_AT_STEP", "1")
    install(monkeypatch, one_gpu())
    app = LoraWizardApp(session, start_step="probe")
    workdir = home_project / ".lorawizard" / "probe"
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+g")
        for _ in range(300):  # up to 15 s on a loaded machine
            await pilot.pause(0.05)
            if _standin_processes(workdir):
                break
        assert _standin_processes(workdir), "the trial never started"
        await pilot.press("escape")
        await settle(pilot)
        assert "cancelled" in str(app.screen.query_one(".runner-status").render())
        assert app.step_states["probe"] == "attention"
    assert _standin_processes(workdir) == []
    assert Session.load(home_project / "session.toml").batch_sizes() == {}


# ---------------------------------------------------------------- fastest fit (issue 26)


async def test_f_chooses_what_the_probe_may_change(home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, one_gpu())
    app = LoraWizardApp(with_dataset(home_project), start_step="probe")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        line = app.screen.query_one("#fit-line")
        assert "search: the preset's settings" in str(line.render())
        await pilot.press("f")
        await pilot.pause()
        assert app.session.gpu.fit == "quality" and "quality first (16-bit)" in str(line.render())
        assert "not measured yet: ctrl+g or r measures it" in str(line.render())
        await pilot.press("f")
        await pilot.pause()
        assert app.session.gpu.fit == "fastest" and "fp8/16-bit," in str(line.render())
        await pilot.press("f")
        await pilot.pause()
        assert app.session.gpu.fit == "preset"
        assert not app.screen.query_one("#fit", DataTable).display
    assert Session.load(home_project / "session.toml").gpu.fit == "preset"


def fit_app(project: Path, monkeypatch: pytest.MonkeyPatch) -> LoraWizardApp:
    from tests.support.fake_nvml import RTX_4060, FakeNvml
    from tests.unit.test_probe_fit import ModelRunner

    install(monkeypatch, FakeNvml([RTX_4060]))
    session = with_dataset(project, {"1024x1024": 12, "768x1024": 5})
    session.set("gpu.fit", "fastest")
    save(session)
    return LoraWizardApp(session, start_step="probe", step_options={"probe": {"trial_runner": ModelRunner(RTX_4060)}})


async def test_the_fit_search_fills_its_table_and_marks_the_choice(home_project: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    app = fit_app(home_project, monkeypatch)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+g")
        await settle(pilot)
        table = app.screen.query_one("#fit", DataTable)
        assert table.display and table.row_count >= 5
        results = [str(table.get_row_at(i)[-1]) for i in range(table.row_count)]
        # the other area's trials (the chosen setting, its own largest batch) are trials, not candidates
        assert {row.bucket for row in app.screen.trial_rows or ()} == {"768x1024"}
        assert results.count("◀ chosen") == 1 and "out of memory" in results and "ruled out" in results
        chosen = table.get_row_at(results.index("◀ chosen"))
        session = app.session
        assert (str(chosen[1]), str(chosen[2]), str(chosen[3]), str(chosen[4])) == (
            str(session.gpu.fit_swap), "fp8" if session.gpu.fit_fp8 else "16-bit",
            "on" if session.gpu.fit_checkpointing else "off", str(session.batch_sizes()["1024x1024"]))
        line = str(app.screen.query_one("#fit-line").render())
        assert f"swap {session.gpu.fit_swap}" in line and "images/s" in line and "forecast: ≈" in line
        assert app.step_states["probe"] == "done"
        await pilot.press("f")  # fastest → preset: the table goes, the choice stays saved
        await pilot.pause()
        assert not table.display


async def test_the_state_column_shows_when_the_8_bit_twin_was_tried(home_project: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The person's AdamW under `fastest` on a 24 GB card: AdamW8bit is tried (and chosen, in the stand-in's model),
    so the table gains its optimizer-state column; with the default optimizer it has none (the snapshots)."""
    from tests.support.fake_nvml import RTX_3090_24, FakeNvml
    from tests.unit.test_probe_fit import ModelRunner

    install(monkeypatch, FakeNvml([RTX_3090_24]))
    session = with_dataset(home_project, {"1024x1024": 12})
    session.set("gpu.fit", "fastest")
    session.set("train.optimizer_type", "AdamW")
    save(session)
    app = LoraWizardApp(session, start_step="probe",
                        step_options={"probe": {"trial_runner": ModelRunner(RTX_3090_24, session=session)}})
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+g")
        await settle(pilot)
        table = app.screen.query_one("#fit", DataTable)
        labels = [str(column.label).strip() for column in table.columns.values()]
        assert labels[3:5] == ["ckpt", "state"], labels
        states = {str(table.get_row_at(i)[4]) for i in range(table.row_count)}
        assert states == {"own", "8-bit"}
        assert app.session.gpu.fit_optimizer == "AdamW8bit"


async def test_a_price_typed_on_the_gpu_screen_turns_the_forecast_into_money(home_project: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """After a fit, a price per GPU-hour and a hosted trainer's price per 1,000 steps typed into the screen's form: the
    fit line's forecast says both at once, from today's prices (not the lines the probe printed)."""
    from textual.widgets import Input

    app = fit_app(home_project, monkeypatch)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+g")
        await settle(pilot)
        line = app.screen.query_one("#fit-line")
        assert "per GPU-hour" not in str(line.render()) and "hosted at" not in str(line.render())
        app.screen.query_one("#set-gpu-price_per_hour", Input).focus()
        await pilot.press(*"1.5", "enter")
        app.screen.query_one("#set-gpu-hosted_price_per_1000_steps", Input).focus()
        await pilot.press(*"3", "enter")
        await settle(pilot)
        text = str(line.render())
        assert "at 1.5 per GPU-hour" in text and "hosted at 3 per 1,000 steps" in text, text
    session = Session.load(home_project / "session.toml")
    assert (session.gpu.price_per_hour, session.gpu.hosted_price_per_1000_steps) == (1.5, 3.0)


def test_snapshot_fit_80x24(snap_compare, home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = fit_app(home_project, monkeypatch)

    async def probe(pilot) -> None:  # noqa: ANN001
        await settle(pilot)
        await pilot.press("ctrl+g")
        await settle(pilot)
        await pilot.press("tab")  # the fit table, scrolled into view
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=probe)


def test_snapshot_fit_120x40(snap_compare, home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = fit_app(home_project, monkeypatch)

    async def probe(pilot) -> None:  # noqa: ANN001
        await settle(pilot)
        await pilot.press("ctrl+g")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=probe)
