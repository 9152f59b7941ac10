"""Environment doctor: sd-scripts checkout, the trainer's Python, torch/CUDA vs the driver, accelerate, requirements.

`examine(session)` returns findings (ok / warning / error, each with its fix); `run_fix(session, action)` performs
a one-key fix (clone sd-scripts, create the venv, install torch + requirements), streaming every output line to
the caller and to a log file under `.lorawizard/logs/`. Without network the fix says so and shows the commands.
The trainer's Python runs `trainer_side/check_environment.py` as a subprocess by path with a time limit (JSON out): torch is only
ever imported there. No subprocess goes through a shell.
"""

from __future__ import annotations

import io
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlparse

from lorawizard.core import gpu as gpu_module
from lorawizard.core.command import TRAIN_SCRIPT
from lorawizard.core.fsutil import display_path
from lorawizard.core.gpu import NO_GPU, Inventory
from lorawizard.core.procs import kill_process_group
from lorawizard.core.progress import LogCallback, ProgressCallback, ProgressMeter, ignore_progress
from lorawizard.core.session import Session
from lorawizard.core.steps import Cancelled, StepContext, StepResult

FindingStatus = Literal["ok", "warning", "error"]
SD_SCRIPTS_URL = "https://github.com/kohya-ss/sd-scripts.git"
BRANCHES = ("main", "sd3")  # identical trees since v0.10.0 (2026-01); main up to v0.9.1 has no FLUX
DEFAULT_BRANCH = "main"
CHECK_SCRIPT = Path(__file__).resolve().parents[1] / "trainer_side" / "check_environment.py"
CHECK_MARKER = "LORAWIZARD-CHECK "
CHECK_TIMEOUT_S = 120.0
MIN_TORCH = (2, 6)  # sd-scripts README: "PyTorch 2.6.0 or later is required"
FIXES = ("clone", "venv", "install")
STATUS_MARKS = {"ok": "✓", "warning": "!", "error": "✗"}

# Where people keep sd-scripts (the session's path always comes first).
COMMON_PLACES = (
    "~/sd-scripts",
    "~/kohya-ss/sd-scripts",
    "~/kohya/sd-scripts",
    "~/kohya_ss/sd-scripts",
    "~/src/sd-scripts",
    "~/git/sd-scripts",
    "~/code/sd-scripts",
    "/opt/sd-scripts",
    "/workspace/sd-scripts",
)


# ---------------------------------------------------------------- findings


@dataclass
class Finding:
    key: str  # "sd_scripts", "python", "torch", "cuda", "gpu", "accelerate", "requirements", "models", "command", ...
    status: FindingStatus
    title: str
    message: str  # one line
    fix: str = ""  # what to do, one line
    commands: list[list[str]] = field(default_factory=list)  # to run by hand (argv lists; shown shell-quoted)
    action: str | None = None  # the one-key fix that solves it: "clone" | "venv" | "install"

    def line(self) -> str:
        text = f"{STATUS_MARKS[self.status]} {self.title}: {self.message}"
        return text + (f" — {self.fix}" if self.fix else "")

    def command_lines(self) -> list[str]:
        return [shlex.join(argv) for argv in self.commands]


@dataclass
class Examination:
    """What the environment step found (its findings and the command preview); core.diagnosis is for failed runs."""

    findings: list[Finding]
    sd_scripts: Path | None = None
    python: Path | None = None
    check: dict[str, Any] | None = None  # check_environment.py's JSON
    command: Any = None  # core.command.TrainCommand of the preview, when it could be built
    command_files_written: bool = False
    command_problem: str | None = None  # why there is no command (one line)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        if self.errors:
            first = self.errors[0]
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return f"{len(self.errors)} problem{'s' if len(self.errors) > 1 else ''}: {first.title}: {first.message}{more}"
        parts = ["environment ready"]
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''}")
        return ", ".join(parts)


# ---------------------------------------------------------------- sd-scripts checkout


@dataclass
class Checkout:
    path: Path
    problem: str | None = None  # why it is not a usable checkout
    has_flux: bool = False
    looks_like_sd_scripts: bool = False
    branch: str | None = None
    commit: str | None = None
    date: str | None = None
    subject: str | None = None
    remote: str | None = None
    is_git: bool = False

    def describe(self) -> str:
        parts = []
        if self.branch:
            parts.append(f"branch {self.branch}")
        if self.commit:
            parts.append(f"commit {self.commit[:8]}" + (f" ({self.date})" if self.date else ""))
        return ", ".join(parts)


def inspect_checkout(path: Path) -> Checkout:
    info = Checkout(path)
    if not path.exists():
        info.problem = f"{display_path(path)} does not exist"
        return info
    if not path.is_dir():
        info.problem = f"{display_path(path)} is a file, not a folder"
        return info
    info.has_flux = (path / TRAIN_SCRIPT).is_file()
    info.looks_like_sd_scripts = info.has_flux or (
        (path / "train_network.py").is_file() and (path / "library").is_dir()
    )
    if not info.looks_like_sd_scripts:
        info.problem = f"{display_path(path)} is not a kohya-ss/sd-scripts checkout (no {TRAIN_SCRIPT}, no train_network.py)"
    _read_git(info)
    return info


def _git_dir(path: Path) -> Path | None:
    dot_git = path / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # worktree or submodule: "gitdir: <path>"
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            target = Path(text.removeprefix("gitdir:").strip())
            target = target if target.is_absolute() else path / target
            return target if target.is_dir() else None
    return None


