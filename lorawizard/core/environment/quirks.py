"""Two machines the seed's author knew first-hand: NixOS, where the NVIDIA driver's libraries live in
`/run/opengl-driver/lib` (the dynamic loader does not look there, so a pip-installed torch cannot load `libcuda.so`),
and a trainer venv made by uv (its `pyvenv.cfg` says `uv = …`), which the seed's notes say accelerate "interacts
strangely with". Each is a finding with its one-key fix; `root` is the filesystem root the machine is read from
(tests pass a fake tree)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.environment.findings import Finding

NIXOS_MARKER = "etc/NIXOS"  # under the root: present on every NixOS system
NIXOS_DRIVER_LIB = "run/opengl-driver/lib"  # under the root: libcuda.so*, libnvidia-ml.so* of the running driver
PLAIN_VENV_NAMES = ("venv", ".venv", "venv-plain")  # in sd-scripts: where the plain venv replacing a uv one goes


def is_nixos(root: Path) -> bool:
    return (root / NIXOS_MARKER).exists()


def driver_lib_dir(root: Path) -> Path | None:
    """NixOS's driver library folder when it holds a libcuda.so*, else None."""
    folder = root / NIXOS_DRIVER_LIB
    try:
        return folder if any(folder.glob("libcuda.so*")) else None
    except OSError:
        return None


def libcuda_unloadable(data: Mapping[str, Any]) -> str | None:
    """Why the trainer's Python could not load libcuda (one line), or None when it could or nothing says so.
    Older checks without the `libcuda` answer: a CUDA build of torch that sees no GPU counts."""
    libcuda = data.get("libcuda")
    if isinstance(libcuda, Mapping):
        return None if libcuda.get("loaded") else str(libcuda.get("error") or "libcuda.so.1 was not found")
    torch = data.get("torch") or {}
    if torch.get("imported") and torch.get("cuda") and not torch.get("available"):
        return str(torch.get("cuda_error") or "torch.cuda.is_available() is False")
    return None


def nixos_finding(data: Mapping[str, Any], root: Path, configured: list[str], gpus_seen: bool) -> Finding | None:
    """On NixOS, when the trainer's Python cannot load libcuda: the driver's folder on LD_LIBRARY_PATH ([l])."""
    if not is_nixos(root):
        return None
    reason = libcuda_unloadable(data)
    if reason is None:
        return None
    folder = driver_lib_dir(root)
    if folder is None:
        return Finding("nixos", "error", "NixOS driver", f"torch cannot load libcuda.so ({reason}) and "
                       f"{display_path(root / NIXOS_DRIVER_LIB)} has none",
                       "enable the NVIDIA driver (hardware.nvidia, hardware.graphics.enable) and rebuild")
    if str(folder) in configured:
        return Finding("nixos", "error", "NixOS driver",
                       f"torch cannot load libcuda.so even with LD_LIBRARY_PATH={folder}: {reason}",
                       "check the driver (nvidia-smi) and that torch's CUDA build fits it")
    nvml = "" if gpus_seen else f"; to see the GPUs here too, start lorawizard with LD_LIBRARY_PATH={folder}"
    return Finding("nixos", "error", "NixOS driver",
                   f"torch cannot load libcuda.so: the driver's libraries are in {folder}, which NixOS keeps off "
                   "the loader's path",
                   f"run the trainer with LD_LIBRARY_PATH={folder} (saved as paths.ld_library_path){nvml}",
                   action="libpath")


def uv_version(venv: Path) -> str | None:
    """The uv version a venv was made with (its pyvenv.cfg's `uv = …` line), or None: not made by uv."""
    try:
        text = (venv / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "uv":
            return value.strip() or "?"
    return None


def venv_of(python: Path, data: Mapping[str, Any] | None) -> Path:
    """The venv a trainer Python belongs to: `<venv>/bin/python`'s `<venv>` when it has a pyvenv.cfg, else the
    check's `sys.prefix` (a Python linked from elsewhere)."""
    folder = python.parent.parent
    prefix = ((data or {}).get("python") or {}).get("prefix")
    return Path(prefix) if prefix and not (folder / "pyvenv.cfg").exists() else folder


def plain_venv_target(sd_scripts: Path | None, uv_venv: Path) -> Path | None:
    """Where the plain venv that replaces a uv one goes: the first of sd-scripts' venv, .venv, venv-plain that is
    free (missing or empty) and is not the uv venv; None when none is (or sd-scripts is not known)."""
    if sd_scripts is None:
        return None
    for name in PLAIN_VENV_NAMES:
        target = sd_scripts / name
        if target.resolve() == uv_venv.resolve():
            continue
        if not target.exists() or (target.is_dir() and not any(target.iterdir())):
            return target
    return None


def uv_finding(python: Path, data: Mapping[str, Any] | None, sd_scripts: Path | None,
               commands: list[list[str]]) -> Finding | None:
    """The trainer's venv was made by uv: name it, say what breaks, offer a plain `python -m venv` ([v])."""
    venv = venv_of(python, data)
    version = uv_version(venv)
    if version is None:
        return None
    no_pip = data is not None and not data.get("pip")
    breaks = ("no pip in it (python -m pip, used by sd-scripts' setup and [i], fails); " if no_pip else "")
    message = (f"{display_path(venv)} was made by uv {version}: {breaks}accelerate is reported to behave "
               "strangely in uv's venvs (the notes lorawizard grew from)")
    target = plain_venv_target(sd_scripts, venv)
    if target is None:
        return Finding("uv_venv", "warning", "uv venv", message,
                       "create a plain venv yourself (python -m venv) and set paths.python to its bin/python")
    return Finding("uv_venv", "warning", "uv venv", message,
                   f"create a plain venv in {display_path(target)} (python -m venv; the uv one is kept) and install "
                   "into it", commands, action="venv")
