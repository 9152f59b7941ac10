"""What `--replay` prints when stdout is not a terminal: a line when something a person reads changed (and a
heartbeat when nothing moved for long), never the same line twice in a row, never an "epoch 0"."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import pytest

from lorawizard import headless
from lorawizard.core.common.progress import Progress
from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train.step import FollowReporter, RunFollower, _progress
from lorawizard.headless import ProgressPrinter, replay
from tests.support.standin import make_train_project

REAL_LOGS = Path(__file__).resolve().parents[1] / "support" / "real_logs"
EPOCH_0 = re.compile(r"\bepoch 0\b")


def assert_readable(lines: list[str]) -> None:
    repeats = [(a, i) for i, (a, b) in enumerate(itertools.pairwise(lines)) if a == b]
    assert repeats == [], "the same line twice in a row:\n" + "\n".join(lines)
    assert [line for line in lines if EPOCH_0.search(line)] == []


def test_stand_in_run_prints_no_line_twice_and_no_epoch_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.05")
    session = make_train_project(tmp_path, epochs=3)
    out, err = io.StringIO(), io.StringIO()
    assert replay(session.path, ["train"], out=out, err=err, tty=False) == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert_readable(lines)
    begins = [line for line in lines if " begins" in line]
    assert [line.split(" · ")[0] for line in begins] == [f"train: epoch {n}/3 begins" for n in (1, 2, 3)]
    assert not any(line.count("epoch ") > 1 for line in begins), begins  # QA: "epoch 2/8 begins · epoch 2/8 · step"


def replay_log(path: Path, tmp_path: Path, *, base_epoch: int = 0) -> list[str]:
    """The real log's bytes through the follower and the headless printer, one tqdm redraw or line per poll (the
    most polls a run can give; the printer then shows every change: `every=0`)."""
    record = RunRecord(run_id="real", dir=tmp_path, argv=[], env={}, cwd=str(tmp_path), base_epoch=base_epoch)
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False, every=0)
    follower = RunFollower(record)
    reporter = FollowReporter(follower, printer, printer.line)
    data = path.read_bytes()
    pieces = re.split(rb"(?<=[\r\n])", data)
    with open(record.log_path, "wb") as log:
        for piece in pieces:
            log.write(piece)
            log.flush()
            follower.poll()
            reporter.report()
    follower.finish()
    reporter.report()
    printer(_progress(follower.state, finished=True))
    return out.getvalue().splitlines()


@pytest.mark.parametrize("name", ["train", "resume"])
def test_real_sd_scripts_log_prints_no_line_twice_and_no_epoch_0(name: str, tmp_path: Path) -> None:
    lines = replay_log(REAL_LOGS / f"{name}.log", tmp_path)
    assert_readable(lines)
    text = "\n".join(lines)
    assert "caching text encoder outputs" in text and "model saved" not in text  # (the step says that, not this)
    if name == "train":
        assert "train: epoch 1/2 begins" in text and "train: epoch 2/2 begins" in text
        steps = [line for line in lines if re.match(r"train: epoch \d/2 \d/4 ", line) and " done" not in line]
        assert [line.split(" (")[0] for line in steps] == [
            "train: epoch 1/2 1/4", "train: epoch 1/2 2/4", "train: epoch 2/2 3/4", "train: epoch 2/2 4/4"]
        # the bar drawn before "epoch 1/2" is training's start, not an epoch
        assert text.index("train: training 0/4") < text.index("train: epoch 1/2 begins")
        # a finished phase's bar is not shown under the next phase's name
        assert "train: preparing…" in lines and not any(line.startswith("train: preparing ") for line in lines)


def test_a_count_that_stands_still_is_printed_again_only_as_a_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 1000, 3))  # every event 3 s after the previous one, with a new ETA each time
    monkeypatch.setattr(headless.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False, every=2, unchanged_every=30)
    for eta in range(21, 0, -1):  # 0 to 60 s at 0/3: the rate and ETA move, the count does not
        printer(Progress("train", "caching text encoder outputs", 0, 3, "", rate=0.1 * eta, eta_s=eta))
    printer(Progress("train", "caching text encoder outputs", 1, 3, ""))
    printer(Progress("train", "caching text encoder outputs", 1, 3, "", eta_s=5))
    lines = out.getvalue().splitlines()
    assert [line.split(" · ")[-1] if " · " in line else "" for line in lines] == [
        "", "no change for 0:30", "no change for 1:00", ""]
    assert lines[-1].startswith("train: caching text encoder outputs 1/3 (33%)")
    assert_readable(lines)
