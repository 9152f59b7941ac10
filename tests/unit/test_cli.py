"""The command line: exit codes 0/1/2/130, one-line messages, replay never rewriting the session."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from lorawizard import __version__, cli
from lorawizard.core import registry as steps
from lorawizard.core.common.progress import Progress
from lorawizard.headless import ProgressPrinter, replay
from tests.support.terminal_child import TERMINAL_SIGINT

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    table = dict(steps.STEP_FUNCTIONS)
    table.update({name: "tests.support.fake_steps:succeeds" for name in steps.STEP_ORDER})
    monkeypatch.setattr(steps, "STEP_FUNCTIONS", table)
    return table


def session_file(folder: Path, body: str = "") -> Path:
    path = folder / "session.toml"
    path.write_text("# mine\nversion = 1\n" + body)
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert run_cli(["--version"], capsys)[0] == 0
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "--replay" in out and "exit codes" in out


def test_version_from_console_module() -> None:
    out = subprocess.run([sys.executable, "-m", "lorawizard", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"lorawizard {__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments"),
        (["--steps", "env"], "--steps needs --replay"),
        (["--dry-run"], "--dry-run needs --replay"),
    ],
)
def test_bad_usage_exits_2(capsys, args, message) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err


def test_replay_missing_file_exits_2(capsys, tmp_path) -> None:
    code, _, err = run_cli(["--replay", str(tmp_path / "none.toml")], capsys)
    assert code == 2 and err.strip().endswith("no such session file") and "Traceback" not in err


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[train\n", "TOML syntax error"),
        ('[train]\nnetwork_dim = "four"\n', 'train.network_dim: expected an integer, got "four"'),
        ('[dataset]\nsource = "does-not-exist"\n', "dataset.source:"),
    ],
)
def test_replay_invalid_session_exits_2(capsys, tmp_path, fake_steps, body, message) -> None:
    code, _, err = run_cli(["--replay", str(session_file(tmp_path, body))], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_replay_unknown_version_exits_2(capsys, tmp_path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("version = 7\n")
    code, _, err = run_cli(["--replay", str(path)], capsys)
    assert code == 2 and "expected version 1" in err


def test_replay_needs_a_source_for_the_dataset_step(capsys, tmp_path, fake_steps) -> None:
    code, _, err = run_cli(["--replay", str(session_file(tmp_path)), "--steps", "dataset"], capsys)
    assert code == 2 and "dataset.source is not set" in err


def test_replay_unknown_step_exits_2(capsys, tmp_path) -> None:
    code, _, err = run_cli(["--replay", str(session_file(tmp_path)), "--steps", "env,paint"], capsys)
    assert code == 2 and "unknown step 'paint'" in err


def test_replay_success_records_decisions_beside_outputs(capsys, tmp_path, fake_steps) -> None:
    path = session_file(tmp_path)
    before = path.read_bytes()
    code, out, err = run_cli(["--replay", str(path), "--steps", "probe,env"], capsys)
    assert code == 0, err
    assert out.index("(env)") < out.index("(probe)")  # canonical order whatever the argument order
    assert "env: counting 3/3 (100%)" in out and "a line for a person" in out and "detail one" in out
    assert "summary: env ok" in out and "\r" not in out
    assert path.read_bytes() == before  # the user's file is never rewritten
    decisions = (tmp_path / ".lorawizard" / "replay-decisions.toml").read_text()
    assert '"gpu.batch_size.1024x1024" = 3' in decisions


@pytest.mark.parametrize("failing", ["tests.support.fake_steps:fails", "tests.support.fake_steps:returns_failure"])
def test_replay_step_failure_exits_1_and_names_step(capsys, tmp_path, fake_steps, failing) -> None:
    fake_steps["models"] = failing
    (tmp_path / "photos").mkdir()
    code, out, err = run_cli(["--replay", str(session_file(tmp_path, '[dataset]\nsource = "photos"\n'))], capsys)
    assert code == 1
    assert err.startswith("lorawizard: step models failed: ")
    assert "env ok" in out and "models failed" in out and "dataset not run" in out


def test_replay_ctrl_c_exits_130(tmp_path) -> None:
    path = session_file(tmp_path)
    code = (
        TERMINAL_SIGINT  # Ctrl-C as in a terminal, whatever this test run's parent did with SIGINT
        + "import sys\n"
        "from lorawizard.core import registry as steps\n"
        "steps.STEP_FUNCTIONS['env'] = 'tests.support.fake_steps:interrupt_me'\n"
        "from lorawizard import cli\n"
        f"sys.exit(cli.main(['--replay', {str(path)!r}, '--steps', 'env']))\n"
    )
    # generous: a cold interpreter on a heavily loaded box; a calm one takes about a second
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 130, (out.stdout, out.stderr)
    assert "env: interrupted" in out.stdout and "Traceback" not in out.stderr


def test_progress_printer_plain_lines_are_throttled() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False, every=3600)
    for done in range(100):
        printer(Progress("dataset", "resizing", done, 100, "images"))
    printer(Progress("dataset", "resizing", 100, 100, "images", finished=True))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("dataset: resizing 100/100 (100%)") and "done" in lines[-1]
    assert "\r" not in out.getvalue()


def test_progress_printer_repeats_an_unchanged_line_only_as_a_heartbeat(monkeypatch) -> None:
    from lorawizard import headless

    clock = iter(range(0, 1000, 3))  # every event 3 s after the previous one
    monkeypatch.setattr(headless.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False, every=2, unchanged_every=30)
    for _ in range(21):  # 0 to 60 s in the same state: the first line, then one heartbeat per 30 s
        printer(Progress("train", "caching", 0, 1, "files"))
    printer(Progress("train", "caching", 1, 1, "files"))  # news: printed at once
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 2 + 1 and lines[-1].startswith("train: caching 1/1")


def test_progress_printer_redraws_one_line_on_a_tty() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True)
    printer(Progress("models", "ae.safetensors", 50, 100, "B", rate=10.0, eta_s=5))
    printer.line("hello")
    text = out.getvalue()
    assert text.startswith("\r\x1b[2K") and "50%" in text and "ETA 0:05" in text and "hello\n" in text


def test_wizard_refuses_a_file_as_project(capsys, tmp_path) -> None:
    path = session_file(tmp_path)
    code, _, err = run_cli([str(path)], capsys)
    assert code == 2 and "is a file" in err


def test_wizard_reports_bad_session_with_exit_2(capsys, tmp_path) -> None:
    session_file(tmp_path, "[train]\nseed = 'x'\n")
    code, _, err = run_cli([str(tmp_path)], capsys)
    assert code == 2 and "train.seed: expected an integer" in err


@pytest.mark.parametrize("control", ["--status", "--follow", "--stop"])
def test_run_control_reports_a_bad_session_with_exit_2(capsys, tmp_path, control) -> None:
    """QA: a hand-edited bad value made `--status` exit 1, which says "the newest run failed or was stopped"."""
    session_file(tmp_path, "[train]\nmax_train_epochs = 0\n")
    code, out, err = run_cli([str(tmp_path), control], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "session.toml:4: train.max_train_epochs: expected a value from 1" in err


def test_progress_printer_keeps_the_live_bar_within_the_terminal(monkeypatch) -> None:
    """QA: at 80 columns the live bar (20 cells + a line of up to 160) wrapped onto a second row, and each redraw
    (carriage return: back to the start of that second row) left the first row behind, one per update."""
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True)
    printer(Progress("captions", "writing caption files", 1, 12, "captions", rate=2936.0, eta_s=1))
    drawn = out.getvalue().split("\r\x1b[2K")[-1]
    assert drawn.startswith("█") and "captions: writing caption files 1/12 (8%)" in drawn and len(drawn) <= 79


def test_replay_direct_api_with_dry_run(tmp_path, fake_steps) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert replay(session_file(tmp_path), ["env"], dry_run=True, out=out, err=err, tty=False) == 0
    assert "dry run" in out.getvalue()


class _FakeApp:
    """Stands in for the TUI: records the project it was given, runs nothing."""

    opened: list[Path] = []

    def __init__(self, session, **options: object) -> None:
        self.return_code = 0
        _FakeApp.opened.append(session.project_dir)

    def run(self) -> None:
        pass


@pytest.fixture
def fake_tui(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    from lorawizard.tui import app, images

    _FakeApp.opened = []
    monkeypatch.setattr(app, "LoraWizardApp", _FakeApp)
    monkeypatch.setattr(images, "choose_renderer", lambda images: None)
    return _FakeApp.opened


def test_wizard_creates_a_missing_project_folder_and_says_so_once(capsys, tmp_path, monkeypatch, fake_tui) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    project = tmp_path / "loras" / "mychar"
    project.parent.mkdir()
    code, out, err = run_cli([str(project)], capsys)
    assert code == 0 and project.is_dir() and fake_tui == [project]
    assert err == "lorawizard: created the project folder ~/loras/mychar\n" and out == ""
    code, out, err = run_cli([str(project)], capsys)  # there now: nothing said
    assert code == 0 and err == "" and len(fake_tui) == 2


def test_wizard_refuses_a_project_whose_parent_is_missing_too(capsys, tmp_path, fake_tui) -> None:
    """`lorawizard /hom/me/x` (a typo) created /hom/me/x silently; now: one line, exit 2, nothing created."""
    project = tmp_path / "hom" / "me" / "x"
    code, out, err = run_cli([str(project)], capsys)
    assert code == 2 and out == "" and fake_tui == []
    assert err.count("\n") == 1 and "no such folder" in err and f"its parent {project.parent} does not exist" in err
    assert "nothing created" in err and not (tmp_path / "hom").exists()


@pytest.mark.parametrize("flag", ["--status", "--stop", "--follow"])
def test_run_control_on_a_missing_project_says_so_and_creates_nothing(capsys, tmp_path, flag) -> None:
    project = tmp_path / "nope"
    code, out, err = run_cli([str(project), flag], capsys)
    assert code == 2 and out == "" and err == f"lorawizard: {project}: no such folder; give the project folder " \
                                              "(its session.toml lives there)\n"
    assert not project.exists()


def test_replay_of_a_missing_project_creates_nothing(capsys, tmp_path) -> None:
    code, _, err = run_cli(["--replay", str(tmp_path / "nope" / "session.toml")], capsys)
    assert code == 2 and "no such session file" in err and not (tmp_path / "nope").exists()


@pytest.mark.parametrize("args, message", [
    (["--replay"], "--replay needs SESSION.toml"),
    (["--replay", "--help"], "--replay needs SESSION.toml"),
    (["--steps"], "--steps needs STEP[,STEP...]"),
    (["--images"], "--images needs one of auto,tgp,sixel,halfcell,unicode"),
])
def test_an_option_without_its_value_says_what_it_takes(capsys, args, message) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err == f"lorawizard: error: {message} (see lorawizard --help)\n", err
