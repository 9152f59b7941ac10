"""Models step over the fake hub: full download, resume across a kill, corruption, errors, tokenizers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext
from lorawizard.core.session.document import Session
from tests.support.fakehub import FakeHub, MiB
from tests.support.sessions import save


def make_session(project: Path, preset: str = "flux1-dev-fp8") -> Session:
    session = Session.new(project / "session.toml")
    session.set("models.preset", preset)
    save(session)
    return session


def run(session: Session, **options: object):
    from lorawizard.core.models.step import run_step

    lines: list[str] = []
    events = []
    ctx = StepContext(session=session, log=lines.append, progress=events.append, options=dict(options))
    result = run_step(ctx)
    return result, lines, events


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download_then_second_run_is_offline_and_instant(hub: FakeHub, project: Path, monkeypatch):
    session = make_session(project)
    result, _lines, events = run(session)
    assert result.ok, result.summary
    models = session.paths.models
    for name in ("flux1-dev-fp8.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"):
        assert (models / name).read_bytes() == hub.data[name]
    assert not list(models.glob("*.part"))
    tok = session.paths.tokenizers
    assert (tok / "openai_clip-vit-large-patch14" / "vocab.json").read_bytes() == hub.data["vocab.json"]
    assert (tok / "google_t5-v1_1-xxl" / "spiece.model").read_bytes() == hub.data["spiece.model"]
    assert any(e.task == "total" and e.finished for e in events)
    assert any(e.task == "flux1-dev-fp8.safetensors" and e.unit == "B" and e.total == 3 * MiB for e in events)
    from lorawizard.core.models.files import resolved_model_paths

    assert resolved_model_paths(session)["flux"] == models / "flux1-dev-fp8.safetensors"
    # second run: offline, finds everything by the recorded size + sha256 (from the hash cache) and fetches nothing
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests())
    result, _, _ = run(session)
    assert result.ok and "verified" in result.summary, result
    assert len(hub.requests()) == before


def test_killed_mid_file_resumes_with_range(hub: FakeHub, project: Path, tmp_path: Path):
    """A child process downloading a throttled file is SIGKILLed; the restart asks only for the rest."""
    import signal
    import subprocess
    import sys
    import time

    big = populate_big(hub)
    session = make_session(project)
    hub.throttle_bps = 4 * MiB  # slow enough that the kernel's socket buffers stay nearly empty
    env = dict(os.environ)
    child = subprocess.Popen([sys.executable, "-m", "tests.support.fakehub.child", str(session.path)], env=env,
                             cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    models = session.paths.models
    deadline = time.monotonic() + 20
    part = None
    while time.monotonic() < deadline:
        parts = list(models.glob("flux1-dev-fp8.safetensors.*.part")) if models.exists() else []
        if parts and parts[0].stat().st_size >= 3 * MiB:
            part = parts[0]
            break
        time.sleep(0.02)
    assert part is not None, child.communicate(timeout=5)[0]
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    time.sleep(0.2)
    have = part.stat().st_size
    first = hub.sent("flux1-dev-fp8.safetensors")
    hub.throttle_bps = None
    result, lines, _ = run(session)
    assert result.ok, result.summary
    assert (models / "flux1-dev-fp8.safetensors").read_bytes() == big
    resumed = [e for e in hub.requests(role="cdn", method="GET") if e.get("file") == "flux1-dev-fp8.safetensors"][-1]
    assert resumed["range"] == f"bytes={have}-" and resumed["status"] == 206
    refetched = first + resumed["sent"] - len(big)
    assert refetched <= MiB, f"fetched {refetched} bytes twice"
    assert any("resuming at" in line for line in lines)


def populate_big(hub: FakeHub) -> bytes:
    data = os.urandom(24 * MiB)
    hub.add_file("Kijai/flux-fp8", "flux1-dev-fp8.safetensors", data)
    return data



def test_corrupted_once_is_retried_always_corrupted_never_installed(hub: FakeHub, project: Path):
    session = make_session(project)
    hub.corrupt["ae.safetensors"] = 1
    result, lines, _ = run(session)
    assert result.ok, result.summary
    assert (session.paths.models / "ae.safetensors").read_bytes() == hub.data["ae.safetensors"]
    assert any("checksum mismatch" in line for line in lines)

    (session.paths.models / "clip_l.safetensors").unlink()
    hub.corrupt["clip_l.safetensors"] = -1
    result, _, _ = run(session)
    assert not result.ok
    assert "sha256 check twice" in result.summary and "\n" not in result.summary
    assert not (session.paths.models / "clip_l.safetensors").exists()
    assert not list(session.paths.models.glob("clip_l*.part"))


def test_dropped_connections_are_resumed_in_the_same_run(hub: FakeHub, project: Path):
    session = make_session(project)
    hub.drop_after["flux1-dev-fp8.safetensors"] = MiB + 12345
    result, _lines, _ = run(session)
    assert result.ok, result.summary
    gets = [e for e in hub.requests(role="cdn", method="GET") if e.get("file") == "flux1-dev-fp8.safetensors"]
    assert len(gets) == 2, [(g["range"], g["status"], g["sent"]) for g in gets]
    assert gets[1]["range"] is not None and gets[1]["status"] == 206
    assert (session.paths.models / "flux1-dev-fp8.safetensors").read_bytes() == hub.data["flux1-dev-fp8.safetensors"]


def test_server_ignoring_range_restarts_cleanly(hub: FakeHub, project: Path):
    session = make_session(project)
    hub.drop_after["flux1-dev-fp8.safetensors"] = MiB
    hub.ignore_range = True
    result, _, _ = run(session)
    assert result.ok, result.summary
    assert (session.paths.models / "flux1-dev-fp8.safetensors").read_bytes() == hub.data["flux1-dev-fp8.safetensors"]


def test_gated_preset_without_token_and_with_unapproved_token(hub: FakeHub, project: Path, monkeypatch):
    session = make_session(project, "flux1-dev-bf16")
    result, _, _ = run(session)
    assert not result.ok
    assert "gated" in result.summary and "accept the license" in result.summary and "HF_TOKEN" in result.summary
    assert not (session.paths.models / "flux1-dev.safetensors").exists()
    monkeypatch.setenv("HF_TOKEN", "hf_notapprovedtoken00000000000")
    result, _, _ = run(session)
    assert not result.ok and "no access yet" in result.summary
    monkeypatch.setenv("HF_TOKEN", "hf_approvedtoken000000000000")
    hub.log.clear()
    result, _, _ = run(session)
    assert result.ok, result.summary
    cdn = hub.requests(role="cdn", method="GET")
    assert cdn and not any(e["auth"] for e in cdn)  # the token is sent to the hub only, never to the CDN
    assert all(e["auth"] for e in hub.requests(role="hub", method="HEAD"))
    # the token went nowhere near the session file or the bookkeeping
    for path in [session.path, *session.paths.state.glob("*")]:
        assert "hf_approved" not in path.read_text()


def test_invalid_token_is_one_line(hub: FakeHub, project: Path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrongwrongwrongwrongwrong")
    result, _, _ = run(make_session(project))
    assert not result.ok and "refused the token" in result.summary, result.summary


def test_missing_file_is_not_found(hub: FakeHub, project: Path):
    del hub.repos["camenduru/FLUX.1-dev"].files["t5xxl_fp8_e4m3fn.safetensors"]
    result, _, _ = run(make_session(project))
    assert not result.ok and "t5xxl_fp8_e4m3fn.safetensors is not in camenduru/FLUX.1-dev" in result.summary


def test_missing_repo_is_not_found(hub: FakeHub, project: Path):
    del hub.repos["Kijai/flux-fp8"]
    result, _, _ = run(make_session(project))
    assert not result.ok and "Kijai/flux-fp8 was not found" in result.summary, result.summary


def test_server_down_is_said_promptly(hub: FakeHub, project: Path):
    import time

    hub.down = True
    started = time.monotonic()
    result, _, _ = run(make_session(project))
    assert not result.ok and "unreachable" in result.summary, result.summary
    assert time.monotonic() - started < 8


def test_nothing_listening_is_unreachable(hub: FakeHub, project: Path, monkeypatch):
    import socket
    import time

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    result, _, _ = run(make_session(project))
    assert not result.ok and "unreachable" in result.summary
    assert time.monotonic() - started < 5


def test_offline_mode_is_said_at_once(hub: FakeHub, project: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result, _, _ = run(make_session(project))
    assert not result.ok and "offline mode" in result.summary
    assert hub.requests() == []


def test_not_enough_disk_space(hub: FakeHub, project: Path, monkeypatch):
    import lorawizard.core.models.download as download

    monkeypatch.setattr(download, "free_bytes", lambda folder: 100)
    result, _, _ = run(make_session(project))
    assert not result.ok and "not enough disk space" in result.summary
    assert not (project / "models" / "flux1-dev-fp8.safetensors").exists()


def test_permission_denied(hub: FakeHub, project: Path, monkeypatch):
    models = project / "models"
    models.mkdir()
    if os.geteuid() == 0:  # root ignores mode bits: fail the way a read-only folder does
        import errno

        import lorawizard.core.models.download as download

        def refuse(dest: Path, keep: Path) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(keep))

        monkeypatch.setattr(download, "_cleanup_stale_parts", refuse)
    models.chmod(0o500)
    try:
        result, _, _ = run(make_session(project))
    finally:
        models.chmod(0o700)
    assert not result.ok and "permission denied" in result.summary, result.summary
    assert "\n" not in result.summary


def test_dry_run_lists_sizes_and_downloads_nothing(hub: FakeHub, project: Path):
    session = make_session(project)
    from lorawizard.core.models.step import run_step

    ctx = StepContext(session=session, dry_run=True)
    result = run_step(ctx)
    assert result.ok
    assert result.summary == "4 model file(s) to download: 4.1 MB + tokenizers"
    assert any("would download Kijai/flux-fp8/flux1-dev-fp8.safetensors (3.1 MB)" in d for d in result.details)
    assert not (project / "models").exists()
    assert hub.requests(method="GET", role="cdn") == []


def test_token_typed_in_the_wizard_goes_to_hf_storage(hub: FakeHub, project: Path, isolated_home: Path):
    from huggingface_hub import get_token

    from lorawizard.core.models.download import DownloadError, store_token

    with pytest.raises(DownloadError, match="refused this token"):
        store_token("hf_wrongwrongwrongwrongwrong")
    assert store_token("hf_approvedtoken000000000000") == "alice"
    assert get_token() == "hf_approvedtoken000000000000"
    assert (isolated_home / ".cache" / "huggingface" / "token").read_text().strip() == "hf_approvedtoken000000000000"


def test_cancel_keeps_the_part_and_the_next_run_resumes(hub: FakeHub, project: Path):
    import threading

    from lorawizard.core.contract import Cancelled
    from lorawizard.core.models.step import run_step

    session = make_session(project)
    hub.throttle_bps = 4 * MiB
    cancel = threading.Event()
    lines: list[str] = []

    def progress(event) -> None:
        if event.task == "flux1-dev-fp8.safetensors" and event.done >= MiB:
            cancel.set()

    states: list = []
    ctx = StepContext(session=session, progress=progress, log=lines.append, cancel=cancel,
                      options={"on_state": states.append})
    with pytest.raises(Cancelled):
        run_step(ctx)
    parts = list(session.paths.models.glob("flux1-dev-fp8.safetensors.*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size >= MiB
    assert any("paused at" in line for line in lines)
    assert [s for s in states if s.role == "flux"][-1].state == "missing"
    have = parts[0].stat().st_size
    hub.throttle_bps = None
    result, _, _ = run(session)
    assert result.ok
    last = [e for e in hub.requests(role="cdn", method="GET") if e.get("file") == "flux1-dev-fp8.safetensors"][-1]
    assert last["range"] == f"bytes={have}-"


def test_server_going_down_mid_file_retries_then_says_unreachable(hub: FakeHub, project: Path, monkeypatch):
    import lorawizard.core.models.download as download
    from lorawizard.core.models.step import run_step

    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)  # no backoff waits in the test
    session = make_session(project)
    hub.drop_after["flux1-dev-fp8.safetensors"] = MiB  # the GET is cut at 1 MiB ...
    hub.down_after_drop = True  # ... and every retry finds the server gone
    lines: list[str] = []
    result = run_step(StepContext(session=session, log=lines.append))
    assert not result.ok and "unreachable" in result.summary and "resumes where it stopped" in result.summary
    assert sum("connection lost" in line for line in lines) >= 1
    parts = list(session.paths.models.glob("flux1-dev-fp8.safetensors.*.part"))
    assert parts and parts[0].stat().st_size == MiB  # kept for the next run
    assert len(hub.requests(role="cdn", status="dropped")) == download.RETRIES - 1


def test_expired_cdn_link_is_resolved_again(hub: FakeHub, project: Path):
    session = make_session(project)
    result, _, _ = run(session)  # everything downloaded once
    assert result.ok
    (session.paths.models / "t5xxl_fp8_e4m3fn.safetensors").unlink()
    hub.log.clear()
    hub.expire_cdn = 1
    result, _lines, _ = run(session)
    assert result.ok, result.summary
    gets = hub.requests(role="cdn", method="GET")
    assert [e["status"] for e in gets] == [403, 200]
    assert len(hub.requests(role="hub", method="HEAD")) >= 2  # the link was resolved again