def _read_git(info: Checkout) -> None:
    """Branch, commit, date and origin — read from the files, with `git` for the date when it is installed."""
    git_dir = _git_dir(info.path)
    if git_dir is None:
        return
    info.is_git = True
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return
    if head.startswith("ref:"):
        ref = head.removeprefix("ref:").strip()
        info.branch = ref.removeprefix("refs/heads/")
        info.commit = _resolve_ref(git_dir, ref)
    elif re.fullmatch(r"[0-9a-f]{40,64}", head):
        info.branch = "(detached)"
        info.commit = head
    config = _common_dir(git_dir) / "config"
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
        match = re.search(r'\[remote "origin"\][^\[]*?url\s*=\s*(\S+)', text)
        info.remote = match.group(1) if match else None
    except OSError:
        pass
    git = shutil.which("git")
    if git and info.commit:
        try:
            out = subprocess.run(
                [git, "-c", "safe.directory=*", "-C", str(info.path), "log", "-1", "--format=%cs%x00%s", info.commit, "--"],
                capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
            )
            if out.returncode == 0 and "\0" in out.stdout:
                info.date, info.subject = out.stdout.strip().split("\0", 1)
        except (OSError, subprocess.SubprocessError):
            pass


def _common_dir(git_dir: Path) -> Path:
    common = git_dir / "commondir"
    if common.is_file():
        target = Path(common.read_text(encoding="utf-8").strip())
        return target if target.is_absolute() else (git_dir / target).resolve()
    return git_dir


def _resolve_ref(git_dir: Path, ref: str) -> str | None:
    for base in (git_dir, _common_dir(git_dir)):
        loose = base / ref
        if loose.is_file():
            return loose.read_text(encoding="utf-8").strip() or None
    packed = _common_dir(git_dir) / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    return None


def find_sd_scripts(session: Session) -> Path | None:
    """The session's path; else the first common place holding sd-scripts with FLUX (then any sd-scripts)."""
    configured = session.paths.sd_scripts
    if configured is not None:
        return configured
    places = [Path(p).expanduser() for p in COMMON_PLACES]
    places[1:1] = [session.project_dir / "sd-scripts", session.project_dir.parent / "sd-scripts"]
    seen = []
    for place in places:
        if place.is_dir() and (place / TRAIN_SCRIPT).is_file():
            return place
        seen.append(place)
    return next((p for p in seen if p.is_dir() and (p / "train_network.py").is_file()), None)


def default_clone_target(session: Session) -> Path:
    return session.paths.sd_scripts or Path("~/sd-scripts").expanduser()


# ---------------------------------------------------------------- the trainer's Python


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def find_python(session: Session, sd_scripts: Path | None) -> Path | None:
    """The session's `paths.python`; else `<sd_scripts>/.venv` or `<sd_scripts>/venv` (the first that exists)."""
    if session.is_set("paths.python"):
        return session.paths.python
    if sd_scripts is None:
        return None
    candidates = [venv_python(sd_scripts / ".venv"), venv_python(sd_scripts / "venv")]
    return next((c for c in candidates if c.exists()), candidates[0])


def venv_dir_of(python: Path) -> Path:
    """`<venv>/bin/python` → `<venv>`."""
    return python.parent.parent


@dataclass
class CheckRun:
    data: dict[str, Any] | None
    problem: str | None = None  # one line: why there is no data
    seconds: float = 0.0
    stderr_tail: str = ""


def run_trainer_check(
    python: Path,
    sd_scripts: Path | None,
    *,
    timeout: float = CHECK_TIMEOUT_S,
    cancel: threading.Event | None = None,
    imports: bool = True,
) -> CheckRun:
    """Run trainer_side/check_environment.py in `python` (argv list, own process group, time limit); parse its JSON line."""
    argv = [str(python), str(CHECK_SCRIPT)]
    if sd_scripts is not None:
        argv += ["--sd-scripts", str(sd_scripts)]
    if not imports:
        argv.append("--no-imports")
    started = time.monotonic()
    env = dict(os.environ)  # the same environment the trainer will get
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            cwd=str(sd_scripts) if sd_scripts is not None and sd_scripts.is_dir() else None,
            start_new_session=True, env=env,
        )
    except FileNotFoundError:
        return CheckRun(None, f"{display_path(python)} does not exist")
    except PermissionError:
        return CheckRun(None, f"{display_path(python)} is not executable (permission denied)")
    except OSError as exc:
        return CheckRun(None, f"{display_path(python)} does not run: {exc.strerror or exc}")
    output: dict[str, bytes] = {}

    def collect(name: str, stream: Any) -> None:
        output[name] = stream.read()

    readers = [threading.Thread(target=collect, args=(n, s), daemon=True) for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    deadline = started + timeout
    while proc.poll() is None:
        if cancel is not None and cancel.is_set():
            kill_process_group(proc)
            raise Cancelled()
        if time.monotonic() > deadline:
            kill_process_group(proc)
            return CheckRun(None, f"the check in {display_path(python)} did not finish within {timeout:g} s (hung?); it was stopped",
                            time.monotonic() - started)
        time.sleep(0.05)
    for reader in readers:
        reader.join(5)
    seconds = time.monotonic() - started
    stdout = output.get("out", b"").decode("utf-8", "replace")
    stderr = output.get("err", b"").decode("utf-8", "replace")
    tail = _last_line(stderr)
    for line in reversed(stdout.splitlines()):
        if line.startswith(CHECK_MARKER):
            try:
                import json

                return CheckRun(json.loads(line[len(CHECK_MARKER):]), None, seconds, tail)
            except ValueError:
                break
    reason = f"exit {proc.returncode}" + (f": {tail}" if tail else "")
    return CheckRun(None, f"{display_path(python)} did not run the check ({reason})", seconds, tail)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return lines[-1][:200] if lines else ""


# ---------------------------------------------------------------- GPU, driver and the torch wheel


def gpu_inventory() -> Inventory:
    """core.gpu.inventory() (NVML behind the GPU step's adapter). Tests replace this function."""
    return gpu_module.inventory()


def parse_cuda_version(value: Any) -> tuple[int, int] | None:
    """"12.8", 12080 (NVML's int), (12, 8) → (12, 8); None when unknown."""
    if value is None:
        return None
    if isinstance(value, tuple | list) and len(value) >= 2:
        return int(value[0]), int(value[1])
    if isinstance(value, int):
        return value // 1000, (value % 1000) // 10
    match = re.match(r"^\s*(\d+)\.(\d+)", str(value))
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_torch_version(text: str | None) -> tuple[int, int, int] | None:
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)) if match else None


