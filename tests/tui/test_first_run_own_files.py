"""A new user's first training run with their own model files under other names and no network (issue 24 item 12).

The user: photos in ./photos, sd-scripts set up in ~/sd-scripts (its venv inside), one GPU, and the four FLUX files
in a folder of their own under names of their own (~/models/mine/flux-dev-q8.safetensors, vae.safetensors, …),
which no name search finds. No network at all: HF_HUB_OFFLINE=1 and no fake hub, so the tokenizers come from a
folder the person already has (~/models/tokenizers, as sd-scripts reads it: one subfolder per tokenizer). The walk
plays that person on the real app (Pilot, 80×24) with the test doubles of the first walk (tests/tui/test_first_run.py):
a fake sd-scripts checkout, fake NVML with one RTX 3090, the stand-in trainer. Paths are typed letter by letter and
every letter counts. OWN_FILES_KEYS is the number in the README ("Your model files have other names, and no
network"); it may not grow silently.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from textual.widgets import Input, Label

from lorawizard.core.launch import runs
from lorawizard.core.models.step import TOKENIZER_ROLE
from lorawizard.core.profile import DEFAULT_FAMILY
from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.models import ModelsScreen
from tests.support import dataset_fixtures as fx
from tests.support.fake_nvml import FakeNvml, fake_gpu, install
from tests.support.model_files import write_model
from tests.support.standin import make_ready_trainer
from tests.tui.test_first_run import BYTES_PER_PIXEL, TRIGGER, settle
from tests.unit.test_probe_standin import peak_reader

MODELS = "~/models/mine"  # typed letter by letter in the Add folder field
TOKENIZERS = "~/models/tokenizers"  # typed letter by letter in the tokenizers field
OWN_NAMES = {"flux": "flux-dev-q8.safetensors", "ae": "vae.safetensors", "clip_l": "clip-l.safetensors",
             "t5xxl": "t5-xxl.safetensors"}
# README ("Your model files have other names, and no network"): the first walk's keys, minus the Models step's
# `enter` (nothing to download), plus `a`, the folder's letters and `enter`, `shift+tab`, the tokenizers folder's
# letters and `enter`. Lower it when the walk gets shorter; raising it means the README changes too.
OWN_FILES_KEYS = 19 + len(MODELS) + len(TOKENIZERS) + len(TRIGGER)

pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")


def new_user_with_own_files(home: Path) -> Path:
    """~/sd-scripts with its venv, ~/models/mine with the four files under other names (real safetensors headers),
    ~/models/tokenizers with what the profile's tokenizers require, ~/mychar/photos: the project."""
    make_ready_trainer(home)
    mine = Path(MODELS).expanduser()
    for role, name in OWN_NAMES.items():
        write_model(mine / name, role)
    tokenizers = Path(TOKENIZERS).expanduser()
    for tokenizer in DEFAULT_FAMILY.tokenizers:
        for name in tokenizer.required:
            path = tokenizers / tokenizer.folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n")
    project = home / "mychar"
    (project / "photos").mkdir(parents=True)
    for n in range(4):
        fx.photo(project / "photos" / f"IMG_{n:04d}.jpg", 2048, 1536, seed=n)
    return project


async def test_keystrokes_with_own_model_files_and_no_network(isolated_home: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    project = new_user_with_own_files(isolated_home)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # were the offline switch ignored: refused, not a hub
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

            async def type_in(text: str) -> None:  # a person types a path one letter at a time (typing starts no work:
                keys.extend(text)  # settled once after the last letter, not after each)
                await pilot.press(*text)
                await settle(pilot, app)

            await settle(pilot, app)
            assert app.current_mode == "env"
            await press("enter")  # check: keeps ~/sd-scripts and its venv
            await press("2")  # models: nothing found under the catalog's names
            screen = app.screen
            assert isinstance(screen, ModelsScreen)
            assert [screen.rows[role].state for role in [*OWN_NAMES, TOKENIZER_ROLE]] == ["missing"] * 5, screen.rows
            await press("a")  # add a folder to search
            await type_in(MODELS)
            await press("enter")  # every model file there told by its header
            said = str(screen.query_one("#model-problem", Label).render())
            assert said == "searched 4 files by header, matched 4: FLUX transformer, AE, CLIP-L, T5-XXL", said  # README
            assert [screen.rows[role].state for role in OWN_NAMES] == ["found"] * 4, screen.rows
            await press("shift+tab")  # from the table up to the tokenizers field
            field = screen.query_one("#set-paths-tokenizers", Input)
            assert field.has_focus, app.focused
            await type_in(TOKENIZERS)
            await press("enter")  # saved, the folder checked
            assert screen.rows[TOKENIZER_ROLE].state == "found", screen.rows[TOKENIZER_ROLE]
            assert app.step_states["models"] == "done", app.step_states
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
    assert len(keys) <= OWN_FILES_KEYS, f"{len(keys)} keys (recorded {OWN_FILES_KEYS}): {' '.join(keys)}"
    saved = tomllib.loads((project / "session.toml").read_text())
    assert saved["paths"]["tokenizers"] == TOKENIZERS
    argv = started[0].argv  # the run trains on the person's files, under their names, and their tokenizers
    mine = Path(MODELS).expanduser().resolve()
    for role, option in (("flux", "--pretrained_model_name_or_path"), ("ae", "--ae"), ("clip_l", "--clip_l"),
                         ("t5xxl", "--t5xxl")):
        assert Path(argv[argv.index(option) + 1]) == mine / OWN_NAMES[role], (option, argv)
    assert Path(argv[argv.index("--tokenizer_cache_dir") + 1]) == Path(TOKENIZERS).expanduser(), argv
    assert saved["dataset"]["source"] == "photos" and saved["dataset"]["trigger"] == TRIGGER


def test_the_readme_states_this_walk_and_its_count() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Your model files have other names, and no network", 1)[1].split("\n### ", 1)[0]
    assert f"That is {OWN_FILES_KEYS} keys" in section
    assert f"`{MODELS}`" in section and f"`{TOKENIZERS}`" in section and "test_first_run_own_files.py" in section
