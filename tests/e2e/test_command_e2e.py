"""Extra (not in the default suite): the real sd-scripts accepts our command and dataset config, and trains.

Needs a ready ../shared/e2e setup (`E2E=<dir> SD_SCRIPTS_GIT=<git dir> bash ../shared/e2e/run.sh setup`) and
`LORAWIZARD_E2E=<dir>` pointing at it; runs on a CPU in about 3 minutes with the tiny random models.
    LORAWIZARD_E2E=/work/e2e python -m pytest -m extra tests/e2e/test_command_e2e.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lorawizard.core.environment import step as env
from lorawizard.core.launch import command as cmd
from lorawizard.core.session.document import Session
from tests.support.sessions import save

pytestmark = pytest.mark.extra

E2E = Path(os.environ.get("LORAWIZARD_E2E", "/nonexistent-lorawizard-e2e"))
READY = all(
    (E2E / p).exists()
    for p in ("venv/bin/python", "sd-scripts/flux_train_network.py", "models/t5xxl-random_bf16.safetensors",
              "tokenizers/google_t5-v1_1-xxl", "dataset/img")
)
needs_e2e = pytest.mark.skipif(not READY, reason="set LORAWIZARD_E2E to a ready ../shared/e2e setup")

# The real parser and the real dataset validator, run in the trainer's Python (sd-scripts' own code).
REAL_CHECK = r"""
import json, sys
options, dataset_config = json.loads(open(sys.argv[1]).read())
sys.argv = ["flux_train_network.py"]
import flux_train_network
from library import config_util
args = flux_train_network.setup_parser().parse_args(options)
user_config = config_util.load_user_config(dataset_config)
sanitizer = config_util.ConfigSanitizer(True, True, args.masked_loss, True)
blueprint = config_util.BlueprintGenerator(sanitizer).generate(user_config, args)
datasets = [(list(d.params.resolution), d.params.batch_size, [s.params.num_repeats for s in d.subsets])
            for d in blueprint.dataset_group.datasets]
print("REAL-CHECK " + json.dumps({"mixed_precision": args.mixed_precision, "save_state": args.save_state,
      "network_module": args.network_module, "tokenizer_cache_dir": args.tokenizer_cache_dir,
      "datasets": datasets, "blocks_to_swap": args.blocks_to_swap, "extra": args.noise_offset}))