@dataclass(frozen=True)
class TorchWheel:
    tag: str  # "cu128"
    cuda: tuple[int, int]
    torch: str
    torchvision: str

    @property
    def index_url(self) -> str:
        return f"https://download.pytorch.org/whl/{self.tag}"

    def pip_argv(self, python: Path | str) -> list[str]:
        return [str(python), "-m", "pip", "install", f"torch=={self.torch}", f"torchvision=={self.torchvision}",
                "--index-url", self.index_url]


# Newest first. Versions sd-scripts names: 2.6.0 (tested), 2.8.0 with CUDA 12.8 for RTX 50 (reference §11, hub §3).
TORCH_WHEELS: tuple[TorchWheel, ...] = (
    TorchWheel("cu128", (12, 8), "2.8.0", "0.23.0"),
    TorchWheel("cu126", (12, 6), "2.6.0", "0.21.0"),
    TorchWheel("cu124", (12, 4), "2.6.0", "0.21.0"),
    TorchWheel("cu118", (11, 8), "2.6.0", "0.21.0"),
)
NO_DRIVER_WHEEL = TORCH_WHEELS[2]  # sd-scripts README's own choice when we cannot ask a driver


def torch_wheel_for(driver_cuda: tuple[int, int] | None, capability: tuple[int, int] | None = None) -> TorchWheel | None:
    """The newest wheel whose CUDA ≤ the driver's and that has kernels for the GPU; None when the driver is too old."""
    if driver_cuda is None:
        return NO_DRIVER_WHEEL
    for wheel in TORCH_WHEELS:
        if wheel.cuda > driver_cuda:
            continue
        if capability is not None and capability >= (12, 0) and wheel.cuda < (12, 8):
            return None  # Blackwell (RTX 50xx) needs CUDA 12.8 wheels and a driver that supports them
        if capability is not None and capability < (7, 5) and wheel.cuda >= (12, 8):
            continue  # Pascal / Volta: the cu128 builds have no kernels for them
        return wheel
    return None


def _arch_supported(arch_list: list[str], capability: tuple[int, int]) -> bool:
    if not arch_list:
        return True  # unknown: don't cry wolf
    wanted = capability[0] * 10 + capability[1]
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)a?", arch)
        if not match:
            continue
        number = int(match.group(2))
        if match.group(1) == "sm" and number // 10 == capability[0] and number <= wanted:
            return True  # same major, older or equal minor: binary compatible
        if match.group(1) == "compute" and number <= wanted:
            return True  # PTX JIT
    return False


# ---------------------------------------------------------------- the diagnosis


@lru_cache(maxsize=1)
def base_python_for_venv() -> str:
    """A Python to create the venv with: 3.10 (what sd-scripts tests), else 3.11, 3.12, else this one.

    Each candidate must really run (a pyenv shim for a version that is not selected does not).
    """
    for name in ("python3.10", "python3.11", "python3.12"):
        found = shutil.which(name)
        if found and _runs(found, name.removeprefix("python")):
            return found
    return sys.executable


