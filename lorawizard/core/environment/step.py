"""Environment doctor (the env step): sd-scripts checkout, the trainer's Python, torch/CUDA vs the driver,
accelerate, requirements — one module per concern:

- `findings`: `Finding` (ok / warning / error, each with its fix) and `Examination`, the whole report;
- `checkout`: where sd-scripts is, its branch and commit, whether it trains FLUX;
- `trainer_python`: the trainer's Python (venv) and the check run inside it (`trainer_side/check_environment.py`
  by path with a time limit, JSON out: torch is only ever imported there);
- `torch_wheels`: CUDA/torch versions, the torch wheel a driver can run;
- `doctor`: `examine(session)`, every check in order turned into findings, and the training command's preview;
- `quirks`: NixOS (the driver's libraries on the trainer's LD_LIBRARY_PATH) and trainer venvs made by uv;
- `fixes`: `run_fix(session, action)`, the one-key fixes (clone, venv, install, libpath) streamed to a log file under
  `.lorawizard/logs/`; without network a fix says so and shows the commands. No subprocess goes through a shell.

This module is the step (`run_step`) and the public names of the others: `from lorawizard.core.environment.step import X`
works for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict, cast

from lorawizard.core.contract import StepContext, StepResult
from lorawizard.core.environment.checkout import (
    BRANCHES,
    COMMON_PLACES,
    DEFAULT_BRANCH,
    PINNED_TAG,
    SD_SCRIPTS_URL,
    Checkout,
    clone_argv,
    default_clone_target,
    find_sd_scripts,
    inspect_checkout,
)
from lorawizard.core.environment.doctor import (
    examine,
    preview_command,
    preview_output_dir,
    preview_run_dir,
    safe_inventory,
)
from lorawizard.core.environment.findings import STATUS_MARKS, Examination, Finding, FindingStatus, FixAction
from lorawizard.core.environment.fixes import (
    FIXES,
    FixResult,
    fix_log_path,
    is_fix,
    network_ok,
    pip_configured,
    run_fix,
    run_streamed,
)
from lorawizard.core.environment.torch_wheels import (
    MIN_TORCH,
    NO_DRIVER_WHEEL,
    TORCH_WHEELS,
    TorchWheel,
    parse_cuda_version,
    parse_torch_version,
    torch_wheel_for,
)
from lorawizard.core.environment.trainer_python import (
    CHECK_MARKER,
    CHECK_SCRIPT,
    CHECK_TIMEOUT_S,
    CheckRun,
    base_python_for_venv,
    find_python,
    requirements_argv,
    run_trainer_check,
    venv_argv,
    venv_dir_of,
    venv_python,
)
from lorawizard.core.gpu.nvml import NvmlAdapter

__all__ = [
    "BRANCHES",
    "CHECK_MARKER",
    "CHECK_SCRIPT",
    "CHECK_TIMEOUT_S",
    "COMMON_PLACES",
    "DEFAULT_BRANCH",
    "FIXES",
    "MIN_TORCH",
    "NO_DRIVER_WHEEL",
    "PINNED_TAG",
    "SD_SCRIPTS_URL",
    "STATUS_MARKS",
    "TORCH_WHEELS",
    "CheckRun",
    "Checkout",
    "Examination",
    "Finding",
    "FindingStatus",
    "FixAction",
    "FixResult",
    "TorchWheel",
    "base_python_for_venv",
    "clone_argv",
    "default_clone_target",
    "examine",
    "find_python",
    "find_sd_scripts",
    "fix_log_path",
    "inspect_checkout",
    "is_fix",
    "network_ok",
    "parse_cuda_version",
    "parse_torch_version",
    "pip_configured",
    "preview_command",
    "preview_output_dir",
    "preview_run_dir",
    "requirements_argv",
    "run_fix",
    "run_step",
    "run_streamed",
    "run_trainer_check",
    "safe_inventory",
    "torch_wheel_for",
    "venv_argv",
    "venv_dir_of",
    "venv_python",
]


class EnvOptions(TypedDict, total=False):
    """What the env step reads from `ctx.options` (all optional)."""

    fix: FixAction  # performed before the diagnosis
    branch: str  # clone: sd-scripts branch
    url: str  # clone: repository (tests: a local bare repository)
    with_pip: bool  # venv: with pip (default)
    check_timeout: float  # seconds for the check in the trainer's Python
    nvml: NvmlAdapter  # the GPUs' adapter (tests: a fake NVML, tests/support/fake_nvml.py)
    root: Path  # the filesystem root the machine is read from (NixOS's files; tests: a fake tree); default /


def _options(ctx: StepContext) -> EnvOptions:
    return cast(EnvOptions, ctx.options)


def run_step(ctx: StepContext) -> StepResult:
    """Diagnose (and first perform the fix asked for in _options(ctx)["fix"], if any). ok when no finding is an error."""
    session = ctx.session
    details: list[str] = []
    data: dict[str, Any] = {}
    fix = _options(ctx).get("fix")
    if fix:
        result = run_fix(
            session, fix, branch=str(_options(ctx).get("branch") or DEFAULT_BRANCH),
            url=str(_options(ctx).get("url") or SD_SCRIPTS_URL), log=ctx.log, progress=ctx.progress,
            cancel=ctx.cancel, record=ctx.record, with_pip=bool(_options(ctx).get("with_pip", True)), dry_run=ctx.dry_run,
            nvml=_options(ctx).get("nvml"), root=_options(ctx).get("root", Path("/")),
        )
        data["fix"] = result
        details.append(("✓ " if result.ok else "✗ ") + result.summary)
        if not result.ok:
            return StepResult(False, result.summary, details, data)
    diagnosis = examine(session, cancel=ctx.cancel, progress=ctx.progress,
                         timeout=float(_options(ctx).get("check_timeout", CHECK_TIMEOUT_S)), nvml=_options(ctx).get("nvml"),
                         root=_options(ctx).get("root", Path("/")))
    if (diagnosis.sd_scripts is not None and not session.is_set("paths.sd_scripts")
            and inspect_checkout(diagnosis.sd_scripts).has_flux):
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
