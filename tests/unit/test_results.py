"""Issue 13 in core: sample prompts, the state cadence, step-state resume, keep an epoch, on_finish, run control."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

from lorawizard import runctl
from lorawizard.core.launch import runs
from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train import keep, samples, statesave
from lorawizard.core.train.step import RunFollower, plan_run, start_run
from lorawizard.headless import replay
from tests.support.sessions import save
from tests.support.standin import make_train_project
from tests.support.waiting import follow_to_end


def _start(session, resume: bool = False, **env: object) -> RunRecord:
    for key, value in env.items():
        os.environ[f"STANDIN_{key}"] = str(value)
    try:
        return start_run(session, plan_run(session, resume=resume))
    finally:
        for key in env:
            os.environ.pop(f"STANDIN_{key}", None)


def _argv_value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


# ------------------------------------------------------------------ sample prompts


AWKWARD = ["tok, line one\nline two", 'she said "hi" --w 64 --d 7', "tok --h 32", "café ünïcode 猫"]


def test_prompts_default_from_the_trigger_and_go_in_a_json_file(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=4, save_every=2)
    session.set("dataset.trigger", "zkq")
    plan = plan_run(session)
    argv = plan.command.argv
    prompt_file = Path(_argv_value(argv, "--sample_prompts"))
    assert prompt_file.is_absolute() and prompt_file.suffix == ".json" and prompt_file.parent == plan.run_dir
    entries = json.loads(prompt_file.read_text(encoding="utf-8"))
    assert len(entries) == 3 and all(e["prompt"].startswith("zkq") for e in entries)
    assert entries[0] == {"prompt": entries[0]["prompt"], "width": 512, "height": 512, "sample_steps": 20,
                          "guidance_scale": 3.5, "seed": 42}  # largest bucket, fixed seed
    assert _argv_value(argv, "--sample_every_n_epochs") == "2" and "--sample_at_first" in argv
    assert any("sampling: 3 prompts" in note and "VRAM" in note for note in plan.notes)


def test_awkward_prompts_are_kept_whole_and_never_reach_argv(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    session.set("train.samples.prompts", AWKWARD)
    session.set("train.samples.at_first", False)
    session.set("train.samples.every_n_epochs", 1)
    plan = plan_run(session)
    entries = json.loads(Path(_argv_value(plan.command.argv, "--sample_prompts")).read_text(encoding="utf-8"))
    assert [e["prompt"] for e in entries] == AWKWARD
    assert not any(p in word for word in plan.command.argv for p in AWKWARD)
    assert "--sample_at_first" not in plan.command.argv


def test_an_empty_prompt_list_turns_sampling_off(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    session.set("train.samples.prompts", [])
    plan = plan_run(session)
    assert not any(word.startswith("--sample") for word in plan.command.argv)
    assert "sampling off" in " ".join(plan.notes)


def test_the_probe_keeps_sampling_off(tmp_path: Path) -> None:
    from lorawizard.core.gpu.presets import load_presets
    from lorawizard.core.probe.trials import probe_overrides

    session = make_train_project(tmp_path)
    overrides = probe_overrides(session, load_presets(session)[0])
    assert all(overrides[k] is None for k in ("sample_prompts", "sample_every_n_epochs", "sample_at_first"))


def test_standin_writes_real_sample_names_and_the_gallery_reads_them(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=3)
    session.set("train.samples.prompts", AWKWARD[:2])
    session.set("train.samples.every_n_epochs", 1)
    record = _start(session, STEP_SECONDS=0.01)
    assert follow_to_end(record).state.model_saved
    names = sorted(p.name for p in (record.dir / "sample").iterdir())
    assert len(names) == 8 and names[0].startswith("tiny_e000000_00_") and names[0].endswith("_42.png")
    # foreign and half-written files are skipped
    (record.dir / "sample" / "notes.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    half = record.dir / "sample" / "tiny_e000009_00_20260101000000_42.png"
    half.write_bytes((record.dir / "sample" / names[0]).read_bytes()[:40])
    (record.dir / "sample" / "tiny_000004_00_20260101000000.png").write_bytes(b"step-based: not a column")
    grid = samples.gallery([record.dir], "tiny", samples.read_prompts(record.dir))
    assert grid.epochs == [0, 1, 2, 3] and grid.rows == 2 and grid.prompts == AWKWARD[:2]
    assert grid.image(1, 3).path.name.startswith("tiny_e000003_01_")


def test_sample_names_are_parsed_like_sd_scripts_writes_them() -> None:
    parse = samples.parse_sample_name
    image = parse(Path("my_lora_e000012_03_20261125165121_42.png"), "my_lora")
    assert (image.epoch, image.index, image.seed) == (12, 3, 42)
    assert parse(Path("my_lora_e000012_03_20261125165121.png"), "my_lora").seed is None
    assert parse(Path("other_e000012_03_20261125165121_42.png"), "my_lora") is None
    assert parse(Path("my_lora_000500_01_20260101123456.png"), "my_lora") is None


# ------------------------------------------------------------------ the state cadence


@pytest.mark.parametrize(("s_per_step", "minutes", "steps"), [(3.0, 15, 300), (0.5, 15, 1800), (2000.0, 15, 1), (None, 15, None)])
def test_step_save_arithmetic(s_per_step, minutes, steps) -> None:
    assert statesave.steps_for(s_per_step, minutes) == steps


def test_cadence_from_the_probe_prunes_and_says_the_state_size(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    session.paths.state.mkdir(parents=True, exist_ok=True)
    (session.paths.state / "probe.json").write_text(json.dumps(
        {"buckets": {"512x512": {"s_per_step": 4.5}, "1024x1024": {"s_per_step": 9.0}}}))
    plan = plan_run(session)
    argv = plan.command.argv
    assert _argv_value(argv, "--save_every_n_steps") == "200"  # 15 min at 4.5 s/step (bucket in use only)
    assert _argv_value(argv, "--save_last_n_steps_state") == "200" and _argv_value(argv, "--save_last_n_epochs_state") == "2"
    assert "a state every 200 steps" in plan.notes[0] and "each state takes" in plan.notes[0]


def test_stop_loses_only_the_steps_since_the_last_step_state(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=2, images=8, batch_size=1)  # 8 steps per epoch, 16 in all
    session.set("train.samples.prompts", [])
    session.set("train.state_minutes", 1)
    session.paths.state.mkdir(parents=True, exist_ok=True)
    (session.paths.state / "probe.json").write_text(json.dumps({"buckets": {"512x512": {"s_per_step": 20.0}}}))
    first = _start(session, STEP_SECONDS=0.01, KILL_AT_STEP=12)  # a state every 3 steps; killed at step 12
    follow_to_end(first)
    folders = sorted(p.name for p in first.dir.iterdir() if p.name.endswith("-state"))
    # step states pruned to the newest two (3 was removed); the epoch state stays
    assert folders == ["tiny-000001-state", "tiny-step00000006-state", "tiny-step00000009-state"]
    state = runs.newest_state(session.paths.runs)
    assert (state.step, state.epoch) == (9, 2)
    plan = plan_run(session, resume=True)
    assert (plan.base_step, plan.base_epoch) == (9, 1)
    resumed = follow_to_end(start_run(session, plan)).state
    assert resumed.model_saved and resumed.step == 16 and resumed.losses.points[0][0] == 10  # nothing redone
    again = runs.newest_state(session.paths.runs)
    assert again.step == 16  # the end state of the resumed run, counted absolutely
    assert statesave.steps_lost(11, 9) == 2 and statesave.steps_lost(5, None) == 5
    assert runs.newest_state_step(runs.RunRecord.load(again.path.parent)) == 16


def test_the_stop_question_says_what_is_lost() -> None:
    # where the run is, for the question, --stop and --status alike: a newer saved state wins over a lagging log
    assert statesave.step_now(3, 4) == 4 and statesave.step_now(5, 4) == 5 and statesave.step_now(5, None) == 5
    assert statesave.stop_question(340, 1200, 300) == (
        "Stop the run at step 340/1200? It resumes from the state saved at step 300 (40 steps lost).")
    assert statesave.stop_question(301, 1200, 300).endswith("(1 step lost).")
    assert statesave.stop_question(298, 1200, 300) == (  # the log view lags a state already on disk
        "Stop the run at step 300/1200? It resumes from the state saved at step 300 (0 steps lost).")
    assert [statesave.steps_text(n) for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]  # --stop, --status, s
    assert statesave.stop_question(12, None, None) == (
        "Stop the run at step 12? No state is saved yet: a new run starts over (12 steps lost).")


# ------------------------------------------------------------------ keep an epoch


def test_keep_epoch_copies_the_lora_with_a_sidecar(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=3)
    session.set("dataset.trigger", "zkq")
    session.set("train.samples.every_n_epochs", 1)
    follow_to_end(_start(session, STEP_SECONDS=0.01))
    kept = keep.keep_epoch(session, 2)
    assert kept.lora == session.project_dir / "loras" / "tiny-e2.safetensors" and kept.lora.stat().st_size == 3154356
    umask = os.umask(0o022)
    os.umask(umask)
    # QA: the kept copy was 0600 (the temp file's mode) beside a 0644 sidecar and 0644 run checkpoints
    assert kept.lora.stat().st_mode & 0o777 == 0o666 & ~umask == kept.sidecar.stat().st_mode & 0o777
    side = json.loads(kept.sidecar.read_text())
    assert side["epoch"] == 2 and side["step"] == 4 and side["trigger"] == "zkq" and side["run_id"] == kept.run_id
    assert side["settings"]["max_train_epochs"] == 3 and len(side["samples"]) == 3
    final = keep.keep_epoch(session, None)
    assert final.lora.name == "tiny-e3.safetensors"  # the final LoRA is the last epoch
    with pytest.raises(keep.KeepError, match="epoch 5 is not on disk"):
        keep.keep_epoch(session, 5)


def test_replay_keeps_the_final_lora_and_refuses_a_missing_keep_epoch(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    session = make_train_project(tmp_path, epochs=4, save_every=2)
    session.set("train.keep_epoch", 3)
    save(session)
    out, err = io.StringIO(), io.StringIO()
    assert replay(session.path, ["train"], out=out, err=err, tty=False) == 2
    assert err.getvalue().count("\n") == 1 and "keep_epoch = 3" in err.getvalue() and "2, 4" in err.getvalue()
    session.set("train.keep_epoch", 2)
    save(session)
    assert replay(session.path, ["train"], out=out, err=err, tty=False) == 0, err.getvalue()
    assert (session.project_dir / "loras" / "tiny-e2.safetensors").is_file()
    assert (session.project_dir / "loras" / "tiny-e2.json").is_file()


# ------------------------------------------------------------------ on_finish


def _hook(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "hook.py"
    script.write_text(body)
    return [sys.executable, str(script)]


def test_on_finish_runs_once_with_the_run_in_its_environment(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=1)
    seen = tmp_path / "seen.json"
    session.set("train.on_finish", _hook(tmp_path, (
        "import json, os, sys\n"
        f"open({str(seen)!r}, 'a').write(json.dumps({{k: os.environ.get(k) for k in "
        "('LORAWIZARD_RUN_STATUS', 'LORAWIZARD_RUN_DIR', 'LORAWIZARD_LORA')}) + '\\n')\n")))
    record = _start(session, STEP_SECONDS=0.01)
    follow_to_end(record)
    deadline = time.monotonic() + 10
    while "on_finish" not in (record.exit_info() or {}):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lines = seen.read_text().splitlines()
    assert len(lines) == 1
    env = json.loads(lines[0])
    assert env == {"LORAWIZARD_RUN_STATUS": "finished", "LORAWIZARD_RUN_DIR": str(record.dir),
                   "LORAWIZARD_LORA": str(record.dir / "tiny.safetensors")}
    assert record.status() == "finished" and record.exit_info()["on_finish"]["ok"]


@pytest.mark.parametrize(("command", "expected"), [
    (["/nonexistent/notify-me"], "cannot run"),
    ("exit", "exited with status 3"),
    ("hang", "did not end within 0.5 s"),
])
def test_on_finish_failures_are_reported_and_never_change_the_run(tmp_path: Path, command, expected) -> None:
    from lorawizard.core.launch.supervisor import run_on_finish

    if command == "exit":
        command = _hook(tmp_path, "raise SystemExit(3)\n")
    elif command == "hang":
        command = _hook(tmp_path, "import time\ntime.sleep(60)\n")
    started = time.monotonic()
    result = run_on_finish(command, tmp_path, "failed", {"output_name": "x"}, timeout=0.5)
    assert not result["ok"] and expected in result["line"] and time.monotonic() - started < 10


# ------------------------------------------------------------------ run control from the shell


def test_status_follow_stop_resume_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.cli import main

    session = make_train_project(tmp_path, epochs=3, batch_size=1)  # 4 steps per epoch
    project = session.project_dir
    out = io.StringIO()
    assert runctl.status(tmp_path / "nowhere", out) == 4 and out.getvalue().startswith("no run")
    assert runctl.status(project, io.StringIO()) == 4
    assert runctl.stop(project, io.StringIO()) == 4
    _start(session, STEP_SECONDS=0.2, HANG_AT_STEP=3)
    deadline = time.monotonic() + 20
    out = io.StringIO()
    while runctl.status(project, out) != 3 or "step 2/" not in out.getvalue().splitlines()[-1]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("running · ") and "loses 2 steps" in line
    out = io.StringIO()
    assert runctl.stop(project, out) == 0
    assert "loses 2 steps" in out.getvalue() and "stopped (SIGINT)" in out.getvalue()
    assert "(SIGINT now, SIGTERM after 60 s, SIGKILL 15 s later)" in out.getvalue(), out.getvalue()
    out = io.StringIO()
    assert runctl.status(project, out) == 1
    assert out.getvalue().startswith("stopped · ") and "ETA" not in out.getvalue()  # QA: it said "ETA 2:48"
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.01")
    assert main(["--replay", str(session.path), "--steps", "train", "--resume"]) == 1  # no state before epoch 1 ...
    follow_to_end(_start(session, STEP_SECONDS=0.01, KILL_AT_STEP=5))  # ... now there is one (epoch 1)
    assert main(["--replay", str(session.path), "--steps", "train", "--resume"]) == 0
    assert main([str(project), "--status"]) == 0 and main([str(project), "--follow"]) == 0
    out = io.StringIO()
    assert runctl.status(project, out) == 0 and "ETA" not in out.getvalue()  # finished: no "ETA 0:00"
    newest = runs.list_runs(session.paths.runs)[-1]
    assert newest.base_step == 4 and newest.status() == "finished"


def test_follow_follows_a_live_run_to_its_end(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, epochs=2)
    _start(session, STEP_SECONDS=0.05)
    out = io.StringIO()
    assert runctl.follow(session.project_dir, out) == 0
    assert "following run" in out.getvalue() and "model saved" in out.getvalue()


def test_probe_report_says_what_sampling_adds(tmp_path: Path) -> None:
    from lorawizard.core.probe.shared import AreaResult, sampling_note

    session = make_train_project(tmp_path, epochs=4, save_every=2)
    note = sampling_note(session, [])
    assert "without sampling" in note and "3 prompts × 3 times" in note and "VRAM" in note
    session.set("train.samples.prompts", [])
    assert "sampling off" in sampling_note(session, [])
    assert AreaResult  # the type the note reads s/step from


def test_a_fresh_run_stopped_before_its_first_state_is_not_called_resumable(tmp_path: Path) -> None:
    """QA: a finished run, then a fresh one stopped with --stop before it saved a state: --stop said "resume:
    lorawizard --replay SESSION.toml …" and --status "resumable", but --resume refused (the newest state, the finished
    run's, was already at the last epoch). Now both say so; a resumable run names the real session file."""
    from lorawizard.cli import main

    session = make_train_project(tmp_path / "my loras", epochs=2, batch_size=1)  # 4 steps per epoch
    project = session.project_dir
    follow_to_end(_start(session, STEP_SECONDS=0.01))  # finished: its last state is at epoch 2 of 2
    record = _start(session, STEP_SECONDS=0.2, HANG_AT_STEP=2)
    deadline = time.monotonic() + 20
    while _wait_step(record) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    out = io.StringIO()
    assert runctl.stop(project, out) == 0
    assert "resume:" not in out.getvalue() and "saved no state to resume from" in out.getvalue(), out.getvalue()
    out = io.StringIO()
    assert runctl.status(project, out) == 1
    assert "resumable" not in out.getvalue() and "saved no state" in out.getvalue(), out.getvalue()
    assert main(["--replay", str(session.path), "--steps", "train", "--resume"]) == 1  # as both said

    follow_to_end(_start(session, STEP_SECONDS=0.01, KILL_AT_STEP=5))  # a state at epoch 1, then it dies
    out = io.StringIO()
    assert runctl.status(project, out) == 1
    assert f"resumable from step 4: lorawizard --replay '{session.path}' --steps train --resume" in out.getvalue(), \
        out.getvalue()


