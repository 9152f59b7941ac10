"""core.steps.training.watch: the one follow loop (headless `follow` and the dashboard's `core.dashboard.views`)."""

from __future__ import annotations

from pathlib import Path

from lorawizard.core.train.dashboard import views
from lorawizard.core.train.step import watch


class FakeRecord:
    """A run whose log grows by one line per tick and which ends after `ticks` looks."""

    def __init__(self, log: Path, ticks: int) -> None:
        self.log_path, self.left = log, ticks
        self.base_step = self.base_epoch = 0
        self.extra: dict[str, object] = {}
        self.run_id, self.started_ts, self.gpu_uuid, self.output_name = "r1", None, None, "x"
        self.dir = log.parent
        self.stop_requested = None
        self.reloaded = 0

    def is_alive(self) -> bool:
        self.left -= 1
        with open(self.log_path, "a") as handle:
            handle.write(f"line {self.left}\n")
        return self.left > 0

    def reload(self) -> FakeRecord:
        self.reloaded += 1
        return self

    def returncode(self) -> int:
        return 0

    def status(self) -> str:
        return "finished"

    def exit_info(self) -> dict[str, object]:
        return {}

    def process_tree(self) -> list[object]:
        return []


def test_ticks_until_the_end_then_the_rest_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("")
    record = FakeRecord(log, ticks=3)
    waits: list[float] = []
    ticks = list(watch(record, poll_s=0.5, wait=lambda s: waits.append(s)))  # type: ignore[arg-type]
    assert [t.alive for t in ticks] == [True, True, False]
    assert [t.first for t in ticks] == [True, False, False]
    assert waits == [0.5, 0.5] and record.reloaded == 1
    # every line once, in order; the last ones (written before the run ended) are read by the last tick
    assert [line.text for t in ticks for line in t.new_lines] == ["line 2", "line 1", "line 0"]


def test_wait_returning_true_stops_and_reads_nothing_twice(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("")
    record = FakeRecord(log, ticks=10)
    ticks = list(watch(record, wait=lambda s: True))  # type: ignore[arg-type]
    assert len(ticks) == 1 and ticks[0].alive and record.reloaded == 0
    assert ticks[0].follower._handle is None  # closed: the rest of the log was read when the loop ended


def test_dashboard_views_come_from_the_same_loop(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("")
    record = FakeRecord(log, ticks=2)
    shown = list(views(record, "x", wait=lambda s: False))  # type: ignore[arg-type]
    assert [v.status for v in shown] == ["running", "finished"]
    assert [v.reset_lines for v in shown] == [True, False]
    assert shown[-1].procs == 0 and shown[-1].gpu_note == "no GPU chosen (step 5)"


def test_the_dashboard_stops_the_surviving_ranks_of_a_failed_run(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Several processes: one rank failed, the others still run (stuck in a collective). The wizard's dashboard stops
    them as replay does (once, in a thread) and says so once."""
    import threading

    from lorawizard.core.launch import runs

    stopped: list[object] = []
    done = threading.Event()
    monkeypatch.setattr(runs, "stop", lambda record, **kw: (stopped.append((record, kw)), done.set()))
    log = tmp_path / "train.log"
    log.write_text("[rank1]: Traceback (most recent call last):\n[rank1]: RuntimeError: boom\n")
    record = FakeRecord(log, ticks=5)
    record.extra["processes"] = 2
    shown = list(views(record, "x", wait=lambda s: None, rank_grace_s=0))  # type: ignore[arg-type]
    assert done.wait(5)
    notices = [v.notice for v in shown if v.notice]
    assert notices == ["rank 1 failed and the other processes were still running: stopping the rest of run r1"]
    assert len(stopped) == 1 and stopped[0][0] is record
    healthy = FakeRecord(tmp_path / "ok.log", ticks=5)
    (tmp_path / "ok.log").write_text("")
    healthy.extra["processes"] = 2
    assert not [v.notice for v in views(healthy, "x", wait=lambda s: None, rank_grace_s=0) if v.notice]  # type: ignore[arg-type]
