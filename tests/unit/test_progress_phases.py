"""Issue 24 item 6: every phase of a run (loading, caching latents, caching text-encoder outputs, sampling, training,
saving) has a label, its own count and a rate once it has one, and the run's ETA includes the sampling and saving
still to come, learned from the run itself (and counts down while they run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lorawizard.core.common.progress import format_rate
from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train.logparse import LogParser, TrainState
from lorawizard.core.train.step import RunFollower, epoch_ends

pytestmark = pytest.mark.unit

REAL = Path(__file__).parents[1] / "support" / "real_logs"
T = "2026-11-25 16:52:10"


def _pieces(data: bytes) -> list[bytes]:
    """The log as the trainer wrote it: one tqdm redraw or line at a time."""
    return [piece for piece in re.split(rb"(?<=[\r\n])", data) if piece]


def _record(*pieces: str, src: str = "flux_train_utils.py:61") -> str:
    """A rich log record as sd-scripts prints it at 80 columns: time, level, message, source; continuation lines
    indented by 29 spaces."""
    head = f"{T} INFO     {pieces[0]:<30} {src}\n"
    return head + "".join(f"{' ' * 29}{piece:<50}\n" for piece in pieces[1:])


def _sampling(step: int, prompts: list[str], seconds_per_step: int = 1, steps: int = 4) -> str:
    """One sampling round in sd-scripts' formats: the record, then per prompt its record and its 0/N bar."""
    out = [_record("generating sample images at", "step / サンプル画像生成", f"ステップ: {step}")]
    for prompt in prompts:
        out.append(_record(f"prompt: {prompt}", src="flux_train_utils.py:182"))
        out.append(f"\r  0%|          | 0/{steps} [00:00<?, ?it/s]")
        for n in range(1, steps + 1):
            elapsed = n * seconds_per_step
            out.append(f"\r{n * 100 // steps:3d}%|█████     | {n}/{steps} [00:{elapsed:02d}<00:{(steps - n) * seconds_per_step:02d},"
                       f"  {1 / seconds_per_step:.2f}it/s]")
        out.append("\n")
    return "".join(out)


def _steps(n: int, total: int, elapsed: int, s_per_it: float, loss: float | None = None) -> str:
    post = f", avr_loss={loss}" if loss is not None else ""
    return f"\rsteps: {n * 100 // total:3d}%|██▌       | {n}/{total} [00:{elapsed:02d}<00:10, {s_per_it:.2f}s/it{post}]"


def _saving(epoch: int, step: int) -> str:
    return (f"\nsaving checkpoint: /home/user/out/tiny-{epoch:06d}.safetensors\n"
            + _record("save train state to", f"/home/user/out/tiny-{epoch:06d}-state/train_state.json",
                      f"at epoch {epoch} step {step}", src="train_network.py:946"))


PROMPTS = ["tok, a red circle", "tok, a blue square"]
# 2 epochs of 2 steps at 7 s/step; a baseline round and one at each epoch end (2 prompts × 4 steps × 1 s = 8 s);
# the epoch-1 save takes 5 s: the bar's elapsed time goes 14 → 34 over step 3 (7 s step + 5 s save + 8 s sampling)
HEAD = ("running training / 学習開始\n  num batches per epoch / 1epochのバッチ数: 2\n  num epochs / epoch数: 2\n"
        "  total optimization steps / 学習ステップ数: 4\n")
LOG = {
    "baseline": HEAD + _sampling(0, PROMPTS),
    "epoch 1": "\rsteps:   0%|          | 0/4 [00:00<?, ?it/s]\nepoch 1/2\n" + _steps(1, 4, 7, 7.0)
    + _steps(1, 4, 7, 7.0, 1.5) + _steps(2, 4, 14, 7.0, 1.4),
    "epoch 1 end": _saving(1, 2) + _sampling(2, PROMPTS[:1]),
    "epoch 1 end, 2nd prompt": _sampling(2, PROMPTS[1:]).split("\r 75%")[0].replace(
        _record("generating sample images at", "step / サンプル画像生成", "ステップ: 2"), ""),
    "epoch 2": "\r 75%|███████▌  | 3/4 [00:03<00:01,  1.00it/s]\r100%|██████████| 4/4 [00:04<00:00,  1.00it/s]\n"
    + "\nepoch 2/2\n" + _steps(3, 4, 34, 10.0, 1.3) + _steps(4, 4, 41, 9.0, 1.2),
}


def _state() -> TrainState:
    return TrainState(sample_every=1, save_every=1, sample_prompts=2)


def _feed(state: TrainState, parser: LogParser, text: str) -> None:
    for piece in _pieces(text.encode()):
        state.apply(parser.feed(piece))


def test_caching_phases_of_the_real_log_have_a_label_a_count_and_a_rate() -> None:
    """The real trainer's text-encoder caching drew an unlabelled `0/2` for minutes, the dashboard `0%  ETA --:--`."""
    state, parser = TrainState(), LogParser()
    seen: dict[str, tuple] = {}
    lines: set[str] = set()
    for piece in _pieces((REAL / "train.log").read_bytes()):
        state.apply(parser.feed(piece))
        progress = state.phase_progress
        seen.setdefault(f"{progress.label} {progress.done}/{progress.total}", progress)
        lines.add(state.bar_line)
    latents = seen["caching latents 1/4"]
    assert latents.unit == "images" and format_rate(latents.rate, latents.unit) == "1.59 images/s"
    encoder = seen["caching text encoder outputs 1/2"]
    assert (encoder.unit, encoder.elapsed_s, encoder.left_s) == ("batches", 41.0, 41.0)
    assert format_rate(encoder.rate, encoder.unit) == "41.2 s/batch"
    assert seen["caching text encoder outputs 0/2"].rate is None  # no rate before it has one, and no made-up one
    assert "caching text encoder outputs: 1/2" in lines and "1/2" not in lines  # the bar under the chart is labelled
    assert seen["training 3/4"].unit == "steps"
    assert {"reading the dataset", "loading models", "saving", "finished"} <= {p.label for p in seen.values()}


