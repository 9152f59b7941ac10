"""core.logparse: sd-scripts console output (tqdm '\\r' bars, rich 80-column records, prints, tracebacks) → events."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorawizard.core.train.logparse import (
    Bar,
    CheckpointSaved,
    Epoch,
    Failure,
    Line,
    LogParser,
    LossHistory,
    ModelSaved,
    Resumed,
    SampleStarted,
    StateSaved,
    Totals,
    TrainState,
    parse_bar,
    parse_bytes,
)

# Our own excerpt in sd-scripts' real formats (rich at 80 columns into a pipe, tqdm '\r' redraws, prints).
EXCERPT = (
    "2026-11-25 16:47:39 INFO     Loading dataset config from    train_network.py:519\n"
    "                             /home/user/lw-e2e/dataset/data                     \n"
    "                             set_config.toml                                    \n"
    "                    WARNING  no regularization images /       train_util.py:2167\n"
    "                             正則化画像が見つかりませんでした                   \n"
    "running training / 学習開始\n"
    "  num train images * repeats / 学習画像の数×繰り返し回数: 4\n"
    "  num validation images * repeats / 学習画像の数×繰り返し回数: 0\n"
    "  num reg images / 正則化画像の数: 0\n"
    "  num batches per epoch / 1epochのバッチ数: 2\n"
    "  num epochs / epoch数: 2\n"
    "  batch size per device / バッチサイズ: 2\n"
    "  gradient accumulation steps / 勾配を合計するステップ数 = 1\n"
    "  total optimization steps / 学習ステップ数: 4\n"
    "\n\rsteps:   0%|          | 0/4 [00:00<?, ?it/s]\n"
    "epoch 1/2\n\n"
    "\rsteps:  25%|██▌       | 1/4 [00:07<00:22,  7.36s/it]"
    "\rsteps:  25%|██▌       | 1/4 [00:07<00:22,  7.36s/it, avr_loss=1.47]"
    "\rsteps:  50%|█████     | 2/4 [00:15<00:15,  7.71s/it, avr_loss=1.47]"
    "\rsteps:  50%|█████     | 2/4 [00:15<00:15,  7.71s/it, avr_loss=1.5] \n"
    "saving checkpoint: /home/user/lw-e2e/output/train/tiny-000001.safetensors\n"
    "                    INFO     save train state to            train_network.py:946\n"
    "                             /home/user/lw-e2e/output/train                     \n"
    "                             /tiny-000001-state/train_state                     \n"
    "                             .json at epoch 1 step 2                            \n"
    "                    INFO     generating sample images at  flux_train_utils.py:61\n"
    "                             step / サンプル画像生成                            \n"
    "                             ステップ: 2                                        \n"
    "\nepoch 2/2\n\n"
    "\rsteps: 100%|██████████| 4/4 [00:29<00:00,  7.45s/it, avr_loss=1.52]2026-11-25 16:49:40 INFO       \n"
    "                    INFO     model saved.                  train_network.py:1729\n"
    "\rsteps: 100%|██████████| 4/4 [00:29<00:00,  7.46s/it, avr_loss=1.52]\n"
).encode()


def _kinds(events):
    return [type(e).__name__ for e in events if not isinstance(e, Line)]


def test_excerpt_events() -> None:
    events = parse_bytes(EXCERPT)
    totals = [e for e in events if isinstance(e, Totals)]
    assert totals[-1] == Totals(4, 2, 2, "2", 1, 4)
    assert [e for e in events if isinstance(e, Epoch)] == [Epoch(1, 2), Epoch(2, 2)]
    bars = [e for e in events if isinstance(e, Bar)]
    assert [(b.n, b.loss) for b in bars] == [(0, None), (1, None), (1, 1.47), (2, 1.47), (2, 1.5), (4, 1.52), (4, 1.52)]
    assert bars[1].rate == pytest.approx(1 / 7.36) and bars[1].remaining_s == 22 and bars[1].elapsed_s == 7
    assert CheckpointSaved("/home/user/lw-e2e/output/train/tiny-000001.safetensors") in events
    # the path was folded by rich at the column width: rejoined without spaces
    assert StateSaved("/home/user/lw-e2e/output/train/tiny-000001-state", 1, 2) in events
    assert SampleStarted(2) in events
    assert ModelSaved() in events
    lines = [e.text for e in events if isinstance(e, Line)]
    assert "Loading dataset config from /home/user/lw-e2e/dataset/dataset_config.toml" in lines
    assert any(line.startswith("steps:  50%") for line in lines)  # a '\r' bar becomes one line once printing moves on
    assert not any("\r" in line for line in lines)


def test_bar_glued_to_next_record_is_split() -> None:
    events = parse_bytes(
        b"\rsteps: 100%|\xe2\x96\x88| 4/4 [00:29<00:00,  7.45s/it, avr_loss=1.52]"
        b"2026-11-25 16:49:40 INFO     model saved.                  train_network.py:1729\n"
    )
    assert next(e for e in events if isinstance(e, Bar)).n == 4
    assert ModelSaved() in events


@pytest.mark.parametrize(
    ("text", "n", "total", "rate", "loss", "remaining"),
    [
        ("steps:   0%|          | 0/4 [00:00<?, ?it/s]", 0, 4, None, None, None),
        ("steps:  40%|████      | 2/5 [00:00<00:00,  6.63it/s, avr_loss=1.12]", 2, 5, 6.63, 1.12, 0),
        ("steps:  50%|█████     | 800/1600 [1:02:03<1:02:03,  4.65s/it, avr_loss=nan]", 800, 1600, 1 / 4.65, "nan", 3723),
        ("steps:   1%|          | 2/200 [00:02<03:18, 1.00s/it, avr_loss=1.23e-5]", 2, 200, 1.0, 1.23e-5, 198),
        ("100%|██████████| 4/4 [00:00<00:00, 104857.60it/s]", 4, 4, 104857.6, None, 0),
    ],
)
def test_bar_formats(text, n, total, rate, loss, remaining) -> None:
    bar = parse_bar(text)
    assert bar is not None and (bar.n, bar.total) == (n, total)
    assert bar.rate == (pytest.approx(rate) if rate is not None else None)
    assert bar.remaining_s == remaining
    if loss == "nan":
        assert bar.loss is not None and math.isnan(bar.loss)
    else:
        assert bar.loss == (pytest.approx(loss) if loss is not None else None)


def test_unterminated_bar_is_reported_once() -> None:
    parser = LogParser()
    first = parser.feed("\rsteps:  25%|██▌       | 1/4 [00:07<00:22,  7.36s/it, avr_loss=1.47]".encode())
    assert [e.n for e in first if isinstance(e, Bar)] == [1]  # shown at once, not after the next redraw
    later = parser.feed(b"\n") + parser.finish()
    assert not [e for e in later if isinstance(e, Bar)]


def test_rich_wrapping_word_wrap_and_fold() -> None:
    text = (
        "                    INFO     load tokenizer from cache:      strategy_base.py:61\n"
        "                             /home/user/lw-e2e/tokenizers/op                    \n"
        "                             enai_clip-vit-large-patch14                        \n"
        "2026-11-25 16:47:38 WARNING  cache_latents_to_disk is         train_util.py:4426\n"
        "                             enabled, so cache_latents is                       \n"
        "                             also enabled /                                     \n"
    )
    lines = [e for e in parse_bytes(text.encode()) if isinstance(e, Line)]
    assert lines[0] == Line("load tokenizer from cache: /home/user/lw-e2e/tokenizers/openai_clip-vit-large-patch14", "INFO")
    assert lines[1] == Line("cache_latents_to_disk is enabled, so cache_latents is also enabled /", "WARNING")


def test_a_full_line_of_words_keeps_the_space_rich_wrapped_at() -> None:
    # the first line's message fills its 32 columns exactly and ends a word: rich dropped the space at the wrap
    # (seen as "in the style of anold master" on the Train log); only a one-word full line was a folded word
    first = "2026-11-25 16:47:38 INFO     " + "prompt: painting in the style of" + " " + "train_util.py:4426"
    assert len(first) == 80
    text = first + "\n" + " " * 29 + "an old master".ljust(51) + "\n"
    lines = [e for e in parse_bytes(text.encode()) if isinstance(e, Line)]
    assert lines[0] == Line("prompt: painting in the style of an old master", "INFO")


def test_wider_columns_and_ansi_colours() -> None:
    # a 160-column terminal with colours (what `script` captured under a pty): same events
    line = (
        "\x1b[2;36m2026-11-25 17:05:55\x1b[0m\x1b[2;36m \x1b[0m\x1b[34mINFO    \x1b[0m model saved."
        + " " * 100
        + "\x1b]8;id=1;file:///x/train_network.py\x1b\\\x1b[2mtrain_network.py\x1b[0m\x1b]8;;\x1b\\\x1b[2m:\x1b[0m\x1b[2m1729\x1b[0m\r\n"
    )
    events = parse_bytes(line.encode())
    assert ModelSaved() in events


def test_totals_resume_and_state() -> None:
    text = (
        "                    INFO     load train state from          train_network.py:969\n"
        "                             /home/user/lw-e2e/output/train                     \n"
        "                             /tiny-state/train_state.json:                      \n"
        "                             {'current_epoch': 2,                               \n"
        "                             'current_step': 4}                                 \n"
        "override steps. steps for 3 epochs is / 指定エポックまでのステップ数: 6\n"
    )
    events = parse_bytes(text.encode())
    assert Resumed("/home/user/lw-e2e/output/train/tiny-state", 2, 4) in events
    assert Totals(None, None, None, "", None, 6) in events


OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 MiB. GPU 0 has a total capacity of 23.64 GiB "
    "of which 11.56 MiB is free."
)


@pytest.mark.parametrize(
    ("tail", "kind", "code"),
    [
        (f"Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    f()\n{OOM}\n", "oom", None),
        ("Traceback (most recent call last):\n  File \"x\", line 1\nsubprocess.CalledProcessError: Command '['py', "
         "'flux_train_network.py']' returned non-zero exit status 1.\n", "launcher", 1),
        ("Traceback (most recent call last):\n  File \"x\", line 1\nsubprocess.CalledProcessError: Command '['py']' "
         "died with <Signals.SIGKILL: 9>.\n", "launcher", -9),
        ("Traceback (most recent call last):\n  File \"x\", line 1\nFileNotFoundError: No such file or directory: "
         "\"/m/flux1-dev.safetensors\"\n", "missing_model", None),
        ("Traceback (most recent call last):\n  File \"x\", line 1\nvoluptuous.error.MultipleInvalid: extra keys not "
         "allowed @ data['datasets'][0]['x']\n", "dataset_config", None),
        ("                    ERROR    No data found. Please verify     train_network.py:576\n", "no_data", None),
        ("Traceback (most recent call last):\n  File \"x\", line 1\nValueError: Tried to find /r/s but folder does "
         "not exist\n", "resume_missing", None),
        ("Traceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: mat1 and mat2 must have the same "
         "dtype, but got Float and Half\n", "exception", None),
    ],
)
def test_failures(tail: str, kind: str, code: int | None) -> None:
    failures = [e for e in parse_bytes(tail.encode()) if isinstance(e, Failure)]
    assert failures and failures[0].kind == kind and failures[0].code == code


def test_indented_traceback_lines_are_not_failures() -> None:
    text = "Traceback (most recent call last):\n  File \"x\", line 1\n    raise RuntimeError('x')\n"
    assert not [e for e in parse_bytes(text.encode()) if isinstance(e, Failure)]


def test_incremental_utf8_byte_by_byte() -> None:
    whole = parse_bytes(EXCERPT)
    parser = LogParser()
    events = []
    for index in range(len(EXCERPT)):
        events += parser.feed(EXCERPT[index : index + 1])
    events += parser.finish()
    assert events == whole
    assert not any("\ufffd" in e.text for e in events if isinstance(e, Line))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(EXCERPT)), max_size=30))
def test_same_events_whatever_the_chunk_boundaries(cuts: list[int]) -> None:
    bounds = sorted(set(cuts))
    parser = LogParser()
    events = []
    start = 0
    for end in [*bounds, len(EXCERPT)]:
        events += parser.feed(EXCERPT[start:end])
        start = end
    events += parser.finish()
    assert events == parse_bytes(EXCERPT)


def test_state_keeps_absolute_step_after_resume() -> None:
    # resumed at absolute step 4 of 6: sd-scripts counts its bar from 0 and never reaches its total
    state = TrainState(base_step=4, base_epoch=2)
    state.apply([Totals(4, 2, 3, "2", 1, 6), Epoch(3, 3), Bar("steps", 1, 6, 7, 35, 0.14, 1.5), Bar("steps", 2, 6, 14, 28, 0.14, 1.4)])
    assert (state.step, state.total_steps, state.epoch, state.fraction) == (6, 6, 3, 1.0)
    assert state.eta_s == 0


def test_state_nan_and_loss_history_bounded() -> None:
    state = TrainState()
    state.apply([Totals(1, 10, 10, "1", 1, 100000)])
    state.apply([Bar("steps", n, 100000, n, None, 10.0, 1.0 / n) for n in range(1, 20001)])
    assert len(state.losses.points) < 1024 and state.losses.points[-1][0] <= 20000
    assert len(state.losses.values(40)) == 40
    state.apply([Bar("steps", 20001, 100000, 1, None, 10.0, float("nan"))])
    assert state.nan_since == 20001


def test_loss_history_keeps_the_newest_value_of_a_step() -> None:
    history = LossHistory(limit=8)
    history.add(1, 2.0)
    history.add(1, 1.5)
    assert history.points == [(1, 1.5)]


def test_tail_is_bounded() -> None:
    state = TrainState(tail_lines=50)
    data = b"".join(f"line {i}\n".encode() for i in range(10000))
    state.apply(parse_bytes(data))
    assert len(state.lines) == 50 and state.lines[-1].text == "line 9999"


LOGS = Path(__file__).resolve().parents[3] / "shared" / "e2e" / "logs"


@pytest.mark.extra
@pytest.mark.skipif(not LOGS.is_dir(), reason="../shared/e2e/logs not present")
@pytest.mark.parametrize(
    ("name", "saved", "step", "total", "epoch", "failure"),
    [
        ("train.log", True, 4, 4, 2, None),
        ("resume.log", True, 6, 6, 3, None),
        ("sample.log", True, 2, 2, 1, None),
        ("v_simple.log", True, 2, 2, 1, None),
        ("v_tty.log", True, 2, 2, 1, None),
        ("v_fp16.log", False, 0, 2, 1, "exception"),
        ("v_swap_1d1s.log", False, 0, None, 0, "exception"),
    ],
)
def test_real_logs(name, saved, step, total, epoch, failure) -> None:
    data = (LOGS / name).read_bytes()
    events = parse_bytes(data)
    resumed = next((e for e in events if isinstance(e, Resumed)), None)
    state = TrainState(base_step=resumed.step if resumed else 0)  # the run record knows this; here the log does
    state.apply(events)
    assert state.model_saved is saved
    assert (state.step, state.total_steps, state.epoch) == (step, total, epoch)
    kinds = [f.kind for f in state.failures]
    assert (failure in kinds) if failure else kinds == []
    if saved:
        assert state.loss is not None and state.checkpoints
    # chunking does not matter on real logs either
    parser = LogParser()
    chunked = []
    for start in range(0, len(data), 97):
        chunked += parser.feed(data[start : start + 97])
    assert chunked + parser.finish() == events