def _runs(python: str, version: str) -> bool:
    try:
        out = subprocess.run([python, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == version


def clone_argv(target: Path, branch: str = DEFAULT_BRANCH, url: str = SD_SCRIPTS_URL) -> list[str]:
    return ["git", "clone", "--progress", "--branch", branch, "--", url, str(target)]


def venv_argv(venv: Path, base: str | None = None, *, with_pip: bool = True) -> list[str]:
    return [base or base_python_for_venv(), "-m", "venv", *([] if with_pip else ["--without-pip"]), str(venv)]


def requirements_argv(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "--upgrade", "-r", "requirements.txt"]


def examine(
    session: Session,
    *,
    cancel: threading.Event | None = None,
    progress: ProgressCallback = ignore_progress,
    timeout: float = CHECK_TIMEOUT_S,
    imports: bool = True,
    preview_command: bool = True,
) -> Examination:
    """Every check, in order; never raises for bad input (each problem becomes a finding)."""
    meter = ProgressMeter(progress, "env", "checking", 5, "checks")
    findings: list[Finding] = []
    diagnosis = Examination(findings)

    def tick(detail: str) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        meter.advance(1, detail)

    # 1. sd-scripts
    sd_scripts = find_sd_scripts(session)
    diagnosis.sd_scripts = sd_scripts
    checkout = inspect_checkout(sd_scripts) if sd_scripts is not None else None
    findings.append(_checkout_finding(session, sd_scripts, checkout))
    usable_sd = sd_scripts if checkout is not None and checkout.problem is None else None
    tick("sd-scripts")

    # 2. GPUs and driver (NVML)
    inventory = _safe_inventory()
    gpus = list(getattr(inventory, "gpus", []) or [])
    findings.append(_gpu_finding(session, inventory, gpus))
    driver_cuda = next((parse_cuda_version(g.cuda_driver_version) for g in gpus if g.cuda_driver_version), None)
    tick("GPU")

    # 3. the trainer's Python and what is installed in it
    python = find_python(session, usable_sd or sd_scripts)
    diagnosis.python = python
    check: CheckRun | None = None
    if python is None:
        findings.append(Finding("python", "error", "trainer Python", "unknown until sd-scripts is found",
                                "clone sd-scripts first, then create its venv", action="venv"))
    elif not python.exists():
        venv = venv_dir_of(python)
        findings.append(Finding(
            "python", "error", "trainer Python", f"{display_path(python)} does not exist",
            "create the venv or set paths.python", [venv_argv(venv)], action="venv",
        ))
    else:
        check = run_trainer_check(python, usable_sd, timeout=timeout, cancel=cancel, imports=imports)
        if check.data is None:
            findings.append(Finding("python", "error", "trainer Python", check.problem or "the check failed",
                                    "point paths.python at a working Python 3.10–3.12, or create a venv",
                                    action="venv"))
        else:
            diagnosis.check = check.data
            findings.extend(_python_findings(check.data, python))
    tick("trainer Python")

    # 4. torch, CUDA, accelerate, requirements (from the check)
    if check is not None and check.data is not None:
        findings.extend(_torch_findings(check.data, python, gpus, driver_cuda))
        findings.extend(_package_findings(check.data, python, usable_sd))
    tick("packages")

    # 5. models, tokenizers and the command
    findings.extend(_model_findings(session))
    if preview_command:
        _preview_command(session, diagnosis)
    meter.finish()
    return diagnosis


def _safe_inventory() -> Inventory:
    try:
        return gpu_inventory()
    except Exception as exc:  # noqa: BLE001 - NVML problems are findings, never crashes
        return Inventory(gpus=[], problem=NO_GPU, reason=str(exc))


def _checkout_finding(session: Session, path: Path | None, checkout: Checkout | None) -> Finding:
    title = "sd-scripts"
    target = default_clone_target(session)
    clone = [clone_argv(target)]
    if path is None:
        return Finding("sd_scripts", "error", title, "not found (paths.sd_scripts is not set, none in the usual places)",
                       f"clone it into {target}, or set paths.sd_scripts", clone, action="clone")
    assert checkout is not None
    if checkout.problem is not None:
        if not path.exists():
            return Finding("sd_scripts", "error", title, checkout.problem, "clone it there or fix paths.sd_scripts",
                           clone, action="clone")
        return Finding("sd_scripts", "error", title, checkout.problem,
                       "set paths.sd_scripts to a kohya-ss/sd-scripts clone, or clear it and clone one")
    if not checkout.has_flux:
        return Finding(
            "sd_scripts", "error", title, f"{display_path(path)} has no {TRAIN_SCRIPT}: an old sd-scripts (main before v0.10.0, no FLUX)",
            "update it: git pull (main has FLUX since v0.10.0), or check out the sd3 branch",
            [["git", "-C", str(path), "pull"]] if checkout.is_git else [],
        )
    described = checkout.describe()
    message = f"{display_path(path)}" + (f" ({described})" if described else "")
    if checkout.remote and "kohya-ss/sd-scripts" not in checkout.remote:
        return Finding("sd_scripts", "warning", title, message, f"origin is {checkout.remote}: a fork, not kohya-ss/sd-scripts")
    if not checkout.is_git:
        return Finding("sd_scripts", "warning", title, message, "not a git clone: updating with git pull won't work")
    return Finding("sd_scripts", "ok", title, message)


def _gpu_finding(session: Session, inventory: Any, gpus: list[Any]) -> Finding:
    if not gpus:
        reason = getattr(inventory, "reason", None)
        problem = getattr(inventory, "problem", None) or "no NVIDIA GPU visible — probing and training need one"
        return Finding("gpu", "warning", "GPU", problem + (f"; {reason}" if reason else ""),
                       "install the NVIDIA driver or run lorawizard on the GPU machine; the other steps still work")
    chosen_uuid = session.get("gpu.uuid")
    chosen = next((g for g in gpus if g.uuid == chosen_uuid), None)
    if chosen_uuid and chosen is None:
        return Finding("gpu", "warning", "GPU", f"the chosen GPU {chosen_uuid} is not present ({len(gpus)} visible)",
                       "choose a GPU again in the GPU step")
    gpu = chosen or gpus[0]
    driver = f"driver {gpu.driver_version}" if gpu.driver_version else "driver ?"
    cuda = f"CUDA {gpu.cuda_driver_version}" if gpu.cuda_driver_version else "CUDA ?"
    count = f"{len(gpus)} GPUs; " if len(gpus) > 1 else ""
    return Finding("gpu", "ok", "GPU", f"{count}{gpu.name} · {driver} · {cuda}" + (" (chosen)" if chosen else ""))


def _python_findings(data: Mapping[str, Any], python: Path | None = None) -> list[Finding]:
    info = data.get("python", {})
    version = tuple(info.get("version_info", [0, 0, 0]))[:2]
    where = python or info.get("executable", "?")
    text = f"Python {info.get('version', '?')} at {display_path(where)}" + ("" if info.get("venv") else " (not a venv)")
    if version < (3, 10):
        return [Finding("python", "error", "trainer Python", text, "sd-scripts needs Python 3.10; create a venv with it",
                        action="venv")]
    if version >= (3, 13):
        return [Finding("python", "warning", "trainer Python", text,
                        "sd-scripts is tested with Python 3.10; torch wheels for 3.13+ may be missing")]
    return [Finding("python", "ok", "trainer Python", text)]


def _torch_findings(data: Mapping[str, Any], python: Path | None, gpus: list[Any], driver_cuda: tuple[int, int] | None) -> list[Finding]:
    torch = data.get("torch") or {}
    findings: list[Finding] = []
    capability = None
    devices = torch.get("devices") or []
    if devices:
        capability = tuple(devices[0].get("capability", ()))[:2] or None
    wheel = torch_wheel_for(driver_cuda, capability)
    install = [wheel.pip_argv(python)] if wheel and python else []
    wheel_text = f"torch {wheel.torch} for CUDA {wheel.cuda[0]}.{wheel.cuda[1]} ({wheel.tag})" if wheel else ""
    if not torch.get("imported"):
        error = torch.get("error", "not installed")
        missing = "No module named" in error
        findings.append(Finding(
            "torch", "error", "torch", "not installed" if missing else f"does not import: {error}",
            f"install {wheel_text}" if wheel else "update the NVIDIA driver, then install torch", install, action="install",
        ))
        return findings
    version = torch.get("version", "?")
    parsed = parse_torch_version(version)
    cuda_build = parse_cuda_version(torch.get("cuda"))
    build_text = f"CUDA {torch.get('cuda')}" if torch.get("cuda") else "CPU-only build"
    label = f"torch {version} ({build_text})"
    if parsed is not None and parsed[:2] < MIN_TORCH:
        findings.append(Finding("torch", "error", "torch", f"{label}: sd-scripts needs 2.6.0 or later",
                                f"install {wheel_text}" if wheel else "update the NVIDIA driver first",
                                install, action="install" if wheel else None))
    elif cuda_build is None and gpus:
        findings.append(Finding("torch", "error", "torch", f"{label}: it cannot use the GPU",
                                f"install {wheel_text}" if wheel else "update the NVIDIA driver first",
                                install, action="install" if wheel else None))
    elif cuda_build is None:
        findings.append(Finding("torch", "warning", "torch", label, "a CPU-only build: fine here, but training needs a GPU"))
    elif driver_cuda is not None and cuda_build > driver_cuda:
        driver_text = f"{driver_cuda[0]}.{driver_cuda[1]}"
        fix = (f"install {wheel_text}, or update the NVIDIA driver" if wheel
               else "update the NVIDIA driver (no torch wheel fits this driver)")
        findings.append(Finding("torch", "error", "torch", f"{label} needs a newer driver: this one supports CUDA {driver_text}",
                                fix, install, action="install" if wheel else None))
    else:
        fits = f", fits the driver's CUDA {driver_cuda[0]}.{driver_cuda[1]}" if driver_cuda else ""
        findings.append(Finding("torch", "ok", "torch", label + fits))
    # can torch use the GPU?
    if gpus and torch.get("cuda"):
        warnings = torch.get("warnings") or []
        if not torch.get("available"):
            reason = torch.get("cuda_error") or (warnings[0] if warnings else "torch.cuda.is_available() is False")
            findings.append(Finding("cuda", "error", "CUDA", f"torch cannot use the GPU: {reason}",
                                    f"install {wheel_text}" if wheel else "update the NVIDIA driver",
                                    install, action="install" if wheel else None))
        else:
            names = ", ".join(sorted({d.get("name", "?") for d in devices})) or "?"
            finding = Finding("cuda", "ok", "CUDA", f"torch sees {len(devices)} device{'s' if len(devices) != 1 else ''}: {names}")
            if capability and not _arch_supported(torch.get("arch_list") or [], capability):
                sm = f"sm_{capability[0]}{capability[1]}"
                finding = Finding("cuda", "error", "CUDA", f"torch {version} has no kernels for {names} ({sm})",
                                  f"install {wheel_text}" if wheel else "update the NVIDIA driver",
                                  install, action="install" if wheel else None)
            elif devices and torch.get("bf16") is False:
                finding = Finding("cuda", "warning", "CUDA", f"{names} has no bf16 support",
                                  "training uses bf16; expect it to be slow or to fail on this GPU")
            findings.append(finding)
    elif not gpus and torch.get("cuda"):
        findings.append(Finding("cuda", "warning", "CUDA", "torch has CUDA but no GPU is visible here",
                                "training and the probe need an NVIDIA GPU"))
    return findings


def _package_findings(data: Mapping[str, Any], python: Path | None, sd_scripts: Path | None) -> list[Finding]:
    findings: list[Finding] = []
    requirements = data.get("requirements")
    install = [requirements_argv(python)] if python else []
    accelerate = data.get("accelerate")
    if not accelerate:
        findings.append(Finding("accelerate", "error", "accelerate", "not installed",
                                "install sd-scripts' requirements", install, action="install"))
    else:
        findings.append(Finding("accelerate", "ok", "accelerate", f"version {accelerate}"))
    if not data.get("torchvision") and (data.get("torch") or {}).get("imported"):
        findings.append(Finding("torchvision", "error", "torchvision", "not installed (sd-scripts imports it)",
                                "install torch and torchvision", action="install"))
    if sd_scripts is None or requirements is None:
        return findings
    if not requirements.get("found"):
        findings.append(Finding("requirements", "warning", "requirements", f"no requirements.txt in {display_path(sd_scripts)}"))
        return findings
    packages = requirements.get("packages", [])
    missing = [p["name"] for p in packages if not p.get("have")]
    mismatched = [f"{p['name']} {p['have']} (wants {p['want']})" for p in packages
                  if p.get("have") and p.get("op") == "==" and p.get("want") and p["have"] != p["want"]]
    imports = requirements.get("imports") or {}
    broken = [f"{name}: {result.get('error', '?')}"  # a package itself first, sd-scripts' own library last
              for name, result in sorted(imports.items(), key=lambda item: (item[0].startswith("library"), item[0]))
              if not result.get("ok")]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        findings.append(Finding("requirements", "error", "requirements", f"{len(missing)} missing: {shown}",
                                "install sd-scripts' requirements", install, action="install"))
    elif broken:
        findings.append(Finding("requirements", "error", "requirements", f"does not import: {broken[0]}",
                                "reinstall sd-scripts' requirements", install, action="install"))
    elif mismatched:
        shown = ", ".join(mismatched[:3]) + (f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else "")
        findings.append(Finding("requirements", "warning", "requirements", f"versions differ from requirements.txt: {shown}",
                                "reinstall them if training fails", install, action="install"))
    else:
        checked = "installed and importing" if imports else "installed"
        findings.append(Finding("requirements", "ok", "requirements", f"{len(packages)} packages {checked}"))
    return findings


def _model_findings(session: Session) -> list[Finding]:
    from lorawizard.core.models import resolved_model_paths

    findings = []
    missing = [role for role, path in resolved_model_paths(session).items() if not path.is_file()]
    if missing:
        findings.append(Finding("models", "warning", "models", f"not found yet: {', '.join(missing)}",
                                "the models step finds or downloads them"))
    else:
        findings.append(Finding("models", "ok", "models", "all four files present"))
    tokenizers = session.paths.tokenizers
    wanted = ("openai_clip-vit-large-patch14", "google_t5-v1_1-xxl")
    if not all((tokenizers / name).is_dir() for name in wanted):
        findings.append(Finding("tokenizers", "warning", "tokenizers", f"not in {display_path(tokenizers)}",
                                "the models step fetches them (training offline needs them)"))
    return findings


def preview_run_dir(session: Session) -> Path:
    """Where the environment step writes the preview's config files (inside the project's bookkeeping)."""
    return session.paths.state / "manual-run"


def preview_output_dir(session: Session) -> Path:
    """Where a person's copy of the previewed command trains into: `<paths.runs>/manual`."""
    return session.paths.runs / "manual"


def preview_command(session: Session) -> Any:
    """The exact command the preview shows (nothing is written). Raises core.command.CommandError."""
    from lorawizard.core import command as command_module

    run_dir, output = preview_run_dir(session), preview_output_dir(session)
    return command_module.build_train_command(
        session, dataset_config=run_dir / command_module.DATASET_CONFIG_NAME,
        accelerate_config=run_dir / command_module.ACCELERATE_CONFIG_NAME, output_dir=output, logging_dir=output / "logs",
    )


def _preview_command(session: Session, diagnosis: Examination) -> None:
    """Build the exact training command; write its two config files under .lorawizard/manual-run/ when possible."""
    from lorawizard.core import command as command_module

    run_dir = preview_run_dir(session)
    try:
        diagnosis.command = preview_command(session)
        command_module.write_accelerate_config(session, run_dir / command_module.ACCELERATE_CONFIG_NAME)
        try:
            command_module.write_dataset_config(session, run_dir / command_module.DATASET_CONFIG_NAME)
            diagnosis.command_files_written = True
        except command_module.CommandError as exc:
            if "no prepared images" not in str(exc):
                raise
            diagnosis.findings.append(Finding("dataset", "warning", "dataset config",
                                              "no prepared images yet: written once the dataset step has run"))
    except command_module.CommandError as exc:
        diagnosis.command_problem = str(exc)
        if not str(exc).startswith("paths."):  # a missing sd-scripts / Python is a finding of its own already
            diagnosis.findings.append(Finding("command", "error", "command", str(exc),
                                              "fix the value in session.toml (train.extra_args, gpu.vram_preset, …)"))
    except OSError as exc:
        diagnosis.command_problem = f"cannot write {run_dir}: {exc.strerror or exc}"
        diagnosis.findings.append(Finding("command", "error", "command", diagnosis.command_problem))


# ---------------------------------------------------------------- one-key fixes


@dataclass
class FixResult:
    ok: bool
    summary: str
    log_path: Path | None = None
    commands: list[list[str]] = field(default_factory=list)  # what ran (or would run), for a person
    cwd: Path | None = None
    offline: bool = False


def network_ok(url: str, timeout: float = 3.0) -> bool:
    """Can we reach the host of `url`? Local paths and file:// always; LORAWIZARD_OFFLINE=1 says no."""
    if os.environ.get("LORAWIZARD_OFFLINE", "") not in ("", "0"):
        return False
    parsed = urlparse(url)
    if parsed.scheme in ("", "file") or not parsed.hostname:
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def pip_configured() -> bool:
    """Whether pip has its own index configuration (a local mirror, a proxy), in which case we trust it."""
    if any(os.environ.get(k) for k in ("PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONFIG_FILE")):
        return True
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
    return any(p.is_file() for p in (Path("/etc/pip.conf"), xdg / "pip" / "pip.conf", home / ".pip" / "pip.conf"))


_NETWORK_ERRORS = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|Could not resolve host|Connection timed out|ConnectTimeoutError|"
    r"Could not fetch URL|unable to access '.*': Could not"
)


def fix_log_path(session: Session, action: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return session.paths.state / "logs" / f"env-{action}-{stamp}.log"


def run_streamed(
    argv: list[str],
    *,
    cwd: Path | None,
    log: Any,  # a binary file object
    on_line: Callable[[str], None],
    cancel: threading.Event | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> tuple[int, list[str]]:
    """Run argv (no shell), stdout+stderr merged; every line (split on \\r and \\n) to on_line and raw bytes to log.

    Returns (exit status, the last lines). Cancelling kills the whole process group and raises Cancelled.
    """
    log.write(f"$ {shlex.join(argv)}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        argv, cwd=str(cwd) if cwd else None, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=dict(env) if env is not None else None,
    )
    chunks: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        stdout = cast(io.BufferedReader, proc.stdout)  # binary pipe: read1 returns what is there, no waiting for more
        for chunk in iter(lambda: stdout.read1(65536), b""):
            chunks.put(chunk)
        chunks.put(None)

    threading.Thread(target=pump, daemon=True).start()
    pending = b""
    tail: list[str] = []
    started = time.monotonic()
    finished = False
    while not finished:
        if cancel is not None and cancel.is_set():
            kill_process_group(proc)
            log.write(b"\n[cancelled]\n")
            raise Cancelled()
        if timeout is not None and time.monotonic() - started > timeout:
            kill_process_group(proc)
            log.write(f"\n[stopped after {timeout:g} s]\n".encode())
            return -1, tail + [f"stopped after {timeout:g} s"]
        try:
            chunk = chunks.get(timeout=0.1)
        except queue.Empty:
            continue
        if chunk is None:
            finished = True
            chunk = b""
        log.write(chunk)
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        if finished and pending:
            lines.append(pending)
        for raw in lines:
            text = raw.decode("utf-8", "replace").rstrip()
            if text:
                on_line(text)
                tail = (tail + [text])[-20:]
    log.flush()
    return proc.wait(), tail


_PERCENT = re.compile(r"(\d{1,3})% \(")


def run_fix(
    session: Session,
    action: str,
    *,
    branch: str = DEFAULT_BRANCH,
    url: str = SD_SCRIPTS_URL,
    log: LogCallback = lambda line: None,
    progress: ProgressCallback = ignore_progress,
    cancel: threading.Event | None = None,
    record: Callable[[str, Any], None] | None = None,
    with_pip: bool = True,
    dry_run: bool = False,
) -> FixResult:
    """Perform one fix: "clone" (sd-scripts, chosen branch), "venv" (the trainer's venv), "install" (torch + requirements).

    Never raises for expected failures (no network, pip failing halfway, an existing folder): the result says what
    happened, where the log is, and which commands to run by hand. `record(key, value)` stores paths it decided.
    """
    if action not in FIXES:
        return FixResult(False, f"unknown fix {action!r} (fixes: {', '.join(FIXES)})")
    if action == "clone":
        return _fix_clone(session, branch, url, log, progress, cancel, record, dry_run)
    if action == "venv":
        return _fix_venv(session, log, progress, cancel, record, with_pip, dry_run)
    return _fix_install(session, log, progress, cancel, dry_run)


def _manual(commands: list[list[str]], cwd: Path | None = None) -> str:
    prefix = f"cd {shlex.quote(str(cwd))} && " if cwd else ""
    return "; ".join(prefix + shlex.join(c) for c in commands)


def _run_steps(
    session: Session, action: str, steps: list[tuple[str, list[str], Path | None]], log: LogCallback,
    progress: ProgressCallback, cancel: threading.Event | None,
) -> tuple[bool, str, Path, list[str]]:
    """Run commands in order into one log file; stop at the first failure. (ok, failure text, log path, last lines)."""
    path = fix_log_path(session, action)
    path.parent.mkdir(parents=True, exist_ok=True)
    meter = ProgressMeter(progress, "env", action, len(steps), "steps", interval=0.2)
    with path.open("ab") as handle:
        for number, (what, argv, cwd) in enumerate(steps, start=1):
            log(f"{action} {number}/{len(steps)}: {what}")
            meter.update(number - 1, what, force=True)

            def on_line(line: str, number: int = number, what: str = what) -> None:
                log(line)
                match = _PERCENT.search(line)
                if match:
                    meter.update(number - 1 + min(100, int(match.group(1))) / 100, what)

            try:
                rc, tail = run_streamed(argv, cwd=cwd, log=handle, on_line=on_line, cancel=cancel)
            except FileNotFoundError:
                return False, f"{argv[0]} is not installed or not found", path, []
            except OSError as exc:
                return False, f"{argv[0]} does not run: {exc.strerror or exc}", path, []
            if rc != 0:
                return False, f"{what} failed (exit {rc}) at step {number}/{len(steps)}", path, tail
        meter.finish()
    return True, "", path, []


def _failure(summary: str, tail: list[str], path: Path | None, commands: list[list[str]], cwd: Path | None) -> FixResult:
    reason = next((line for line in reversed(tail) if re.search(r"error|fatal|failed", line, re.I)), tail[-1] if tail else "")
    offline = any(_NETWORK_ERRORS.search(line) for line in tail)
    text = summary + (f": {reason}" if reason else "")
    if offline:
        text += " — no network? run by hand: " + _manual(commands, cwd)
    if path is not None:
        text += f" (log kept: {path}; fix the cause and run it again)"
    return FixResult(False, text, path, commands, cwd, offline=offline)


def _fix_clone(session: Session, branch: str, url: str, log: LogCallback, progress: ProgressCallback,
               cancel: threading.Event | None, record: Callable[[str, Any], None] | None, dry_run: bool) -> FixResult:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", branch or ""):
        return FixResult(False, f"{branch!r} is not a branch name")
    target = default_clone_target(session)
    commands = [clone_argv(target, branch, url)]
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        return FixResult(False, f"{target} already exists and is not empty: nothing was changed "
                                "(point paths.sd_scripts at it, or choose another folder)", commands=commands)
    if dry_run:
        return FixResult(True, "would run: " + _manual(commands), commands=commands)
    if not network_ok(url):
        return FixResult(False, f"no network ({urlparse(url).hostname} unreachable): run by hand: {_manual(commands)}",
                         commands=commands, offline=True)
    partial = target.parent / f".{target.name}.lorawizard-partial"
    if partial.exists():
        shutil.rmtree(partial)  # our own leftover from an interrupted clone
    target.parent.mkdir(parents=True, exist_ok=True)
    argv = clone_argv(partial, branch, url)
    try:
        ok, failure, path, tail = _run_steps(session, "clone", [(f"git clone {branch}", argv, None)], log, progress, cancel)
    except Cancelled:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if not ok:
        shutil.rmtree(partial, ignore_errors=True)
        return _failure(failure, tail, path, commands, None)
    if target.exists():
        target.rmdir()  # it was empty (checked above)
    partial.rename(target)
    checkout = inspect_checkout(target)
    if record is not None and session.paths.sd_scripts != target:
        record("paths.sd_scripts", str(target))
    flux = "" if checkout.has_flux else f" — but it has no {TRAIN_SCRIPT} (old branch?)"
    return FixResult(checkout.has_flux, f"cloned sd-scripts {branch} into {target} ({checkout.describe()}){flux}", path, commands)


def _fix_venv(session: Session, log: LogCallback, progress: ProgressCallback, cancel: threading.Event | None,
              record: Callable[[str, Any], None] | None, with_pip: bool, dry_run: bool) -> FixResult:
    sd_scripts = find_sd_scripts(session)
    python = find_python(session, sd_scripts)
    if python is None:
        return FixResult(False, "sd-scripts is not found yet: clone it first")
    venv = venv_dir_of(python)
    commands = [venv_argv(venv, with_pip=with_pip)]
    if python.exists():
        return FixResult(False, f"{python} already exists: nothing was changed (remove {venv} yourself to start over)",
                         commands=commands)
    if venv.exists() and any(venv.iterdir()):
        return FixResult(False, f"{venv} exists but has no working Python: nothing was changed "
                                "(remove it yourself, or set paths.python)", commands=commands)
    if dry_run:
        return FixResult(True, "would run: " + _manual(commands), commands=commands)
    ok, failure, path, tail = _run_steps(session, "venv", [("create the venv", commands[0], None)], log, progress, cancel)
    if not ok:
        return _failure(failure, tail, path, commands, None)
    if record is not None and not session.is_set("paths.python") and venv.name != ".venv":
        record("paths.python", str(python))
    return FixResult(True, f"created {venv} with {commands[0][0]}", path, commands)


def _fix_install(session: Session, log: LogCallback, progress: ProgressCallback, cancel: threading.Event | None,
                 dry_run: bool) -> FixResult:
    sd_scripts = find_sd_scripts(session)
    python = find_python(session, sd_scripts)
    if sd_scripts is None or not (sd_scripts / "requirements.txt").is_file():
        return FixResult(False, "sd-scripts (with its requirements.txt) is not found yet: clone it first")
    if python is None or not python.exists():
        return FixResult(False, "the trainer's Python does not exist yet: create the venv first")
    # torch first (the wheel for this driver), so the requirements never pull a default torch from PyPI
    check = run_trainer_check(python, sd_scripts, imports=False, cancel=cancel)
    steps: list[tuple[str, list[str], Path | None]] = []
    inventory = _safe_inventory()
    gpus = list(getattr(inventory, "gpus", []) or [])
    driver_cuda = next((parse_cuda_version(g.cuda_driver_version) for g in gpus if g.cuda_driver_version), None)
    torch_ok = False
    if check.data is not None:
        torch_ok = all(f.status != "error" for f in _torch_findings(check.data, python, gpus, driver_cuda))
    if not torch_ok:
        wheel = torch_wheel_for(driver_cuda)
        if wheel is None:
            return FixResult(False, "the NVIDIA driver is too old for any torch that sd-scripts supports: update the driver")
        steps.append((f"install torch {wheel.torch} ({wheel.tag})", wheel.pip_argv(python), sd_scripts))
    steps.append(("install sd-scripts' requirements", requirements_argv(python), sd_scripts))
    commands = [argv for _, argv, _ in steps]
    if dry_run:
        return FixResult(True, "would run: " + _manual(commands, sd_scripts), commands=commands, cwd=sd_scripts)
    hosts = [argv[argv.index("--index-url") + 1] for argv in commands if "--index-url" in argv]
    if not pip_configured():
        hosts.append("https://pypi.org/simple")
    unreachable = [h for h in hosts if not network_ok(h)]
    if unreachable:
        host = urlparse(unreachable[0]).hostname
        return FixResult(False, f"no network ({host} unreachable): run by hand: {_manual(commands, sd_scripts)}",
                         commands=commands, cwd=sd_scripts, offline=True)
    ok, failure, path, tail = _run_steps(session, "install", steps, log, progress, cancel)
    if not ok:
        return _failure(failure, tail, path, commands, sd_scripts)
    return FixResult(True, f"installed {len(steps)} step{'s' if len(steps) > 1 else ''} into {venv_dir_of(python)}",
                     path, commands, sd_scripts)


# ---------------------------------------------------------------- the step


def run_step(ctx: StepContext) -> StepResult:
    """Diagnose (and first perform the fix asked for in ctx.options["fix"], if any). ok when no finding is an error."""
    session = ctx.session
    details: list[str] = []
    data: dict[str, Any] = {}
    fix = ctx.options.get("fix")
    if fix:
        result = run_fix(
            session, str(fix), branch=str(ctx.options.get("branch") or DEFAULT_BRANCH),
            url=str(ctx.options.get("url") or SD_SCRIPTS_URL), log=ctx.log, progress=ctx.progress,
            cancel=ctx.cancel, record=ctx.record, with_pip=bool(ctx.options.get("with_pip", True)), dry_run=ctx.dry_run,
        )
        data["fix"] = result
        details.append(("✓ " if result.ok else "✗ ") + result.summary)
        if not result.ok:
            return StepResult(False, result.summary, details, data)
    diagnosis = examine(session, cancel=ctx.cancel, progress=ctx.progress,
                         timeout=float(ctx.options.get("check_timeout", CHECK_TIMEOUT_S)))
    if diagnosis.sd_scripts is not None and not session.is_set("paths.sd_scripts"):
        if inspect_checkout(diagnosis.sd_scripts).has_flux:
            ctx.record("paths.sd_scripts", str(diagnosis.sd_scripts))
    if (diagnosis.python is not None and not session.is_set("paths.python") and diagnosis.python.exists()
            and diagnosis.python != session.paths.python):
        ctx.record("paths.python", str(diagnosis.python))
    for finding in diagnosis.findings:
        details.append(finding.line())
        details.extend(f"    $ {line}" for line in finding.command_lines())
    if diagnosis.command is not None:
        where = "" if diagnosis.command_files_written else " (dataset config not written yet)"
        details.append(f"training command{where}:")
        details.extend("  " + line for line in diagnosis.command.shell_text(multiline=True).splitlines())
    data.update(findings=diagnosis.findings, diagnosis=diagnosis, command=diagnosis.command)
    summary = diagnosis.summary()
    if fix and data["fix"].ok:
        summary = f"{data['fix'].summary}; {summary}"
    return StepResult(diagnosis.ok, summary, details, data)
