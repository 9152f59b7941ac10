"""Issue 23 B15: `--status`, `--follow` and replay parsed the whole train.log.

20 MB of short lines made `--status` take 54 s; 400 MB of hook output kept replay busy for 7 min 47 s; a 400 MB line
without a line break took 412 MB of memory. Now a long log is read at its head and tail only, `--status` and
`--follow` go on from the run's log index (offset + state), and a line costs at most a bounded amount of memory.
These tests check the structure (bytes read, the size of what is kept), never the time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lorawizard import runctl
from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train import step as train_step
from lorawizard.core.train.logparse import LogParser, TrainState
from tests.support.standin import make_train_project

pytestmark = pytest.mark.adversarial

REAL_LOG = Path(__file__).resolve().parents[1] / "support" / "real_logs" / "train.log"
BIG = 64 << 20  # the middle is a hole: cheap to make, and what reading it costs shows in bytes read


def _bars(first: int, last: int, total: int = 400) -> bytes:
    return b"".join(f"\rsteps:  {n * 100 // total}%|#####     | {n}/{total} [01:00<00:20, 5.00it/s, avr_loss=0.312]"
                    .encode() for n in range(first, last + 1))


class Counting:
    """A file object that counts the bytes read through it (the follower's only way into train.log)."""

    total = 0

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        Counting.total += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> type[Counting]:
    real_open = open
    Counting.total = 0
    monkeypatch.setattr(train_step, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    return Counting


def _finished_run(tmp_path: Path, log: bytes, size: int = 0, tail: bytes = b"") -> tuple[Any, RunRecord]:
    """A project with one finished run whose train.log is `log`, a hole up to `size`, then `tail`."""
    session = make_train_project(tmp_path, epochs=1)
    run_dir = session.paths.runs / "20260101-000000"
    run_dir.mkdir(parents=True)
    record = RunRecord(run_id=run_dir.name, dir=run_dir, argv=["python"], env={}, cwd=str(run_dir),
                       output_name="tiny", started_ts=time.time())
    record.save()
    (run_dir / "exit.json").write_text(json.dumps({"returncode": 0, "status": "finished", "ended": time.time()}))
    with open(record.log_path, "wb") as handle:
        handle.write(log)
        if size:
            handle.truncate(size)
            handle.seek(size)
        handle.write(tail)
    return session, record


def test_status_reads_the_head_and_tail_of_a_long_log_only(tmp_path: Path, counted: type[Counting]) -> None:
    session, record = _finished_run(tmp_path, REAL_LOG.read_bytes(), BIG, _bars(1, 300) + b"\n")
    out = io.StringIO()
    assert runctl.status(session.project_dir, out) == runctl.EXIT_FINISHED
    assert "step 300/" in out.getvalue() and out.getvalue().count("\n") == 1
    assert counted.total <= 4 << 20  # of a 64 MiB log (the old code read all of it)
    assert json.loads((record.dir / train_step.INDEX_FILE).read_text())["offset"] == record.log_path.stat().st_size


def test_a_second_status_and_follow_read_only_what_the_log_gained(tmp_path: Path, counted: type[Counting]) -> None:
    session, record = _finished_run(tmp_path, REAL_LOG.read_bytes(), BIG, _bars(1, 300) + b"\n")
    assert runctl.status(session.project_dir, io.StringIO()) == runctl.EXIT_FINISHED
    counted.total = 0
    out = io.StringIO()
    assert runctl.status(session.project_dir, out) == runctl.EXIT_FINISHED
    assert counted.total == 0 and "step 300/" in out.getvalue()  # the index says where it stood
    gained = _bars(301, 350) + b"\n"
    with open(record.log_path, "ab") as handle:
        handle.write(gained)
    counted.total = 0
    out = io.StringIO()
    assert runctl.status(session.project_dir, out) == runctl.EXIT_FINISHED
    assert counted.total == len(gained) and "step 350/" in out.getvalue()


def test_follow_reads_only_new_bytes(tmp_path: Path, counted: type[Counting]) -> None:
    session, record = _finished_run(tmp_path, REAL_LOG.read_bytes(), BIG, _bars(1, 300) + b"\n")
    assert runctl.status(session.project_dir, io.StringIO()) == runctl.EXIT_FINISHED  # writes the index
    import psutil

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (record.dir / "exit.json").unlink()  # the run is live again: its leader is the sleeper
        record.pid, record.create_time = sleeper.pid, psutil.Process(sleeper.pid).create_time()
        record.save()
        gained = _bars(301, 320) + b"\n"

        def end_run() -> None:
            time.sleep(1.0)
            with open(record.log_path, "ab") as handle:
                handle.write(gained)
            (record.dir / "exit.json").write_text(json.dumps({"returncode": 0, "status": "finished"}))
            sleeper.kill()

        ender = threading.Thread(target=end_run)
        counted.total = 0
        ender.start()
        out = io.StringIO()
        code = runctl.follow(session.project_dir, out)
        ender.join()
        assert code == runctl.EXIT_FINISHED, out.getvalue()
        assert counted.total <= len(gained) + (64 << 10)  # the old code read the whole 64 MiB again
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_line_without_a_break_costs_bounded_memory() -> None:
    parser, state = LogParser(), TrainState()
    chunk = b"x" * (1 << 20)
    for _ in range(64):  # 64 MiB in one line, as a hook or a trainer printing without newlines
        state.apply(parser.feed(chunk))
    state.apply(parser.feed(b"\nafter\n"))
    state.apply(parser.finish())
    texts = [line.text for line in state.lines]
    assert texts[-1] == "after" and max(map(len, texts)) <= 1 << 16
    assert sum(map(len, texts)) <= 1 << 20  # the old code kept every MiB of it as a line


def test_a_record_of_endless_continuation_lines_costs_bounded_memory() -> None:
    parser, state = LogParser(), TrainState()
    head = "2026-01-01 00:00:00 INFO     start of a long record" + " " * 10 + "train_network.py:1\n"
    state.apply(parser.feed(head.encode()))
    piece = (" " * 29 + "word and more words\n").encode()
    for _ in range(200):
        state.apply(parser.feed(piece * 1000))  # 200,000 continuation lines
    state.apply(parser.finish())
    assert max(len(line.text) for line in state.lines) <= 1 << 16


@pytest.mark.extra
def test_status_on_a_1_gib_log_reads_the_same_as_on_a_small_one(tmp_path: Path, counted: type[Counting]) -> None:
    small_session, _ = _finished_run(tmp_path / "small", REAL_LOG.read_bytes(), 1 << 20, _bars(1, 300) + b"\n")
    big_session, _ = _finished_run(tmp_path / "big", REAL_LOG.read_bytes(), 1 << 30, _bars(1, 300) + b"\n")
    reads = []
    for session in (small_session, big_session):
        counted.total = 0
        assert runctl.status(session.project_dir, io.StringIO()) == runctl.EXIT_FINISHED
        reads.append(counted.total)
    assert reads[1] <= reads[0] * 1.5 + (64 << 10)
    os.sync()
