"""Extra (not in the default suite): a queue of two runs with validation against the real sd-scripts trainer.

The base run and one variant (`network_dim = 8`), both with `train.validation_split`, on the CPU with the tiny
random models of ../shared/e2e: both finish, the validation loss of every epoch is read from the real log, a
suggested epoch is printed, and the variant reuses the latent and text-encoder caches the base run wrote.
    LORAWIZARD_E2E=/work/e2e python -m pytest -p no:xdist -m extra tests/e2e/test_queue_e2e.py -s   (~20 min, 2 cores)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lorawizard.core.launch import runs
from lorawizard.core.session.document import Session
from lorawizard.core.train import queue
from lorawizard.core.train.step import RunFollower
from tests.e2e.test_command_e2e import SAMPLES_OFF, needs_e2e, replay_session_text

pytestmark = pytest.mark.extra
ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 2


def square_photos(folder: Path, count: int = 4) -> None:
    folder.mkdir()
    for index, colour in enumerate(("tomato", "steelblue", "seagreen", "gold", "orchid")[:count]):
        image = Image.new("RGB", (600, 600), colour)
        ImageDraw.Draw(image).ellipse((150, 150, 450, 450), fill="white")
        image.save(folder / f"disc{index}.png")
        (folder / f"disc{index}.txt").write_text(f"a white disc on a {colour} background\n")


@needs_e2e
def test_a_queue_of_two_runs_with_validation(project: Path) -> None:
    square_photos(project / "photos")
    session_path = project / "session.toml"
    session_path.write_text(replay_session_text(
        "e2e", epochs=EPOCHS, train="validation_split = 0.25\n",
        tail='\n[[train.variants]]\nname = "dim8"\nnetwork_dim = 8\n' + SAMPLES_OFF))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lorawizard", "--replay", str(session_path), "--steps", "env,dataset,captions,train"],
        capture_output=True, text=True, timeout=2700, cwd=ROOT,
    )
    print(done.stdout[-8000:], done.stderr[-3000:], f"{time.monotonic() - started:.0f} s", sep="\n")
    assert done.returncode == 0
    session = Session.load(session_path, read_only=True)
    record = queue.QueueRecord.load(session)
    assert record is not None and [(e.label, e.status) for e in record.entries] == [("base", "finished"),
                                                                                     ("dim8", "finished")]
    base = runs.list_runs(session.paths.runs)[-1]
    variant = runs.list_runs(session.paths.runs / "variants" / "dim8")[-1]
    assert (variant.dir / "e2e-dim8.safetensors").is_file()
    for run in (base, variant):
        follower = RunFollower(run)
        follower.finish()
        validated = follower.state.val_by_epoch
        assert sorted(validated) == list(range(1, EPOCHS + 1)), (run.run_id, validated)  # every epoch, from the log
    assert "suggested: epoch" in done.stdout
    # the variant trained on the caches the base run wrote beside the images: none was written again
    caches = list((project / "dataset").glob("*/*_flux_te.npz")) + list((project / "dataset").glob("*/*_flux.npz"))
    assert caches, "sd-scripts cached latents and text-encoder outputs beside the images"
    assert all(path.stat().st_mtime < variant.started_ts for path in caches)
