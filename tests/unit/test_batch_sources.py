"""core.batch_sources: where each bucket's batch size comes from (the GPU screen renders these rows)."""

from __future__ import annotations

import json
from pathlib import Path

from lorawizard.core.gpu.nvml import GB
from lorawizard.core.gpu.presets import load_presets, preset_named
from lorawizard.core.gpu.probe_results import RESULTS_FILE
from lorawizard.core.probe.batch_sources import bucket_rows
from lorawizard.core.session.document import Session


def _session(project: Path) -> Session:
    session = Session.new(project / "session.toml", name="sources")
    session.set("gpu.uuid", "GPU-a")
    return session


def _measured(session: Session, gpu: str, buckets: dict[str, dict[str, float | int]]) -> None:
    session.paths.state.mkdir(parents=True, exist_ok=True)
    (session.paths.state / RESULTS_FILE).write_text(json.dumps({"gpu": {"uuid": gpu}, "buckets": buckets}))


def test_each_source_in_order(project: Path) -> None:
    session = _session(project)
    session.set_batch_size("1024x1024", 4)
    session.set_batch_size("512x512", 8)
    _measured(session, "GPU-a", {"1024x1024": {"batch_size": 4, "peak_gb": 21.34, "s_per_step": 1.234},
                                 "512x512": {"batch_size": 6, "peak_gb": 10.0}})
    preset = preset_named("24gb", load_presets(None))
    buckets = {"1024x1024": 12, "512x512": 3, "2048x512": 2, "768x1024": 1}
    rows = bucket_rows(session, buckets, preset, 24 * GB)
    assert [(r.bucket, r.images, r.batch, r.peak_gb, r.s_per_step, r.source, r.tone) for r in rows[:3]] == [
        ("1024x1024", 12, "4", "21.3", "1.23", "probed", "good"),
        ("512x512", 3, "8", "—", "—", "set by hand", "plain"),  # measured at 6, set to 8 by hand
        ("2048x512", 2, "~4", "—", "—", "same area as 1024x1024", "dim"),
    ]
    assert rows[3].source == "estimate" and rows[3].batch.startswith("~") and rows[3].tone == "dim"
    assert [r.source for r in bucket_rows(session, {"768x1024": 1}, None, None)] == ["not probed"]


def test_probed_on_another_gpu_is_a_warning(project: Path) -> None:
    session = _session(project)
    session.set_batch_size("1024x1024", 2)
    _measured(session, "GPU-b", {"1024x1024": {"batch_size": 2, "peak_gb": 20.0, "s_per_step": None}})
    [row] = bucket_rows(session, {"1024x1024": 5}, None, None)
    assert (row.source, row.tone, row.peak_gb, row.s_per_step) == ("probed on another GPU", "warning", "20.0", "—")


def test_probed_on_the_chosen_cards_with_several_gpus(project: Path) -> None:
    """Several GPUs: the probe's `gpu` is the binding card, not necessarily `gpu.uuid`; the set of cards decides."""
    session = _session(project)
    session.set("gpu.uuids", ["GPU-a", "GPU-b"])
    session.set_batch_size("1024x1024", 2)
    session.paths.state.mkdir(parents=True, exist_ok=True)
    entry = {"1024x1024": {"batch_size": 2, "peak_gb": 15.0, "s_per_step": 0.3}}
    for saved in ({"gpu": {"uuid": "GPU-b"}, "gpus": [{"uuid": "GPU-a"}, {"uuid": "GPU-b"}]},  # the preset's way
                  {"gpu": {"uuid": "GPU-b"}, "fit": {"gpus": [{"uuid": "GPU-b"}, {"uuid": "GPU-a"}]}}):  # the fit
        (session.paths.state / RESULTS_FILE).write_text(json.dumps({**saved, "buckets": entry}))
        [row] = bucket_rows(session, {"1024x1024": 5}, None, None)
        assert (row.source, row.tone) == ("probed", "good")
    session.set("gpu.uuids", ["GPU-a", "GPU-c"])  # another pair: measured on other cards
    [row] = bucket_rows(session, {"1024x1024": 5}, None, None)
    assert row.source == "probed on another GPU"
