"""The train step with [[train.variants]]: a queue of runs with the stand-in trainer (tests/support/standin)."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytest

from lorawizard import runctl
from lorawizard.core.launch import runs
from lorawizard.core.session.document import Session
from lorawizard.core.session.variants import Variant
from lorawizard.core.train import queue
from lorawizard.headless import replay
from tests.support.sessions import save
from tests.support.standin import make_train_project


def _project(tmp_path: Path, variants: list[Variant], **kwargs) -> Session:
    session = make_train_project(tmp_path, **kwargs)
    session.set_variants(variants)
    save(session)
    return Session.load(session.path)


def _replay(session: Session, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = replay(session.path, ["train"], out=out, err=err, tty=False, **kwargs)
    return code, out.getvalue(), err.getvalue()


VARIANTS = [Variant("dim8", {"train.network_dim": 8}), Variant("bad", {"train.learning_rate": 0.0002}),
            Variant("e1", {"train.max_train_epochs": 1})]


def test_a_queue_of_three_runs_each_with_its_own_name_folder_and_record(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_FAIL_OUTPUT", "tiny-bad")  # the second variant fails; the queue goes on
    session = _project(tmp_path, VARIANTS)
    code, out, err = _replay(session)
    assert code == 1, out + err  # one run failed: the replay says so
    record = queue.QueueRecord.load(session)
    assert record is not None and record.state == "finished"
    assert [(e.label, e.status) for e in record.entries] == [
        ("base", "finished"), ("dim8", "finished"), ("bad", "failed"), ("e1", "finished")]
    assert "the queue goes on" in out + err
    base_runs = runs.list_runs(session.paths.runs)
    assert len(base_runs) == 1 and base_runs[0].output_name == "tiny"
    for label, epochs in (("dim8", 2), ("e1", 1)):
        folder = session.paths.runs / "variants" / label
        [run] = runs.list_runs(folder)
        assert run.output_name == f"tiny-{label}" and run.status() == "finished"
        assert (run.dir / f"tiny-{label}.safetensors").is_file()
        assert run.extra["variant"] == label
        assert run.argv[run.argv.index("--max_train_epochs") + 1] == str(epochs)
    kept = sorted(p.name for p in (session.project_dir / "loras").glob("*.safetensors"))
    assert kept == ["tiny-dim8-e2.safetensors", "tiny-e1-e1.safetensors", "tiny-e2.safetensors"]
    assert record.entries[1].kept and record.entries[1].kept.endswith("tiny-dim8-e2.safetensors")
    # the queue's samples side by side: one contact sheet per prompt in the project
    sheets = sorted((session.project_dir / "samples-compare").glob("prompt-*.png"))
    assert sheets and "contact sheet" in out
    # the variant's own settings reached its trainer
    dim8 = runs.list_runs(session.paths.runs / "variants" / "dim8")[0]
    assert dim8.argv[dim8.argv.index("--network_dim") + 1] == "8"
    assert base_runs[0].argv[base_runs[0].argv.index("--network_dim") + 1] == "4"


def test_status_prints_one_line_per_run_of_the_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_FAIL_OUTPUT", "tiny-bad")
    session = _project(tmp_path, VARIANTS[:2])
    _replay(session)
    out = io.StringIO()
    runctl.status(session.project_dir, out)
    lines = out.getvalue().splitlines()
    queue_lines = [line for line in lines if line.startswith("queue ") or line.startswith("  ")]
    assert queue_lines[0].endswith(": finished")
    assert [line.split()[0] for line in queue_lines[1:]] == ["base", "dim8", "bad"]
    assert "failed" in queue_lines[3] and "no training images" in queue_lines[3]  # the diagnosis, not a log line


def test_variants_picks_runs_and_names_an_unknown_one(tmp_path: Path) -> None:
    session = _project(tmp_path, VARIANTS[:1])
    code, _, err = _replay(session, options={"train": {"only": ["dim8"]}})
    assert code == 0, err
    assert runs.list_runs(session.paths.runs) == []  # the base run was not asked for
    assert len(runs.list_runs(session.paths.runs / "variants" / "dim8")) == 1
    code, _, err = _replay(session, options={"train": {"only": ["dim9"]}})
    assert code == 1 and "no run named 'dim9'" in err and "base, dim8" in err


def test_dry_run_prints_every_run_and_the_forecast(tmp_path: Path) -> None:
    session = _project(tmp_path, VARIANTS[:1])
    code, out, _ = _replay(session, dry_run=True)
    assert code == 0
    assert "queue: run 1/2: base (the base run)" in out and "queue: run 2/2: dim8 (network_dim 8)" in out
    assert out.count("flux_train_network.py") >= 2
    assert "queue:" in out and ("time unknown" in out or "≈" in out)
    assert runs.list_runs(session.paths.runs, variants=True) == []


def test_stop_then_resume_continues_the_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.3")
    session = _project(tmp_path, VARIANTS[:1], epochs=8, images=4)
    code, out, err = _replay(session, options={"train": {"detach": True}})
    assert code == 0, err
    assert "queue of 2 runs" in out
    _wait(lambda: runs.newest_state(session.paths.runs) is not None)  # stop it after its first state
    assert runs.live_run(session.paths.runs) is not None
    status = io.StringIO()
    runctl.status(session.project_dir, status)  # live: the run's own line, then the queue re-forecast
    assert "queue " in status.getvalue() and ": running" in status.getvalue()
    assert "for the 1 run(s) not started (re-forecast from run " in status.getvalue(), status.getvalue()
    # never two trainers: a second replay neither starts another run nor a second queue
    code, _, err = _replay(session)
    assert code == 1 and "is going in this project" in err
    stopped = io.StringIO()
    assert runctl.stop(session.project_dir, stopped) == 0
    assert "asked to stop" in stopped.getvalue()
    record = _wait_queue(session, lambda r: r.state != "running")
    assert record.state == "stopped"
    assert record.entries[0].status == "stopped" and record.entries[1].status == "pending"
    assert runs.list_runs(session.paths.runs / "variants" / "dim8") == []  # the rest never started
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    code, out, err = _replay(session, options={"train": {"resume": True}})
    assert code == 0, out + err
    record = queue.QueueRecord.load(session)
    assert record is not None and [e.status for e in record.entries] == ["finished", "finished"]
    assert "resumed" in out


def test_kill_9_of_the_driver_leaves_the_run_and_status_says_lost(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = _project(tmp_path, VARIANTS[:1], epochs=3)
    code, out, err = _replay(session, options={"train": {"detach": True}})
    assert code == 0, err
    record = _wait_queue(session, lambda r: r.pid > 0 and r.entries[0].status == "running")
    deadline = time.monotonic() + 30
    while runs.live_run(session.paths.runs) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(record.pid, signal.SIGKILL)
    _wait(lambda: not record.driver_alive())
    live = runs.live_run(session.paths.runs)
    assert live is not None  # the run goes on under its own supervisor
    out = io.StringIO()
    runctl.status(session.project_dir, out)
    assert "lost" in out.getvalue() and "--resume" in out.getvalue()
    # resume refuses while that run goes on (never a second trainer) ...
    code, _, err = _replay(session, options={"train": {"resume": True}})
    assert code == 1 and "is going in this project" in err
    runs.stop(live)
    # ... and continues once it has ended
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    code, out, err = _replay(session, options={"train": {"resume": True}})
    assert code == 0, out + err
    assert [e.status for e in queue.QueueRecord.load(session).entries] == ["finished", "finished"]


def test_disk_check_refuses_a_queue_that_does_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = _project(tmp_path, [Variant("big", {"train.network_dim": 4096})])
    items = queue.entries(session)
    need = queue.disk_needed(items)
    assert need > queue.disk_needed(items[:1]) * 100  # rank 4096 writes far more than rank 4
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, need // 2))
    code, _, err = _replay(session)
    assert code == 1 and "GB free" in err and "queue fewer runs" in err
    assert runs.list_runs(session.paths.runs, variants=True) == []


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _wait_queue(session: Session, predicate, timeout: float = 90.0) -> queue.QueueRecord:
    found: list[queue.QueueRecord] = []

    def check() -> bool:
        record = queue.QueueRecord.load(session)
        if record is not None and predicate(record):
            found.append(record)
            return True
        return False

    _wait(check, timeout)
    return found[-1]


def test_sigterm_to_the_driver_stops_its_run_and_the_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.3")
    session = _project(tmp_path, VARIANTS[:1], epochs=8)
    code, _, err = _replay(session, options={"train": {"detach": True}})
    assert code == 0, err
    record = _wait_queue(session, lambda r: r.pid > 0 and r.entries[0].status == "running")
    _wait(lambda: runs.live_run(session.paths.runs) is not None)
    os.kill(record.pid, signal.SIGTERM)
    record = _wait_queue(session, lambda r: r.state != "running")
    assert record.state == "stopped" and record.entries[0].status == "stopped"
    _wait(lambda: runs.live_run(session.paths.runs) is None)  # the run it started is stopped with it, not left
    assert runs.list_runs(session.paths.runs)[-1].status() == "stopped"
    assert runs.list_runs(session.paths.runs / "variants" / "dim8") == []
    log = (session.paths.state / queue.QUEUE_LOG).read_text()
    assert "queue driver pid" in log and "Traceback" not in log


def test_side_by_side_one_run_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu.parallel_runs with two GPUs: the queue's runs go two at a time, each pinned to one GPU (fake NVML)."""
    from tests.support import fake_nvml

    fake_nvml.install(monkeypatch, fake_nvml.two_cards_no_p2p())
    uuids = [fake_nvml.RTX_3090_24.uuid, fake_nvml.RTX_3060_12.uuid]
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, epochs=3)
    session.set_variants(VARIANTS)
    session.set("gpu.uuids", uuids)
    session.set("gpu.parallel_runs", True)
    save(session)
    session = Session.load(session.path)
    assert queue.forecast(queue.entries(session), session, lanes=2).lanes == 2
    code, out, err = _replay(session)
    assert code == 0, out + err
    assert "side by side" in out
    record = queue.QueueRecord.load(session)
    assert record is not None and [e.status for e in record.entries] == ["finished"] * 4
    every = runs.list_runs(session.paths.runs, variants=True)
    assert len(every) == 4
    assert len({r.run_id for r in every}) == 4  # ids unique in the project, though two runs start in one second
    pinned = {r.run_id: r.env.get("CUDA_VISIBLE_DEVICES") or r.gpu_uuid for r in every}
    assert set(pinned.values()) == set(uuids)  # both GPUs were used, one each
    for record_ in every:
        assert record_.argv.count("--multi_gpu") == 0  # one process per run, not data-parallel
    # two runs overlapped in time (side by side), never two on one GPU at once
    spans = sorted((r.started_ts, _ended(r), pinned[r.run_id]) for r in every)
    overlaps = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]
    assert overlaps, spans
    assert all(a[2] != b[2] for a, b in overlaps), spans


