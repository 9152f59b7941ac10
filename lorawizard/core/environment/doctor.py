"""The doctor: `examine(session)` runs every check in order and turns each into a `Finding` (sd-scripts, GPU and
driver, the trainer's Python, torch/CUDA, accelerate and requirements, models, the training command)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.common.progress import ProgressCallback, ProgressMeter, ignore_progress
from lorawizard.core.contract import Cancelled
from lorawizard.core.environment.checkout import (
    PINNED_TAG,
    Checkout,
    clone_argv,
    default_clone_target,
    family_problem,
    find_sd_scripts,
    inspect_checkout,
)
from lorawizard.core.environment.findings import Examination, Finding, FixAction
from lorawizard.core.environment.quirks import nixos_finding, plain_venv_target, uv_finding, uv_version, venv_of
from lorawizard.core.environment.torch_wheels import (
    MIN_TORCH,
    TorchWheel,
    arch_supported,
    parse_cuda_version,
    parse_torch_version,
    torch_wheel_for,
)
from lorawizard.core.environment.trainer_python import (
    CHECK_TIMEOUT_S,
    CheckRun,
    find_python,
    requirements_argv,
    run_trainer_check,
    venv_argv,
    venv_dir_of,
)
from lorawizard.core.gpu import cpu_mode
from lorawizard.core.gpu import nvml as gpu_module
from lorawizard.core.gpu.nvml import NO_GPU, Inventory, NvmlAdapter
from lorawizard.core.launch.command import TRAIN_SCRIPT, library_path_env
from lorawizard.core.profile import family_for
from lorawizard.core.session.document import Session


def examine(
    session: Session,
    *,
    cancel: threading.Event | None = None,
    progress: ProgressCallback = ignore_progress,
    timeout: float = CHECK_TIMEOUT_S,
    imports: bool = True,
    preview_command: bool = True,
    nvml: NvmlAdapter | None = None,
    root: Path = Path("/"),
) -> Examination:
    """Every check, in order; never raises for bad input (each problem becomes a finding). `nvml`: the GPUs' adapter
    (None: the process-wide one; tests pass a fake); `root`: the filesystem root the machine is read from (NixOS's
    /etc/NIXOS and /run/opengl-driver/lib; tests pass a fake tree)."""
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
    inventory = safe_inventory(nvml)
    gpus = list(getattr(inventory, "gpus", []) or [])
    findings.append(_gpu_finding(session, inventory, gpus))
    if not gpus:  # the one rule for "no GPU" (core.gpu.cpu_mode): the CPU trains, as a test mode
        findings.append(cpu_finding(session, root / "proc" / "cpuinfo"))
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
        check = run_trainer_check(python, usable_sd, timeout=timeout, cancel=cancel, imports=imports,
                                  extra_env=library_path_env(session))
        if check.data is None:
            findings.append(Finding("python", "error", "trainer Python", check.problem or "the check failed",
                                    "point paths.python at a working Python 3.10–3.12, or create a venv",
                                    action="venv"))
        else:
            diagnosis.check = check.data
            findings.extend(_python_findings(check.data, python))
        findings.extend(_uv_findings(python, check.data, usable_sd or sd_scripts))
    tick("trainer Python")

    # 4. torch, CUDA, accelerate, requirements (from the check)
    if check is not None and check.data is not None:
        findings.extend(torch_findings(check.data, python, gpus, driver_cuda))
        nixos = nixos_finding(check.data, root, session.path_settings.ld_library_path, bool(gpus))
        if nixos is not None:  # reinstalling torch would not help: the loader's path would
            for finding in findings:
                if finding.key == "cuda" and finding.status == "error":
                    finding.fix, finding.commands, finding.action = "NixOS: see the driver's libraries below", [], None
            findings.append(nixos)
        findings.extend(_package_findings(check.data, python, usable_sd))
    tick("packages")

    # 5. models, tokenizers and the command
    findings.extend(_model_findings(session))
    if preview_command:
        _preview_command(session, diagnosis, nvml)
    meter.finish()
    return diagnosis


def safe_inventory(nvml: NvmlAdapter | None = None) -> Inventory:
    """NVML's inventory (core.gpu.inventory); any failure of NVML is an inventory without GPUs, never a crash."""
    try:
        return gpu_module.inventory(nvml)
    except Exception as exc:  # noqa: BLE001 - NVML problems are findings, never crashes
        return Inventory(gpus=[], problem=NO_GPU, reason=str(exc))


