"""Test doubles for the environment step (tests only): a fake sd-scripts checkout, fake trainer Pythons, fake pip.

* `make_checkout(root, ...)`: a folder shaped like kohya-ss/sd-scripts (flux_train_network.py, library/, requirements.txt),
  optionally a real git repository on a chosen branch with an origin URL.
* `make_fake_python(path, site, ...)`: an executable "python" that runs this interpreter with `-S` (none of our own
  site-packages leak in) and `site` on PYTHONPATH, where `site` holds fake packages: `torch` (version, CUDA build,
  devices as given), dist-info metadata for installed distributions, and a fake `pip` that "installs" by writing
  such packages (and fails on demand, halfway).
* `make_broken_python(path, kind)`: pythons that hang, crash, are not executable, or are not programs at all.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

SD3_REQUIREMENTS = """accelerate==1.6.0
transformers==4.54.1
diffusers[torch]==0.32.1
opencv-python==4.10.0.84
voluptuous==0.15.2
toml==0.10.2
# for kohya_ss library
-e .
"""

GOOD_TORCH = {"version": "2.6.0+cu124", "cuda": "12.4", "available": True,
              "devices": [{"name": "NVIDIA GeForce RTX 3090", "capability": [8, 6], "memory_total": 24 * 1024**3}],
              "arch_list": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"], "bf16": True}


def git(*args: str, cwd: Path) -> str:
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main",
                          *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_checkout(root: Path, *, flux: bool = True, git_branch: str | None = "sd3",
                  remote: str | None = "https://github.com/kohya-ss/sd-scripts.git",
                  requirements: str = SD3_REQUIREMENTS) -> Path:
    (root / "library").mkdir(parents=True, exist_ok=True)
    (root / "networks").mkdir(exist_ok=True)
    (root / "train_network.py").write_text("# fake sd-scripts (tests only)\n")
    (root / "library" / "__init__.py").write_text("")
    (root / "library" / "train_util.py").write_text("import voluptuous\n")
    if flux:
        (root / "flux_train_network.py").write_text("# fake sd-scripts (tests only)\n")
    (root / "requirements.txt").write_text(requirements)
    if git_branch is not None:
        git("init", "-q", cwd=root)
        git("checkout", "-q", "-b", git_branch, cwd=root)
        git("add", "-A", cwd=root)
        git("commit", "-q", "-m", "fake sd-scripts", cwd=root)
        if remote:
            git("remote", "add", "origin", remote, cwd=root)
    return root


# ---------------------------------------------------------------- fake packages


def write_dist(site: Path, name: str, version: str, module: str | None = None, body: str = "") -> None:
    """A distribution `name==version` as importlib.metadata sees it, plus an importable module when given."""
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if module:
        package = site / module.replace(".", "/")
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(body or f"__version__ = {version!r}\n")


def write_torch(site: Path, torch: dict[str, Any] | None) -> None:
    """A fake `torch` package answering what trainer_side/check_environment.py asks; None removes it."""
    import shutil

    for old in site.glob("torch*"):
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    if torch is None:
        return
    spec = {**GOOD_TORCH, **torch}
    source = f'''"""fake torch (tests only)"""
import warnings as _w
_SPEC = {json.dumps(spec)!r}
import json as _json
_SPEC = _json.loads(_SPEC)
__version__ = _SPEC["version"]
if _SPEC.get("import_error"):
    raise ImportError(_SPEC["import_error"])
class version:
    cuda = _SPEC["cuda"]
class _Props:
    def __init__(self, d):
        self.name = d["name"]; self.major, self.minor = d["capability"]; self.total_memory = d["memory_total"]
class cuda:
    @staticmethod
    def is_available():
        if _SPEC.get("warning"):
            _w.warn(_SPEC["warning"])
        return bool(_SPEC["available"])
    @staticmethod
    def device_count():
        return len(_SPEC["devices"])
    @staticmethod
    def get_device_properties(i):
        return _Props(_SPEC["devices"][i])
    @staticmethod
    def get_arch_list():
        return list(_SPEC["arch_list"])
    @staticmethod
    def is_bf16_supported():
        return bool(_SPEC["bf16"])
'''
    write_dist(site, "torch", spec["version"].split("+")[0], "torch", source)
    write_dist(site, "torchvision", "0.21.0", "torchvision")


FAKE_PIP = r'''"""fake pip (tests only): `install torch==X torchvision==Y --index-url .../cuXYZ` or `install [--upgrade] -r FILE`."""
import json, os, re, sys, time
from pathlib import Path
SITE = Path(__file__).resolve().parent.parent
FAIL = os.environ.get("FAKE_PIP_FAIL", "")
sys.path.insert(0, str(SITE / "_fake_helpers"))
from fake_trainer_env_site import write_dist, write_torch  # noqa: E402

def main(args):
    if not args or args[0] != "install":
        print("fake pip: only install"); return 2
    args = args[1:]
    wanted = []
    index = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-r":
            for line in Path(args[i + 1]).read_text().splitlines():
                line = line.split("#")[0].strip()
                if line and not line.startswith("-"):
                    wanted.append(line)
            i += 2; continue
        if a == "--index-url":
            index = args[i + 1]; i += 2; continue
        if a.startswith("-"):
            i += 1; continue
        wanted.append(a); i += 1
    for req in wanted:
        name, _, version = re.split(r"(\[.*\])?==", req)[0], None, (req.split("==")[1] if "==" in req else "1.0")
        print(f"Collecting {req}", flush=True)
        print(f"  Downloading {name}-{version}.whl (1.0 MB)\r  50%\r 100%", flush=True)
        if os.environ.get("FAKE_PIP_OFFLINE"):
            print("WARNING: Retrying after connection broken by 'NewConnectionError: Failed to establish a new connection'")
            print(f"ERROR: Could not find a version that satisfies the requirement {req}")
            return 1
        if FAIL and FAIL in req:
            print(f"ERROR: Could not find a version that satisfies the requirement {req} (from versions: none)")
            print(f"ERROR: No matching distribution found for {req}")
            return 1
        if name == "torch":
            tag = (index or "cu124").rstrip("/").rsplit("/", 1)[-1]
            cuda = f"{tag[2:-1]}.{tag[-1]}" if tag.startswith("cu") else None
            write_torch(SITE, {"version": f"{version}+{tag}", "cuda": cuda})
        elif name == "torchvision":
            pass
        else:
            module = {"opencv-python": "cv2"}.get(name, name.replace("-", "_"))
            write_dist(SITE, name, version, module)
    print("Successfully installed " + " ".join(wanted), flush=True)
    return 0

sys.exit(main(sys.argv[1:]))
'''


def make_site(site: Path, *, torch: dict[str, Any] | None = None, packages: dict[str, str] | None = None,
              with_pip: bool = True) -> Path:
    """A fake site folder: torch (None: not installed), distributions {name: version}, fake pip."""
    site.mkdir(parents=True, exist_ok=True)
    write_torch(site, torch)
    modules = {"opencv-python": "cv2"}
    for name, version in (packages or {}).items():
        write_dist(site, name, version, modules.get(name, name.replace("-", "_")))
    if with_pip:
        (site / "pip").mkdir(exist_ok=True)
        (site / "pip" / "__init__.py").write_text("")
        (site / "pip" / "__main__.py").write_text(FAKE_PIP)
        helpers = site / "_fake_helpers"
        helpers.mkdir(exist_ok=True)
        (helpers / "fake_trainer_env_site.py").write_text(Path(__file__).read_text())
    return site


def all_requirements(requirements: str = SD3_REQUIREMENTS) -> dict[str, str]:
    result = {}
    for line in requirements.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name = line.split("==")[0].split("[")[0]
            result[name] = line.split("==")[1] if "==" in line else "1.0"
    return result


def make_fake_python(path: Path, site: Path) -> Path:
    """An executable `python` running this interpreter without our site-packages, with `site` on PYTHONPATH."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        "# fake trainer python (tests only)\n"
        f"PYTHONPATH={shlex.quote(str(site))}\n"
        "export PYTHONPATH\n"
        f'exec {shlex.quote(sys.executable)} -S "$@"\n'
    )
    path.chmod(0o755)
    return path


