"""Logs of several trainer processes: real multi-rank output (our captured v_ddp2 logs, tests/support/ddp_logs/) and the
table of NCCL/torchrun failures (core.ddp_failures), each checked with the real line from its public source."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.launch import multigpu
from lorawizard.core.train import ddp_failures
from lorawizard.core.train.diagnosis import diagnose
from lorawizard.core.train.logparse import Bar, Failure, Line, LogParser, Totals, TrainState, parse_bytes

LOGS = Path(__file__).resolve().parents[1] / "support" / "ddp_logs"
OOM = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 MiB. GPU 0 has a total capacity of "
       "23.64 GiB of which 11.56 MiB is free.")


def state_of(data: bytes, processes: int = 2) -> TrainState:
    state = TrainState(processes=processes)
    state.apply(parse_bytes(data))
    return state


def test_two_ranks_that_worked() -> None:
    data = (LOGS / "v_ddp2.excerpt.log").read_bytes()
    events = parse_bytes(data)
    bars = [e for e in events if isinstance(e, Bar) and e.desc == "steps"]
    assert bars and all(b.total == 1 for b in bars)  # the bar comes from rank 0 only
    totals = [e for e in events if isinstance(e, Totals) and e.batches_per_epoch is not None]
    assert len(totals) == 1 and (totals[0].images, totals[0].batches_per_epoch) == (4, 1)  # printed once
    state = state_of(data)
    assert state.model_saved and not state.failures and state.failed_ranks == []
    assert (state.steps_per_epoch, state.total_steps, state.step) == (1, 1, 1)
    warnings = [line.text for line in state.lines if line.level == "WARNING"]
    assert warnings.count(warnings[0]) == 1 and state.repeats_hidden >= 1  # each rank's copy shown once
    single = state_of(data, processes=1)
    assert len([line for line in single.lines if line.level == "WARNING"]) > len(warnings)
    assert diagnose(state, alive=False, returncode=0) is None


def test_steps_per_epoch_shrink_by_the_process_count_as_sd_scripts_counts() -> None:
    # v_ddp2: 4 images, 1 repeat, batch 2 → 2 batches; two processes share them: 1 step per epoch (its log says 1)
    assert multigpu.steps_per_epoch({"128x128": (4, 2)}, 1, processes=1) == 2
    assert multigpu.steps_per_epoch({"128x128": (4, 2)}, 1, processes=2) == 1
    # 10 images × 10 / 4 → 25 batches, 3 × 10 / 2 → 15; 40 batches over 3 processes → 14 each (even_batches pads)
    assert multigpu.steps_per_epoch({"1024x1024": (10, 4), "768x1344": (3, 2)}, 10, processes=3) == 14


def test_two_ranks_that_failed_real_tracebacks() -> None:
    data = (LOGS / "v_ddp2_noshim.excerpt.log").read_bytes()
    events = parse_bytes(data)
    failures = [e for e in events if isinstance(e, Failure)]
    exceptions = [f for f in failures if f.kind == "exception"]
    assert [f.rank for f in exceptions] == [0, 1]  # one per rank, not one per traceback line
    assert all("DistributedDataParallel is not needed" in f.text for f in exceptions)
    root = [f for f in failures if f.kind == "rank_failed"]
    assert len(root) == 1 and (root[0].rank, root[0].code) == (0, 1)
    assert any(f.kind == "launcher" and "ChildFailedError" in f.text for f in failures)
    ranked = [e for e in events if isinstance(e, Line) and e.rank is not None]
    assert {e.rank for e in ranked} == {0, 1} and not any(e.text.startswith("[rank") for e in ranked)
    state = state_of(data)
    assert state.failed_ranks == [0, 1] and state.phase == "stopping the other processes"
    problem = diagnose(state, alive=False, returncode=1)
    assert problem is not None and problem.kind == "crash"
    assert problem.what.startswith("rank 0 of the trainer crashed: RuntimeError: DistributedDataParallel")
    assert "torchrun stopped the other processes" in problem.what


def test_the_same_events_whatever_the_chunks() -> None:
    data = (LOGS / "v_ddp2_noshim.excerpt.log").read_bytes()
    whole = parse_bytes(data)
    parser = LogParser()
    pieces = []
    for start in range(0, len(data), 7):
        pieces += parser.feed(data[start : start + 7])
    pieces += parser.finish()
    assert [repr(e) for e in pieces if not isinstance(e, Bar)] == [repr(e) for e in whole if not isinstance(e, Bar)]


@pytest.mark.parametrize("known", ddp_failures.TABLE, ids=lambda k: k.kind)
def test_each_table_entry_from_its_real_line(known: ddp_failures.KnownFailure) -> None:
    assert known.sources and all(url.startswith("https://github.com/") for url in known.sources)
    assert ddp_failures.match(known.example) is known
    state = state_of((known.example + "\n").encode())
    assert [f.kind for f in state.failures] == [known.kind]
    problem = diagnose(state, alive=False, returncode=1)
    assert problem is not None and problem.kind == known.kind and problem.advice == known.advice


def test_rank_from_the_prefix_or_from_nccls_own_words() -> None:
    cuda = next(k for k in ddp_failures.TABLE if k.kind == "nccl_cuda_error")
    assert state_of(cuda.example.encode() + b"\n").failures[0].rank == 7  # "[rank7]: torch.distributed…"
    # older torch, no prefix (kohya-ss/sd-scripts#971): the rank is in ProcessGroupNCCL's text; printed twice → once
    line = ("[E ProcessGroupNCCL.cpp:828] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=3, "
            "OpType=ALLREDUCE, Timeout(ms)=1800000) ran for 1802130 milliseconds before timing out.\n")
    what = "  what():  [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=3, OpType=ALLREDUCE)\n"
    state = state_of((line + what).encode())
    assert [(f.kind, f.rank) for f in state.failures] == [("nccl_timeout", 1)]
    assert "(rank 1)" in diagnose(state, alive=True).what


def test_one_rank_out_of_memory_while_the_others_wait() -> None:
    log = (f"[rank1]: Traceback (most recent call last):\n[rank1]:   File \"train_network.py\", line 1, in train\n"
           f"[rank1]: {OOM}\n"
           "[rank0]:[E626 06:24:44.903881913 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught collective operation "
           "timeout: WorkNCCL(SeqNum=808, OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600020 milliseconds before "
           "timing out.\n")
    state = state_of(log.encode())
    assert {(f.kind, f.rank) for f in state.failures} == {("oom", 1), ("nccl_timeout", 0)}
    problem = diagnose(state, alive=True)
    assert problem is not None and problem.kind == "oom"
    assert problem.what.startswith("rank 1 ran out of GPU memory") and "smallest card" in problem.advice


def test_a_rank_killed_by_the_kernel() -> None:
    # torchrun's summary as printed in lzhxmu/CPPO#6
    log = ("Root Cause (first observed failure):\n[0]:\n  time      : 2025-05-21_15:43:03\n  host      : worker\n"
           "  rank      : 0 (local_rank: 0)\n  exitcode  : -9 (pid: 14750)\n  error_file: <N/A>\n"
           "  traceback : Signal 9 (SIGKILL) received by PID 14750\n"
           "============================================================\n")
    state = state_of(log.encode())
    assert [(f.kind, f.rank, f.code) for f in state.failures] == [("rank_failed", 0, -9)]
    problem = diagnose(state, alive=False, returncode=1)
    assert problem is not None and problem.kind == "host_oom" and problem.what.startswith("rank 0 was killed")


def test_a_failed_rank_does_not_leave_the_others_hanging() -> None:
    from lorawizard.core.train.step import RankWatch

    state = state_of(b"[rank1]: Traceback (most recent call last):\n[rank1]: RuntimeError: boom\n")
    watch = RankWatch(grace_s=60)
    assert not watch.check(state, 100.0)  # first seen: torchrun usually stops the others now
    assert not watch.check(state, 130.0)
    assert watch.check(state, 161.0) and not watch.check(state, 200.0)  # once
    assert RankWatch.reason(state) == "rank 1 failed and the other processes were still running"
    healthy = state_of((LOGS / "v_ddp2.excerpt.log").read_bytes())
    assert not RankWatch(grace_s=0).check(healthy, 0.0) and not RankWatch(grace_s=0).check(healthy, 10.0)
    single = state_of(b"Traceback (most recent call last):\nRuntimeError: boom\n", processes=1)
    watch = RankWatch(grace_s=0)
    assert not watch.check(single, 0.0) and not watch.check(single, 10.0)