def _uv_findings(python: Path, data: Mapping[str, Any] | None, sd_scripts: Path | None) -> list[Finding]:
    """The trainer's venv made by uv, with the plain venv the [v] fix would create instead."""
    if uv_version(venv_of(python, data)) is None:
        return []
    target = plain_venv_target(sd_scripts, venv_of(python, data))
    finding = uv_finding(python, data, sd_scripts, [venv_argv(target)] if target is not None else [])
    return [finding] if finding is not None else []


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
    too_old = family_problem(checkout, family_for(session))
    if too_old is not None:
        return Finding("sd_scripts", "warning", title, too_old,
                       f"check out {PINNED_TAG}: git -C {display_path(path)} fetch --tags && "
                       f"git -C {display_path(path)} checkout {PINNED_TAG}",
                       [["git", "-C", str(path), "fetch", "--tags"], ["git", "-C", str(path), "checkout", PINNED_TAG]]
                       if checkout.is_git else [])
    if checkout.remote and "kohya-ss/sd-scripts" not in checkout.remote:
        return Finding("sd_scripts", "warning", title, message, f"origin is {checkout.remote}: a fork, not kohya-ss/sd-scripts")
    if not checkout.is_git:
        return Finding("sd_scripts", "warning", title, message, "not a git clone: updating with git pull won't work")
    return Finding("sd_scripts", "ok", title, message)


def _gpu_finding(session: Session, inventory: Any, gpus: list[Any]) -> Finding:
    if not gpus:
        reason = getattr(inventory, "reason", None)
        problem = getattr(inventory, "problem", None) or NO_GPU
        return Finding("gpu", "warning", "GPU", problem + (f"; {reason}" if reason else ""),
                       f"{cpu_mode.NO_GPU_RULE}; for a real LoRA install the NVIDIA driver or use a GPU machine")
    several = session.gpu.uuids  # training on several GPUs: every one must be here
    chosen_uuids = several if len(several) > 1 else [u for u in [session.gpu.uuid] if u]
    visible = {g.uuid for g in gpus}
    gone = [u for u in chosen_uuids if u not in visible]
    if gone:
        which = "the chosen GPU" if len(chosen_uuids) == 1 else f"{len(gone)} of the {len(chosen_uuids)} chosen GPUs:"
        return Finding("gpu", "warning", "GPU", f"{which} {', '.join(gone)} not present ({len(gpus)} visible)"
                       if len(chosen_uuids) > 1 else f"{which} {gone[0]} is not present ({len(gpus)} visible)",
                       "choose the GPUs again in the GPU step")
    chosen = next((g for g in gpus if chosen_uuids and g.uuid == chosen_uuids[0]), None)
    gpu = chosen or gpus[0]
    driver = f"driver {gpu.driver_version}" if gpu.driver_version else "driver ?"
    cuda = f"CUDA {gpu.cuda_driver_version}" if gpu.cuda_driver_version else "CUDA ?"
    count = f"{len(gpus)} GPUs; " if len(gpus) > 1 else ""
    using = f" ({len(chosen_uuids)} chosen)" if len(chosen_uuids) > 1 else (" (chosen)" if chosen else "")
    return Finding("gpu", "ok", "GPU", f"{count}{gpu.name} · {driver} · {cuda}{using}")


