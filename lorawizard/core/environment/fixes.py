"""One-key fixes: clone sd-scripts, create the venv, install torch + requirements; every output line is streamed
to the caller and to a log file under `.lorawizard/logs/`. Without network the fix says so and shows the commands.
No subprocess goes through a shell."""

from __future__ import annotations

import io
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, cast, get_args
from urllib.parse import urlparse

from lorawizard.core.common.procs import kill_process_group
from lorawizard.core.common.progress import LogCallback, ProgressCallback, ProgressMeter, ignore_progress
from lorawizard.core.contract import Cancelled
from lorawizard.core.environment.checkout import (
    DEFAULT_BRANCH,
    SD_SCRIPTS_URL,
    clone_argv,
    default_clone_target,
    find_sd_scripts,
    inspect_checkout,
)
from lorawizard.core.environment.doctor import safe_inventory, torch_findings
from lorawizard.core.environment.findings import FixAction
from lorawizard.core.environment.quirks import NIXOS_DRIVER_LIB, driver_lib_dir, is_nixos, plain_venv_target, uv_version
from lorawizard.core.environment.torch_wheels import parse_cuda_version, torch_wheel_for
from lorawizard.core.environment.trainer_python import (
    find_python,
    requirements_argv,
    run_trainer_check,
    venv_argv,
    venv_dir_of,
    venv_python,
)
from lorawizard.core.gpu.nvml import NvmlAdapter
from lorawizard.core.launch.command import TRAIN_SCRIPT, library_path_env
from lorawizard.core.session.document import Session

FIXES: tuple[FixAction, ...] = get_args(FixAction)


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
            return -1, [*tail, f"stopped after {timeout:g} s"]
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
                tail = ([*tail, text])[-20:]
    log.flush()
    return proc.wait(), tail


_PERCENT = re.compile(r"(\d{1,3})% \(")


def is_fix(word: str) -> TypeGuard[FixAction]:
    """Whether `word` names a one-key fix (a Textual action's argument, a word from outside)."""
    return word in FIXES


def run_fix(
    session: Session,
    action: FixAction,
    *,
    branch: str = DEFAULT_BRANCH,
    url: str = SD_SCRIPTS_URL,
    log: LogCallback = lambda line: None,
    progress: ProgressCallback = ignore_progress,
    cancel: threading.Event | None = None,
    record: Callable[[str, Any], None] | None = None,
    with_pip: bool = True,
    dry_run: bool = False,
    nvml: NvmlAdapter | None = None,
    root: Path = Path("/"),
) -> FixResult:
    """Perform one fix: "clone" (sd-scripts, chosen branch), "venv" (the trainer's venv; a plain one beside a venv made
    by uv), "install" (torch + requirements), "libpath" (NixOS: the driver's libraries on the trainer's LD_LIBRARY_PATH),
    "fp32" (a CPU without native bf16: train.mixed_precision = "no").

    Never raises for expected failures (no network, pip failing halfway, an existing folder): the result says what
    happened, where the log is, and which commands to run by hand. `record(key, value)` stores paths it decided;
    `nvml`: the GPUs' adapter install reads the driver from (None: the process-wide one); `root`: the filesystem root
    the machine is read from (tests: a fake tree).
    """
    if not is_fix(action):  # a caller mypy does not check (a test, a word from outside)
        return FixResult(False, f"unknown fix {action!r} (fixes: {', '.join(FIXES)})")
    if action == "clone":
        return _fix_clone(session, branch, url, log, progress, cancel, record, dry_run)
    if action == "venv":
        return _fix_venv(session, log, progress, cancel, record, with_pip, dry_run)
    if action == "libpath":
        return _fix_libpath(session, root, record, dry_run)
    if action == "fp32":
        return _fix_fp32(session, record, dry_run)
    return _fix_install(session, log, progress, cancel, dry_run, nvml)


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
        return FixResult(False, f"{branch!r} is not a branch or tag name")
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
    if python.exists() and uv_version(venv) is not None:
        return _fix_uv_venv(session, sd_scripts, venv, log, progress, cancel, record, with_pip, dry_run)
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


