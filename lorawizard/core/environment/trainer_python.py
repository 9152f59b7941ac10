"""The trainer's Python (sd-scripts' venv): where it is, the Python to create it with, and the check that runs
`trainer_side/check_environment.py` inside it by path with a time limit (JSON out): torch is only ever imported
there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.common.procs import kill_process_group
from lorawizard.core.contract import Cancelled
from lorawizard.core.session.document import Session

CHECK_SCRIPT = Path(__file__).resolve().parents[2] / "trainer_side" / "check_environment.py"
CHECK_MARKER = "LORAWIZARD-CHECK "
CHECK_TIMEOUT_S = 120.0


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
    extra_env: Mapping[str, str] | None = None,
) -> CheckRun:
    """Run trainer_side/check_environment.py in `python` (argv list, own process group, time limit); parse its JSON line.
    `extra_env`: what the launch adds to the trainer's environment (core.launch.command.library_path_env)."""
    argv = [str(python), str(CHECK_SCRIPT)]
    if sd_scripts is not None:
        argv += ["--sd-scripts", str(sd_scripts)]
    if not imports:
        argv.append("--no-imports")
    started = time.monotonic()
    env = dict(os.environ)  # the same environment the trainer will get
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra_env or {})
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


def venv_argv(venv: Path, base: str | None = None, *, with_pip: bool = True) -> list[str]:
    return [base or base_python_for_venv(), "-m", "venv", *([] if with_pip else ["--without-pip"]), str(venv)]


def requirements_argv(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "--upgrade", "-r", "requirements.txt"]
