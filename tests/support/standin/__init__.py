"""Test doubles for the trainer: a fake `accelerate` launcher and a stand-in `flux_train_network.py`.

`make_fake_sd_scripts(tmp_path)` lays out a fake sd-scripts checkout and returns `(sd_scripts_dir, python)`, where
`python` is an executable wrapper (also at `<sd_scripts>/.venv/bin/python`, the session's default) that runs this
interpreter with tests/support/standin on PYTHONPATH, so `python -m accelerate.commands.launch … flux_train_network.py …`
runs the stand-ins. See README.md for the STANDIN_* environment variables that steer it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parent
TRAINER = STANDIN_DIR / "flux_train_network.py"


def make_fake_sd_scripts(tmp_path: Path | str) -> tuple[Path, Path]:
    root = Path(tmp_path) / "sd-scripts"
    (root / "library").mkdir(parents=True, exist_ok=True)
    (root / "networks").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TRAINER, root / "flux_train_network.py")
    for stub in ("train_network.py", "library/__init__.py", "library/train_util.py", "library/flux_utils.py",
                 "networks/__init__.py", "networks/lora_flux.py"):
        path = root / stub
        if not path.exists():
            path.write_text("# stand-in: not sd-scripts\n")
    (root / "requirements.txt").write_text("accelerate==1.6.0\n# stand-in checkout for tests\n")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(
        "#!/bin/sh\n"
        "# stand-in trainer python (tests only): this interpreter with the fake accelerate on PYTHONPATH\n"
        f"PYTHONPATH={shlex.quote(str(STANDIN_DIR))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    python.chmod(0o755)
    return root, python


def make_ready_trainer(home: Path) -> tuple[Path, Path]:
    """`~/sd-scripts` as a person who set it up has it: a git checkout (branch sd3, origin kohya-ss) whose
    `.venv/bin/python` answers the environment check with the fake trainer env's canned answer (torch 2.6, CUDA,
    accelerate: all fine) and runs everything else with the stand-in trainer. Returns (sd_scripts, python)."""
    from tests.support.fake_trainer_env import canned_check, make_canned_python, make_checkout

    sd_scripts = make_checkout(home / "sd-scripts")  # git checkout on sd3 (its flux_train_network.py is a stub)
    make_fake_sd_scripts(home)  # ...replaced by the stand-in trainer; its python wrapper goes to .venv/bin/python
    venv = sd_scripts / ".venv" / "bin"
    standin = venv / "python"
    standin.rename(venv / "python-standin")
    make_canned_python(venv / "python-check", canned_check(python="3.10.14", sd_scripts=sd_scripts))
    python = venv / "python"
    python.write_text(
        "#!/bin/sh\n"
        "# a ready trainer python (tests, screenshots): the environment check gets the fake trainer env's canned\n"
        "# answer, everything else runs the stand-in trainer (tests/support/standin)\n"
        'case "$1" in */check_environment.py) exec ' + shlex.quote(str(venv / "python-check")) + ' "$@";; esac\n'
        "exec " + shlex.quote(str(venv / "python-standin")) + ' "$@"\n'
    )
    python.chmod(0o755)
    return sd_scripts, python


def standin_env(**values: object) -> dict[str, str]:
    """os.environ plus STANDIN_* settings, e.g. `standin_env(STEP_SECONDS=0.01, NAN_AT_STEP=3)`."""
    env = dict(os.environ)
    for key, value in values.items():
        env[key if key.startswith("STANDIN_") else f"STANDIN_{key}"] = str(value)
    return env


def make_train_project(
    tmp_path: Path | str,
    *,
    images: int = 4,
    bucket: str = "512x512",
    epochs: int = 2,
    save_every: int = 1,
    batch_size: int = 2,
    num_repeats: int = 1,
    name: str = "tiny",
):  # -> lorawizard.core.session.document.Session
    """A project whose session points at the stand-in trainer, with `images` prepared PNGs in one bucket."""
    from lorawizard.core.session.document import Session
    from tests.support.sessions import save

    tmp_path = Path(tmp_path)
    sd_scripts, python = make_fake_sd_scripts(tmp_path)
    project = tmp_path / "project"
    (project / "dataset" / bucket).mkdir(parents=True, exist_ok=True)
    for index in range(images):
        (project / "dataset" / bucket / f"{index:04d}.png").write_bytes(b"\x89PNG stand-in")
        (project / "dataset" / bucket / f"{index:04d}.txt").write_text("tok, a thing")
    session = Session.new(project / "session.toml", name=name)
    session.set("paths.sd_scripts", str(sd_scripts))
    session.set("paths.python", str(python))
    session.set("train.max_train_epochs", epochs)
    session.set("train.save_every_n_epochs", save_every)
    session.set("dataset.num_repeats", num_repeats)
    session.set_batch_size(bucket, batch_size)
    save(session)
    return session


CAPTIONER = STANDIN_DIR / "caption_images.py"


def make_standin_captioner_python(tmp_path: Path | str) -> Path:
    """A "trainer python" that runs the stand-in captioner in place of trainer_side/caption_images.py (tests only).

    Every other invocation runs this interpreter as usual.
    """
    python = Path(tmp_path) / "captioner-venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(
        "#!/bin/sh\n"
        "# stand-in trainer python for the captioner (tests only)\n"
        'case "$1" in *caption_images.py) shift; set -- '
        f'{shlex.quote(str(CAPTIONER))} "$@";; esac\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    python.chmod(0o755)
    return python