def _fix_uv_venv(session: Session, sd_scripts: Path | None, uv_venv: Path, log: LogCallback, progress: ProgressCallback,
                 cancel: threading.Event | None, record: Callable[[str, Any], None] | None, with_pip: bool,
                 dry_run: bool) -> FixResult:
    """A plain `python -m venv` beside the trainer's venv made by uv (which is kept as it is); paths.python points at
    the new one, so the install fix fills it next."""
    target = plain_venv_target(sd_scripts, uv_venv)
    if target is None:
        return FixResult(False, f"{uv_venv} was made by uv, and sd-scripts has no free folder for a plain venv "
                                f"(venv, .venv, venv-plain): create one yourself and set paths.python")
    commands = [venv_argv(target, with_pip=with_pip)]
    python = venv_python(target)
    if dry_run:
        return FixResult(True, "would run: " + _manual(commands) + f"; paths.python = {python}", commands=commands)
    ok, failure, path, tail = _run_steps(session, "venv", [("create a plain venv", commands[0], None)], log, progress,
                                         cancel)
    if not ok:
        return _failure(failure, tail, path, commands, None)
    if record is not None:
        record("paths.python", str(python))
    return FixResult(True, f"created a plain venv in {target} with {commands[0][0]} (the uv one in {uv_venv} is kept); "
                           "install torch and the requirements into it next", path, commands)


def _fix_libpath(session: Session, root: Path, record: Callable[[str, Any], None] | None, dry_run: bool) -> FixResult:
    """NixOS: put the driver's library folder first in `paths.ld_library_path` (the launch adds it to the trainer's
    LD_LIBRARY_PATH and shows it in the command)."""
    if not is_nixos(root):
        return FixResult(False, "this is not NixOS: LD_LIBRARY_PATH is left as it is")
    folder = driver_lib_dir(root)
    if folder is None:
        return FixResult(False, f"no libcuda.so in {root / NIXOS_DRIVER_LIB}: enable the NVIDIA driver in your NixOS "
                                "configuration (hardware.nvidia, hardware.graphics.enable) and rebuild")
    current = session.path_settings.ld_library_path
    value = [str(folder), *[entry for entry in current if entry != str(folder)]]
    if dry_run:
        return FixResult(True, f"would save paths.ld_library_path = {value}")
    if value != current:
        if record is None:
            return FixResult(False, f"nothing can save it here: set paths.ld_library_path = [\"{folder}\"] yourself")
        record("paths.ld_library_path", value)
    return FixResult(True, f"the trainer runs with LD_LIBRARY_PATH={folder} first (saved as paths.ld_library_path)")


def _fix_fp32(session: Session, record: Callable[[str, Any], None] | None, dry_run: bool) -> FixResult:
    """A CPU without native bf16 (core.gpu.cpu_mode): train in fp32, `train.mixed_precision = "no"`."""
    if dry_run:
        return FixResult(True, 'would save train.mixed_precision = "no"')
    if session.train.mixed_precision != "no":
        if record is None:
            return FixResult(False, 'nothing can save it here: set train.mixed_precision = "no" yourself')
        record("train.mixed_precision", "no")
    return FixResult(True, 'training runs in fp32 (saved as train.mixed_precision = "no"; about twice the RAM)')


def _fix_install(session: Session, log: LogCallback, progress: ProgressCallback, cancel: threading.Event | None,
                 dry_run: bool, nvml: NvmlAdapter | None) -> FixResult:
    sd_scripts = find_sd_scripts(session)
    python = find_python(session, sd_scripts)
    if sd_scripts is None or not (sd_scripts / "requirements.txt").is_file():
        return FixResult(False, "sd-scripts (with its requirements.txt) is not found yet: clone it first")
    if python is None or not python.exists():
        return FixResult(False, "the trainer's Python does not exist yet: create the venv first")
    # torch first (the wheel for this driver), so the requirements never pull a default torch from PyPI
    check = run_trainer_check(python, sd_scripts, imports=False, cancel=cancel, extra_env=library_path_env(session))
    steps: list[tuple[str, list[str], Path | None]] = []
    inventory = safe_inventory(nvml)
    gpus = list(getattr(inventory, "gpus", []) or [])
    driver_cuda = next((parse_cuda_version(g.cuda_driver_version) for g in gpus if g.cuda_driver_version), None)
    torch_ok = False
    if check.data is not None:
        torch_ok = all(f.status != "error" for f in torch_findings(check.data, python, gpus, driver_cuda))
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
