"""Issue 23: session.toml as a hostile or unlucky user writes it (or links it, or kills a save)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lorawizard.core.session.document import Session, SessionError, remove_stale_temp_files
from tests.support.sessions import save


def _load(tmp_path: Path, body: str) -> Session:
    path = tmp_path / "session.toml"
    path.write_text("version = 1\n" + body + "\n", encoding="utf-8")
    return Session.load(path)


def _refused(tmp_path: Path, body: str, match: str) -> str:
    with pytest.raises(SessionError, match=match) as caught:
        _load(tmp_path, body)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- A13: a symlinked session.toml


def test_a_symlinked_session_file_stays_a_link(tmp_path: Path) -> None:
    """A13: the first save replaced the link with a regular file; the dotfiles repo never got another update."""
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "lora-session.toml"
    target.write_text('version = 1\nname = "mine"\n', encoding="utf-8")
    project = tmp_path / "project"
    project.mkdir()
    link = project / "session.toml"
    link.symlink_to(target)
    session = Session.load(link)
    session.set("train.max_train_epochs", 7)
    assert save(session)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert "max_train_epochs = 7" in target.read_text(encoding="utf-8")
    assert not [p for p in project.iterdir() if p.name.endswith(".tmp")]
    assert not [p for p in dotfiles.iterdir() if p.name.endswith(".tmp")]
    session.set("train.max_train_epochs", 8)  # a second save: through the link again
    assert save(session) and link.is_symlink() and "max_train_epochs = 8" in target.read_text(encoding="utf-8")


# ---------------------------------------------------------------- A14: one gpu.uuids entry


@pytest.mark.parametrize("uuids", ['["--foo"]', '["--foo", "GPU-1"]', '[""]', '["GPU-1 ; rm"]'])
def test_gpu_uuids_entries_are_checked_one_or_many(tmp_path: Path, uuids: str) -> None:
    """A14: `uuids = ["--foo"]` launched with CUDA_VISIBLE_DEVICES=--foo."""
    _refused(tmp_path, f"[gpu]\nuuids = {uuids}", "gpu.uuids: expected a list of NVML GPU UUIDs")


def test_one_uuid_from_gpu_uuids_is_checked_against_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A14: one entry skipped the NVML check that several get: a GPU that is not there is named."""
    from lorawizard.core.launch.multigpu import SelectionError, plan_launch
    from tests.support import fake_nvml

    fake = fake_nvml.one_gpu()
    session = _load(tmp_path, '[gpu]\nuuids = ["GPU-not-here"]')
    with pytest.raises(SelectionError, match="GPU-not-here is not visible"):
        plan_launch(session, nvml=fake)


# ---------------------------------------------------------------- C16: ~nouser


@pytest.mark.parametrize("key", ["paths.models", "paths.sd_scripts", "paths.python", "paths.dataset", "paths.runs",
                                 "paths.tokenizers", "dataset.source", "models.flux", "captions.model"])
def test_an_unknown_user_in_a_path_is_one_line(tmp_path: Path, key: str) -> None:
    """C16: `~nouser/…` was a RuntimeError in replay, --status, dataset, captions and at wizard start."""
    table, _, leaf = key.rpartition(".")
    message = _refused(tmp_path, f'[{table}]\n{leaf} = "~nouser-lw23/x"', "no|none")
    assert "~nouser-lw23" in message and key in message


