"""Issue 24 item 11, the seed author's own machine: on NixOS a pip torch cannot load libcuda.so (the driver's
libraries are in /run/opengl-driver/lib), and a trainer venv made by uv is named with what breaks and its fix.
Every test reads a fake root tree and fake trainer Python output, never this machine's."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext
from lorawizard.core.environment import step as env
from lorawizard.core.launch.command import build_train_command, library_path_env
from lorawizard.core.session.document import Session, SessionError
from tests.support.fake_nvml import FakeNvml, fake_gpu
from tests.support.fake_trainer_env import (
    canned_check,
    make_canned_python,
    make_checkout,
    make_fake_root,
    make_libcuda_python,
    make_uv_venv_cfg,
)

pytestmark = pytest.mark.unit

ONE_GPU = FakeNvml([fake_gpu(0, "NVIDIA GeForce RTX 4090", 24.0, cuda_driver_version="12.4")])


@pytest.fixture(autouse=True)
def _no_inherited_library_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)


def by_key(diagnosis: env.Examination) -> dict[str, env.Finding]:
    return {f.key: f for f in diagnosis.findings}


def nixos_project(project: Path, root: Path) -> tuple[Session, Path]:
    """sd-scripts whose venv's torch loads libcuda only with the fake root's driver folder on LD_LIBRARY_PATH."""
    sd = make_checkout(project.parent / "sd-scripts", git_branch=None)
    lib = root / "run" / "opengl-driver" / "lib"
    make_libcuda_python(sd / ".venv" / "bin" / "python", canned_check(sd_scripts=sd), lib)
    session = Session.new(project / "session.toml")
    session.set("paths.sd_scripts", str(sd))
    return session, lib


# ---------------------------------------------------------------- NixOS


def test_nixos_without_libcuda_names_the_driver_folder_and_offers_the_fix(project: Path, tmp_path: Path) -> None:
    root = make_fake_root(tmp_path / "root")
    session, lib = nixos_project(project, root)
    found = by_key(env.examine(session, nvml=ONE_GPU, root=root, preview_command=False))
    nixos = found["nixos"]
    assert nixos.status == "error" and nixos.action == "libpath"
    assert str(lib) in nixos.message and "libcuda.so" in nixos.message
    assert f"LD_LIBRARY_PATH={lib}" in nixos.fix and "paths.ld_library_path" in nixos.fix
    assert found["cuda"].status == "error"  # torch's own view: it cannot use the GPU


def test_the_fix_saves_the_setting_and_the_launch_carries_it(project: Path, tmp_path: Path) -> None:
    root = make_fake_root(tmp_path / "root")
    session, lib = nixos_project(project, root)
    result = env.run_step(StepContext(session=session, options={"nvml": ONE_GPU, "root": root, "fix": "libpath"}))
    assert result.data["fix"].ok, result.data["fix"].summary
    assert Session.load(project / "session.toml").path_settings.ld_library_path == [str(lib)]  # saved on disk
    found = by_key(result.data["diagnosis"])
    assert "nixos" not in found  # the check ran with it: torch loads libcuda now
    assert found["cuda"].status == "ok"
    command = result.data["command"]
    assert command.env["LD_LIBRARY_PATH"] == str(lib)
    assert f"LD_LIBRARY_PATH={lib}" in command.shell_text()
    assert f"LD_LIBRARY_PATH={lib}" in command.shell_text(multiline=True).splitlines()[0]
    assert command.full_env({"LD_LIBRARY_PATH": "/opt/other"})["LD_LIBRARY_PATH"] == str(lib)


def test_the_launch_puts_the_folder_before_an_inherited_library_path(project: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_fake_root(tmp_path / "root")
    session, lib = nixos_project(project, root)
    session.set("paths.ld_library_path", [str(lib)])
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/opt/cuda/lib64:{lib}")
    assert library_path_env(session) == {"LD_LIBRARY_PATH": f"{lib}:/opt/cuda/lib64"}
    command = build_train_command(session, dataset_config=project / "d.toml", accelerate_config=project / "a.yaml",
                                  output_dir=project / "out", nvml=ONE_GPU)
    assert command.full_env()["LD_LIBRARY_PATH"] == f"{lib}:/opt/cuda/lib64"


def test_without_the_setting_the_launch_leaves_library_path_alone(project: Path, tmp_path: Path) -> None:
    session, _ = nixos_project(project, make_fake_root(tmp_path / "root"))
    command = build_train_command(session, dataset_config=project / "d.toml", accelerate_config=project / "a.yaml",
                                  output_dir=project / "out", nvml=ONE_GPU)
    assert "LD_LIBRARY_PATH" not in command.env and "LD_LIBRARY_PATH" not in command.shell_text()


@pytest.mark.parametrize("value", [["relative/lib"], ["/a:/b"], [""]])
def test_the_setting_takes_absolute_folders_only(project: Path, value: list[str]) -> None:
    session = Session.new(project / "session.toml")
    with pytest.raises(SessionError, match="absolute folders"):
        session.set("paths.ld_library_path", value)


def test_not_nixos_says_nothing_and_the_fix_changes_nothing(project: Path, tmp_path: Path) -> None:
    root = make_fake_root(tmp_path / "root", nixos=False)
    session, _ = nixos_project(project, root)
    found = by_key(env.examine(session, nvml=ONE_GPU, root=root, preview_command=False))
    assert "nixos" not in found
    recorded: dict = {}
    result = env.run_fix(session, "libpath", root=root, record=recorded.__setitem__)
    assert not result.ok and "not NixOS" in result.summary and recorded == {}


def test_nixos_with_a_loadable_libcuda_says_nothing(project: Path, tmp_path: Path) -> None:
    root = make_fake_root(tmp_path / "root")
    sd = make_checkout(project.parent / "sd-scripts", git_branch=None)
    make_canned_python(sd / ".venv" / "bin" / "python", {**canned_check(sd_scripts=sd), "libcuda": {"loaded": True}})
    session = Session.new(project / "session.toml")
    session.set("paths.sd_scripts", str(sd))
    assert "nixos" not in by_key(env.examine(session, nvml=ONE_GPU, root=root, preview_command=False))


def test_nixos_without_driver_libraries_says_to_enable_the_driver(project: Path, tmp_path: Path) -> None:
    root = make_fake_root(tmp_path / "root", driver_libs=False)
    session, _ = nixos_project(project, root)
    nixos = by_key(env.examine(session, nvml=ONE_GPU, root=root, preview_command=False))["nixos"]
    assert nixos.action is None and "hardware.nvidia" in nixos.fix


# ---------------------------------------------------------------- uv


def uv_project(project: Path, uv: str | None) -> tuple[Session, Path]:
    sd = make_checkout(project.parent / "sd-scripts", git_branch=None)
    venv = sd / ".venv"
    make_canned_python(venv / "bin" / "python", {**canned_check(sd_scripts=sd), "pip": None})
    make_uv_venv_cfg(venv, uv)
    session = Session.new(project / "session.toml")
    session.set("paths.sd_scripts", str(sd))
    return session, sd


def test_a_uv_venv_is_named_with_what_breaks_and_its_fix(project: Path, tmp_path: Path) -> None:
    session, sd = uv_project(project, "0.5.29")
    found = by_key(env.examine(session, nvml=ONE_GPU, root=tmp_path, preview_command=False))["uv_venv"]
    assert found.status == "warning" and found.action == "venv"
    assert "made by uv 0.5.29" in found.message and "accelerate" in found.message and "no pip" in found.message
    assert "python -m venv" in found.fix
    assert found.commands[0][1:] == ["-m", "venv", str(sd / "venv")]  # beside it: the uv venv is kept


def test_the_venv_fix_makes_a_plain_venv_beside_the_uv_one(project: Path) -> None:
    session, sd = uv_project(project, "0.5.29")
    recorded: dict = {}
    result = env.run_fix(session, "venv", record=recorded.__setitem__, with_pip=False)
    assert result.ok, result.summary
    assert "uv" not in (sd / "venv" / "pyvenv.cfg").read_text()  # a plain python -m venv
    assert recorded == {"paths.python": str(sd / "venv" / "bin" / "python")}
    assert (sd / ".venv" / "pyvenv.cfg").read_text().count("uv = 0.5.29") == 1  # the uv venv is untouched


def test_a_plain_venv_says_nothing(project: Path, tmp_path: Path) -> None:
    session, _ = uv_project(project, None)
    assert "uv_venv" not in by_key(env.examine(session, nvml=ONE_GPU, root=tmp_path, preview_command=False))