def _wait_step(record: RunRecord) -> int:
    follower = RunFollower(record)
    follower.finish()
    return follower.state.step


def test_a_run_whose_own_state_is_at_the_last_epoch_is_not_said_to_have_saved_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after writing its last state (say during the final sampling): --resume refuses, and the hint
    says why, instead of "saved no state" (it saved one). An older run's state at the end still reads "no state"."""
    from types import SimpleNamespace

    record = SimpleNamespace(run_id="r2", base_step=0, dir=tmp_path / "r2")
    own = runs.SavedState(tmp_path / "r2" / "zkq-000002-state", 2, 8, "r2", 0.0)
    monkeypatch.setattr(runs, "newest_state", lambda runs_dir: own)
    hint = runctl.resume_hint(record, "s.toml", 2)
    assert "saved no state" not in hint and "resumable" not in hint, hint
    assert hint.startswith("its newest state is at the last epoch (2 of train.max_train_epochs = 2)"), hint
    assert runctl.resume_hint(record, "s.toml", 3) == \
        "resumable from step 8: lorawizard --replay s.toml --steps train --resume"
    older = runs.SavedState(tmp_path / "r1" / "zkq-000002-state", 2, 8, "r1", 0.0)
    monkeypatch.setattr(runs, "newest_state", lambda runs_dir: older)
    assert runctl.resume_hint(record, "s.toml", 2).startswith("saved no state to resume from")


