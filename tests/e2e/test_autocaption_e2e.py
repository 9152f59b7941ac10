"""Extra (not in the default suite): the REAL captioner (trainer_side/caption_images.py) in the e2e venv's Python
(sd-scripts' pinned transformers, CPU) on a tiny random Qwen2.5-VL built here from a config (tests/support/tiny_vlm.py:
random weights, a tokenizer trained in the test, the processor from its defaults) — loading, preprocessing,
batched generation and the protocol end to end, through `--replay --steps captions` with `[captions] auto`.
The captions are gibberish: their shape, cleaning and files are what is checked.
    LORAWIZARD_E2E=/work/e2e flock /tmp/e2e.lock python -m pytest -m extra tests/e2e/test_autocaption_e2e.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lorawizard.core.captions import autocaption as ac
from tests.support.captions_fixtures import make_project, txt_of
from tests.support.sessions import save

pytestmark = pytest.mark.extra

E2E = Path(os.environ.get("LORAWIZARD_E2E", "/nonexistent-lorawizard-e2e"))
PYTHON = E2E / "venv" / "bin" / "python"
IMAGES = sorted((E2E / "dataset" / "img").glob("*.png"))
needs_e2e = pytest.mark.skipif(not (PYTHON.exists() and IMAGES), reason="set LORAWIZARD_E2E to a ready e2e setup")


@needs_e2e
def test_real_captioner_drafts_with_a_tiny_qwen25_vl(tmp_path: Path) -> None:
    from lorawizard.headless import replay

    model = tmp_path / "tiny-qwen2.5-vl"
    built = subprocess.run([str(PYTHON), str(Path(__file__).resolve().parents[1] / "support" / "tiny_vlm.py"), str(model)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    assert ac.folder_problem(model) is None
    sources = [image.name for image in IMAGES] + ["broken.png"]
    session = make_project(tmp_path / "p", sources, trigger="ohwx")
    for number, image in enumerate(IMAGES, start=1):  # the prepared images are the e2e dataset's
        shutil.copyfile(image, txt_of(session.project_dir, number).with_suffix(".png"))
    txt_of(session.project_dir, len(sources)).with_suffix(".png").write_bytes(b"\x89PNG truncated")
    session.set("paths.python", str(PYTHON))
    session.set("captions.model", str(model))
    session.set("captions.device", "cpu")
    session.set("captions.max_tokens", 24)
    session.set("captions.auto", True)
    save(session)

    out, err = io.StringIO(), io.StringIO()
    code = replay(session.path, ["captions"], out=out, err=err, tty=False)
    text = out.getvalue()
    # the undecodable image has no caption, so the step says so (exit 1); every other image got its draft
    assert code == 1 and f"1 of {len(sources)} images have no caption" in err.getvalue(), text + err.getvalue()
    assert "not captioned: broken.png: cannot decode the image" in text
    assert f"drafted {len(IMAGES)} captions in" in text and "images/s" in text
    assert "model loaded in" in text and "transformers 4.54.1" in text and "on cpu" in text
    for number in range(1, len(IMAGES) + 1):
        line = txt_of(session.project_dir, number).read_text(encoding="utf-8")
        assert line.startswith("ohwx, ") and line.endswith("\n") and line.count("\n") == 1
        body = line[len("ohwx, "):-1]
        assert body and body == ac.clean_caption(body)  # cleaning is stable: nothing left to clean
        assert not any(ord(ch) < 32 for ch in body) and "\ufffd" not in body
    assert txt_of(session.project_dir, len(sources)).read_text() == "ohwx\n"  # the trigger alone, as for any missing one
    job = json.loads((session.paths.state / ac.JOB_FILE).read_text())
    assert job["max_new_tokens"] == 24 and job["device"] == "cpu"
    decisions = (session.paths.state / "replay-decisions.toml").read_text()
    assert decisions.count("caption_auto = true") == len(IMAGES)
