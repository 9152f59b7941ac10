"""A new user's first training run, counted in keystrokes (issue 16.6).

The user: photos in ./photos, sd-scripts set up in ~/sd-scripts (its venv inside), the FLUX files already in
~/ComfyUI/models, one GPU. The wizard finds all of that itself and shows it as guesses; the person accepts with
Enter. The walk below plays that person on the real app (Pilot, 80×24) with the test doubles: a fake sd-scripts
checkout whose Python answers the environment check and runs the stand-in trainer, fake NVML with an RTX 3090, the
fake Hugging Face hub for the tokenizers. It counts every key from start to the training run starting, and the
count may not grow silently: FIRST_RUN_KEYS is the number in the README.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path

import pytest
from textual.widgets import Input

from lorawizard.core.dataset.scan import guess_photo_folder
from lorawizard.core.launch import runs
from lorawizard.core.models import catalog
from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.widgets.step_runner import StepRunner
from tests.support import dataset_fixtures as fx
from tests.support.fake_nvml import FakeNvml, fake_gpu, install
from tests.support.standin import make_ready_trainer
from tests.support.waiting import pilot_until
from tests.unit.test_probe_standin import peak_reader

TRIGGER = "ohwx"
# README ("Keystrokes to a first training run"): 16 keys and the trigger word's letters. Lower it when the walk gets
# shorter; raising it means the README changes too.
FIRST_RUN_KEYS = 16 + len(TRIGGER)
BYTES_PER_PIXEL = 6144  # the stand-in's pretend VRAM cost per pixel (steers the probe's peaks)

pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")


def new_user(home: Path, hub_data: dict[str, bytes] | None = None) -> Path:
    """~/sd-scripts with its venv, ~/ComfyUI/models with the default preset's files, ~/mychar/photos: the project."""
    make_ready_trainer(home)
    folders = {"flux": "unet", "ae": "vae", "clip_l": "clip", "t5xxl": "clip"}
    for role, folder in folders.items():
        name = catalog.preset(None).file_for(role).filename
        path = home / "ComfyUI" / "models" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hub_data[name] if hub_data else b"x")  # the hub's bytes: found and verified
    project = home / "mychar"
    (project / "photos").mkdir(parents=True)
    for n in range(4):
        fx.photo(project / "photos" / f"IMG_{n:04d}.jpg", 2048, 1536, seed=n)
    return project


# How long one key's work may take before the walk fails. Generous on purpose: on a loaded box (a full suite beside
# other suites) the probe's stand-in trials or the environment check can take many times their usual second; a calm
# run settles in well under a second per key. The walk waits on conditions, never on a fixed time.
SETTLE_TIMEOUT_S = 300.0
QUIET_ROUNDS = 3  # checks in a row, each after the pending messages were handled, that find nothing running


