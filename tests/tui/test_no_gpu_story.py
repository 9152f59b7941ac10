"""One story for "no GPU" (issue 24 item 5) on screen: the GPU screen says the rule in one line and shows the batch
sizes training uses (set with b, else 1); the Train screen labels training on the CPU as a test mode with its expected
speed, and says when the CPU has no native bf16."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.gpu import cpu_mode
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.widgets.probe_tables import BucketTable
from tests.support.fake_nvml import install, none_visible, one_gpu
from tests.tui.test_gpu_screen import settle, with_dataset

pytestmark = pytest.mark.tui


async def test_the_gpu_screen_without_a_gpu_says_the_rule(home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, none_visible())
    session = with_dataset(home_project)
    session.set_batch_size("1024x512", 2)
    app = LoraWizardApp(session, start_step="probe")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        state = str(app.screen.query_one("#gpu-state").render())
        assert state.splitlines()[0] == "no GPU: the probe is skipped; batch sizes from b, else 1"
        assert "training runs on the CPU as a test mode" in state and "need one" not in state
        table = app.screen.query_one(BucketTable)
        rows = {bucket: (str(table.get_row(bucket)[2]).strip(), str(table.get_row(bucket)[5]))
                for bucket in ("1024x1024", "1024x512", "512x1024")}
        assert rows["1024x512"] == ("2", "set by hand")
        assert rows["1024x1024"][0] == "1" and "no GPU" in rows["1024x1024"][1]  # what training uses, not "—"
        assert rows["512x1024"][0] == "1"  # no "~2 same area as 1024x512": borrowing is a GPU's guess
        assert not app.screen.query_one("#estimate").display  # no VRAM guess without a GPU
        await pilot.press("ctrl+g")
        await settle(pilot)
        assert app.step_states["probe"] == "done"
        await pilot.press("ctrl+q")


async def test_the_train_screen_shows_the_cpu_test_mode_label(home_project: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, none_visible())
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")  # no avx512_bf16, no amx_bf16
    monkeypatch.setattr(cpu_mode, "CPUINFO", flags)
    app = LoraWizardApp(with_dataset(home_project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        label = app.screen.query_one("#train-cpu-mode")
        assert label.display and label.region.height >= 2
        text = str(label.render())
        assert text.startswith("CPU test mode: no GPU visible")
        assert "per step at 1024x1024 batch 1 (estimate)" in text
        assert "bf16 runs about 200× slower than fp32" in text and "set mixed precision to no" in text
        app.store.decide("train.mixed_precision", "no")  # the fix the label offers: the speed follows
        app.screen._read_cpu_mode()
        await settle(pilot)
        assert "200×" not in str(label.render()) and "CPU test mode" in str(label.render())
        await pilot.press("ctrl+q")


async def test_with_a_gpu_there_is_no_cpu_label(home_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, one_gpu())
    app = LoraWizardApp(with_dataset(home_project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert not app.screen.query_one("#train-cpu-mode").display
        await pilot.press("ctrl+q")


async def test_environment_without_a_gpu_offers_fp32_on_a_cpu_without_bf16(project: Path, tmp_path: Path) -> None:
    """The Environment step tells the same rule: a CPU finding (test mode, its speed) and, without avx512_bf16 or
    amx_bf16, the 200× line whose key p saves train.mixed_precision = "no" after asking."""
    from lorawizard.core.session.document import Session
    from tests.support.fake_trainer_env import canned_check, make_canned_python, make_checkout, make_fake_root
    from tests.support.sessions import save
    from tests.tui.test_environment_screen import check, wait_idle
    from tests.tui.test_train_layout import svg_cells

    root = make_fake_root(tmp_path / "root", nixos=False, driver_libs=False)
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    sd = make_checkout(project.parent / "sd-scripts", git_branch=None)
    make_canned_python(sd / ".venv" / "bin" / "python", canned_check(sd_scripts=sd))
    session = Session.open_project(project)
    session.set("paths.sd_scripts", str(sd))
    save(session)
    app = LoraWizardApp(session, start_step="env", step_options={"env": {"nvml": none_visible(), "root": root}})
    async with app.run_test(size=(120, 60)) as pilot:
        screen = app.screen
        await check(pilot)
        keys = {f.key: f for f in screen.findings}
        assert cpu_mode.NO_GPU_RULE in keys["gpu"].fix
        assert keys["cpu"].action == "fp32" and "200× slower than fp32" in keys["cpu"].message
        grid, _ = svg_cells(app.export_screenshot(), 120, 60)
        rows = " ".join("".join(row).strip() for row in grid)  # wrapped lines joined
        assert "→ [p] set mixed precision to no" in rows, rows
        screen.set_focus(None)
        await pilot.press("p")  # asks first
        await pilot.pause()
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("enter")
        await wait_idle(pilot, until=lambda: "fp32" not in {f.action for f in screen.findings})
        assert app.session.train.mixed_precision == "no"
        assert {f.key: f for f in screen.findings}["cpu"].status == "ok"
        await pilot.press("ctrl+q")
    assert Session.load(project / "session.toml").train.mixed_precision == "no"