def make_broken_python(path: Path, kind: str) -> Path:
    """kind: "hang" (never answers), "crash" (exit 1 with a traceback), "noexec" (not executable), "garbage" (no program)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scripts = {
        "hang": "#!/bin/sh\nexec sleep 60\n",
        "crash": "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\necho 'ImportError: libpython3.10.so.1.0: cannot open' >&2\nexit 1\n",
        "silent": "#!/bin/sh\necho hello\nexit 0\n",
        "noexec": "#!/bin/sh\nexit 0\n",
        "garbage": "this is not a program\n",
    }
    path.write_text(scripts[kind])
    path.chmod(0o644 if kind == "noexec" else 0o755)
    return path


def canned_check(*, python: str = "3.10.14", torch: dict[str, Any] | None = None, sd_scripts: Path | None = None) -> dict:
    """A fixed check_environment.py answer (for snapshots: nothing in it depends on the machine running the tests)."""
    spec = {**GOOD_TORCH, **(torch or {})}
    data: dict[str, Any] = {
        "schema": 1,
        "python": {"version": python, "version_info": [int(x) for x in python.split(".")], "executable": "python",
                   "prefix": "/venv", "venv": True},
        "env": {},
        "torch": {"imported": True, "warnings": [], "device_count": len(spec["devices"]), **spec},
        "torchvision": "0.21.0",
        "accelerate": "1.6.0",
    }
    if sd_scripts is not None:
        packages = [{"name": n, "op": "==", "want": v, "have": v, "module": n} for n, v in all_requirements().items()]
        data["requirements"] = {"file": str(sd_scripts / "requirements.txt"), "found": True, "packages": packages,
                                "imports": {p["module"]: {"ok": True, "seconds": 0.1} for p in packages}}
    return data


def make_canned_python(path: Path, data: dict) -> Path:
    """A "python" that answers every trainer check with `data` (and nothing else)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n# fake trainer python with a canned check answer (tests only)\n"
                    f"echo {shlex.quote('LORAWIZARD-CHECK ' + json.dumps(data))}\n")
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------- NixOS and uv (issue 24 item 11)

