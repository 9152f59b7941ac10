"""Publish (issue 13 item 7): the kept LoRA, the model card and the sample grid to the fake hub over real HTTP."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import pytest

from lorawizard.core.session.document import Session
from lorawizard.headless import replay
from tests.support.fakehub import FakeHub, use_hub
from tests.support.sessions import save
from tests.support.standin import make_train_project

WRITE = "hf_alicewritetoken0000000000000"
READ = "hf_alicereadtoken00000000000000"
BOB = "hf_bobwritetoken000000000000000"
REPO = "alice/zkq-lora"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, isolated_home: Path):
    import huggingface_hub.constants as constants

    fake = FakeHub().start()
    use_hub(monkeypatch, fake, isolated_home)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake hub speaks the LFS protocol, not Xet CAS
    fake.add_token(WRITE, "alice", role="write", orgs=("lorafans",))
    fake.add_token(READ, "alice", role="read")
    fake.add_token(BOB, "bob", role="write")
    yield fake
    fake.stop()


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    """A finished stand-in run: 2 epochs, 3 sample prompts at first and every epoch (9 PNGs)."""
    from lorawizard.core.train.step import plan_run, start_run

    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    session = make_train_project(tmp_path, epochs=2, name="zkq")
    session.set("dataset.trigger", "zkq")
    session.set("train.samples.every_n_epochs", 1)
    session.set("publish.repo", REPO)
    save(session)
    record = start_run(session, plan_run(session))
    deadline = time.monotonic() + 30
    while record.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return Session.load(session.path)


def _replay(session: Session, steps: list[str], **kw: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = replay(session.path, steps, out=out, err=err, tty=False, **kw)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


def test_publish_uploads_the_lora_the_card_and_the_sample_grid(hub: FakeHub, trained: Session,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", WRITE)
    code, out, err = _replay(trained, ["publish"])
    assert code == 0, err + out
    repo = hub.repos[REPO]
    assert repo.private  # private by default
    lora = trained.project_dir / "loras" / "zkq-e2.safetensors"  # the final LoRA, kept by publish
    assert repo.files["zkq-e2.safetensors"].data == lora.read_bytes() and repo.files["zkq-e2.safetensors"].lfs
    shots = sorted(p for p in repo.files if p.startswith("samples/"))
    assert len(shots) == 9 and "samples/epoch000-prompt00.png" in shots and "samples/epoch002-prompt02.png" in shots
    card = repo.files["README.md"].data.decode()
    assert card.startswith("---\n") and 'base_model: "black-forest-labs/FLUX.1-dev"' in card
    assert "license: other" in card and 'license_name: "flux-1-dev-non-commercial-license"' in card
    assert "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md" in card
    assert 'instance_prompt: "zkq"' in card and "`zkq`" in card and '- "lora"' in card
    assert "| before training | epoch 1 | epoch 2 |" in card and "(samples/epoch001-prompt01.png)" in card
    assert "| network_dim | 4 |" in card and "| max_train_epochs | 2 |" in card
    assert len(repo.commits) == 11 and repo.commits[-1] == "lorawizard: upload README.md"  # one commit per file
    assert hashlib.sha256(lora.read_bytes()).hexdigest() in hub.uploads  # the LFS path, not inline
    assert "publish: ok - published zkq-e2.safetensors" in out and "(100%)" in out
    assert all(e["auth"] for e in hub.requests(role="hub") if e["path"].startswith("/api/"))
    # the token never appears in what we print or write
    written = [out, err, trained.path.read_text()]
    written += [p.read_text(errors="replace") for p in (trained.project_dir / ".lorawizard").rglob("*") if p.is_file()]
    assert not any(WRITE in text for text in written)


def test_progress_has_a_rate_and_an_eta(hub: FakeHub, trained: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.core.contract import StepContext
    from lorawizard.core.publish.step import run_step

    monkeypatch.setenv("HF_TOKEN", WRITE)
    events: list = []
    result = run_step(StepContext(session=trained, progress=events.append))
    assert result.ok and len(result.data["uploaded"]) == 11
    assert events[-1].finished and events[-1].done == events[-1].total and events[-1].unit == "B"
    assert any(e.eta_s is not None and e.rate for e in events[:-1])


def test_a_rerun_after_a_cut_skips_what_is_already_up(hub: FakeHub, trained: Session,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", WRITE)
    hub.cut_after_commits = 3  # the 4th commit never arrives: the hub is gone
    code, out, err = _replay(trained, ["publish"])
    assert code == 1 and err.count("\n") == 1
    assert "unreachable" in err and "3 of 11 files are up; publish again to continue" in err
    assert len(hub.repos[REPO].commits) == 3
    hub.down, hub.cut_after_commits = False, None
    lora_puts = len([e for e in hub.requests(method="PUT")])
    code, out, err = _replay(trained, ["publish"])
    assert code == 0, err
    assert "exists (created by an earlier publish)" in out  # our own repo: no refusal
    assert len(hub.repos[REPO].commits) == 11  # 3 + the 8 missing, nothing twice
    assert len(set(hub.repos[REPO].commits)) == 11
    assert "8 files uploaded, 3 already there" in out
    assert len(hub.requests(method="PUT")) == lora_puts + 7  # the LoRA (first) was not sent again; README is inline
    code, out, err = _replay(trained, ["publish"])
    assert code == 0 and "0 files uploaded, 11 already there" in out and len(hub.repos[REPO].commits) == 11


def test_the_stored_token_is_used_too(hub: FakeHub, trained: Session) -> None:
    import huggingface_hub.constants as constants

    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text(WRITE)
    code, _out, err = _replay(trained, ["publish"])
    assert code == 0, err and REPO in hub.repos


def test_no_token_is_a_setup_error_before_anything_is_sent(hub: FakeHub, trained: Session) -> None:
    code, _out, err = _replay(trained, ["publish"])
    assert code == 2 and err.count("\n") == 1 and "no Hugging Face token" in err and "HF_TOKEN" in err
    assert hub.requests() == []


def test_a_read_only_token_and_a_403(hub: FakeHub, trained: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", READ)
    code, _out, err = _replay(trained, ["publish"])
    assert code == 1 and err.count("\n") == 1 and "read-only" in err and "write token" in err
    monkeypatch.setenv("HF_TOKEN", WRITE)
    hub.roles[WRITE] = "fineGrained"  # a fine-grained token without the write permission: the hub says 403
    code, _out, err = _replay(trained, ["publish"])
    assert code == 1 and err.count("\n") == 1 and "no write access to alice/zkq-lora (403)" in err
    assert REPO not in hub.repos


def test_someone_elses_namespace_is_refused(hub: FakeHub, trained: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", WRITE)
    text = trained.path.read_text().replace(REPO, "bob/zkq-lora")
    trained.path.write_text(text)
    code, _out, err = _replay(trained, ["publish"])
    assert code == 1 and err.count("\n") == 1 and "'bob' is not yours" in err and 'alice/zkq-lora' in err
    assert "bob/zkq-lora" not in hub.repos


def test_an_existing_repo_is_refused_unless_asked(hub: FakeHub, trained: Session,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", WRITE)
    hub.add_file(REPO, "README.md", b"somebody's earlier model\n")  # the name is taken (by another project)
    code, _out, err = _replay(trained, ["publish"])
    assert code == 1 and err.count("\n") == 1 and "already exists and this project did not create it" in err
    assert hub.repos[REPO].files["README.md"].data == b"somebody's earlier model\n"
    trained.path.write_text(trained.path.read_text() + "existing = true\n")  # [publish] is the last table
    code, _out, err = _replay(trained, ["publish"])
    assert code == 0, err
    assert b"FLUX.1-dev" in hub.repos[REPO].files["README.md"].data


def test_no_network(hub: FakeHub, trained: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", WRITE)
    hub.stop()  # the endpoint is closed
    started = time.monotonic()
    code, out, err = _replay(trained, ["publish"])
    assert code == 1 and err.count("\n") == 1 and "unreachable" in err and hub.endpoint in err
    assert time.monotonic() - started < 20
    assert WRITE not in err + out


def test_bad_repo_ids_are_refused_where_read(tmp_path: Path) -> None:
    for bad in ("not a repo", "a/b/c", "alice/--x", "alice/x.git", "-alice/x", ""):
        (tmp_path / "session.toml").write_text(f'version = 1\n[publish]\nrepo = "{bad}"\n')
        code, _out, err = _replay(Session.new(tmp_path / "session.toml"), ["publish"])
        assert code == 2 and err.count("\n") == 1 and "publish.repo: expected a Hugging Face repo id" in err, bad


def test_publish_runs_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard import cli
    from lorawizard.core import registry as steps

    monkeypatch.setattr(steps, "STEP_FUNCTIONS", {name: "tests.support.fake_steps:succeeds" for name in steps.REPLAY_STEPS})
    path = tmp_path / "session.toml"
    path.write_text('version = 1\n[dataset]\nsource = "."\n')
    capsys_out = io.StringIO()
    monkeypatch.setattr("sys.stdout", capsys_out)
    assert cli.main(["--replay", str(path)]) == 0
    assert "== Publish" not in capsys_out.getvalue()  # a plain full replay never publishes
    monkeypatch.setenv("HF_TOKEN", WRITE)
    path.write_text('version = 1\n[dataset]\nsource = "."\n[publish]\nrepo = "alice/x"\n')
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import: another test may have imported it offline
    assert cli.main(["--replay", str(path)]) == 0
    assert "== Publish (publish) ==" in capsys_out.getvalue()  # ... unless [publish] repo says where
    assert cli.main(["--replay", str(path), "--steps", "train,publish", "--detach"]) == 2
    assert cli.main(["--replay", str(path), "--token", WRITE]) == 2  # there is no way to pass a token


def test_dry_run_sends_nothing_and_needs_no_token(hub: FakeHub, trained: Session) -> None:
    code, out, err = _replay(trained, ["publish"], dry_run=True)
    assert code == 0, err
    assert "would upload zkq-e2.safetensors" in out and "would upload README.md" in out
    assert "would publish 11 files" in out and hub.requests() == []


async def test_train_screen_p_asks_then_publishes_with_progress(hub: FakeHub, trained: Session,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.widgets import Static

    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.screens.confirm import ConfirmScreen

    monkeypatch.setenv("HF_TOKEN", WRITE)
    app = LoraWizardApp(trained, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "alice/zkq-lora (private)" in app.screen.question and "final LoRA" in app.screen.question
        await pilot.press("n")  # a single letter never uploads: No sends nothing
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and hub.requests() == []
        await pilot.press("p")
        await pilot.pause()
        await pilot.press("y")
        line = app.screen.query_one("#train-publish", Static)
        deadline = time.monotonic() + 30
        while "published" not in str(line.render()):
            assert time.monotonic() < deadline, str(line.render())
            await pilot.pause(0.1)
        assert line.display and "zkq-e2.safetensors" in str(line.render())
    assert len(hub.repos[REPO].files) == 11 and "README.md" in hub.repos[REPO].files
    assert WRITE not in trained.path.read_text()


async def test_train_screen_p_without_a_repo_says_what_to_set(hub: FakeHub, trained: Session,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.screens.confirm import ConfirmScreen

    trained.set("publish.repo", None)
    save(trained)
    app = LoraWizardApp(Session.load(trained.path), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("p")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("[publish] repo" in n.message for n in app._notifications)
    assert hub.requests() == []


def test_a_long_upload_keeps_reporting() -> None:
    from lorawizard.core.common.progress import ProgressMeter
    from lorawizard.core.publish.step import _heartbeat

    events: list = []
    meter = ProgressMeter(events.append, "publish", "uploading", 100, "B")
    with _heartbeat(meter, "big.safetensors", every=0.02):
        time.sleep(0.2)
    count = len(events)
    time.sleep(0.1)
    assert count >= 3 and len(events) == count  # it ticks while the file uploads, and stops with it
    assert all("big.safetensors" in e.detail and "on it" in e.detail for e in events)
