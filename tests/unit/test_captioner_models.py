"""The captioner catalog in the Models step, over the fake hub: a whole transformers folder with the same
resumable, sha256-checked transfer; shards from the index; a wrong file is never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorawizard.core.captions import autocaption as ac
from lorawizard.core.contract import StepContext
from lorawizard.core.models.captioners import CAPTIONER_ROLE, state_of
from lorawizard.core.session.document import Session
from tests.support.fakehub import FakeHub

REPO = "Qwen/Qwen2.5-VL-3B-Instruct"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def add_captioner(hub: FakeHub, *, tokenizer: bool = True) -> dict[str, bytes]:
    files = {
        "config.json": b'{"architectures": ["Qwen2_5_VLForConditionalGeneration"]}',
        "preprocessor_config.json": b"{}",
        "tokenizer_config.json": b"{}",
        "vocab.json": b"{}",
        "model.safetensors.index.json": json.dumps({"weight_map": {"a": SHARDS[0], "b": SHARDS[1]}}).encode(),
        SHARDS[0]: bytes(range(256)) * 64,  # LFS-sized: sha256 etag
        SHARDS[1]: bytes(reversed(range(256))) * 48,
    }
    if tokenizer:
        files["tokenizer.json"] = b'{"model": {}}'
    for name, data in files.items():
        hub.add_file(REPO, name, data)
    return files


def run(session: Session, **options: object):
    from lorawizard.core.models.step import run_step

    rows: list = []
    lines: list[str] = []
    ctx = StepContext(session=session, log=lines.append, options={"on_state": rows.append, **options})
    return run_step(ctx), rows, lines


def test_downloads_the_whole_folder_then_verifies_without_fetching(hub: FakeHub, project: Path) -> None:
    files = add_captioner(hub)
    session = Session.new(project / "session.toml")
    result, rows, _ = run(session, action="captioner")
    assert result.ok, result.summary
    folder = state_of(session, "qwen2.5-vl-3b").folder
    assert folder == session.paths.models / "captioners" / "Qwen2.5-VL-3B-Instruct"
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    assert ac.folder_problem(folder) is None and not list(folder.glob("*.part"))
    assert "captioner qwen2.5-vl-3b ready" in result.summary
    final = [r for r in rows if r.role == CAPTIONER_ROLE][-1]
    assert final.state == "found" and final.verified
    assert any(r.state == "downloading" for r in rows if r.role == CAPTIONER_ROLE)
    assert "Qwen Research License" in final.note and "12 GB VRAM" in final.note
    # again: every file is there and matches; no shard is sent twice
    sent = hub.sent(SHARDS[0])
    result, _, _ = run(session, action="captioner")
    assert result.ok and hub.sent(SHARDS[0]) == sent


def test_a_different_file_in_the_folder_is_never_overwritten(hub: FakeHub, project: Path) -> None:
    add_captioner(hub)
    session = Session.new(project / "session.toml")
    folder = state_of(session, "qwen2.5-vl-3b").folder
    folder.mkdir(parents=True)
    (folder / SHARDS[1]).write_bytes(b"x" * (256 * 48))  # right size, wrong content
    result, rows, _ = run(session, action="captioner")
    assert not result.ok and "exists but is not" in result.summary and SHARDS[1] in result.summary
    assert (folder / SHARDS[1]).read_bytes() == b"x" * (256 * 48)
    assert [r for r in rows if r.role == CAPTIONER_ROLE][-1].state == "error"


def test_a_required_file_missing_on_the_hub_is_one_line(hub: FakeHub, project: Path) -> None:
    add_captioner(hub, tokenizer=False)
    session = Session.new(project / "session.toml")
    result, _, _ = run(session, action="captioner")
    assert not result.ok and "tokenizer.json" in result.summary and "\n" not in result.summary


def test_a_local_folder_needs_no_download(hub: FakeHub, project: Path) -> None:
    session = Session.new(project / "session.toml")
    session.set("captions.model", "~/my-vlm")
    result, rows, _ = run(session, action="captioner")
    assert result.ok and "nothing to download" in result.summary and not rows


@pytest.mark.parametrize("auto", [False, True])
def test_the_models_step_shows_the_captioner_row_and_fetches_it_with_auto(hub: FakeHub, project: Path,
                                                                          auto: bool) -> None:
    add_captioner(hub)
    session = Session.new(project / "session.toml")
    session.set("captions.auto", auto)
    result, rows, _ = run(session)
    assert result.ok, result.summary
    captioner_rows = [r for r in rows if r.role == CAPTIONER_ROLE]
    assert captioner_rows[0].state == "missing"
    assert state_of(session, "qwen2.5-vl-3b").ready == auto  # 7.5 GB only when auto-captions are wanted
    assert ("captioner qwen2.5-vl-3b ready" in result.summary) == auto
