"""Issue 25 item 3: validation — the session keys, where they are written (dataset config, command), bad input, the
validation loss parsed from train_network.py's output and kept in the log index, replay's lines and --status."""

from __future__ import annotations

import io
import json
import os
import tomllib
from pathlib import Path

import pytest

from lorawizard import runctl
from lorawizard.core.contract import StepFailed
from lorawizard.core.launch.command import CommandError, build_train_command, dataset_config_data, prepare_run
from lorawizard.core.session.document import Session, SessionError
from lorawizard.core.train.logparse import LogParser, TrainState
from lorawizard.core.train.step import FollowReporter, RunFollower, plan_run, start_run
from tests.support.sessions import save
from tests.support.standin import make_train_project
from tests.support.waiting import follow_to_end

# train_network.py's output into a pipe around an epoch's end with validation (tqdm's second bar at position 1:
# "\n", the bar, "\x1b[A"; its postfix `val_epoch_avg_loss`, `timestep` from np.linspace(0, 1000, 6)[1:-1])
EPOCH_END = (
    "\nepoch 1/2\n"
    "\rsteps:  25%|██▌       | 1/4 [00:07<00:22,  7.36s/it]"
    "\rsteps:  25%|██▌       | 1/4 [00:07<00:22,  7.36s/it, avr_loss=1.47]"
    "\rsteps:  50%|█████     | 2/4 [00:15<00:15,  7.71s/it, avr_loss=1.47]"
    "\rsteps:  50%|█████     | 2/4 [00:15<00:15,  7.71s/it, avr_loss=1.5] "
    "\n\repoch validation steps:   0%|          | 0/4 [00:00<?, ?it/s]\x1b[A"
    "\n\repoch validation steps:  25%|██▌       | 1/4 [00:00<00:01,  2.10it/s, val_epoch_avg_loss=0.433, timestep=200]\x1b[A"
    "\n\repoch validation steps:  75%|███████▌  | 3/4 [00:01<00:00,  2.21it/s, val_epoch_avg_loss=0.418, timestep=600]\x1b[A"
    "\n\repoch validation steps: 100%|██████████| 4/4 [00:01<00:00,  2.25it/s, val_epoch_avg_loss=0.421, timestep=800]\x1b[A"
    "\nepoch 2/2\n"
    "\rsteps:  75%|███████▌  | 3/4 [00:23<00:07,  7.71s/it, avr_loss=1.5]"
    "\rsteps:  75%|███████▌  | 3/4 [00:23<00:07,  7.71s/it, avr_loss=1.53]"
    "\rsteps: 100%|██████████| 4/4 [00:29<00:00,  7.45s/it, avr_loss=1.52]"
    "\n\repoch validation steps:  50%|█████     | 2/4 [00:00<00:00,  2.10it/s, val_epoch_avg_loss=0.407, timestep=400]\x1b[A"
)


def _state(text: str) -> TrainState:
    state = TrainState()
    parser = LogParser()
    state.apply(parser.feed_text(text) + parser.finish())
    return state


def test_validation_and_training_loss_per_epoch_from_the_real_format() -> None:
    state = _state(EPOCH_END)
    assert state.val_by_epoch == {1: 0.421}  # epoch 2's validation was cut short: no value
    assert state.train_by_epoch == {1: 1.5, 2: 1.52}  # avr_loss at each epoch's last step
    assert state.phase == "validating"
    assert state.phase_progress.label == "validating" and state.phase_progress.total == 4
    assert state.loss == 1.52  # the training loss stays the training bar's


def test_the_per_epoch_losses_survive_the_log_index(tmp_path: Path) -> None:
    from lorawizard.core.launch.runs import RunRecord

    (tmp_path / "train.log").write_text(EPOCH_END + "\n")
    record = RunRecord(run_id="r1", dir=tmp_path, argv=[], env={}, cwd=str(tmp_path), output_name="tiny")
    record.save()
    RunFollower(record, use_index=True).finish()
    saved = json.loads((tmp_path / "log-index.json").read_text())["state"]
    assert saved["val_by_epoch"] == [[1, 0.421]]
    again = RunFollower(record, use_index=True)
    again.poll()  # starts from the index: nothing left to read, the history is the index's
    assert again.bytes_read == 0
    assert again.state.val_by_epoch == {1: 0.421} and again.state.train_by_epoch == {1: 1.5, 2: 1.52}


def test_replay_says_each_epochs_validation_loss_once(tmp_path: Path) -> None:
    from lorawizard.core.launch.runs import RunRecord

    record = RunRecord(run_id="r1", dir=tmp_path, argv=[], env={}, cwd=str(tmp_path), output_name="tiny")
    follower = RunFollower(record)
    lines: list[str] = []
    reporter = FollowReporter(follower, lambda progress: None, lines.append)
    follower.state.apply(LogParser().feed_text(EPOCH_END))
    follower.state.val_by_epoch[2] = 0.40  # as if epoch 2's validation had ended
    reporter.report()
    reporter.report()
    said = [line for line in lines if "validation loss" in line]
    assert said == ["train: epoch 1 validation loss 0.421 (training 1.5)",
                    "train: epoch 2 validation loss 0.4 (training 1.52; lowest so far)"]


# ------------------------------------------------------------------ the session keys and where they go


def _project(tmp_path: Path, images: int = 10, **train: object) -> Session:
    session = make_train_project(tmp_path, images=images, epochs=4, save_every=2)
    for key, value in train.items():
        session.set(f"train.{key}", value)
    save(session)
    return Session.load(session.path)


