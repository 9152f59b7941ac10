"""Environment doctor: every finding from a fake sd-scripts checkout and fake trainer Pythons (tests/support/fake_trainer_env.py)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext
from lorawizard.core.environment import checkout as env_checkout
from lorawizard.core.environment import doctor as env_doctor
from lorawizard.core.environment import step as env
from lorawizard.core.session.document import Session
from tests.support.fake_nvml import FakeNvml, fake_gpu
from tests.support.fake_trainer_env import (
    SD3_REQUIREMENTS,
    all_requirements,
    make_broken_python,
    make_checkout,
    make_fake_python,
    make_site,
)
from tests.support.sessions import save

RTX3090 = fake_gpu(0, "NVIDIA GeForce RTX 3090", 24.0, cuda_driver_version="12.8", driver_version="570.86.10")


@pytest.fixture
def nvml() -> FakeNvml:
    """The NVML the doctor is given (default: one RTX 3090 with a CUDA 12.8 driver); tests change its `gpus`."""
    return FakeNvml([RTX3090])


def setup(project: Path, *, torch: dict | None = {}, packages: dict | None = None, **checkout: object) -> Session:
    sd = make_checkout(project / "sd-scripts", **checkout)  # type: ignore[arg-type]
    site = make_site(project / "site", torch=torch,
                     packages=all_requirements() if packages is None else packages)
    make_fake_python(sd / ".venv" / "bin" / "python", site)
    session = Session.new(project / "session.toml")
    session.set("paths.sd_scripts", str(sd))
    return session


def by_key(diagnosis: env.Examination) -> dict[str, env.Finding]:
    return {f.key: f for f in diagnosis.findings}


# ---------------------------------------------------------------- healthy


def test_healthy_environment(project: Path, nvml: FakeNvml) -> None:
    session = setup(project)
    diagnosis = env.examine(session, nvml=nvml)
    found = by_key(diagnosis)
    assert diagnosis.ok, [f.line() for f in diagnosis.errors]
    assert found["sd_scripts"].status == "ok" and "branch sd3" in found["sd_scripts"].message
    assert "commit " in found["sd_scripts"].message
    assert found["python"].status == "ok" and "Python 3." in found["python"].message
    assert found["torch"].status == "ok" and "2.6.0+cu124 (CUDA 12.4), fits the driver's CUDA 12.8" in found["torch"].message
    assert found["cuda"].status == "ok" and "RTX 3090" in found["cuda"].message
    assert found["gpu"].message.startswith("NVIDIA GeForce RTX 3090 · driver 570.86.10 · CUDA 12.8")
    assert found["accelerate"].message == "version 1.6.0"
    assert found["requirements"].status == "ok" and "importing" in found["requirements"].message
    assert found["models"].status == "warning"  # the models step has not run
    assert diagnosis.command is not None and "flux_train_network.py" in diagnosis.command.shell_text()
    assert diagnosis.check["python"]["executable"]


def test_run_step_reports_findings_and_the_command(project: Path, nvml: FakeNvml) -> None:
    session = setup(project)
    save(session)
    replay = Session.load(project / "session.toml", read_only=True)
    result = env.run_step(StepContext(session=replay, options={"nvml": nvml}))
    assert result.ok and result.summary.startswith("environment ready")
    assert any(line.startswith("✓ sd-scripts: ") for line in result.details)
    assert "training command (dataset config not written yet):" in result.details
    command_lines = [line for line in result.details if line.startswith("  ")]
    assert any("--save_state" in line for line in command_lines)
    assert (project / ".lorawizard" / "manual-run" / "accelerate.yaml").is_file()


def test_command_is_written_when_the_dataset_exists(project: Path, nvml: FakeNvml) -> None:
    session = setup(project)
    (project / "dataset" / "1024x1024").mkdir(parents=True)
    (project / "dataset" / "1024x1024" / "0001.png").write_bytes(b"png")
    diagnosis = env.examine(session, nvml=nvml)
    assert diagnosis.command_files_written
    assert (project / ".lorawizard" / "manual-run" / "dataset_config.toml").is_file()


def test_bad_extra_args_are_an_error_finding(project: Path, nvml: FakeNvml) -> None:
    session = setup(project)
    session.set("train.extra_args", ["--no_such_option"])
    found = by_key(env.examine(session, nvml=nvml))
    assert found["command"].status == "error"
    assert "unknown sd-scripts option --no_such_option" in found["command"].message


# ---------------------------------------------------------------- sd-scripts


def test_no_sd_scripts_anywhere(project: Path, nvml: FakeNvml) -> None:
    diagnosis = env.examine(Session.new(project / "session.toml"), nvml=nvml)
    found = by_key(diagnosis)
    assert found["sd_scripts"].status == "error" and found["sd_scripts"].action == "clone"
    assert found["sd_scripts"].commands[0][:5] == ["git", "clone", "--progress", "--branch", "v0.10.1"]  # a release tag, not a branch
    assert found["python"].status == "error"
    assert "command" not in found and "paths.sd_scripts is not set" in (diagnosis.command_problem or "")
    assert not diagnosis.ok


def test_found_in_home_and_recorded(project: Path, nvml: FakeNvml, isolated_home: Path) -> None:
    sd = make_checkout(isolated_home / "sd-scripts", git_branch=None)
    session = Session.new(project / "session.toml")
    save(session)
    replay = Session.load(project / "session.toml", read_only=True)
    ctx = StepContext(session=replay, options={"nvml": nvml})
    env.run_step(ctx)
    assert ctx.decisions["paths.sd_scripts"] == str(sd)
    assert (project / "session.toml").read_text() == session.to_text()  # the user's file is untouched


def test_not_a_checkout(project: Path, nvml: FakeNvml) -> None:
    folder = project / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    session = Session.new(project / "session.toml")
    session.set("paths.sd_scripts", str(folder))
    found = by_key(env.examine(session, nvml=nvml))["sd_scripts"]
    assert found.status == "error" and "is not a kohya-ss/sd-scripts checkout" in found.message
    assert found.action is None  # we never clone into someone's folder


def test_sd_scripts_path_is_a_file(project: Path, nvml: FakeNvml) -> None:
    (project / "sd").write_text("x")
    session = Session.new(project / "session.toml")
    session.set("paths.sd_scripts", str(project / "sd"))
    assert "is a file, not a folder" in by_key(env.examine(session, nvml=nvml))["sd_scripts"].message


def test_missing_sd_scripts_path_offers_a_clone_there(project: Path, nvml: FakeNvml) -> None:
    session = Session.new(project / "session.toml")
    session.set("paths.sd_scripts", str(project / "later"))
    found = by_key(env.examine(session, nvml=nvml))["sd_scripts"]
    assert found.action == "clone" and found.commands[0][-1] == str(project / "later")


def test_old_main_without_flux(project: Path, nvml: FakeNvml) -> None:
    session = setup(project, flux=False, git_branch="main")
    found = by_key(env.examine(session, nvml=nvml))["sd_scripts"]
    assert found.status == "error" and "no flux_train_network.py" in found.message and "v0.10.0" in found.message


def test_fork_and_export_are_warnings(project: Path, nvml: FakeNvml) -> None:
    session = setup(project, remote="https://github.com/someone/sd-scripts-fork.git")
    assert by_key(env.examine(session, imports=False, nvml=nvml))["sd_scripts"].status == "warning"
    other = project / "other"
    other.mkdir()
    session = setup(other, git_branch=None)
    found = by_key(env.examine(session, imports=False, nvml=nvml))["sd_scripts"]
    assert found.status == "warning" and "not a git clone" in found.fix


def test_git_details_without_the_git_binary(project: Path, nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = make_checkout(project / "sd", git_branch="sd3")
    monkeypatch.setattr(env_checkout.shutil, "which", lambda name: None)
    info = env.inspect_checkout(sd)
    assert info.branch == "sd3" and len(info.commit or "") == 40 and info.date is None
    assert info.remote == "https://github.com/kohya-ss/sd-scripts.git"


# ---------------------------------------------------------------- the trainer's Python


def test_python_missing_offers_the_venv(project: Path, nvml: FakeNvml) -> None:
    sd = make_checkout(project / "sd-scripts")
    session = Session.new(project / "session.toml")
    session.set("paths.sd_scripts", str(sd))
    found = by_key(env.examine(session, nvml=nvml))["python"]
    assert found.status == "error" and found.action == "venv"
    assert found.commands[0][1:] == ["-m", "venv", str(sd / ".venv")]


def test_plain_venv_folder_is_found_and_recorded(project: Path, nvml: FakeNvml) -> None:
    sd = make_checkout(project / "sd-scripts")
    make_fake_python(sd / "venv" / "bin" / "python", make_site(project / "site", torch={}, packages=all_requirements()))
    session = Session.new(project / "session.toml")
    session.set("paths.sd_scripts", str(sd))
    ctx = StepContext(session=session, options={"nvml": nvml})
    result = env.run_step(ctx)
    assert result.ok
    assert session.get("paths.python") == str(sd / "venv" / "bin" / "python")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("crash", "did not run the check (exit 1: ImportError: libpython3.10.so.1.0: cannot open)"),
        ("silent", "did not run the check (exit 0)"),
        ("noexec", "is not executable"),
        ("garbage", "does not run: Exec format error"),
    ],
)
def test_python_that_does_not_run(project: Path, nvml: FakeNvml, kind: str, message: str) -> None:
    session = setup(project)
    python = session.paths.python
    make_broken_python(python, kind)
    found = by_key(env.examine(session, nvml=nvml))["python"]
    assert found.status == "error" and message in found.message


def test_check_that_hangs_is_stopped(project: Path, nvml: FakeNvml) -> None:
    session = setup(project)
    make_broken_python(session.paths.python, "hang")
    started = time.monotonic()
    found = by_key(env.examine(session, timeout=0.5, nvml=nvml))["python"]
    assert time.monotonic() - started < 5
    assert "did not finish within 0.5 s (hung?)" in found.message


def test_old_python_is_an_error(project: Path, nvml: FakeNvml) -> None:
    finding = env_doctor._python_findings({"python": {"version": "3.9.18", "version_info": [3, 9, 18], "venv": True}})[0]
    assert finding.status == "error" and finding.action == "venv"
    assert env_doctor._python_findings({"python": {"version_info": [3, 13, 1]}})[0].status == "warning"


# ---------------------------------------------------------------- torch, CUDA, driver


def test_torch_missing_gives_the_wheel_for_the_driver(project: Path, nvml: FakeNvml) -> None:
    session = setup(project, torch=None)
    found = by_key(env.examine(session, nvml=nvml))["torch"]
    assert found.status == "error" and found.message == "not installed" and found.action == "install"
    assert found.commands == [[str(session.paths.python), "-m", "pip", "install", "torch==2.8.0", "torchvision==0.23.0",
                               "--index-url", "https://download.pytorch.org/whl/cu128"]]


def test_torch_too_new_for_the_driver(project: Path, nvml: FakeNvml) -> None:
    nvml.gpus[0] = fake_gpu(0, "NVIDIA GeForce RTX 3090", 24.0, cuda_driver_version="12.4")
    session = setup(project, torch={"version": "2.14.1+cu130", "cuda": "13.0"})
    found = by_key(env.examine(session, nvml=nvml))["torch"]
    assert found.status == "error" and "needs a newer driver: this one supports CUDA 12.4" in found.message
    assert found.commands[0][-1] == "https://download.pytorch.org/whl/cu124" and "torch==2.6.0" in found.commands[0]


def test_cpu_only_torch_with_a_gpu(project: Path, nvml: FakeNvml) -> None:
    session = setup(project, torch={"version": "2.6.0+cpu", "cuda": None, "available": False, "devices": []})
    found = by_key(env.examine(session, nvml=nvml))["torch"]
    assert found.status == "error" and "CPU-only build" in found.message and found.commands


def test_old_torch(project: Path, nvml: FakeNvml) -> None:
    session = setup(project, torch={"version": "2.1.2+cu118", "cuda": "11.8"})
    found = by_key(env.examine(session, nvml=nvml))["torch"]
    assert found.status == "error" and "needs 2.6.0 or later" in found.message


def test_torch_that_does_not_import(project: Path, nvml: FakeNvml) -> None:
    session = setup(project, torch={"import_error": "libcudnn.so.9: cannot open shared object file"})
    found = by_key(env.examine(session, nvml=nvml))["torch"]
    assert found.status == "error" and "does not import: ImportError: libcudnn.so.9" in found.message


def test_cuda_not_available_says_why(project: Path, nvml: FakeNvml) -> None:
    warning = "The NVIDIA driver on your system is too old (found version 12040)."
    session = setup(project, torch={"available": False, "devices": [], "warning": warning})
    found = by_key(env.examine(session, nvml=nvml))["cuda"]
    assert found.status == "error" and warning in found.message


def test_no_kernels_for_a_new_gpu(project: Path, nvml: FakeNvml) -> None:
    nvml.gpus[0] = fake_gpu(0, "NVIDIA GeForce RTX 5090", 32.0, cuda_driver_version="12.8")
    session = setup(project, torch={"devices": [{"name": "NVIDIA GeForce RTX 5090", "capability": [12, 0],
                                                  "memory_total": 32 * 1024**3}]})
    found = by_key(env.examine(session, nvml=nvml))["cuda"]
    assert found.status == "error" and "no kernels for NVIDIA GeForce RTX 5090 (sm_120)" in found.message
    assert "cu128" in found.commands[0][-1]


def test_no_bf16_is_a_warning(project: Path, nvml: FakeNvml) -> None:
    session = setup(project, torch={"bf16": False, "devices": [{"name": "Tesla V100", "capability": [7, 0], "memory_total": 1}]})
    assert by_key(env.examine(session, nvml=nvml))["cuda"].status == "warning"


def test_no_gpu_is_a_clear_finding_not_a_crash(project: Path) -> None:
    session = setup(project, torch={"available": False, "devices": []})
    diagnosis = env.examine(session, nvml=FakeNvml(problem="NVIDIA driver not installed"))
    found = by_key(diagnosis)
    assert found["gpu"].status == "warning" and "no NVIDIA GPU visible" in found["gpu"].message
    assert "NVIDIA driver not installed" in found["gpu"].message
    assert found["cuda"].status == "warning"
    assert diagnosis.ok  # the other steps still work


def test_nvml_blowing_up_is_a_finding(project: Path) -> None:
    class Broken(FakeNvml):
        def read_gpus(self) -> list:
            return [1 / 0]

    found = by_key(env.examine(setup(project), imports=False, nvml=Broken()))["gpu"]
    assert found.status == "warning" and "no NVIDIA GPU visible" in found.message


def test_chosen_gpu_gone(project: Path, nvml: FakeNvml) -> None:
    session = setup(project)
    session.set("gpu.uuid", "GPU-gone")
    assert "GPU-gone is not present" in by_key(env.examine(session, imports=False, nvml=nvml))["gpu"].message


def test_every_gpu_of_several_is_checked(project: Path, nvml: FakeNvml) -> None:
    """`[gpu] uuids` (several GPUs): the environment step names the ones that are gone, not only `gpu.uuid`."""
    session = setup(project)
    session.set("gpu.uuids", [RTX3090.uuid, "GPU-gone-2"])
    found = by_key(env.examine(session, imports=False, nvml=nvml))["gpu"]
    assert found.status == "warning" and "1 of the 2 chosen GPUs: GPU-gone-2 not present" in found.message
    nvml.gpus.append(replace(RTX3090, uuid="GPU-gone-2"))
    found = by_key(env.examine(session, imports=False, nvml=nvml))["gpu"]
    assert found.status == "ok" and "(2 chosen)" in found.message


@pytest.mark.parametrize(
    ("driver", "capability", "tag"),
    [((13, 0), (8, 6), "cu128"), ((12, 8), (12, 0), "cu128"), ((12, 8), (6, 1), "cu126"), ((12, 6), None, "cu126"),
     ((12, 4), None, "cu124"), ((12, 2), (8, 6), "cu118"), ((11, 8), None, "cu118"), ((11, 4), None, None),
     ((12, 6), (12, 0), None), (None, None, "cu124")],
)
def test_torch_wheel_for_the_driver(driver: tuple | None, capability: tuple | None, tag: str | None) -> None:
    wheel = env.torch_wheel_for(driver, capability)
    assert (wheel.tag if wheel else None) == tag


def test_parse_versions() -> None:
    assert env.parse_cuda_version("12.8") == (12, 8)
    assert env.parse_cuda_version(12040) == (12, 4)
    assert env.parse_cuda_version((13, 0)) == (13, 0)
    assert env.parse_cuda_version(None) is None and env.parse_cuda_version("n/a") is None
    assert env.parse_torch_version("2.6.0+cu124") == (2, 6, 0)


# ---------------------------------------------------------------- accelerate and requirements


def test_missing_requirements(project: Path, nvml: FakeNvml) -> None:
    packages = all_requirements()
    del packages["accelerate"], packages["voluptuous"]
    found = by_key(env.examine(setup(project, packages=packages), nvml=nvml))
    assert found["accelerate"].status == "error"
    assert found["requirements"].status == "error" and "2 missing: accelerate, voluptuous" in found["requirements"].message
    assert found["requirements"].commands[0][-4:] == ["install", "--upgrade", "-r", "requirements.txt"]


def test_requirement_that_does_not_import(project: Path, nvml: FakeNvml) -> None:
    session = setup(project)
    (project / "site" / "voluptuous" / "__init__.py").write_text("raise RuntimeError('broken wheel')\n")
    found = by_key(env.examine(session, nvml=nvml))["requirements"]
    assert found.status == "error" and "does not import: voluptuous: RuntimeError: broken wheel" in found.message


def test_version_mismatch_is_a_warning(project: Path, nvml: FakeNvml) -> None:
    packages = all_requirements()
    packages["transformers"] = "4.40.0"
    found = by_key(env.examine(setup(project, packages=packages), nvml=nvml))["requirements"]
    assert found.status == "warning" and "transformers 4.40.0 (wants 4.54.1)" in found.message


def test_requirements_file_parsing_in_the_check(project: Path, nvml: FakeNvml) -> None:
    session = setup(project)
    packages = env.examine(session, imports=False, nvml=nvml).check["requirements"]["packages"]
    names = {p["name"]: p for p in packages}
    assert set(names) == set(all_requirements(SD3_REQUIREMENTS))
    assert names["opencv-python"]["module"] == "cv2" and names["diffusers"]["want"] == "0.32.1"


def test_replay_env_reports_a_missing_python_as_a_finding(project: Path, nvml: FakeNvml) -> None:
    import io

    from lorawizard.headless import EXIT_STEP_FAILED, replay

    session = setup(project)
    session.set("paths.python", str(project / "no" / "python"))
    save(session)
    out, err = io.StringIO(), io.StringIO()
    code = replay(project / "session.toml", ["env"], out=out, err=err, tty=False, options={"env": {"nvml": nvml}})
    assert code == EXIT_STEP_FAILED
    assert f"✗ trainer Python: {project / 'no' / 'python'} does not exist" in out.getvalue()