async def settle(pilot, app: LoraWizardApp) -> None:  # noqa: ANN001
    """What a person does between keys: wait until the screen has done what the key started.

    Done means: no worker left, no step running, and still so after the messages then pending were handled (a
    finished step posts a message whose handler may start the next thing) — QUIET_ROUNDS times in a row. It used to
    give up silently after a fixed number of short pauses, so under heavy load the next key could land while a step
    was still running; now it fails loudly after SETTLE_TIMEOUT_S instead.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    quiet = 0
    while quiet < QUIET_ROUNDS:
        left = deadline - time.monotonic()
        if left <= 0:
            running = [runner.step for runner in app.screen.query(StepRunner) if runner.running]
            pytest.fail(f"the app did not settle within {SETTLE_TIMEOUT_S:.0f} s (running: {running}, "
                        f"workers: {[w.name for w in app.workers]})")
        await pilot.pause(0.05)  # handles what is pending, then lets the workers' threads run
        await asyncio.wait_for(app.workers.wait_for_complete(), timeout=left)
        busy = any(runner.running for runner in app.screen.query(StepRunner))
        quiet = 0 if busy else quiet + 1


async def test_keystrokes_from_start_to_a_training_run(hub, isolated_home: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    project = new_user(isolated_home, hub.data)
    gpu = fake_gpu(0, "NVIDIA GeForce RTX 3090", 25.77, 0.4)
    budget = int((gpu.memory_total * 0.95 - gpu.memory_used) / BYTES_PER_PIXEL)
    for key, value in dict(STANDIN_STEP_SECONDS="0.05", STANDIN_PEAK_FILE=str(tmp_path / "peak.json"),
                           STANDIN_BYTES_PER_PIXEL=str(BYTES_PER_PIXEL), STANDIN_VRAM_BUDGET=str(budget)).items():
        monkeypatch.setenv(key, value)
    install(monkeypatch, FakeNvml([gpu], processes={gpu.uuid: peak_reader(tmp_path / "peak.json")}, per_process=False))
    app = LoraWizardApp(Session.open_project(project))
    keys: list[str] = []
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            async def press(*sequence: str) -> None:
                for key in sequence:
                    keys.append(key)
                    await pilot.press(key)
                    await settle(pilot, app)

            await settle(pilot, app)
            assert app.current_mode == "env"
            sd_field = app.screen.query_one("#set-paths-sd_scripts", Input)
            assert not sd_field.value and "~/sd-scripts (found" in sd_field.placeholder  # a guess, not a value
            await press("enter")  # check: keeps ~/sd-scripts and its venv
            await press("2", "enter")  # models: finds the ComfyUI files, fetches the tokenizers
            await press("3")
            assert "photos (found" in app.screen.query_one("#set-dataset-source", Input).placeholder
            await press("enter")  # the guessed photo folder: scan
            await press("enter")  # apply: writes dataset/
            await press("4", "ctrl+t", *TRIGGER)  # captions: the trigger word...
            await press("tab", "space", "escape")  # ...and no per-image captions for a first run
            await press("ctrl+g")  # write the caption files
            await press("5", "enter")  # GPU: the probe measures the batch size
            await press("6", "enter")  # train
            started = runs.list_runs(project / "runs")
            states = dict(app.step_states)
            await pilot.press("ctrl+q")
    finally:
        for record in runs.list_runs(project / "runs"):
            if record.is_alive():
                runs.stop(record)
    print(f"{len(keys)} keys:", " ".join(keys))
    assert started, "no training run started"
    assert {step: states[step] for step in ("env", "models", "dataset", "captions", "probe")} == dict.fromkeys(
        ("env", "models", "dataset", "captions", "probe"), "done"), states
    assert len(keys) <= FIRST_RUN_KEYS, f"{len(keys)} keys (recorded {FIRST_RUN_KEYS}): {' '.join(keys)}"
    saved = tomllib.loads((project / "session.toml").read_text())
    assert saved["paths"]["sd_scripts"] == str(isolated_home / "sd-scripts")
    assert saved["dataset"]["source"] == "photos" and saved["dataset"]["trigger"] == TRIGGER


# -- the guesses


def test_the_photo_folder_is_guessed_only_when_there_is_exactly_one(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "photos" / "2024").mkdir(parents=True)
    (project / "photos" / "2024" / "a.JPG").write_bytes(b"")  # at any depth, any case
    (project / "notes").mkdir()
    (project / "notes" / "todo.txt").write_text("")
    (project / ".hidden").mkdir()
    (project / ".hidden" / "b.png").write_bytes(b"")
    assert guess_photo_folder(project) == project / "photos"
    (project / "dataset").mkdir()
    (project / "dataset" / "0001.png").write_bytes(b"")  # our own output: excluded by the caller
    assert guess_photo_folder(project) is None  # two folders of images: the person chooses
    assert guess_photo_folder(project, [project / "dataset"]) == project / "photos"
    (project / "c.jpg").write_bytes(b"")
    assert guess_photo_folder(project, [project / "dataset"]) is None  # the project itself holds photos
    assert guess_photo_folder(tmp_path / "missing") is None


def test_a_venv_or_a_deep_tree_is_not_a_photo_folder(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "photos").mkdir(parents=True)
    (project / "photos" / "a.jpg").write_bytes(b"")
    venv = project / "venv" / "lib" / "site-packages" / "matplotlib"
    venv.mkdir(parents=True)
    (project / "venv" / "pyvenv.cfg").write_text("")
    (venv / "logo.png").write_bytes(b"")
    deep = project / "deep"
    for n in range(250):
        (deep / f"d{n:03d}").mkdir(parents=True)
    (deep / "d249" / "x.png").write_bytes(b"")
    assert guess_photo_folder(project) == project / "photos"


async def test_guesses_are_shown_and_saved_only_when_accepted(isolated_home: Path) -> None:
    project = new_user(isolated_home)
    app = LoraWizardApp(Session.open_project(project))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("3")
        await pilot.pause()
        field = app.screen.query_one("#set-dataset-source", Input)
        assert field.has_focus and field.value == "" and field.placeholder.startswith("photos (found")
        await pilot.pause(0.8)  # longer than the session store's write delay
        app.flush_decisions()
        written = tomllib.loads((project / "session.toml").read_text()) if (project / "session.toml").exists() else {}
        assert "source" not in written.get("dataset", {}) and "sd_scripts" not in written.get("paths", {})
        await pilot.press("enter")  # accepted
        await pilot_until(pilot, lambda: app.session.get("dataset.source") == "photos", 20, "the guess to be kept")
        app.flush_decisions()
        assert tomllib.loads((project / "session.toml").read_text())["dataset"]["source"] == "photos"
        assert field.value == "photos"


async def test_several_photo_folders_leave_the_choice_to_the_person(isolated_home: Path) -> None:
    project = new_user(isolated_home)
    (project / "more").mkdir()
    fx.photo(project / "more" / "x.jpg", 64, 64)
    app = LoraWizardApp(Session.open_project(project), start_step="dataset")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        field = app.screen.query_one("#set-dataset-source", Input)
        assert "found" not in field.placeholder
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.session.get("dataset.source") is None