def cpu_finding(session: Session, cpuinfo: Path | None = None) -> Finding:
    """Without a GPU: the CPU trains (test mode) at the rule's expected speed; bf16 without native support is said,
    with mixed_precision = "no" as its one-key fix. `cpuinfo`: /proc/cpuinfo (tests: a fake file)."""
    from lorawizard.core.dataset.step import bucket_counts  # lazy: the first frame imports the doctor, not PIL

    mode = cpu_mode.cpu_mode(session, bucket_counts(session), cpuinfo=cpuinfo)
    line = mode.bf16_line()
    if line is not None:
        return Finding("cpu", "warning", "CPU", line.split(" — ")[0], line.split(" — ", 1)[1], action="fp32")
    how = {True: "native bf16", False: "no native bf16, fp32", None: "bf16 support unknown"}[mode.bf16]
    if mode.bf16 is not False and mode.precision == "no":
        how += ", fp32 (mixed precision no)"
    return Finding("cpu", "ok", "CPU", f"test mode ({how}): {mode.speed_text()}")


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


@dataclass(frozen=True)
class _WheelFix:
    """The torch wheel this driver (and GPU) can run, as the fix of a torch or CUDA finding."""

    wheel: TorchWheel | None
    install: list[list[str]]  # its pip command, when the trainer's Python is known

    @property
    def text(self) -> str:
        wheel = self.wheel
        return f"torch {wheel.torch} for CUDA {wheel.cuda[0]}.{wheel.cuda[1]} ({wheel.tag})" if wheel else ""

    def fix(self, otherwise: str) -> str:
        return f"install {self.text}" if self.wheel else otherwise

    @property
    def action(self) -> FixAction | None:
        return "install" if self.wheel else None


def torch_findings(data: Mapping[str, Any], python: Path | None, gpus: list[Any],
                   driver_cuda: tuple[int, int] | None) -> list[Finding]:
    """torch itself (imports? version, CUDA build vs the driver), then whether it can use the GPU."""
    torch = data.get("torch") or {}
    devices = torch.get("devices") or []
    capability: Any = (tuple(devices[0].get("capability", ()))[:2] or None) if devices else None  # (major, minor)
    wheel = torch_wheel_for(driver_cuda, capability)
    wheel_fix = _WheelFix(wheel, [wheel.pip_argv(python)] if wheel and python else [])
    if not torch.get("imported"):
        return [_torch_missing(torch, wheel_fix)]
    return [_torch_build(torch, gpus, driver_cuda, wheel_fix), *_cuda_findings(torch, gpus, capability, wheel_fix)]


def _torch_missing(torch: Mapping[str, Any], wheel_fix: _WheelFix) -> Finding:
    error = torch.get("error", "not installed")
    missing = "No module named" in error
    return Finding("torch", "error", "torch", "not installed" if missing else f"does not import: {error}",
                   wheel_fix.fix("update the NVIDIA driver, then install torch"), wheel_fix.install, action="install")


def _torch_build(torch: Mapping[str, Any], gpus: list[Any], driver_cuda: tuple[int, int] | None,
                 wheel_fix: _WheelFix) -> Finding:
    """torch's version and CUDA build against sd-scripts' minimum, the GPU and the driver."""
    version = torch.get("version", "?")
    parsed = parse_torch_version(version)
    cuda_build = parse_cuda_version(torch.get("cuda"))
    build_text = f"CUDA {torch.get('cuda')}" if torch.get("cuda") else "CPU-only build"
    label = f"torch {version} ({build_text})"
    if parsed is not None and parsed[:2] < MIN_TORCH:
        return Finding("torch", "error", "torch", f"{label}: sd-scripts needs 2.6.0 or later",
                       wheel_fix.fix("update the NVIDIA driver first"), wheel_fix.install, action=wheel_fix.action)
    if cuda_build is None and gpus:
        return Finding("torch", "error", "torch", f"{label}: it cannot use the GPU",
                       wheel_fix.fix("update the NVIDIA driver first"), wheel_fix.install, action=wheel_fix.action)
    if cuda_build is None:
        return Finding("torch", "warning", "torch", label, "a CPU-only build: training runs on the CPU as a test mode")
    if driver_cuda is not None and cuda_build > driver_cuda:
        driver_text = f"{driver_cuda[0]}.{driver_cuda[1]}"
        fix = (f"install {wheel_fix.text}, or update the NVIDIA driver" if wheel_fix.wheel
               else "update the NVIDIA driver (no torch wheel fits this driver)")
        return Finding("torch", "error", "torch", f"{label} needs a newer driver: this one supports CUDA {driver_text}",
                       fix, wheel_fix.install, action=wheel_fix.action)
    fits = f", fits the driver's CUDA {driver_cuda[0]}.{driver_cuda[1]}" if driver_cuda else ""
    return Finding("torch", "ok", "torch", label + fits)


