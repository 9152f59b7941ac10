"""core/ must never pull Textual, torch or accelerate; the --replay and --help paths must not pull Textual."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import lorawizard.core

FORBIDDEN_IN_CORE = ("textual", "torch", "accelerate", "rich")
# Every module and package below core/, the step packages (core/steps/, core/steps/environment/) included.
CORE_MODULES = sorted(info.name for info in pkgutil.walk_packages(lorawizard.core.__path__, "lorawizard.core."))


def _modules_after(code: str) -> set[str]:
    """Run `code` in a fresh interpreter and return the top-level packages it imported."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_has_modules() -> None:
    assert "lorawizard.core.session.document" in CORE_MODULES and len(CORE_MODULES) >= 8
    assert "lorawizard.core.environment.doctor" in CORE_MODULES


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_ui_or_ml(module: str) -> None:
    leaked = _modules_after(f"import {module}") & set(FORBIDDEN_IN_CORE)
    assert not leaked, f"{module} imported {sorted(leaked)}"


def test_replay_path_imports_no_textual(tmp_path) -> None:
    session = tmp_path / "session.toml"
    session.write_text("version = 1\n")
    code = (
        "import io, contextlib\n"
        "from lorawizard import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    cli.main(['--replay', {str(session)!r}, '--steps', 'probe', '--dry-run'])\n"
        "import lorawizard.headless\n"
    )
    leaked = _modules_after(code) & {"textual", "torch", "accelerate"}
    assert not leaked, f"--replay imported {sorted(leaked)}"


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import io, contextlib\n"
        "from lorawizard import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--help'])\n"
    )
    leaked = _modules_after(code) & {"textual", "torch", "accelerate", "PIL", "tomlkit", "huggingface_hub", "psutil"}
    assert not leaked, f"--help imported {sorted(leaked)}"


def test_first_frame_path_imports_no_pipeline(tmp_path) -> None:
    """What runs before the wizard's first frame (cli → session → the App → the step states → the first screen)
    must not pull the image pipeline, the downloader or the other steps' modules: they cost ~80 ms of start-up and
    are imported by the workers that need them (bench/bench_cli_startup.py measures the frame)."""
    code = (
        "from pathlib import Path\n"
        "from lorawizard.core.session.document import Session\n"
        "from lorawizard.core.registry import session_step_states\n"
        "from lorawizard.core.step_states import training_is_live\n"
        "from lorawizard.tui.app import LoraWizardApp\n"
        "import lorawizard.tui.screens.environment\n"
        f"s = Session.open_project(Path({str(tmp_path)!r}))\n"
        "session_step_states(s); training_is_live(s)\n"
        "import sys, json\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    heavy = {"PIL", "huggingface_hub", "urllib.request", "http.client",
             "lorawizard.core.dataset.step", "lorawizard.core.models.step", "lorawizard.core.dataset.imaging",
             "lorawizard.core.models.download", "lorawizard.core.captions.step", "lorawizard.core.captions.captionset",
             "lorawizard.core.probe.step", "lorawizard.core.probe.trials", "lorawizard.core.probe.shared",
             "lorawizard.core.probe.several", "lorawizard.core.probe.fit_run", "lorawizard.core.probe.fit_cards",
             "textual.widgets._text_area"}
    assert not heavy & loaded, f"the first-frame path imported {sorted(heavy & loaded)}"


@pytest.mark.parametrize("existing", [False, True], ids=["new project", "existing session"])
def test_first_frame_path_defers_tomlkit(tmp_path, existing: bool) -> None:
    """tomlkit (import + parse, ~15 ms) waits for the first change: reads use tomllib's values until then."""
    if existing:
        (tmp_path / "session.toml").write_text('# mine\nversion = 1\nname = "kept"\n[train]\nseed = 7\n')
    code = (
        "from pathlib import Path\n"
        "from lorawizard.core.session.document import Session\n"
        "from lorawizard.tui.app import LoraWizardApp\n"
        f"s = Session.open_project(Path({str(tmp_path)!r}))\n"
        "app = LoraWizardApp(s, skeleton_first=True)\n"
        "import sys, json\n"
        "before = 'tomlkit' in sys.modules\n"
        "s.set('train.seed', 8)\n"
        "print(json.dumps([before, s.get('name'), s.to_text()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    before, name, text = json.loads(out.stdout.strip().splitlines()[-1])
    assert before is False
    assert name == ("kept" if existing else tmp_path.name)
    assert "seed = 8" in text and ("# mine" in text) == existing
