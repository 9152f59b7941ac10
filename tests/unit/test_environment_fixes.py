"""One-key fixes: git clone from a local bare repository, a real venv, pip (fake) failing halfway, offline, cancel."""

from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path

import pytest

from lorawizard.core.contract import Cancelled, StepContext
from lorawizard.core.environment import fixes as env_fixes
from lorawizard.core.environment import step as env
from lorawizard.core.environment import trainer_python as env_trainer_python
from lorawizard.core.session.document import Session
from tests.support.fake_nvml import FakeNvml, fake_gpu
from tests.support.fake_trainer_env import git, make_checkout, make_fake_python, make_site
from tests.support.waiting import until

WEIRD = "we ird $x `y`;'q'&"


# the GPUs every check and fix here is given: one RTX 4090 whose driver runs CUDA 12.4
ONE_GPU = FakeNvml([fake_gpu(0, "NVIDIA GeForce RTX 4090", 24.0, cuda_driver_version="12.4")])


@pytest.fixture
def bare_repo(tmp_path: Path) -> str:
    """A local bare kohya-ss/sd-scripts look-alike with branches main (old, no FLUX) and sd3."""
    work = tmp_path / "upstream"
    make_checkout(work, flux=False, git_branch="main", remote=None)
    git("checkout", "-q", "-b", "sd3", cwd=work)
    (work / "flux_train_network.py").write_text("# fake\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "flux", cwd=work)
    bare = tmp_path / "sd-scripts.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare.as_uri()


def new_session(project: Path, sd: Path | None = None) -> Session:
    session = Session.new(project / "session.toml")
    if sd is not None:
        session.set("paths.sd_scripts", str(sd))
    return session


# ---------------------------------------------------------------- clone


def test_clone_chosen_branch_streams_and_logs(project: Path, bare_repo: str) -> None:
    target = project / WEIRD / "sd-scripts"
    session = new_session(project, target)
    lines: list[str] = []
    recorded: dict = {}
    result = env.run_fix(session, "clone", branch="sd3", url=bare_repo, log=lines.append,
                         record=lambda k, v: recorded.__setitem__(k, v))
    assert result.ok, result.summary
    assert (target / "flux_train_network.py").is_file()
    assert env.inspect_checkout(target).branch == "sd3"
    assert "cloned sd-scripts sd3 into" in result.summary and "branch sd3" in result.summary
    assert lines[0] == "clone 1/1: git clone sd3" and any("Cloning into" in line for line in lines)
    assert result.log_path is not None and result.log_path.parent == project / ".lorawizard" / "logs"
    assert "Cloning into" in result.log_path.read_text()
    assert recorded == {}  # the session already named this folder
    assert not list(target.parent.glob(".*partial*"))


def test_clone_into_home_records_the_path(project: Path, bare_repo: str, isolated_home: Path) -> None:
    session = new_session(project)
    ctx = StepContext(session=session, options={"nvml": ONE_GPU, "fix": "clone", "branch": "sd3", "url": bare_repo, "check_timeout": 30})
    result = env.run_step(ctx)
    assert session.get("paths.sd_scripts") == str(isolated_home / "sd-scripts")
    assert result.details[0].startswith("✓ cloned sd-scripts sd3")
    assert any(line.startswith("! sd-scripts: ") and "origin is file://" in line  # re-diagnosed after the fix
               for line in result.details)


def test_clone_old_main_says_it_has_no_flux(project: Path, bare_repo: str) -> None:
    session = new_session(project, project / "sd")
    result = env.run_fix(session, "clone", branch="main", url=bare_repo)
    assert not result.ok and "has no flux_train_network.py" in result.summary


def test_clone_failure_keeps_the_log_and_leaves_nothing_half_done(project: Path, bare_repo: str) -> None:
    session = new_session(project, project / "sd")
    result = env.run_fix(session, "clone", branch="no-such-branch", url=bare_repo)
    assert not result.ok and "failed (exit 128)" in result.summary and "no-such-branch" in result.summary
    assert "log kept" in result.summary and result.log_path.is_file()
    assert not (project / "sd").exists() and not list(project.glob(".sd.*"))


def test_clone_never_touches_an_existing_folder(project: Path, bare_repo: str) -> None:
    target = project / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = env.run_fix(new_session(project, target), "clone", branch="sd3", url=bare_repo)
    assert not result.ok and "already exists and is not empty: nothing was changed" in result.summary
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_clone_offline_shows_the_command(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAWIZARD_OFFLINE", "1")
    result = env.run_fix(new_session(project, project / "sd"), "clone", branch="sd3")
    assert not result.ok and result.offline
    assert result.summary.startswith("no network (github.com unreachable): run by hand: git clone --progress --branch sd3")
    assert not (project / ".lorawizard").exists()


def test_bad_branch_name_is_refused(project: Path) -> None:
    result = env.run_fix(new_session(project, project / "sd"), "clone", branch="--upload-pack=evil")
    assert not result.ok and "is not a branch or tag name" in result.summary


# ---------------------------------------------------------------- venv


def test_venv_is_created_for_real(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = make_checkout(project / WEIRD, git_branch=None)
    monkeypatch.setattr(env_trainer_python, "base_python_for_venv", lambda: sys.executable)
    session = new_session(project, sd)
    result = env.run_fix(session, "venv", with_pip=False)
    assert result.ok, result.summary
    python = sd / ".venv" / "bin" / "python"
    assert python.exists() and (sd / ".venv" / "pyvenv.cfg").is_file()
    assert result.commands == [[sys.executable, "-m", "venv", "--without-pip", str(sd / ".venv")]]
    check = env.run_trainer_check(python, sd, imports=False)
    assert check.data is not None and check.data["python"]["venv"] is True
    assert check.data["torch"]["imported"] is False
    again = env.run_fix(session, "venv", with_pip=False)
    assert not again.ok and "already exists: nothing was changed" in again.summary


def test_venv_refuses_a_folder_with_stuff(project: Path) -> None:
    sd = make_checkout(project / "sd", git_branch=None)
    (sd / ".venv").mkdir()
    (sd / ".venv" / "keep").write_text("x")
    result = env.run_fix(new_session(project, sd), "venv")
    assert not result.ok and "exists but has no working Python" in result.summary


def test_venv_needs_sd_scripts_first(project: Path) -> None:
    assert "clone it first" in env.run_fix(new_session(project), "venv").summary


# ---------------------------------------------------------------- install (fake pip)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env_fixes, "network_ok", lambda url, timeout=3.0: True)


def venv_without_packages(project: Path) -> Session:
    sd = make_checkout(project / "sd-scripts", git_branch=None)
    make_fake_python(sd / ".venv" / "bin" / "python", make_site(project / "site", torch=None, packages={}))
    return new_session(project, sd)


def test_install_torch_for_the_driver_then_requirements(project: Path, online: None) -> None:
    session = venv_without_packages(project)
    assert not env.examine(session, imports=False, nvml=ONE_GPU).ok
    lines: list[str] = []
    result = env.run_fix(session, "install", log=lines.append, nvml=ONE_GPU)
    assert result.ok, result.summary
    assert result.commands[0][-1] == "https://download.pytorch.org/whl/cu124"  # the driver says CUDA 12.4
    assert result.commands[1][-4:] == ["install", "--upgrade", "-r", "requirements.txt"]
    assert "install 1/2: install torch 2.6.0 (cu124)" in lines and "Collecting torch==2.6.0" in lines
    assert "  50%" in lines  # pip's \r progress arrives as separate lines
    diagnosis = env.examine(session, nvml=ONE_GPU)
    assert diagnosis.ok, [f.line() for f in diagnosis.errors]
    assert "2.6.0+cu124" in {f.key: f for f in diagnosis.findings}["torch"].message


def test_install_failing_halfway_keeps_the_log_and_can_be_retried(project: Path, online: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    session = venv_without_packages(project)
    monkeypatch.setenv("FAKE_PIP_FAIL", "diffusers")
    result = env.run_fix(session, "install", nvml=ONE_GPU)
    assert not result.ok
    assert "install sd-scripts' requirements failed (exit 1) at step 2/2" in result.summary
    assert "No matching distribution found for diffusers[torch]==0.32.1" in result.summary
    assert "log kept" in result.summary
    log = result.log_path.read_text()
    assert "Collecting torch==2.6.0" in log and "Successfully installed torch==2.6.0" in log and "ERROR" in log
    monkeypatch.delenv("FAKE_PIP_FAIL")
    retry = env.run_fix(session, "install", nvml=ONE_GPU)
    assert retry.ok and len(retry.commands) == 1  # torch is fine now: only the requirements again


def test_install_network_error_says_so(project: Path, online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    session = venv_without_packages(project)
    monkeypatch.setenv("FAKE_PIP_OFFLINE", "1")
    result = env.run_fix(session, "install", nvml=ONE_GPU)
    assert not result.ok and result.offline and "no network? run by hand: cd " in result.summary


def test_install_offline_shows_the_commands(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = venv_without_packages(project)
    monkeypatch.setenv("LORAWIZARD_OFFLINE", "1")
    result = env.run_fix(session, "install", nvml=ONE_GPU)
    assert not result.ok and result.offline
    assert "no network (download.pytorch.org unreachable): run by hand: cd " in result.summary
    assert "pip install torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124" in result.summary


def test_dry_run_changes_nothing(project: Path) -> None:
    session = venv_without_packages(project)
    ctx = StepContext(session=session, dry_run=True, options={"nvml": ONE_GPU, "fix": "install"})
    result = env.run_step(ctx)
    assert result.details[0].startswith("✓ would run: cd ")
    assert not (project / ".lorawizard" / "logs").exists()


# ---------------------------------------------------------------- streaming and cancelling


def test_run_streamed_splits_on_cr_and_lf(tmp_path: Path) -> None:
    lines: list[str] = []
    log = io.BytesIO()
    code = "import sys; sys.stdout.write('a\\r b\\nc\\r\\n\\xe9t\\xe9\\n'); sys.stdout.flush(); sys.stderr.write('err')"
    rc, _tail = env.run_streamed([sys.executable, "-c", code], cwd=tmp_path, log=log, on_line=lines.append)
    assert rc == 0 and lines[:3] == ["a", " b", "c"] and set(lines[3:]) == {"été", "err"}
    assert log.getvalue().startswith(b"$ ")


def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    cancel = threading.Event()
    marker = tmp_path / "child.pid"
    code = (f"import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); open({str(marker)!r}, 'w').write(str(p.pid));"
            "print('started', flush=True); time.sleep(60)")
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        env.run_streamed([sys.executable, "-c", code], cwd=tmp_path, log=io.BytesIO(), on_line=lambda line: None,
                         cancel=cancel)
    assert time.monotonic() - started < 10
    pid = int(marker.read_text())
    until(lambda: _gone_or_zombie(pid), 10, "the fix's grandchild (sleep 60) to end")


def _gone_or_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # killed, not yet reaped by its new parent
    except OSError:
        return True


def test_network_ok_for_local_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.network_ok("file:///tmp/x.git") and env.network_ok("/srv/git/sd-scripts.git")
    monkeypatch.setenv("LORAWIZARD_OFFLINE", "1")
    assert not env.network_ok("https://github.com/kohya-ss/sd-scripts.git")


def test_unknown_fix(project: Path) -> None:
    assert "unknown fix 'reboot'" in env.run_fix(new_session(project), "reboot").summary