def test_the_keys_are_checked_with_one_line(tmp_path: Path) -> None:
    session = _project(tmp_path)
    assert "\n[train]\n" in session.to_text()
    for bad in (0, 0.0, 0.6, -0.1):
        session.path.write_text(session.to_text().replace("[train]", f"[train]\nvalidation_split = {bad}", 1))
        with pytest.raises(SessionError, match=r"train\.validation_split: expected a share above 0 and at most 0\.5"):
            Session.load(session.path)
    session.path.write_text(session.to_text().replace("[train]", "[train]\nvalidation_every_n_epochs = 0", 1))
    with pytest.raises(SessionError, match=r"train\.validation_every_n_epochs: expected a value from 1"):
        Session.load(session.path)
    session.path.write_text(session.to_text())
    assert Session.load(session.path).train.validation_split is None  # unset: no validation
    assert Session.load(session.path).train.validation_every_n_epochs == 1


def test_validation_split_goes_on_each_datasets_table_and_the_options_on_the_command(tmp_path: Path) -> None:
    session = _project(tmp_path, validation_split=0.1, validation_every_n_epochs=2, seed=7)
    prepared = prepare_run(session, tmp_path / "run")
    config = tomllib.loads(prepared.dataset_config.read_text())
    assert [d["validation_split"] for d in config["datasets"]] == [0.1]
    assert "validation_split" not in config["general"]
    assert all("validation_split" not in s for d in config["datasets"] for s in d["subsets"])
    argv = prepared.command.argv
    assert argv[argv.index("--validate_every_n_epochs") + 1] == "2"
    assert argv[argv.index("--validation_seed") + 1] == "7"
    assert "--cache_latents_to_disk" in argv  # validation needs cached latents
    assert "--validation_split" not in argv  # the dataset config's, not the command's (global) one


def test_no_validation_unless_asked_and_never_in_a_probes_trial(tmp_path: Path) -> None:
    plain = _project(tmp_path / "a")
    prepared = prepare_run(plain, tmp_path / "a" / "run")
    assert "validation_split" not in prepared.dataset_config.read_text()
    assert "--validate_every_n_epochs" not in prepared.command.argv
    validating = _project(tmp_path / "b", validation_split=0.2)
    trial = build_train_command(validating, dataset_config=tmp_path / "d.toml", accelerate_config=tmp_path / "a.yaml",
                                output_dir=tmp_path / "out")
    assert "--validate_every_n_epochs" not in trial.argv  # the probe builds its own, without validation
    assert "validation_split" not in dataset_config_data(validating, buckets=["512x512"])["datasets"][0]


def test_too_few_images_for_one_validation_image_per_bucket_says_how_many(tmp_path: Path) -> None:
    session = _project(tmp_path, images=5, validation_split=0.1)
    with pytest.raises(CommandError) as caught:
        dataset_config_data(session, validation=True)
    line = str(caught.value)
    assert "\n" not in line
    assert "bucket 512x512 has 5 image(s)" in line and "needs at least 6 per bucket" in line
    with pytest.raises(StepFailed, match="needs at least 6 per bucket"):
        plan_run(session)
    enough = _project(tmp_path / "more", images=6, validation_split=0.1)
    assert dataset_config_data(enough, validation=True)["datasets"][0]["validation_split"] == 0.1


@pytest.mark.parametrize("optimizer", ["AdamWScheduleFree", "RAdamScheduleFree", "prodigyplus.ProdigyPlusScheduleFree"])
def test_a_schedule_free_optimizer_is_refused_with_validation(tmp_path: Path, optimizer: str) -> None:
    session = _project(tmp_path, validation_split=0.2, optimizer_type=optimizer)
    with pytest.raises(StepFailed, match=f"does not support validation loss with a schedule-free optimizer \\({optimizer}\\)"):
        plan_run(session)
    without = _project(tmp_path / "plain", optimizer_type=optimizer)
    assert "--validate_every_n_epochs" not in plan_run(without).command.argv  # fine without validation


def test_extra_args_cannot_set_validation_behind_the_sessions_back(tmp_path: Path) -> None:
    session = _project(tmp_path, extra_args=["--validation_split", "0.3"])
    with pytest.raises(StepFailed, match=r"--validation_split is set by lorawizard; change it through train\.validation_split"):
        plan_run(session)


# ------------------------------------------------------------------ the stand-in run, end to end


def test_a_validating_run_reports_its_losses_and_status_suggests_an_epoch(tmp_path: Path) -> None:
    session = make_train_project(tmp_path, images=10, epochs=6, save_every=2)
    session.set("train.validation_split", 0.2)
    save(session)
    session = Session.load(session.path)
    os.environ["STANDIN_STEP_SECONDS"] = "0.005"
    os.environ["STANDIN_VAL_CURVE"] = "0.50,0.45,0.42,0.41,0.43,0.46"
    try:
        record = start_run(session, plan_run(session))
    finally:
        os.environ.pop("STANDIN_STEP_SECONDS")
        os.environ.pop("STANDIN_VAL_CURVE")
    follower = follow_to_end(record)
    assert follower.state.val_by_epoch == pytest.approx({1: 0.50, 2: 0.45, 3: 0.42, 4: 0.41, 5: 0.43, 6: 0.46})
    assert sorted(follower.state.train_by_epoch) == [1, 2, 3, 4, 5, 6]
    out = io.StringIO()
    code = runctl.status(session.project_dir, out)
    line = out.getvalue().strip()
    assert code == runctl.EXIT_FINISHED, line
    assert "val 0.46 at epoch 6 · suggested: epoch 4 (val 0.41; epochs 5–6 rise to 0.46)" in line
