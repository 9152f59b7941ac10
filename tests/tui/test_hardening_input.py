"""Hostile or unlucky input (issue 11, items 3-5): one line and exit 2, never a traceback or a write outside.

Each row is a case that once crashed, hung or wrote where it must not; see issues/11.md.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorawizard import cli
from lorawizard.core.launch import runs
from lorawizard.core.session.document import Session, SessionError
from lorawizard.headless import replay
from tests.support.sessions import save
from tests.support.standin import make_train_project
from tests.support.waiting import pilot_until

ROOT = Path(__file__).resolve().parents[2]


def _replay(path: Path, steps: list[str], **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = replay(path, steps, out=out, err=err, tty=False, **kwargs)
    return code, out.getvalue(), err.getvalue()


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- 4: no tracebacks for bad input


WRONG_SECTIONS = [
    ('gpu = "x"\n', 'gpu: expected a table [gpu], got "x"'),
    ("gpu = 5\n", "gpu: expected a table [gpu], got 5"),
    ("train = []\n", "train: expected a table [train]"),
    ('paths = "runs"\n', "paths: expected a table [paths]"),
]


@pytest.mark.parametrize(("line", "message"), WRONG_SECTIONS)
def test_a_section_of_the_wrong_type_is_one_line_in_replay_and_wizard(tmp_path, capsys, line, message) -> None:
    project = tmp_path / "project"
    project.mkdir()
    path = project / "session.toml"
    path.write_text(f"version = 1\n{line}")
    code, _, err = _replay(path, ["train"], dry_run=True)
    assert code == 2 and message in _one_line(err)
    code, _, err = _cli([str(project)], capsys)  # the wizard refuses before Textual starts
    assert code == 2 and message in _one_line(err)


def _run_cli_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "lorawizard", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_fifo_as_session_file_is_refused_at_once(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    fifo = project / "session.toml"
    os.mkfifo(fifo)
    for args in (["--replay", str(fifo)], [str(project)]):  # replay, then the wizard
        result = _run_cli_process(args, tmp_path)  # a regression hangs: the timeout fails the test
        assert result.returncode == 2 and "not a regular file" in _one_line(result.stderr)


def test_a_utf8_bom_reads_fine_and_is_kept_on_save(tmp_path: Path) -> None:
    path = tmp_path / "session.toml"
    path.write_bytes(b'\xef\xbb\xbf# from Notepad\nversion = 1\nname = "bom"\n')
    session = Session.load(path)
    assert session.get("name") == "bom" and session.warnings == []
    assert save(session) is False  # unchanged: not rewritten
    session.set("name", "still-bom")
    save(session)
    data = path.read_bytes()
    assert data.startswith(b'\xef\xbb\xbf# from Notepad\n') and b'name = "still-bom"' in data
    assert data.count(b"\xef\xbb\xbf") == 1
    assert Session.load(path).get("name") == "still-bom"


@pytest.mark.parametrize("steps", ["", ",,,", " , "])
def test_steps_naming_nothing_is_usage_error(tmp_path, capsys, steps) -> None:
    path = tmp_path / "session.toml"
    path.write_text("version = 1\n")
    code, out, err = _cli(["--replay", str(path), "--steps", steps], capsys)
    assert code == 2 and "--steps: no step named" in _one_line(err) and out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--images", "x"], "argument --images: invalid choice: 'x'"),
        (["--replay"], "--replay needs SESSION.toml"),
        (["--steps", "train"], "--steps needs --replay"),
        (["a", "b"], "unrecognized arguments: b"),
        (["--bogus\nline"], "unrecognized arguments: --bogus\\nline"),
    ],
)
def test_usage_errors_are_one_line(capsys, args, message) -> None:
    code, out, err = _cli(args, capsys)
    assert code == 2 and message in _one_line(err) and out == ""


BAD_RUN_RECORDS = [
    ("pid as string", {"pid": "4242"}, "pid: expected a process id"),
    ("pid as float", {"pid": 4242.5}, "pid: expected a process id"),
    ("pid negative", {"pid": -1}, "pid: expected a process id"),
    ("pid huge", {"pid": 1 << 70}, "pid: expected a process id"),
    ("pid true", {"pid": True}, "pid: expected a process id"),
    ("create_time string", {"create_time": "now"}, "create_time: expected a number"),
    ("argv string", {"argv": "python train.py"}, "argv: expected a list of strings"),
    ("env list", {"env": []}, "env: expected a table of strings"),
    ("base_step null", {"base_step": None}, "base_step: expected a step number"),
    ("stop_requested string", {"stop_requested": "yes"}, "stop_requested: expected a time or null"),
    ("list", [], "a JSON object was expected, got list"),
    ("null", None, "a JSON object was expected, got NoneType"),
    ("number", 5, "a JSON object was expected, got int"),
    ("no run_id", {"run_id": None}, "run_id: expected a string"),
    ("broken json", "{not json", "not a readable run record"),
]
GOOD_RECORD = {"version": 1, "run_id": "x", "dir": "x", "argv": ["python"], "env": {}, "cwd": "/", "pid": 1,
               "create_time": 0.0}


def _write_record(runs_dir: Path, run_id: str, content) -> Path:
    folder = runs_dir / run_id
    folder.mkdir(parents=True)
    if isinstance(content, str):
        (folder / runs.RUN_FILE).write_text(content)
    elif isinstance(content, dict):
        (folder / runs.RUN_FILE).write_text(json.dumps({**GOOD_RECORD, "run_id": run_id, **content}))
    else:
        (folder / runs.RUN_FILE).write_text(json.dumps(content))
    return folder


@pytest.mark.parametrize(("case", "content", "message"), BAD_RUN_RECORDS, ids=[c[0] for c in BAD_RUN_RECORDS])
def test_a_malformed_run_record_is_reported_and_skipped(tmp_path, case, content, message) -> None:
    runs_dir = tmp_path / "runs"
    _write_record(runs_dir, "20260101-000000", content)
    good = _write_record(runs_dir, "20260101-000001", {})
    (good / runs.EXIT_FILE).write_text("[]")  # a malformed exit record is "no exit record"
    problems: list[str] = []
    assert runs.live_run(runs_dir, problems) is None
    assert len(problems) == 1 and message in problems[0] and "20260101-000000" in problems[0]
    assert [r.run_id for r in runs.list_runs(runs_dir)] == ["20260101-000001"]
    assert runs.list_runs(runs_dir)[0].status() == "lost" and runs.list_runs(runs_dir)[0].returncode() is None


def test_detach_and_dry_run_skip_a_malformed_run_record(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    session = make_train_project(tmp_path, epochs=1)
    _write_record(session.paths.runs, "20200101-000000", {"pid": "4242"})
    code, out, err = _replay(session.path, ["train"], dry_run=True)
    assert code == 0, err
    assert "skipped" in out and "pid: expected a process id" in out
    code, out, err = _replay(session.path, ["train"], options={"train": {"detach": True}})
    assert code == 0 and "Traceback" not in err, err
    live = [r for r in runs.list_runs(session.paths.runs) if r.run_id != "20200101-000000"]
    assert len(live) == 1
    deadline = time.monotonic() + 30
    while live[0].is_alive() and time.monotonic() < deadline:  # leave nothing running behind the test
        time.sleep(0.1)
    assert not live[0].is_alive()


async def test_the_wizard_reattach_reports_a_malformed_run_record(tmp_path) -> None:
    from lorawizard.tui.app import LoraWizardApp

    session = make_train_project(tmp_path)
    _write_record(session.paths.runs, "20200101-000000", [])
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_until(pilot, lambda: any("20200101-000000" in n.message and "JSON object" in n.message
                                             for n in app._notifications), 20, "a notification naming the bad record")
        assert app.screen.is_attached and app.return_code is None


# ---------------------------------------------------------------- 3: names and paths validated where they are read

TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz012345"

HOSTILE_SESSIONS = [
    # (case, key, value, expected one-line fragment)
    ("name climbs out", "name", "../../../../ESCAPED", "name: expected a file name"),
    ("name absolute", "name", "/tmp/ESCAPED", "name: expected a file name"),
    ("name hidden", "name", ".hidden", "name: expected a file name"),
    ("name like an option", "name", "-rf", "name: expected a file name"),
    ("name too long", "name", "a" * 101, "name: expected a file name"),
    ("name with space", "name", "my lora", "name: expected a file name"),
    ("name empty", "name", "", "name: expected a file name"),
    ("name with NUL", "name", "a\x00b", "name: expected"),
    ("name a token", "name", TOKEN, "name: looks like a Hugging Face token"),
    ("optimizer as option", "train.optimizer_type", "--flip_aug", "train.optimizer_type: expected an optimizer name"),
    ("optimizer with space", "train.optimizer_type", "adamw --flip_aug", "train.optimizer_type: expected an optimizer"),
    ("gpu uuid shell", "gpu.uuid", "GPU-1'; rm -rf /", "gpu.uuid: expected an NVML GPU UUID"),
    ("gpu uuid option", "gpu.uuid", "-1", "gpu.uuid: expected an NVML GPU UUID"),
    ("NUL in a path", "paths.runs", "runs\x00x", "paths.runs: expected text without NUL, CR or line breaks"),
    ("LF in a path", "paths.sd_scripts", "/opt/sd\nscripts", "paths.sd_scripts: expected text without NUL"),
    ("CR in a path", "paths.models", "models\r", "paths.models: expected text without NUL"),
    ("LF in the trigger", "dataset.trigger", "tok\nen", "dataset.trigger: expected text without NUL"),
    ("NUL in extra_args", "train.extra_args", ["--network_args", "a\x00b"], "train.extra_args: expected text without NUL"),
    ("LF in extra_args", "train.extra_args", ["--network_args", "a\nb"], "train.extra_args: expected text without NUL"),
    ("token in extra_args", "train.extra_args", ["--network_args", TOKEN], "looks like a Hugging Face token"),
    ("inf learning rate", "train.learning_rate", float("inf"), "train.learning_rate: expected a finite number"),
    ("nan learning rate", "train.learning_rate", float("nan"), "train.learning_rate: expected a finite number"),
    ("huge learning rate", "train.learning_rate", 1e300, "train.learning_rate: expected a positive number up to 10"),
    ("seed beyond int64", "train.seed", 2**70, "train.seed: expected an integer that fits in 64 bits"),
    ("seed beyond numpy", "train.seed", 2**33, "train.seed: expected a value from 0 to 4294967295"),
    ("negative seed", "train.seed", -1, "train.seed: expected a value from 0 to 4294967295"),
    ("rank absurd", "train.network_dim", 10**9, "train.network_dim: expected a value from 1 to 4096"),
    ("epochs absurd", "train.max_train_epochs", 10**12, "train.max_train_epochs: expected a value from 1 to 100000"),
    ("repeats absurd", "dataset.num_repeats", 10**7, "dataset.num_repeats: expected a value from 1 to 10000"),
    ("batch beyond int64", "gpu.batch_size", {"512x512": 2**70}, "gpu.batch_size.512x512: expected a positive integer"),
    ("batch absurd", "gpu.batch_size", {"512x512": 10**6}, "gpu.batch_size.512x512: expected a positive integer up to"),
    ("crop beyond int32", "dataset.images", [{"file": "a.jpg", "crop": [0, 0, 2**40, 5]}], "dataset.images[0].crop"),
    ("NUL in an image file", "dataset.images", [{"file": "a\x00.jpg"}], "dataset.images[0].file: expected a file name"),
    # extra_args reach argv: checked against sd-scripts' options before any step runs
    ("inf option value", "train.extra_args", ["--noise_offset", "inf"], "--noise_offset expects a finite number"),
    ("nan option value", "train.extra_args", ["--noise_offset", "nan"], "--noise_offset expects a finite number"),
    ("int beyond int64", "train.extra_args", ["--max_train_steps", str(2**64)], "fits in 64 bits"),
    ("value like an option", "train.extra_args", ["--lr_scheduler_type", "-x"], "starts with '-' and would be read"),
    ("list value like option", "train.extra_args", ["--network_args", "-v"], "starts with '-' and would be read"),
    ("inline value like option", "train.extra_args", ["--lr_scheduler_type=--flip_aug"], "starts with '-'"),
    ("negative not allowed", "train.extra_args", ["--max_grad_norm", "-1"], "--max_grad_norm takes no negative number"),
    ("warmup inf", "train.extra_args", ["--lr_warmup_steps", "inf"], "--lr_warmup_steps expects a finite number"),
    ("warmup negative", "train.extra_args", ["--lr_warmup_steps", "-5"], "--lr_warmup_steps takes no negative"),
]


def _hostile_session(tmp_path: Path, key: str, value) -> Path:
    """The stand-in train project with one value put straight into the file (past Session.set's checks)."""
    import tomlkit

    session = make_train_project(tmp_path)
    doc = tomlkit.parse(session.path.read_text())
    table, _, leaf = key.rpartition(".")
    node = doc if not table else doc.setdefault(table, tomlkit.table())
    if key == "dataset.images":
        node = doc["dataset"]
        aot = tomlkit.aot()
        for entry in value:
            aot.append(tomlkit.item(entry))
        node["images"] = aot
    elif key == "gpu.batch_size":
        doc["gpu"]["batch_size"] = value
    else:
        node[leaf] = value
    session.path.write_text(tomlkit.dumps(doc))
    return session.path


@pytest.mark.parametrize(("case", "key", "value", "message"), HOSTILE_SESSIONS, ids=[c[0] for c in HOSTILE_SESSIONS])
def test_hostile_values_are_one_line_exit_2_and_write_nothing(tmp_path, case, key, value, message) -> None:
    path = _hostile_session(tmp_path, key, value)
    before = sorted(p for p in tmp_path.rglob("*"))
    code, out, err = _replay(path, ["train"], dry_run=True)
    assert code == 2, out + err
    assert message in _one_line(err)
    assert TOKEN not in err  # a token is named, never echoed
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no run folder, no dry-run files, nothing escaped


def test_a_multiline_captioner_instruction_is_still_fine(tmp_path) -> None:
    path = _hostile_session(tmp_path, "captions.instruction", "Describe the photo.\nDo not name the person.")
    assert Session.load(path).get("captions.instruction").count("\n") == 1


def test_a_safe_name_is_still_fine(tmp_path) -> None:
    for name in ("my-lora", "Lora_v1.2", "_x", "a" * 100, "0"):
        path = _hostile_session(tmp_path / name[:10], "name", name)
        assert Session.load(path).get("name") == name


def test_the_command_builder_and_the_run_folder_check_the_name_too(tmp_path) -> None:
    """A name that got past the session (set in memory, an older file) is refused where it becomes a path."""
    from lorawizard.core.launch.command import CommandError, build_train_command

    session = make_train_project(tmp_path)
    session.doc["name"] = "../../ESCAPED"
    with pytest.raises(CommandError, match="name: expected a file name"):
        build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    session.doc["name"] = "ok"
    with pytest.raises(CommandError, match="name: expected a file name"):
        build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o", output_name="/abs")
    session.doc["paths"]["sd_scripts"] = "/opt/sd\x00scripts"
    with pytest.raises(CommandError, match="NUL, CR or a line break"):
        build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    with pytest.raises(runs.RunError, match="not a safe file name"):
        runs.launch(["true"], tmp_path / "runs" / "x", output_name="../../ESCAPED")
    with pytest.raises(runs.RunError, match="NUL, CR or a line break"):
        runs.launch(["true", "a\x00b"], tmp_path / "runs" / "y")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ESCAPED").exists()


def test_a_negative_number_passes_where_the_option_takes_one(tmp_path) -> None:
    from lorawizard.core.launch.command import parse_extra_args

    assert parse_extra_args(["--logit_mean", "-0.5", "--base_weights_multiplier", "-1", "0.5"]) == {
        "logit_mean": "-0.5", "base_weights_multiplier": ["-1", "0.5"]}


def test_the_wizard_refuses_a_hostile_name_before_it_opens(tmp_path, capsys) -> None:
    path = _hostile_session(tmp_path, "name", "../../ESCAPED")
    code, _, err = _cli([str(path.parent)], capsys)
    assert code == 2 and "name: expected a file name" in _one_line(err)
    session = make_train_project(tmp_path / "good")
    with pytest.raises(SessionError, match="name: expected a file name"):
        session.set("name", "../x")  # what the wizard's form calls


# ---------------------------------------------------------------- 5: dry run and the photo folder


def test_a_dry_run_writes_only_inside_the_project_even_with_runs_outside(tmp_path) -> None:
    session = make_train_project(tmp_path)
    outside = tmp_path / "outside"
    session.set("paths.runs", str(outside))
    save(session)
    code, out, err = _replay(session.path, ["train"], dry_run=True)
    assert code == 0, err
    assert not outside.exists()
    dry = session.project_dir / ".lorawizard" / "dry-run"
    assert (dry / "dataset_config.toml").is_file() and (dry / "accelerate.yaml").is_file()
    assert f"would start run in {outside}/<run-id>" in out


@pytest.mark.parametrize("source", [".", "..", "./"])
def test_a_photo_folder_that_holds_the_project_is_refused_and_not_written(tmp_path, source) -> None:
    from tests.support.dataset_fixtures import photo, write_session

    project = tmp_path / "photos" / "project" if source == ".." else tmp_path / "photos"
    project.mkdir(parents=True)
    photo(project / "a.jpg", 300, 300)
    path = write_session(project, Path(source))
    with path.open("a") as handle:
        handle.write(f'[paths]\ndataset = "{tmp_path / "out"}"\n')  # the dataset itself is outside the photos
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _out, err = _replay(path, ["dataset"])
    assert code == 1
    assert "holds the project folder" in _one_line(err) and "folder of their own" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no scan cache among the photos


def test_file_names_with_line_breaks_are_escaped_in_one_line_reports(tmp_path) -> None:
    from tests.support.dataset_fixtures import photo, write_session

    source = tmp_path / "photos"
    source.mkdir()
    photo(source / "good.jpg", 300, 300)
    (source / "evil\nskipped: fake.jpg").write_bytes(b"not an image")
    (source / "bell\x1b[2J.txt").write_text("a caption without an image")
    path = write_session(tmp_path / "project", source)
    code, out, err = _replay(path, ["dataset"])
    assert code == 0, err
    assert "evil\\nskipped: fake.jpg" in out and "bell\\x1b[2J.txt" in out
    assert "\x1b[2J" not in out
    assert not any(line.startswith("skipped: fake.jpg") for line in out.splitlines())
    from lorawizard.core.dataset.step import REPORT_FILE

    report = (tmp_path / "project" / "dataset" / REPORT_FILE).read_text()
    assert "evil\\nskipped: fake.jpg" in report and "\x1b" not in report


def test_progress_details_are_one_line() -> None:
    from lorawizard.core.common.progress import Progress, format_progress

    line = format_progress(Progress("dataset", "scanning photos", 1, 2, "files", None, None, "a\nb\x1bc.jpg"))
    assert "\n" not in line and "\x1b" not in line and line.endswith("a\\nb\\x1bc.jpg")