def _cuda_findings(torch: Mapping[str, Any], gpus: list[Any], capability: Any,
                   wheel_fix: _WheelFix) -> list[Finding]:
    """Can torch use the GPU: available, kernels for its architecture, bf16."""
    if not torch.get("cuda"):
        return []
    if not gpus:
        return [Finding("cuda", "warning", "CUDA", "torch has CUDA but no GPU is visible here", cpu_mode.NO_GPU_RULE)]
    warnings = torch.get("warnings") or []
    if not torch.get("available"):
        reason = torch.get("cuda_error") or (warnings[0] if warnings else "torch.cuda.is_available() is False")
        return [Finding("cuda", "error", "CUDA", f"torch cannot use the GPU: {reason}",
                        wheel_fix.fix("update the NVIDIA driver"), wheel_fix.install, action=wheel_fix.action)]
    devices = torch.get("devices") or []
    names = ", ".join(sorted({d.get("name", "?") for d in devices})) or "?"
    if capability and not arch_supported(torch.get("arch_list") or [], capability):
        sm = f"sm_{capability[0]}{capability[1]}"
        return [Finding("cuda", "error", "CUDA", f"torch {torch.get('version', '?')} has no kernels for {names} ({sm})",
                        wheel_fix.fix("update the NVIDIA driver"), wheel_fix.install, action=wheel_fix.action)]
    if devices and torch.get("bf16") is False:
        return [Finding("cuda", "warning", "CUDA", f"{names} has no bf16 support",
                        "training uses bf16; expect it to be slow or to fail on this GPU")]
    return [Finding("cuda", "ok", "CUDA", f"torch sees {len(devices)} device{'s' if len(devices) != 1 else ''}: {names}")]


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
    from lorawizard.core.models.files import resolved_model_paths

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


def preview_command(session: Session, nvml: NvmlAdapter | None = None) -> Any:
    """The exact command the preview shows (nothing is written). Raises core.command.CommandError. `nvml`: the
    adapter several chosen GPUs are checked with (None: the process-wide one)."""
    from lorawizard.core.launch import command as command_module

    run_dir, output = preview_run_dir(session), preview_output_dir(session)
    return command_module.build_train_command(
        session, dataset_config=run_dir / command_module.DATASET_CONFIG_NAME,
        accelerate_config=run_dir / command_module.ACCELERATE_CONFIG_NAME, output_dir=output, logging_dir=output / "logs",
        nvml=nvml,
    )


def _preview_command(session: Session, diagnosis: Examination, nvml: NvmlAdapter | None) -> None:
    """Build the exact training command; write its two config files under .lorawizard/manual-run/ when possible."""
    from lorawizard.core.launch import command as command_module

    run_dir = preview_run_dir(session)
    try:
        diagnosis.command = preview_command(session, nvml)
        command_module.write_accelerate_config(session, run_dir / command_module.ACCELERATE_CONFIG_NAME,
                                               command_module.plan_launch(session, nvml=nvml))
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
