"""Shared fixtures: the wizard never touches the real home folder, cursors don't blink, images are halfcell."""

from __future__ import annotations

from pathlib import Path

import pytest

TEST_KINDS = ("unit", "tui", "e2e", "adversarial")  # the folders under tests/: each test is marked with its folder's kind


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`pytest -m tui` runs the Pilot and snapshot tests alone, `-m unit` the rest of the default suite."""
    for item in items:
        kind = item.path.parent.name
        if kind in TEST_KINDS:
            item.add_marker(kind)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME, the HF cache and accelerate's config point into a temp folder: tests never read the user's."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("LORAWIZARD_IMAGES", "halfcell")
    return home


@pytest.fixture(autouse=True)
def steady_widgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """No blinking cursors and a fixed image renderer, so screens render the same every time."""
    from textual.widgets import Input, TextArea

    from lorawizard.tui import images
    from lorawizard.tui.widgets import settings_form

    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None, raising=False)
    monkeypatch.setattr(TextArea, "_toggle_cursor_blink_visible", lambda self: None, raising=False)
    monkeypatch.setattr(images, "_chosen", "halfcell")
    # Pilot types as soon as a screen is drawn, faster than a person: only keys read before the drawing count as
    # typed ahead here (tests/adversarial/test_typed_ahead.py checks the window a person gets)
    monkeypatch.setattr(settings_form, "TYPED_AHEAD_S", 0.0)


@pytest.fixture(autouse=True)
def steady_cpu(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU's flags from a fixed file (no native bf16, like the machines the snapshots were drawn on): the screens
    that say what this CPU can do (the Train screen's CPU test mode) read the same on every machine."""
    from lorawizard.core.gpu import cpu_mode

    cpuinfo = tmp_path_factory.mktemp("cpu") / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    monkeypatch.setattr(cpu_mode, "CPUINFO", cpuinfo)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project folder."""
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


@pytest.fixture
def home_project(isolated_home: Path) -> Path:
    """A project under HOME, so every path on screen starts with ~ (snapshots stay the same on every machine)."""
    folder = isolated_home / "loras" / "mychar"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, isolated_home: Path):
    """The local fake Hugging Face hub (tests/support/fakehub), populated with the catalog's files, reached via HF_ENDPOINT.

    `hub.data` maps file names to the bytes it serves.
    """
    from tests.support.fakehub import FakeHub, populate, use_hub

    fake = FakeHub().start()
    fake.data = populate(fake)  # type: ignore[attr-defined]
    use_hub(monkeypatch, fake, isolated_home)
    yield fake
    fake.stop()
