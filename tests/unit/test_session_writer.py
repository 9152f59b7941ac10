"""session.toml has one writer, the store (core/session/store.py), and every write of it merges a hand edit.

Session has no public save, and no module but the store calls its write. A person's edit made while the wizard is
open survives every step's run the way the wizard runs steps: `StepContext(store=...)`, then the store's flush.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lorawizard
from lorawizard.core.contract import StepContext
from lorawizard.core.registry import STEP_ORDER, load_step
from lorawizard.core.session.document import Session
from lorawizard.core.session.store import SessionStore
from tests.support import dataset_fixtures as fx
from tests.support.captions_fixtures import make_project
from tests.support.fake_nvml import RTX_4090, FakeNvml, fake_gpu
from tests.support.fake_trainer_env import all_requirements, make_checkout, make_fake_python, make_site
from tests.support.sessions import assert_hand_edit_kept, edit_by_hand, save
from tests.support.standin import make_train_project

PACKAGE = Path(lorawizard.__file__).resolve().parent
WRITER = "_write_file"  # Session's own write of its file
STORE = PACKAGE / "core" / "session" / "store.py"
MAY_WRITE = {STORE, PACKAGE / "core" / "session" / "document.py"}


# ---------------------------------------------------------------- nobody but the store writes


def writer_uses(path: Path) -> list[int]:
    """Lines of `path` that reach Session's write: `x._write_file` or the name as a string (getattr)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return sorted({node.lineno for node in ast.walk(tree)
                   if (isinstance(node, ast.Attribute) and node.attr == WRITER)
                   or (isinstance(node, ast.Constant) and node.value == WRITER)})


def test_only_the_store_writes_session_toml() -> None:
    uses = {path: lines for path in sorted(PACKAGE.rglob("*.py")) if (lines := writer_uses(path))}
    elsewhere = [f"{path.relative_to(PACKAGE.parent)}:{line}"
                 for path, lines in uses.items() if path not in MAY_WRITE for line in lines]
    assert elsewhere == [], "write session.toml through the store (SessionStore, save_change, save_now)"
    assert STORE in uses  # the scan looks for the name the store really calls


def test_a_session_cannot_save_itself() -> None:
    assert not hasattr(Session, "save")  # a public save would write without merging a hand edit


def test_a_decision_recorded_without_the_wizards_store_keeps_a_hand_edit(project: Path) -> None:
    """A step run outside the wizard (no store) writes each decision at once, through a short-lived store."""
    session = Session.new(project / "session.toml")
    save(session)
    edit_by_hand(session.path)
    StepContext(session=session).record("gpu.uuid", "GPU-12345678")
    assert assert_hand_edit_kept(session.path).get("gpu.uuid") == "GPU-12345678"


# ---------------------------------------------------------------- a hand edit survives every step


@dataclass
class Case:
    session: Session
    options: dict[str, object] = field(default_factory=dict)
    decided: Callable[[Session], None] = lambda saved: None  # asserts the step's own decisions in the saved file


def env_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    """A checkout whose venv is `venv/`, not the default `.venv/`: the step records paths.python."""
    sd_scripts = make_checkout(tmp_path / "sd-scripts")
    python = sd_scripts / "venv" / "bin" / "python"
    make_fake_python(python, make_site(tmp_path / "site", torch={}, packages=all_requirements()))
    (tmp_path / "project").mkdir()
    session = Session.new(tmp_path / "project" / "session.toml")
    session.set("paths.sd_scripts", str(sd_scripts))
    save(session)

    def decided(saved: Session) -> None:
        assert saved.get("paths.python") == str(python)

    gpu = fake_gpu(0, "NVIDIA GeForce RTX 3090", 24.0, cuda_driver_version="12.8", driver_version="570.86.10")
    return Case(session, {"nvml": FakeNvml([gpu])}, decided)


def models_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    """Downloads the preset's files from the fake hub (the `hub` fixture)."""
    (tmp_path / "project").mkdir()
    session = Session.new(tmp_path / "project" / "session.toml")
    session.set("models.preset", "flux1-dev-fp8")
    save(session)
    return Case(session)


def dataset_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "wide.jpg", 600, 300)
    return Case(Session.load(fx.write_session(tmp_path / "project", source)), {"workers": 1})


def captions_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    """A caption file beside an original: the step imports it into session.toml."""
    session = make_project(tmp_path / "project", ["a.jpg", "b.jpg"], sidecars={"a.txt": b"a red bicycle"},
                           captions={"b.jpg": "mine"}, trigger="t")

    def decided(saved: Session) -> None:
        assert saved.images()["a.jpg"]["caption"] == "a red bicycle"

    return Case(session, decided=decided)


def auto_captions_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    """`[captions] auto`: the stand-in captioner drafts the missing caption."""
    from tests.unit.test_autocaption import captioner_project

    session = captioner_project(tmp_path, ["a.jpg", "b.jpg"], captions={"b.jpg": "mine"}, trigger="t")
    session.set("captions.auto", True)
    save(session)

    def decided(saved: Session) -> None:
        drafted = saved.images()["a.jpg"]
        assert drafted["caption_auto"] is True and drafted["caption"].startswith("A a standing in a garden.")

    return Case(session, {"autocaption": True}, decided)


def probe_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    """A fake GPU (fake NVML) and trials that fit up to batch 2."""
    from tests.unit.test_probe import PixelBudgetRunner, budget_gpu
    from tests.unit.test_probe import make_project as probe_project

    (tmp_path / "project").mkdir()
    session = probe_project(tmp_path / "project", {"512x512": 3})
    budget = 2 * 512 * 512

    def decided(saved: Session) -> None:
        assert saved.batch_sizes() == {"512x512": 2} and saved.get("gpu.uuid") == RTX_4090.uuid

    return Case(session, {"trial_runner": PixelBudgetRunner(budget=budget), "nvml": budget_gpu(budget)}, decided)


def train_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    """One epoch of the stand-in trainer, followed to the end."""
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    return Case(make_train_project(tmp_path, epochs=1, save_every=1))


CASES: dict[str, tuple[str, Callable[[Path, pytest.MonkeyPatch], Case]]] = {
    "env": ("env", env_case),
    "models": ("models", models_case),
    "dataset": ("dataset", dataset_case),
    "captions": ("captions", captions_case),
    "captions-auto": ("captions", auto_captions_case),
    "probe": ("probe", probe_case),
    "train": ("train", train_case),
}


def test_every_wizard_step_has_a_case() -> None:
    assert {step for step, _ in CASES.values()} == set(STEP_ORDER)


@pytest.mark.parametrize("name", list(CASES))
def test_a_hand_edit_survives_a_step_run_through_the_store(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            request: pytest.FixtureRequest) -> None:
    """QA: the captions step imported caption files (and drafted captions) and saved session.toml itself, without
    the store: a hand edit made while the wizard was open was written over."""
    step, setup = CASES[name]
    if step == "models":
        request.getfixturevalue("hub")
    case = setup(tmp_path, monkeypatch)
    store = SessionStore(case.session, delay=3600)  # the wizard is open: its store holds the session
    edit_by_hand(case.session.path)
    result = load_step(step)(StepContext(session=store.session, store=store, options=case.options))
    assert result.ok, result.summary
    assert store.flush() is None  # as the wizard's step runner does when a step ends
    case.decided(assert_hand_edit_kept(case.session.path))
