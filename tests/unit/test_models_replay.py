"""`lorawizard --replay session.toml --steps models [--dry-run]` over the fake hub."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lorawizard.core.session.document import Session
from tests.support.fakehub import FakeHub
from tests.support.sessions import save


def session_file(project: Path) -> Path:
    session = Session.new(project / "session.toml")
    save(session)
    return session.path


def test_dry_run_lists_what_would_be_downloaded(hub: FakeHub, project: Path, capsys: pytest.CaptureFixture[str]):
    from lorawizard.cli import main

    path = session_file(project)
    before = path.read_bytes()
    assert main(["--replay", str(path), "--steps", "models", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would download Kijai/flux-fp8/flux1-dev-fp8.safetensors (3.1 MB)" in out
    assert "would download camenduru/FLUX.1-dev/t5xxl_fp8_e4m3fn.safetensors (500.0 KB)" in out
    assert "models: ok - 4 model file(s) to download: 4.1 MB + tokenizers" in out
    assert not (project / "models").exists() and path.read_bytes() == before
    assert hub.requests(role="cdn") == []


def test_replay_downloads_with_plain_progress_lines(hub: FakeHub, project: Path):
    from lorawizard.headless import replay

    out, err = io.StringIO(), io.StringIO()
    path = session_file(project)
    before = path.read_bytes()
    assert replay(path, ["models"], out=out, err=err, tty=False) == 0, err.getvalue()
    text = out.getvalue()
    assert "\r" not in text
    assert "models: flux1-dev-fp8.safetensors 0 B/3.1 MB (0%)" in text
    assert "models: flux1-dev-fp8.safetensors 3.1 MB/3.1 MB (100%)" in text and " done" in text
    assert "models: total " in text
    assert "models: ok - all model files ready and verified" in text
    assert path.read_bytes() == before  # replay never rewrites the session
    assert (project / "models" / "tokenizers" / "google_t5-v1_1-xxl" / "spiece.model").is_file()


def test_replay_failure_is_one_line_and_exit_1(hub: FakeHub, project: Path):
    from lorawizard.headless import replay

    hub.down = True
    out, err = io.StringIO(), io.StringIO()
    assert replay(session_file(project), ["models"], out=out, err=err, tty=False) == 1
    message = err.getvalue().strip()
    assert message.startswith("lorawizard: step models failed: the hub at") and "unreachable" in message
    assert len(message.splitlines()) == 1


def test_step_bar_knows_models_are_ready_at_start(hub: FakeHub, project: Path):
    from lorawizard.core.models.files import models_ready
    from lorawizard.core.registry import session_step_states
    from lorawizard.headless import replay

    path = session_file(project)
    session = Session.load(path)
    assert not models_ready(session) and "models" not in session_step_states(session)
    assert replay(path, ["models"], out=io.StringIO(), err=io.StringIO(), tty=False) == 0
    assert models_ready(session) and session_step_states(session)["models"] == "done"
