"""Extra (not in the default suite): a real CPU run of Chroma (issue 27) — photos → `lorawizard --replay session.toml
--steps env,dataset,captions,train` with `[models] family = "chroma"` → a trained LoRA, against the real sd-scripts.

sd-scripts builds Chroma from fixed parameters (19 double + 38 single blocks), so this test puts the shim
tests/support/tiny_chroma/sitecustomize.py on the trainer's PYTHONPATH with `LORAWIZARD_TINY_CHROMA_BLOCKS=1,1` (read
its docstring): sd-scripts then builds a 1 + 1 block Chroma, and tests/support/tiny_chroma/make_tiny_chroma.py writes
a random one of those shapes (once, into `LORAWIZARD_E2E_CHROMA`, default /tmp/lorawizard-e2e-chroma/). lorawizard
itself knows nothing of the shim: the environment reaches the trainer as any inherited variable does. AE, T5-XXL and
tokenizers are ../shared/e2e's. Run under the real-trainer lock:
    flock /tmp/lorawizard-real-trainer.lock env LORAWIZARD_E2E=/work/e2e \
        python -m pytest -p no:xdist -m extra tests/e2e/test_chroma_e2e.py -s            (~5 min on 2 cores)
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorawizard.core.train import te_cache
from tests.e2e.test_command_e2e import E2E, SAMPLES_OFF, e2e_t5, needs_e2e, replay_session_text
from tests.e2e.test_replay_e2e import photos

pytestmark = pytest.mark.extra
ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "tests" / "support" / "tiny_chroma"
CHROMA_DIR = Path(os.environ.get("LORAWIZARD_E2E_CHROMA", "/tmp/lorawizard-e2e-chroma"))


def tiny_chroma() -> Path:
    """The 1 + 1 block random Chroma (made once, ~15 s, 1.2 GB)."""
    path = CHROMA_DIR / "chroma-tiny-1d1s.safetensors"
    if not path.is_file():
        CHROMA_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(E2E / "venv" / "bin" / "python"), str(SHIM / "make_tiny_chroma.py"), str(path)],
                       cwd=E2E / "sd-scripts", check=True, timeout=600)
    return path


def safetensors_metadata(path: Path) -> dict[str, str]:
    with path.open("rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        return dict(json.loads(handle.read(size)).get("__metadata__", {}))


@needs_e2e
def test_replay_trains_a_tiny_chroma_lora(project: Path) -> None:
    photos(project / "photos")
    session = project / "session.toml"
    models = (f'family = "chroma"\nflux = "{tiny_chroma()}"\nae = "{E2E / "models" / "ae-random.safetensors"}"\n'
              f't5xxl = "{e2e_t5()}"\n')  # no CLIP-L: Chroma has none
    session.write_text(replay_session_text("chroma", models=models, tail=SAMPLES_OFF))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHIM), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "LORAWIZARD_TINY_CHROMA_BLOCKS": "1,1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lorawizard", "--replay", str(session), "--steps", "env,dataset,captions,train"],
        capture_output=True, text=True, timeout=1500, cwd=ROOT, env=env,
    )
    print(done.stdout[-6000:], done.stderr[-3000:], f"{time.monotonic() - started:.0f} s", sep="\n")
    assert done.returncode == 0
    loras = list((project / "runs").glob("*/chroma.safetensors"))
    assert len(loras) == 1 and loras[0].stat().st_size > 0
    log = (loras[0].parent / "train.log").read_text(errors="replace")
    assert "tiny-chroma shim: chroma_params with 1 double + 1 single blocks" in log  # the trainer built the tiny one
    assert "Building Chroma model" in log and "model saved" in log
    argv = json.loads((loras[0].parent / "run.json").read_text())["argv"]
    assert "--model_type" in argv and argv[argv.index("--model_type") + 1] == "chroma" and "--clip_l" not in argv
    metadata = safetensors_metadata(loras[0])
    assert metadata["ss_network_module"] == "networks.lora_flux" and metadata["ss_epoch"] == "1"
    assert metadata.get("ss_model_type") == "chroma" and "chroma" in metadata.get("modelspec.architecture", "")
    kept = list((project / "loras").glob("chroma*.safetensors"))
    assert kept, "the train step keeps the final LoRA in <project>/loras/"
    # the text-encoder caches sd-scripts wrote say what lorawizard noted beside them: T5 512 tokens, mask on
    caches = sorted((project / "dataset").glob("*/*_flux_te.npz"))
    assert caches and te_cache.read_cache_header(caches[0]) == (512, True)
    record = json.loads((project / "dataset" / te_cache.RECORD_FILE).read_text())
    assert (record["family"], record["t5_tokens"], record["attn_mask"], record["clip_l"]) == ("chroma", 512, True,
                                                                                          te_cache.DUMMY)