def test_sampling_is_labelled_by_prompt_with_its_own_count() -> None:
    state, parser = _state(), LogParser()
    _feed(state, parser, HEAD + _sampling(0, PROMPTS).rsplit("\r 75%", 1)[0])  # the 2nd prompt at 2 of 4 steps
    progress = state.phase_progress
    assert (progress.label, progress.done, progress.total, progress.unit) == ("sampling prompt 2/2", 2, 4, "steps")
    assert format_rate(progress.rate, "steps") == "1.00 steps/s"
    assert state.bar_line == "sampling prompt 2/2: 2/4"


def test_eta_includes_the_sampling_and_saving_still_to_come_learned_from_the_run() -> None:
    state, parser = _state(), LogParser()
    _feed(state, parser, LOG["baseline"] + LOG["epoch 1"])
    assert state.timing.sampling_s == 8.0  # the baseline round: 2 prompts × 4 s
    # 2 steps at 7 s, and a sampling round at the end of each epoch; no save measured yet
    assert state.eta_s == pytest.approx(2 * 7 + 2 * 8)

    _feed(state, parser, LOG["epoch 1 end"])  # saved, sampled the 1st prompt: 4 s of the round's 8 are done
    assert state.phase_progress.label == "sampling prompt 1/2"
    assert state.eta_s == pytest.approx(2 * 7 + (8 - 4) + 8)
    _feed(state, parser, LOG["epoch 1 end, 2nd prompt"])  # 2 of the 2nd prompt's 4 steps
    assert state.phase_progress.label == "sampling prompt 2/2"
    assert state.eta_s == pytest.approx(2 * 7 + (8 - 6) + 8)

    _feed(state, parser, LOG["epoch 2"])
    # the epoch-1 save is learned from the bar's gap: 34 - 14 s = one 7 s step + 8 s sampling + 5 s saving
    assert state.timing.saving_s == pytest.approx(5.0)
    assert state.step == 4 and state.eta_s == pytest.approx(8 + 5)  # the last round and the final save to come

    _feed(state, parser, _sampling(4, PROMPTS[:1]))
    assert state.eta_s == pytest.approx(4 + 5)


def test_the_eta_counts_down_while_nothing_changes_it(tmp_path: Path) -> None:
    """During sampling or saving no training bar comes for minutes: the ETA froze there."""
    now = [100.0]
    record = RunRecord(run_id="r", dir=tmp_path, argv=[], env={}, cwd=str(tmp_path))
    (tmp_path / "train.log").write_text(LOG["baseline"] + LOG["epoch 1"] + _saving(1, 2))
    follower = RunFollower(record, clock=lambda: now[0])
    follower.state.sample_every, follower.state.sample_prompts = 1, 2
    follower.poll()
    first = follower.eta_s()
    assert first == pytest.approx(2 * 7 + 2 * 8)
    now[0] += 10
    follower.poll()
    assert follower.eta_s() == pytest.approx(first - 10)


def test_the_run_command_says_what_comes_at_epoch_ends(tmp_path: Path) -> None:
    (tmp_path / "sample_prompts.json").write_text('[{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]')
    argv = ["python", "x.py", "--sample_prompts", str(tmp_path / "sample_prompts.json"), "--sample_every_n_epochs", "2",
            "--save_every_n_epochs", "1"]
    record = RunRecord(run_id="r", dir=tmp_path, argv=argv, env={}, cwd=str(tmp_path))
    assert epoch_ends(record) == {"sample_every": 2, "save_every": 1, "sample_prompts": 3}
    bare = RunRecord(run_id="r", dir=tmp_path, argv=["python"], env={}, cwd=str(tmp_path))
    assert epoch_ends(bare) == {"sample_every": None, "save_every": None, "sample_prompts": None}


def test_the_log_index_keeps_what_the_run_learned_of_its_epoch_ends(tmp_path: Path) -> None:
    """`--status` starts from log-index.json: its ETA counts the sampling and saving still to come too."""
    record = RunRecord(run_id="r", dir=tmp_path, argv=[], env={}, cwd=str(tmp_path))
    (tmp_path / "train.log").write_text(LOG["baseline"] + LOG["epoch 1"] + LOG["epoch 1 end"] + LOG["epoch 1 end, 2nd prompt"]
                                        + LOG["epoch 2"] + "\n")
    follower = RunFollower(record)
    follower.state.sample_every, follower.state.sample_prompts = 1, 2
    follower.finish()
    again = RunFollower(record, use_index=True)
    again.state.sample_every, again.state.sample_prompts = 1, 2
    again.poll()
    assert (again.state.timing.sampling_s, again.state.timing.saving_s) == (8.0, pytest.approx(5.0))
    assert (again.state.sampled_epoch, again.state.saved_epoch) == (1, 1)
    assert again.state.eta_s == pytest.approx(follower.state.eta_s) == pytest.approx(8 + 5)
