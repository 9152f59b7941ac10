"""Environment screen: findings with their fixes, one-key fixes streamed into the screen, the copyable command."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Log

from lorawizard.core.environment import step as env
from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.environment import EnvironmentScreen
from tests.support.fake_nvml import FakeNvml, fake_gpu
from tests.support.fake_trainer_env import canned_check, git, make_canned_python, make_checkout
from tests.support.sessions import save
from tests.support.waiting import pilot_until

RTX3090 = fake_gpu(0, "NVIDIA GeForce RTX 3090", 24.0, cuda_driver_version="12.4", driver_version="550.54.14")


def env_app(session: Session, **options: Any) -> LoraWizardApp:
    """The wizard on the Environment screen; its checks and fixes see one RTX 3090 (a fake NVML)."""
    return LoraWizardApp(session, start_step="env", step_options={"env": {"nvml": FakeNvml([RTX3090]), **options}})


def fixed_project(name: str) -> Path:
    """Snapshots show paths, so they live at a fixed place (one per test: tests run in parallel)."""
    root = Path("/tmp") / f"lorawizard-snap-env-{name}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "project").mkdir(parents=True)
    return root / "project"


def needs_torch_fix(project: Path) -> Session:
    sd = make_checkout(project.parent / "sd-scripts", git_branch=None)
    make_canned_python(sd / ".venv" / "bin" / "python",
                       canned_check(torch={"version": "2.14.1+cu130", "cuda": "13.0"}, sd_scripts=sd))
    session = Session.open_project(project)
    session.set("paths.sd_scripts", str(sd))
    save(session)
    return session


async def check(pilot) -> None:  # noqa: ANN001
    await pilot.pause()
    await pilot.press("ctrl+g")
    await wait_idle(pilot, until=lambda: bool(pilot.app.screen.findings))


async def wait_idle(pilot, until=lambda: True) -> None:  # noqa: ANN001
    """Until the step has finished and its result is on the screen (a loaded machine can take a while); fails
    after 30 s instead of going on as if it had."""

    def idle() -> bool:
        screen = pilot.app.screen
        return not screen.runner.running and screen.app.step_states.get("env") != "todo" and bool(until())

    await pilot.pause(0.05)  # what the key started has begun
    await pilot_until(pilot, idle, 30, "the env step to finish and show its result")
    await pilot.pause(0.2)


def test_snapshot_findings_80x24(snap_compare) -> None:
    app = env_app(needs_torch_fix(fixed_project("80")))
    assert snap_compare(app, terminal_size=(80, 24), run_before=check)


def test_snapshot_findings_120x40(snap_compare) -> None:
    app = env_app(needs_torch_fix(fixed_project("120")))
    assert snap_compare(app, terminal_size=(120, 40), run_before=check)


def test_snapshot_nothing_set_up_120x40(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    project = fixed_project("empty")
    monkeypatch.setenv("HOME", str(project.parent / "home"))
    app = env_app(Session.open_project(project))
    assert snap_compare(app, terminal_size=(120, 40), run_before=check)


async def test_check_shows_findings_and_the_command(project: Path) -> None:
    session = needs_torch_fix(project)
    app = env_app(session)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, EnvironmentScreen)
        assert "flux_train_network.py" in screen.query_one("#command").render().plain  # shown before any check
        await check(pilot)
        torch = next(f for f in screen.findings if f.key == "torch")
        assert torch.status == "error" and "needs a newer driver" in torch.message
        assert app.step_states["env"] == "attention"
        assert not screen.runner.query_one(Log).display  # a plain check: the findings say it all
        await pilot.press("y")
        await pilot.pause()
        assert any("copied" in n.message for n in app._notifications)
        assert app.clipboard == screen.command.shell_text()


async def test_clone_key_streams_into_the_screen(project: Path, tmp_path: Path, isolated_home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = make_checkout(tmp_path / "upstream", git_branch="main", remote=None)
    git("tag", "v0.10.1", cwd=upstream)  # the clone checks out the pinned release tag, not a branch
    bare = tmp_path / "sd.git"
    git("clone", "-q", "--bare", str(upstream), str(bare), cwd=tmp_path)
    app = env_app(Session.open_project(project), url=bare.as_uri())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.screen.set_focus(None)
        await pilot.press("c")  # asks first
        await pilot.pause()
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("enter")
        await wait_idle(pilot)
        log = app.screen.runner.query_one(Log)
        assert log.display and any("Cloning into" in line for line in log.lines)
        assert (isolated_home / "sd-scripts" / "flux_train_network.py").is_file()
        assert app.session.get("paths.sd_scripts") == str(isolated_home / "sd-scripts")
        assert app.screen.query_one("#set-paths-sd_scripts").value == str(isolated_home / "sd-scripts")
    assert Session.load(project / "session.toml").get("paths.sd_scripts") == str(isolated_home / "sd-scripts")


async def test_offline_fix_says_so(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAWIZARD_OFFLINE", "1")
    app = env_app(Session.open_project(project))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.screen.set_focus(None)
        await pilot.press("c", "y")
        await wait_idle(pilot)
        status = str(app.screen.runner.query_one(".runner-status").render())
        assert "no network (github.com unreachable): run by hand: git clone" in status


async def test_a_letter_never_clones_without_a_yes(project: Path, isolated_home: Path) -> None:
    app = env_app(Session.open_project(project))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for key in ("c", "v", "i"):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen.__class__.__name__ == "ConfirmScreen"
            await pilot.press("n")
            await pilot.pause()
            assert not app.screen.runner.running
    assert not (isolated_home / "sd-scripts").exists()


async def test_enter_in_a_field_runs_the_check_and_no_sd_scripts_leads(project: Path) -> None:
    app = env_app(Session.open_project(project))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen.query_one("#set-paths-python").focus()
        await pilot.press("enter")
        await wait_idle(pilot)
        assert app.screen.focused is None  # back out of the field: letters act on the screen
        lead = app.screen.query_one("#lead")
        assert lead.has_class("shown") and "Press c to clone it into ~/sd-scripts" in str(lead.render())


async def test_a_found_venv_is_no_longer_shown_once_another_sd_scripts_is_typed(
        project: Path, isolated_home: Path) -> None:
    """QA: sd-scripts found in ~/sd-scripts, then the person types another path (here a file): the trainer Python
    field kept saying "~/sd-scripts/.venv/bin/python (found: the venv in sd-scripts)" under a finding that said
    <typed>/.venv/bin/python does not exist."""
    sd = make_checkout(isolated_home / "sd-scripts", git_branch=None)
    make_canned_python(sd / ".venv" / "bin" / "python", canned_check(sd_scripts=sd))
    app = env_app(Session.open_project(project))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        python_field = app.screen.query_one("#set-paths-python")
        assert "(found)" in python_field.placeholder and python_field.hint.startswith("found: the venv")
        field = app.screen.query_one("#set-paths-sd_scripts")
        field.focus()
        await pilot.press(*"~/sd-scripts/requirements.txt", "enter")
        await wait_idle(pilot, until=lambda: bool(app.screen.findings))
        assert "is a file" in next(f.message for f in app.screen.findings if f.title == "sd-scripts")
        assert "found" not in python_field.placeholder


async def test_a_path_typed_outside_the_fields_goes_into_the_sd_scripts_field(project: Path) -> None:
    """QA: the screen says "type another path below"; a person types /srv/kohya/sd-scripts right away. Nothing is
    focused, so the letters ran the screen's keys (c asked to clone, y copied the command, a q would quit)."""
    app = env_app(Session.open_project(project))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert not app.screen.in_text_field()
        await pilot.press(*"/srv/kohya/sd-scripts")
        await pilot.pause()
        field = app.screen.query_one("#set-paths-sd_scripts")
        assert field.has_focus and field.value == "/srv/kohya/sd-scripts"
        assert app.screen.__class__.__name__ == "EnvironmentScreen"  # no clone question came up
        await pilot.press("escape")  # Esc undoes the edit, as in any field
        await pilot.pause()
        assert field.value == "" and app.session.get("paths.sd_scripts") is None