def test_forecast_spreads_runs_over_the_lanes() -> None:
    plan = queue.Forecast({"base": 100.0, "a": 100.0, "b": 50.0}, "probe", lanes=2)
    assert plan.total_s == 150.0
    assert queue.Forecast(plan.per_entry, "probe").total_s == 250.0
    assert queue.Forecast({"base": None}, "").total_s is None
    priced = queue.Forecast({"base": 1800.0, "a": 1800.0}, "probe", lanes=2, price_per_hour=2.5)
    assert priced.line().endswith("· ≈2.50 at 2.5 per GPU-hour")  # two half-hour runs: one GPU-hour


def _ended(record: runs.RunRecord) -> float:
    """When the run ended, from its exit record (the supervisor writes `ended` as a timestamp)."""
    info = record.exit_info()
    assert info is not None, record.run_id
    return float(info["ended"])


def test_stop_ends_every_run_side_by_side_and_starts_no_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from tests.support import fake_nvml

    fake_nvml.install(monkeypatch, fake_nvml.two_cards_no_p2p())
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.3")
    session = make_train_project(tmp_path, epochs=20)
    session.set_variants(VARIANTS)
    session.set("gpu.uuids", [fake_nvml.RTX_3090_24.uuid, fake_nvml.RTX_3060_12.uuid])
    session.set("gpu.parallel_runs", True)
    save(session)
    session = Session.load(session.path)
    results: list[tuple[int, str, str]] = []
    driver = threading.Thread(target=lambda: results.append(_replay(session)), daemon=True)
    driver.start()
    _wait(lambda: len(runs.live_runs(session.paths.runs)) == 2)
    out = io.StringIO()
    assert runctl.stop(session.project_dir, out) == 0
    assert out.getvalue().count("stopped (") == 2, out.getvalue()
    driver.join(60)
    assert results and results[0][0] == 1
    record = queue.QueueRecord.load(session)
    assert record is not None and record.state == "stopped"
    assert sorted(e.status for e in record.entries) == ["pending", "pending", "stopped", "stopped"]
    assert runs.live_runs(session.paths.runs) == []


