"""Issue 23 A1, A6, C18, D: a run's result comes from its files, the kept LoRA is the epoch its metadata names.

A1: an on_finish hook's output landed in train.log after `model saved.`, and the result was read from the log's last
64 KiB: a finished run became "failed" and nothing was kept. A6: with `max_train_epochs` lowered after training, keep
took the newest run's final file (epoch 4) and named it `-e3`; a missing epoch came silently from an older run.
C18: `"extra": {"processes": "x"}` in run.json was a ValueError traceback in `--status`/`--follow`.
D: the trainer and the hook inherited HF_TOKEN; `on_finish = [""]` said "Permission denied".
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from lorawizard import runctl
from lorawizard.core.launch import runs, supervisor
from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train import keep
from lorawizard.core.train.step import RunFollower, plan_run, start_run
from lorawizard.headless import replay
from tests.support.sessions import save
from tests.support.standin import make_train_project
from tests.support.waiting import follow_to_end, until

pytestmark = pytest.mark.adversarial


def _start(session, **env: object) -> RunRecord:
    for key, value in env.items():
        os.environ[f"STANDIN_{key}"] = str(value)
    try:
        return start_run(session, plan_run(session))
    finally:
        for key in env:
            os.environ.pop(f"STANDIN_{key}", None)


def _hook_done(record: RunRecord) -> dict:
    until(lambda: "on_finish" in (record.exit_info() or {}), timeout=30, what="on_finish to end")
    until(lambda: not runs.process_matches(record.pid, record.create_time), timeout=10, what="the supervisor to end")
    return (record.exit_info() or {})["on_finish"]


# ------------------------------------------------------------------ A1: the result from files


NOISY_HOOK = ("import os, sys\n"
              "open('status.txt', 'w').write(os.environ['LORAWIZARD_RUN_STATUS'])\n"
              "for i in range(1, 20001):\n    print(i)\n"  # `seq 1 20000`: 108 KB, more than the old 64 KiB window
              "sys.stdout.write('x' * (3 << 20))\n")  # and 3 MiB without a line break


def test_hook_output_never_turns_a_finished_run_into_failed(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=1)
    script = tmp_path / "hook.py"
    script.write_text(NOISY_HOOK)
    session.set("train.on_finish", [sys.executable, str(script)])
    record = _start(session, STEP_SECONDS=0.01)
    follow_to_end(record)
    hook = _hook_done(record)
    assert hook["ok"] and (record.dir / "status.txt").read_text() == "finished"
    assert record.exit_info()["status"] == "finished"  # the supervisor's exit record says it
    assert record.reload().status() == "finished"
    out = io.StringIO()
    assert runctl.status(session.project_dir, out) == runctl.EXIT_FINISHED, out.getvalue()
    assert out.getvalue().startswith("finished")
    kept = keep.keep_epoch(session, None)  # the old code: "the final LoRA is not on disk"
    assert kept.lora.name == "tiny-e1.safetensors"
    # the hook's output went to its own bounded log, not train.log
    log = record.log_path.read_bytes()
    assert b"\n20000\n" not in log and b"xxxxxxxx" not in log and log.count(b"on_finish") == 1
    hook_log = (record.dir / supervisor.ON_FINISH_LOG).read_bytes()
    assert hook_log.startswith(b"1\n2\n3\n") and len(hook_log) <= supervisor.ON_FINISH_LOG_BYTES + 200
    assert b"more bytes of output not kept" in hook_log


def test_replay_keeps_the_lora_of_a_run_whose_hook_prints_a_lot(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    session = make_train_project(tmp_path, epochs=1)
    session.set("train.on_finish", [sys.executable, "-c", "[print(i) for i in range(1, 20001)]"])
    save(session)
    out, err = io.StringIO(), io.StringIO()
    assert replay(session.path, ["train"], out=out, err=err, tty=False) == 0, err.getvalue()
    assert (session.project_dir / "loras" / "tiny-e1.safetensors").is_file()
    record = runs.list_runs(session.paths.runs)[-1]
    _hook_done(record)
    assert record.reload().status() == "finished"


def test_run_status_is_read_from_the_files_not_the_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").write_bytes(b"INFO model saved.\n" + b"1\n" * 50_000)  # the hook's output after it
    record = {"output_name": "tiny"}
    assert supervisor.run_status(run_dir, 0, [], record) == "failed"  # no final LoRA: the log's word is not enough
    final = run_dir / "tiny.safetensors"
    header = json.dumps({"__metadata__": {"ss_epoch": "2", "ss_steps": "8"},
                         "w": {"dtype": "U8", "shape": [1000], "data_offsets": [0, 1000]}}).encode()
    final.write_bytes(len(header).to_bytes(8, "little") + header + bytes(1000))
    (run_dir / "train.log").write_bytes(b"no such line here\n")
    assert supervisor.run_status(run_dir, 0, [], record) == "finished"
    assert supervisor.lora_metadata(final) == {"ss_epoch": "2", "ss_steps": "8"}
    assert supervisor.run_status(run_dir, 1, [], record) == "failed"
    os.truncate(final, 8 + len(header) + 10)  # a save cut short is not a finished run
    assert supervisor.lora_metadata(final) is None and supervisor.run_status(run_dir, 0, [], record) == "failed"
    final.write_bytes(b"\xff" * 64)  # not a safetensors file at all
    assert supervisor.run_status(run_dir, 0, [], record) == "failed"


# ------------------------------------------------------------------ A6: the epoch the file says


def test_keep_names_the_lora_by_the_epoch_in_its_metadata(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=4, save_every=1)
    record = _start(session, STEP_SECONDS=0.01)
    follow_to_end(record)
    session.set("train.max_train_epochs", 3)  # lowered after training, loras/ empty
    save(session)
    final = keep.keep_epoch(session, None)
    assert final.lora.name == "tiny-e4.safetensors" and final.epoch == 4 and final.run_id == record.run_id
    side = json.loads(final.sidecar.read_text())
    assert side["epoch"] == 4 and side["step"] == 8 and side["source"] == str(record.dir / "tiny.safetensors")
    assert supervisor.lora_metadata(final.lora)["ss_epoch"] == "4"
    third = keep.keep_epoch(session, 3)
    assert third.lora.name == "tiny-e3.safetensors" and json.loads(third.sidecar.read_text())["step"] == 6
    assert supervisor.lora_metadata(third.lora)["ss_epoch"] == "3"
    assert Path(json.loads(third.sidecar.read_text())["source"]).name == "tiny-000003.safetensors"


def test_keep_never_falls_back_to_another_run_silently(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=4, save_every=1)
    older = _start(session, STEP_SECONDS=0.01)
    follow_to_end(older)
    session.set("train.max_train_epochs", 2)
    save(session)
    newest = _start(session, STEP_SECONDS=0.01)
    follow_to_end(newest)
    with pytest.raises(keep.KeepError) as caught:
        keep.keep_epoch(session, 3)  # the old code kept the older run's epoch 3 without a word
    line = str(caught.value)
    assert "\n" not in line and f"run {newest.run_id}" in line and f"run {older.run_id} has one" in line
    assert "epochs on disk: 1, 2" in line
    kept = keep.keep_epoch(session, 3, older)  # asked for by run: that run's file
    assert kept.run_id == older.run_id and kept.epoch == 3
    assert keep.keep_epoch(session, None).run_id == newest.run_id


def test_an_incomplete_final_lora_is_never_kept(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=2, save_every=1)
    record = _start(session, STEP_SECONDS=0.01)
    follow_to_end(record)
    os.truncate(record.dir / "tiny.safetensors", 1000)
    with pytest.raises(keep.KeepError, match="the final LoRA is not on disk"):
        keep.keep_epoch(session, None)
    assert keep.keep_epoch(session, 1).epoch == 1


# ------------------------------------------------------------------ C18: a hand-edited run.json


@pytest.mark.parametrize("value", ["x", -3, [2], 1.5, True, None])
def test_a_strange_process_count_in_run_json_is_not_a_traceback(tmp_path: Path, value: object) -> None:
    session = make_train_project(tmp_path, epochs=1)
    record = _start(session, STEP_SECONDS=0.01)
    follow_to_end(record)
    data = json.loads((record.dir / "run.json").read_text())
    data["extra"]["processes"] = value
    (record.dir / "run.json").write_text(json.dumps(data))
    assert RunFollower(RunRecord.load(record.dir)).state.processes == 1
    for command in (runctl.status, runctl.follow):
        out = io.StringIO()
        assert command(session.project_dir, out) == runctl.EXIT_FINISHED
        assert out.getvalue().count("\n") == 1 and out.getvalue().startswith("finished")


# ------------------------------------------------------------------ D: the token, an empty program


def test_neither_the_trainer_nor_the_hook_gets_the_hub_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_secretsecretsecret")
    session = make_train_project(tmp_path, epochs=1)
    seen = tmp_path / "hook-env.json"
    session.set("train.on_finish", [sys.executable, "-c",
                                    f"import json, os; open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ)))"])
    args = tmp_path / "args.json"
    record = _start(session, STEP_SECONDS=0.01, ARGS_FILE=args)
    follow_to_end(record)
    assert _hook_done(record)["ok"]
    hook_env = json.loads(seen.read_text())
    assert "HF_TOKEN" not in hook_env and "HUGGING_FACE_HUB_TOKEN" not in hook_env
    trainer_env = json.loads(args.read_text())["env"]
    assert trainer_env["HF_TOKEN"] is None and trainer_env["HUGGING_FACE_HUB_TOKEN"] is None
    assert os.environ["HF_TOKEN"] == "hf_secretsecretsecret"  # lorawizard's own process keeps it (publishing)


def test_an_empty_program_in_on_finish_is_refused_with_a_reason(tmp_path: Path) -> None:
    from lorawizard.core.session.document import Session, SessionError

    session = make_train_project(tmp_path, epochs=1)
    text = session.path.read_text(encoding="utf-8") + '\n[train]\non_finish = [""]\n'
    if "[train]" in session.path.read_text(encoding="utf-8"):
        text = session.path.read_text(encoding="utf-8").replace("[train]", '[train]\non_finish = [""]', 1)
    session.path.write_text(text, encoding="utf-8")
    with pytest.raises(SessionError) as caught:
        Session.load(session.path, read_only=True)
    assert "train.on_finish" in str(caught.value) and "Permission denied" not in str(caught.value)
    result = supervisor.run_on_finish(["", "x"], tmp_path, "finished", {})  # a record written before the check
    assert not result["ok"] and "an empty program name" in result["line"] and "\n" not in result["line"]
