"""Extra (not in the default suite): the whole headless path against the real sd-scripts trainer.

Photos → `lorawizard --replay session.toml --steps env,dataset,captions,train` → a trained LoRA, with our own
dataset step, caption files, dataset config and command, on the CPU with the tiny random models of ../shared/e2e.
    LORAWIZARD_E2E=/work/e2e python -m pytest -m extra tests/e2e/test_replay_e2e.py -s      (~8 min on 2 cores)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.e2e.test_command_e2e import needs_e2e, replay_session_text

pytestmark = pytest.mark.extra
ROOT = Path(__file__).resolve().parents[2]


def photos(folder: Path) -> None:
    folder.mkdir()
    for name, size, colour in (("wide.jpg", (800, 400), "tomato"), ("tall.png", (400, 800), "steelblue"),
                               ("square.jpg", (600, 600), "seagreen")):
        image = Image.new("RGB", size, colour)
        ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4), fill="white")
        image.save(folder / name)
        (folder / name).with_suffix(".txt").write_text(f"a white disc on a {colour} background\n")


@needs_e2e
def test_replay_from_photos_to_a_trained_lora(project: Path) -> None:
    photos(project / "photos")
    session = project / "session.toml"
    session.write_text(replay_session_text("e2e", header="# an end-to-end replay on the CPU\n"))
    before = session.read_bytes()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lorawizard", "--replay", str(session), "--steps", "env,dataset,captions,train"],
        capture_output=True, text=True, timeout=1500, cwd=ROOT,
    )
    print(done.stdout[-6000:], done.stderr[-3000:], f"{time.monotonic() - started:.0f} s", sep="\n")
    assert done.returncode == 0
    assert session.read_bytes() == before  # replay never rewrites the session
    dataset = project / "dataset"
    assert sorted(p.parent.name for p in dataset.glob("*/*.png")) == ["128x256", "256x128", "256x256"]
    for caption in dataset.glob("*/*.txt"):
        text = caption.read_text(encoding="utf-8")
        assert text.startswith("ohwx, a white disc on a ") and text.count("\n") <= 1
    assert list(dataset.glob("*/*_flux_te.npz")), "sd-scripts cached the text encoder outputs beside our images"
    loras = list((project / "runs").glob("*/e2e.safetensors"))
    assert loras and loras[0].stat().st_size > 0
    assert "model saved" in done.stdout or "model saved" in (loras[0].parent / "train.log").read_text(errors="replace")