def test_the_cli_says_one_line_for_an_unknown_user(capsys: pytest.CaptureFixture[str]) -> None:
    from lorawizard import cli

    assert cli.main(["~nouser-lw23/project", "--status"]) == 2
    assert cli.main(["--replay", "~nouser-lw23/session.toml", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("no such user" in line for line in err)


@pytest.mark.parametrize("args", [[], ["--status"]])
def test_wizard_start_and_status_with_an_unknown_user_in_the_file(tmp_path: Path, args: list[str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """C16: at wizard start and in --status: exit 2 and one line, before any screen."""
    from lorawizard import cli

    (tmp_path / "session.toml").write_text('version = 1\n[paths]\nruns = "~nouser-lw23/runs"\n', encoding="utf-8")
    assert cli.main([str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "~nouser-lw23" in err[0] and "paths.runs" in err[0]


def test_resolve_never_raises_for_an_unknown_user(tmp_path: Path) -> None:
    session = _load(tmp_path, "")
    assert session.resolve("~nouser-lw23/x") is not None


# ---------------------------------------------------------------- D: sections of the wrong type, upper bounds


@pytest.mark.parametrize(("body", "key"), [("[train]\nsamples = 5", "train.samples"), ('captions = "auto"', "captions"),
                                           ("publish = 1", "publish")])
def test_a_section_of_the_wrong_type_is_refused(tmp_path: Path, body: str, key: str) -> None:
    """D: these were warned about as unknown keys and ignored, so `publish = 1` silently published nothing."""
    _refused(tmp_path, body, f"{key}: expected a table")


@pytest.mark.parametrize("line", ["[train.samples]\nwidth = 9223372036854775807", "[train.samples]\nheight = 100000",
                                  "[train.samples]\nsteps = 9223372036854775807", "[train]\nstate_minutes = 9223372036854775807"])
def test_upper_bounds(tmp_path: Path, line: str) -> None:
    """D: 2^63-1 passed the file's check and failed at launch."""
    _refused(tmp_path, line, "expected a value from")


# ---------------------------------------------------------------- D: temp files a kill -9 left


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "session.toml"
    path.write_text("version = 1\n", encoding="utf-8")
    old = tmp_path / ".session.toml.ab12cd_9.tmp"
    fresh = tmp_path / ".session.toml.zz99yy88.tmp"  # a save in progress right now: kept
    other = tmp_path / ".notes.txt.ab12cd34.tmp"  # not ours: kept
    for file in (old, fresh, other):
        file.write_text("x")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))
    Session.load(path)
    assert not old.exists() and fresh.exists() and other.exists()
    assert remove_stale_temp_files(path, older_than_s=0) == [fresh]


def test_read_only_load_removes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "session.toml"
    path.write_text("version = 1\n", encoding="utf-8")
    old = tmp_path / ".session.toml.ab12cd34.tmp"
    old.write_text("x")
    os.utime(old, (0, 0))
    Session.load(path, read_only=True)  # replay never touches the user's folder
    assert old.exists()


# ---------------------------------------------------------------- D: publish --dry-run


def test_publish_dry_run_only_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D: `--steps publish --dry-run` copied the final LoRA (3 MB) into loras/: a dry run only lists."""
    from lorawizard.core.contract import StepContext
    from lorawizard.core.publish import step as publish
    from lorawizard.core.train.step import plan_run, start_run
    from tests.support.standin import make_train_project
    from tests.support.waiting import follow_to_end

    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    session = make_train_project(tmp_path, epochs=2)
    session.set("publish.repo", "me/tiny")
    save(session)
    follow_to_end(start_run(session, plan_run(session)))
    lines: list[str] = []
    ctx = StepContext(session=Session.load(session.path, read_only=True), log=lines.append, dry_run=True)
    result = publish.run_step(ctx)
    assert result.ok and "nothing was sent" in result.summary
    assert any("would upload tiny-e2.safetensors" in line for line in lines)
    assert not (session.project_dir / "loras").exists()


def test_captions_model_naming_a_file_says_it_is_a_file(tmp_path: Path) -> None:
    """`captions.model = "/etc/passwd"` said "does not exist"; it exists, it is just not a model folder."""
    from lorawizard.core.models.captioner_folders import folder_problem

    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    problem = folder_problem(a_file)
    assert problem is not None and "is a file, not a model folder" in problem and "does not exist" not in problem
    assert folder_problem(tmp_path / "nothing") == f"{tmp_path / 'nothing'} does not exist"