"""


def e2e_precision() -> str:
    """bf16 where the CPU computes it natively (oneDNN's bf16 kernels need AVX-512), else fp32: on an AVX2-only CPU a
    bf16 matmul was measured ~200x slower than fp32 (283 s per 128px latent). `LORAWIZARD_E2E_PRECISION` overrides."""
    chosen = os.environ.get("LORAWIZARD_E2E_PRECISION")
    if chosen:
        return chosen
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "bf16"
    return "bf16" if "avx512" in flags else "no"


def e2e_t5() -> Path:
    """The T5-XXL file: in fp32 runs its fp32 copy when there is one (tests/support/e2e_tools/t5_to_fp32.py), so sd-scripts
    does not cast 4.7 B parameters at load (measured: ~11 GiB resident per process instead of ~22 GiB peak)."""
    fp32 = E2E / "models" / "t5xxl-random_fp32.safetensors"
    return fp32 if e2e_precision() == "no" and fp32.is_file() else E2E / "models" / "t5xxl-random_bf16.safetensors"


SAMPLES_OFF = "\n[train.samples]\nprompts = []\n"  # sampling costs minutes on a CPU


def replay_session_text(name: str, *, models: str | None = None, epochs: int = 1, train: str = "", tail: str = "",
                        header: str = "") -> str:
    """session.toml for a `--replay` from a `photos` folder on the e2e setup: its sd-scripts, venv, tokenizers and
    tiny models (`models`: the [models] lines instead of FLUX.1-dev's four), trigger `ohwx`, max_side 256, adamw at
    the e2e precision; `train` adds [train] lines, `tail` tables after it."""
    if models is None:
        models = (f'flux = "{E2E / "models" / "flux1-dev-tiny-1d1s.safetensors"}"\n'
                  f'ae = "{E2E / "models" / "ae-random.safetensors"}"\n'
                  f'clip_l = "{E2E / "models" / "clip_l-random.safetensors"}"\n'
                  f't5xxl = "{e2e_t5()}"\n')
    return (f"{header}version = 1\n"
            f'name = "{name}"\n\n'
            "[paths]\n"
            f'sd_scripts = "{E2E / "sd-scripts"}"\n'
            f'python = "{E2E / "venv" / "bin" / "python"}"\n'
            f'tokenizers = "{E2E / "tokenizers"}"\n\n'
            f"[models]\n{models}\n"
            "[dataset]\n"
            'source = "photos"\n'
            "max_side = 256\n"
            'trigger = "ohwx"\n'
            "num_repeats = 1\n\n"
            "[train]\n"
            f"max_train_epochs = {epochs}\n"
            "save_every_n_epochs = 1\n"
            'optimizer_type = "adamw"\n'
            f"{train}"
            f'mixed_precision = "{e2e_precision()}"\n'  # fp32 ("no") on a CPU without native bf16: bf16 is ~200x slower
            f"{tail}")


def e2e_session(project: Path, **values: object) -> Session:
    """A project that uses the e2e setup: its sd-scripts, venv, tiny models, tokenizers; its 4 images as one bucket."""
    bucket = project / "dataset" / "128x128"
    bucket.mkdir(parents=True)
    for number, image in enumerate(sorted((E2E / "dataset" / "img").glob("*.png")), start=1):
        shutil.copyfile(image, bucket / f"{number:04d}.png")
        shutil.copyfile(image.with_suffix(".txt"), bucket / f"{number:04d}.txt")
    session = Session.new(project / "session.toml", name="tiny")
    session.set("paths.sd_scripts", str(E2E / "sd-scripts"))
    session.set("paths.python", str(E2E / "venv" / "bin" / "python"))
    session.set("paths.tokenizers", str(E2E / "tokenizers"))
    session.set("models.flux", str(E2E / "models" / "flux1-dev-tiny-1d1s.safetensors"))
    session.set("models.ae", str(E2E / "models" / "ae-random.safetensors"))
    session.set("models.clip_l", str(E2E / "models" / "clip_l-random.safetensors"))
    session.set("models.t5xxl", str(e2e_t5()))
    session.set("train.mixed_precision", e2e_precision())
    session.set("dataset.num_repeats", 1)
    session.set("train.max_train_epochs", 2)
    session.set("train.save_every_n_epochs", 1)
    session.set_batch_size("128x128", 2)
    for key, value in values.items():
        session.set(key.replace("__", "."), value)
    save(session)
    return session


@needs_e2e
def test_environment_doctor_on_the_real_trainer_venv(project: Path) -> None:
    session = e2e_session(project)
    started = time.monotonic()
    diagnosis = env.examine(session)
    seconds = time.monotonic() - started
    found = {f.key: f for f in diagnosis.findings}
    print(f"doctor on the real venv: {seconds:.1f} s")
    for finding in diagnosis.findings:
        print(finding.line())
    assert diagnosis.ok, [f.line() for f in diagnosis.errors]
    assert found["torch"].message.startswith("torch 2.")
    assert found["requirements"].status == "ok" and "importing" in found["requirements"].message
    assert found["accelerate"].message == "version 1.6.0"
    assert diagnosis.check["requirements"]["imports"]["library.train_util"]["ok"]


@needs_e2e
def test_real_parser_and_validator_accept_our_command_and_config(project: Path) -> None:
    session = e2e_session(project, train__extra_args=["--noise_offset", "0.05", "--network_args", "train_blocks=all"],
                          gpu__vram_preset="12gb")
    run_dir = project / "runs" / "check"
    command, files = cmd.prepare_run(session, run_dir)
    script = command.argv.index(str(E2E / "sd-scripts" / "flux_train_network.py"))
    args_file = project / "args.json"
    args_file.write_text(json.dumps([command.argv[script + 1:], str(files[0])]))
    out = subprocess.run([str(E2E / "venv" / "bin" / "python"), "-c", REAL_CHECK, str(args_file)],
                         cwd=command.cwd, env=command.full_env(), capture_output=True, text=True, timeout=300)
    line = next((x for x in out.stdout.splitlines() if x.startswith("REAL-CHECK ")), None)
    assert line is not None, out.stderr[-3000:]
    real = json.loads(line.removeprefix("REAL-CHECK "))
    assert real["mixed_precision"] == e2e_precision() and real["save_state"] is True  # fp32 ("no") without AVX-512
    assert real["network_module"] == "networks.lora_flux" and real["extra"] == 0.05 and real["blocks_to_swap"] == 16
    assert real["tokenizer_cache_dir"] == str(E2E / "tokenizers")
    assert real["datasets"] == [[[128, 128], 2, [1]]]


@needs_e2e
def test_real_trainer_trains_with_our_command(project: Path) -> None:
    """Our default command as is (fp8 base, AdamW 8-bit, 2 persistent loader workers, --save_state, …) on the CPU:
    2 epochs x 2 steps."""
    session = e2e_session(project)
    run_dir = project / "runs" / "e2e"
    command, _files = cmd.prepare_run(session, run_dir)
    (run_dir / "command.txt").write_text(command.shell_text() + "\n")
    started = time.monotonic()
    with (run_dir / "train.log").open("wb") as log:
        proc = subprocess.Popen(command.argv, cwd=command.cwd, env=command.full_env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=float(os.environ.get("LORAWIZARD_E2E_TIMEOUT", "1800")))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # accelerate does not forward signals: stop the whole group
            proc.wait()
            raise
    seconds = time.monotonic() - started
    text = (run_dir / "train.log").read_text(errors="replace")
    print(f"real training run: rc={rc} in {seconds:.0f} s; log {run_dir / 'train.log'}")
    keep = os.environ.get("LORAWIZARD_E2E_KEEP")
    if keep:
        shutil.copytree(run_dir, Path(keep) / "e2e-run", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "*-state"))
    assert rc == 0, text[-4000:]
    assert "Loading dataset config from" in text and "model saved." in text
    assert "Invalid user config" not in text
    assert (run_dir / "tiny.safetensors").is_file() and (run_dir / "tiny-000001.safetensors").is_file()
    assert (run_dir / "tiny-state" / "train_state.json").is_file()  # --save_state: resumable
    assert list((run_dir / "logs").rglob("events.out.tfevents.*"))  # --logging_dir
    assert "load tokenizer from cache" in text  # --tokenizer_cache_dir: offline


@needs_e2e
def test_sd_scripts_reads_paths_a_shell_would_interpret(tmp_path: Path) -> None:
    """tomlkit writes image_dir; sd-scripts reads it with `toml` 0.10.2: quotes, backslashes, $, unicode survive."""
    weird = tmp_path / "we'ird \"q\" $HOME `x` ; \\ été"
    weird.mkdir()
    session = e2e_session(weird)
    path = cmd.write_dataset_config(session, weird / "dataset_config.toml")
    code = ("import sys, json; from library import config_util; "
            "c = config_util.load_user_config(sys.argv[1]); print(json.dumps(c['datasets'][0]['subsets'][0]['image_dir']))")
    out = subprocess.run([str(E2E / "venv" / "bin" / "python"), "-c", code, str(path)], cwd=E2E / "sd-scripts",
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == str(weird / "dataset" / "128x128")


@needs_e2e
def test_packaged_option_list_matches_the_real_parser() -> None:
    """Our copy of the option list is exactly the real flux_train_network.py parser (names, flags, list options)."""
    code = (
        "import json, sys; sys.argv = ['x']; import argparse, flux_train_network\n"
        "p = flux_train_network.setup_parser()\n"
        "out = {}\n"
        "for a in p._actions:\n"
        "    for o in a.option_strings:\n"
        "        if o.startswith('--') and o != '--help':\n"
        "            out[o[2:]] = [isinstance(a, argparse._StoreTrueAction), a.nargs == '*',"
        " sorted(map(str, a.choices)) if a.choices else []]\n"
        "print('OPTS ' + json.dumps(out))\n"
    )
    out = subprocess.run([str(E2E / "venv" / "bin" / "python"), "-c", code], cwd=E2E / "sd-scripts",
                         capture_output=True, text=True, timeout=300)
    line = next((x for x in out.stdout.splitlines() if x.startswith("OPTS ")), None)
    assert line is not None, out.stderr[-2000:]
    real = json.loads(line.removeprefix("OPTS "))
    ours = cmd.sd_scripts_options()
    assert set(real) == set(ours)
    for name, (flag, is_list, choices) in real.items():
        spec = ours[name]
        assert (spec.is_flag, spec.is_list) == (flag, is_list), name
        assert sorted(c for c in spec.choices if c != "None") == [c for c in choices if c != "None"], name