async def test_finding_labels_never_run_into_their_values_at_80x24(project: Path) -> None:
    """A title as wide as its column (or wider) still leaves blanks before the value; a longer one ends with …"""
    import re

    from tests.tui.test_train_layout import svg_cells

    long_title = "a finding title longer than its column"
    findings = [env.Finding("python", "ok", "trainer Python", "Python 3.10.14 at ~/sd-scripts/.venv/bin/python"),
                env.Finding("command", "warning", "dataset config", "not written yet", fix="run the dataset step"),
                env.Finding("other", "error", long_title, "and its value")]
    app = env_app(Session.open_project(project))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.screen._show_findings(findings)
        await pilot.pause(0.1)
        grid, _ = svg_cells(app.export_screenshot(), 80, 24)
    rows = ["".join(row).rstrip() for row in grid]
    shown = [re.match(r"^ [✓!✗] (\S(?:.*?\S)?)  +(\S.*)$", row) for row in rows if re.match(r"^ [✓!✗] ", row)]
    assert [m.groups() if m else None for m in shown[:3]] == [
        ("trainer Python", "Python 3.10.14 at ~/sd-scripts/.venv/bin/python"),
        ("dataset config", "not written yet"),
        ("a finding title…", "and its value"),
    ], "\n".join(rows)