def test_follow_follows_each_run_of_a_detached_queue_to_its_end(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.1")
    session = _project(tmp_path, VARIANTS[:1], epochs=3)
    code, _, err = _replay(session, options={"train": {"detach": True}})
    assert code == 0, err
    _wait(lambda: runs.live_run(session.paths.runs) is not None)
    out = io.StringIO()
    assert runctl.follow(session.project_dir, out) == 0
    every = runs.list_runs(session.paths.runs, variants=True)
    assert len(every) == 2
    for record in every:
        assert f"following run {record.run_id}" in out.getvalue()
    record = queue.QueueRecord.load(session)
    assert record is not None and [e.status for e in record.entries] == ["finished", "finished"]


def test_each_queued_run_says_its_suggested_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue of validating runs: each run's suggestion is said as it ends, kept in queue.json, and in --status."""
    monkeypatch.setenv("STANDIN_VAL_CURVE", "0.50,0.45,0.42,0.41,0.43,0.46")
    session = _project(tmp_path, [Variant("dim8", {"train.network_dim": 8})], images=10, epochs=6, save_every=2)
    session.set("train.validation_split", 0.2)
    save(session)
    session = Session.load(session.path)
    code, out, err = _replay(session)
    assert code == 0, out + err
    line = "suggested: epoch 4 (val 0.41; epochs 5–6 rise to 0.46)"
    assert f"train [base]: {line}" in out and f"train [dim8]: {line}" in out
    record = queue.QueueRecord.load(session)
    assert record is not None and [e.suggested for e in record.entries] == [line, line]
    status = io.StringIO()
    runctl.status(session.project_dir, status)
    assert sum(line in row for row in status.getvalue().splitlines() if row.startswith("  ")) == 2


def test_run_ids_are_unique_across_the_base_and_variant_folders(tmp_path: Path) -> None:
    """A run's id marks its processes: two runs of one project (base and a variant) never share one, even started in
    the same second (they did side by side, and the project's processes then read as one run)."""
    from datetime import datetime

    now = datetime(2026, 12, 7, 14, 16, 15)
    root = tmp_path / "runs"
    first = runs.new_run_id(root, now)
    second = runs.new_run_id(root / runs.VARIANTS_DIR / "dim8", now)
    third = runs.new_run_id(root / runs.VARIANTS_DIR / "e1", now)
    assert (first, second, third) == ("20261207-141615", "20261207-141615-2", "20261207-141615-3")
    assert [r.run_id for r in runs.list_runs(root, variants=True)] == []  # the lock file is no run


def test_forecast_adds_the_probes_measured_start_up(tmp_path: Path) -> None:
    """The probe measured launch → first step: 300 s for the trial that cached, 60 s for the ones that reused the
    caches. The queue's first run pays the caching, the others only the loading; with caches already there, none."""
    import json

    session = _project(tmp_path, [Variant("dim8", {"train.network_dim": 8})])
    probe = {"buckets": {"512x512": {"batch_size": 2, "s_per_step": 2.0}},
             "fit": {"phases": {"startup_s": 300.0, "startup_min_s": 60.0}}}
    session.paths.state.mkdir(parents=True, exist_ok=True)
    (session.paths.state / "probe.json").write_text(json.dumps(probe))
    plan = queue.forecast(queue.entries(session), session)
    assert plan.per_entry["base"] is not None and plan.per_entry["dim8"] is not None
    assert plan.per_entry["base"] - plan.per_entry["dim8"] == pytest.approx(240.0)
    assert "speed from probe, start-up from the probe)" in plan.line()
    assert queue.startup_times(session) == (300.0, 60.0)
    (session.paths.dataset / "512x512" / "0000_flux_te.npz").write_bytes(b"cache")
    assert queue.startup_times(session) == (60.0, 60.0)
    again = queue.forecast(queue.entries(session), session)
    assert again.per_entry["base"] == pytest.approx(plan.per_entry["base"] - 240.0)


def test_sampling_time_is_one_rule_for_the_estimate_the_forecast_and_the_queue(tmp_path: Path) -> None:
    """A real CFG (Chroma's samples) runs the transformer twice per step: the run's estimate said so, the queue's and
    the probe's forecasts did not (each had its own copy of the rule)."""
    from lorawizard.core.train import samples

    session = make_train_project(tmp_path)
    plain = samples.sampling_seconds(session, 3.0)
    assert plain > 0
    session.set("train.samples.cfg_scale", 4.0)
    assert samples.sampling_seconds(session, 3.0) == pytest.approx(2 * plain)
    save(session)
    session = Session.load(session.path)
    session.paths.state.mkdir(parents=True, exist_ok=True)
    (session.paths.state / "probe.json").write_text('{"buckets": {"512x512": {"batch_size": 2, "s_per_step": 3.0}}}')
    [entry] = queue.entries(session)
    steps = queue.entry_steps(entry.session)
    assert steps is not None
    assert queue.forecast([entry], session).per_entry["base"] == pytest.approx(steps * 3.0 + 2 * plain)
