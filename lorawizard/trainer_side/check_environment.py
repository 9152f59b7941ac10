"""Runs INSIDE the trainer's Python (sd-scripts' venv), started by lorawizard as a subprocess by path:

    <trainer python> trainer_check.py [--sd-scripts DIR] [--no-imports]

It prints one line `LORAWIZARD-CHECK {json}` on stdout (other output may surround it) and exits 0. It is the only
place that imports torch, and only in that child process. Standalone: no lorawizard imports, Python 3.8 syntax,
every probe wrapped so a broken package is reported, never fatal.
"""

import importlib
import json
import os
import platform
import re
import sys
import time
import warnings

MARKER = "LORAWIZARD-CHECK "

# requirements.txt distribution name → module to import (sd-scripts 2026-02; unknown names: '-' → '_').
IMPORT_NAMES = {
    "opencv-python": "cv2",
    "opencv-python-headless": "cv2",
    "huggingface-hub": "huggingface_hub",
    "pytorch-optimizer": "pytorch_optimizer",
    "lion-pytorch": "lion_pytorch",
    "prodigy-plus-schedule-free": "prodigyplus",
    "pillow": "PIL",
    "protobuf": "google.protobuf",
    "scikit-image": "skimage",
}


def _error(exc):
    text = "%s: %s" % (type(exc).__name__, exc)
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__


def _dist_version(name):
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    try:
        return metadata.version(name)
    except Exception:  # noqa: BLE001 - PackageNotFoundError and broken metadata alike
        return None


def _requirements(sd_scripts):
    path = os.path.join(sd_scripts, "requirements.txt")
    result = {"file": path, "found": os.path.isfile(path), "packages": []}
    if not result["found"]:
        return result
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            if line.startswith("-e") or line == ".":
                result["editable"] = True
            continue
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(==|>=|<=|~=|!=|>|<)?\s*([^;\s]*)", line)
        if not match:
            continue
        name, _, op, want = match.groups()
        have = _dist_version(name)
        result["packages"].append({
            "name": name, "op": op or "", "want": want or "", "have": have,
            "module": IMPORT_NAMES.get(name.lower(), name.lower().replace("-", "_")),
        })
    return result


def _import(module):
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and friends from a broken package too
        return {"ok": False, "error": _error(exc), "seconds": round(time.monotonic() - started, 2)}
    return {"ok": True, "seconds": round(time.monotonic() - started, 2)}


def _torch():
    info = {"imported": False}
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch  # noqa: PLC0415 - this child process is the one place torch is imported
    except BaseException as exc:  # noqa: BLE001
        info["error"] = _error(exc)
        return info
    info["imported"] = True
    info["version"] = str(getattr(torch, "__version__", ""))
    info["cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    try:
        with warnings.catch_warnings(record=True) as more:
            warnings.simplefilter("always")
            info["available"] = bool(torch.cuda.is_available())
        caught = list(caught) + list(more)
    except BaseException as exc:  # noqa: BLE001
        info["available"] = False
        info["cuda_error"] = _error(exc)
    texts = [str(w.message).strip().splitlines()[0][:300] for w in caught if str(w.message).strip()]
    info["warnings"] = list(dict.fromkeys(texts))[:5]
    try:
        info["arch_list"] = list(torch.cuda.get_arch_list())
    except BaseException:  # noqa: BLE001
        info["arch_list"] = []
    devices = []
    if info["available"]:
        try:
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                devices.append({
                    "name": str(props.name),
                    "capability": [int(props.major), int(props.minor)],
                    "memory_total": int(props.total_memory),
                })
            info["bf16"] = bool(torch.cuda.is_bf16_supported())
        except BaseException as exc:  # noqa: BLE001
            info["cuda_error"] = _error(exc)
    info["devices"] = devices
    info["device_count"] = len(devices)
    return info


def _libcuda():
    """Can this process load the NVIDIA driver's libcuda (as torch does)? On NixOS it lives in /run/opengl-driver/lib,
    which the dynamic loader does not search unless LD_LIBRARY_PATH names it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return {"loaded": False, "error": _error(exc)}
    return {"loaded": True}


def main(argv):
    sd_scripts = None
    if "--sd-scripts" in argv:
        index = argv.index("--sd-scripts")
        sd_scripts = argv[index + 1] if index + 1 < len(argv) else None
    result = {
        "schema": 1,
        "python": {
            "version": platform.python_version(),
            "version_info": list(sys.version_info[:3]),
            "executable": sys.executable,
            "prefix": sys.prefix,
            "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
        },
        "env": {key: os.environ.get(key) for key in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH")
                if os.environ.get(key) is not None},
    }
    result["libcuda"] = _libcuda()
    result["pip"] = _dist_version("pip")
    result["torch"] = _torch()
    result["torchvision"] = _dist_version("torchvision")
    result["accelerate"] = _dist_version("accelerate")
    if sd_scripts:
        if os.path.isdir(sd_scripts) and sd_scripts not in sys.path:
            sys.path.insert(0, sd_scripts)
        requirements = _requirements(sd_scripts)
        if "--no-imports" not in argv:
            modules = ["torchvision"] + [p["module"] for p in requirements["packages"]] + ["library.train_util"]
            imports = {}
            for module in dict.fromkeys(modules):
                if module == "torch":
                    continue
                imports[module] = _import(module)
            requirements["imports"] = imports
        result["requirements"] = requirements
    sys.stdout.write("\n" + MARKER + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