def test_a_run_that_ends_before_its_run_json_is_written_is_still_judged_by_its_final_lora(tmp_path: Path) -> None:
    """The launcher writes run.json once the supervisor has started (it needs its pid): a run over before that (a
    loaded machine, a very short run) was judged without the output name — its final LoRA looked for as last.safetensors
    — and said "failed" (seen once in CI). The supervisor waits for run.json before judging."""
    import subprocess
    import threading

    from lorawizard.core.launch import supervisor

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    standin = Path(__file__).parents[1] / "support" / "standin"
    trainer = (f"import sys; from pathlib import Path; sys.path.insert(0, {str(standin)!r}); "  # the stand-in's writer
               f"from flux_train_network import write_sparse; write_sparse(Path({str(run_dir / 'tiny.safetensors')!r}), "
               "4096, {'ss_output_name': 'tiny'})")
    child = subprocess.Popen([sys.executable, supervisor.__file__, str(run_dir), "--", sys.executable, "-c", trainer])
    threading.Timer(1.0, lambda: (run_dir / runs.RUN_FILE).write_text(json.dumps({"output_name": "tiny"}))).start()
    assert child.wait(timeout=60) == 0
    exit_record = json.loads((run_dir / supervisor.EXIT_FILE).read_text())
    assert exit_record["status"] == "finished", exit_record