LIBCUDA_MISSING = "OSError: libcuda.so.1: cannot open shared object file: No such file or directory"


def make_fake_root(root: Path, *, nixos: bool = True, driver_libs: bool = True) -> Path:
    """A fake filesystem root: `etc/NIXOS` (NixOS) and `run/opengl-driver/lib/libcuda.so*` (the driver's libraries)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    if nixos:
        (root / "etc" / "NIXOS").write_text("")
    lib = root / "run" / "opengl-driver" / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    if driver_libs:
        for name in ("libcuda.so.550.54.14", "libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1"):
            (lib / name).write_text("fake driver library (tests only)\n")
    return root


def make_libcuda_python(path: Path, data: dict, driver_lib: Path) -> Path:
    """A canned trainer "python" whose torch loads libcuda only when LD_LIBRARY_PATH names `driver_lib` (as a pip
    torch on NixOS): it answers `data` with the `libcuda` answer and torch's CUDA state set accordingly."""
    loaded = {**data, "libcuda": {"loaded": True},
              "torch": {**data["torch"], "available": True}}
    missing = {**data, "libcuda": {"loaded": False, "error": LIBCUDA_MISSING},
               "torch": {**data["torch"], "available": False, "devices": [], "device_count": 0,
                         "warnings": ["CUDA initialization: Found no NVIDIA driver on your system."]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n# fake trainer python: libcuda found only on LD_LIBRARY_PATH (tests only)\n"
        'case ":$LD_LIBRARY_PATH:" in\n'
        f"  *:{shlex.quote(str(driver_lib))}:*) echo {shlex.quote('LORAWIZARD-CHECK ' + json.dumps(loaded))} ;;\n"
        f"  *) echo {shlex.quote('LORAWIZARD-CHECK ' + json.dumps(missing))} ;;\n"
        "esac\n")
    path.chmod(0o755)
    return path


def make_uv_venv_cfg(venv: Path, uv: str | None = "0.5.29") -> Path:
    """`venv/pyvenv.cfg` as uv writes it (`uv = …` line), or as `python -m venv` does (uv=None)."""
    venv.mkdir(parents=True, exist_ok=True)
    lines = ["home = /usr/bin", "include-system-site-packages = false", "version = 3.10.14"]
    if uv is not None:
        lines += [f"uv = {uv}", "implementation = CPython", "version_info = 3.10.14"]
    else:
        lines += ["executable = /usr/bin/python3.10", f"command = /usr/bin/python3.10 -m venv {venv}"]
    (venv / "pyvenv.cfg").write_text("\n".join(lines) + "\n")
    return venv