async def test_nixos_and_uv_findings_with_their_keys(project: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24 item 11: on NixOS (a fake root tree) torch cannot load libcuda.so: the finding names the driver's
    folder with [l], which saves paths.ld_library_path and shows LD_LIBRARY_PATH in the command; the venv made by uv
    is named with [v]."""
    from tests.support.fake_trainer_env import make_fake_root, make_libcuda_python, make_uv_venv_cfg
    from tests.tui.test_train_layout import svg_cells

    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    root = make_fake_root(tmp_path / "root")
    lib = root / "run" / "opengl-driver" / "lib"
    sd = make_checkout(project.parent / "sd-scripts", git_branch=None)
    make_libcuda_python(sd / ".venv" / "bin" / "python", canned_check(sd_scripts=sd), lib)
    make_uv_venv_cfg(sd / ".venv")
    session = Session.open_project(project)
    session.set("paths.sd_scripts", str(sd))
    save(session)
    app = env_app(session, root=root)
    async with app.run_test(size=(120, 60)) as pilot:
        screen = app.screen
        assert isinstance(screen, EnvironmentScreen)
        await check(pilot)
        grid, _ = svg_cells(app.export_screenshot(), 120, 60)
        rows = " ".join("".join(row).strip() for row in grid)  # wrapped lines joined
        assert "NixOS driver" in rows and "→ [l] run the trainer with" in rows, rows
        assert "uv venv" in rows and "made by uv 0.5.29" in rows and "→ [v] create a plain venv" in rows, rows
        assert "[i] install torch" not in rows, rows  # torch is fine: the loader's path is not
        keys = {f.key: f for f in screen.findings}
        assert keys["nixos"].action == "libpath" and keys["uv_venv"].action == "venv"
        assert "LD_LIBRARY_PATH" not in screen.query_one("#command").render().plain
        screen.set_focus(None)
        await pilot.press("l")  # asks first
        await pilot.pause()
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("enter")
        await wait_idle(pilot, until=lambda: "nixos" not in {f.key for f in screen.findings})
        assert app.session.path_settings.ld_library_path == [str(lib)]
        assert f"LD_LIBRARY_PATH={lib}" in screen.query_one("#command").render().plain
        assert screen.command.env["LD_LIBRARY_PATH"] == str(lib)
    assert Session.load(project / "session.toml").path_settings.ld_library_path == [str(lib)]
