"""Benchmarks for the train step's log handling (prints measured numbers; never asserts on time).

1. Parser throughput on a synthetic 1,000,000-line sd-scripts log (tqdm '\\r' bars, rich 80-column records, prints):
   ours (`LogParser` + `TrainState`) vs a naive decode-split-regex-every-line parser.
2. Memory added by following that log to the end (tracemalloc peak): ours vs naive "keep the lines".
3. UI frame time while the log grows by 10,000 lines/s: the Train screen tails a growing train.log in a headless
   app; we measure event-loop lateness (a 10 ms ticker) and the time each dashboard update takes.

Run: `python bench/bench_logparse.py [--lines 1000000] [--ui-seconds 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorawizard.core.train.logparse import LogParser, TrainState  # noqa: E402


def synthetic_log(lines: int) -> bytes:
    """About `lines` physical lines/redraws in sd-scripts' formats (2 bar redraws per step, saves every epoch)."""
    out: list[str] = []
    count = 0
    per_epoch = 500
    total = lines // 2
    step = 0
    epoch = 0
    while count < lines:
        if step % per_epoch == 0:
            epoch += 1
            out.append(f"\nepoch {epoch}/{total // per_epoch + 1}\n\n")
            out.append(
                "                    INFO     epoch is incremented.             train_util.py:784\n"
                f"                             current_epoch: {epoch - 1}, epoch: {epoch}                         \n"
            )
            count += 5
            if epoch > 1:
                out.append(f"\nsaving checkpoint: /home/user/runs/r/mychar-{epoch - 1:06d}.safetensors\n")
                out.append(
                    "                    INFO     save train state to            train_network.py:946\n"
                    "                             /home/user/lw-e2e/output/train                     \n"
                    f"                             /mychar-{epoch - 1:06d}-state/train_st                     \n"
                    f"                             ate.json at epoch {epoch - 1} step {step}                            \n"
                )
                count += 6
        step += 1
        loss = 0.3 + 1.0 / (1 + step / 100)
        pct = step * 100 // total
        out.append(f"\rsteps: {pct:3d}%|█▌        | {step}/{total} [1:02:03<1:02:03,  1.92it/s]")
        out.append(f"\rsteps: {pct:3d}%|█▌        | {step}/{total} [1:02:03<1:02:03,  1.92it/s, avr_loss={loss:.3g}]")
        count += 2
    return "".join(out).encode()


_NAIVE_PATTERNS = [
    re.compile(r"steps:\s+(\d+)%\|.*\|\s*(\d+)/(\d+) \[([\d:]+)<([\d:?]+),\s*([\d.?]+)(it/s|s/it)(?:, (.*))?\]"),
    re.compile(r"^epoch (\d+)/(\d+)$"),
    re.compile(r"^saving checkpoint: (.+)$"),
    re.compile(r"save train state to (.+)"),
    re.compile(r"model saved\."),
    re.compile(r"avr_loss=([-+0-9.eEnaif]+)"),
]


def naive_parse(data: bytes) -> tuple[int, list[str]]:
    """What a first version does: decode everything, split on \\r and \\n, try every regex on every line, keep lines."""
    lines = re.split(r"[\r\n]", data.decode("utf-8", "replace"))
    hits = 0
    for line in lines:
        for pattern in _NAIVE_PATTERNS:
            if pattern.search(line):
                hits += 1
    return hits, lines


def ours(data: bytes, chunk: int = 1 << 20) -> TrainState:
    parser = LogParser()
    state = TrainState()
    for start in range(0, len(data), chunk):
        state.apply(parser.feed(data[start : start + chunk]))
    state.apply(parser.finish())
    return state


def bench_parser(lines: int) -> bytes:
    data = synthetic_log(lines)
    physical = data.count(b"\n") + data.count(b"\r")
    print(f"synthetic log: {physical:,} lines/redraws, {len(data) / 1e6:.1f} MB")
    timings, cpu = [], []
    for _ in range(2):
        started, started_cpu = time.perf_counter(), time.process_time()
        state = ours(data)
        timings.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    best, best_cpu = min(timings), min(cpu)
    started, started_cpu = time.perf_counter(), time.process_time()
    naive_parse(data)
    naive, naive_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    print(f"parser: ours {physical / best:,.0f} lines/s wall, {physical / best_cpu:,.0f} lines/s CPU "
          f"(step {state.step}/{state.total_steps}, {len(state.checkpoints)} checkpoints, bounded state) · "
          f"naive (decode all, split, 6 regexes per line, no state, whole log in memory) {physical / naive:,.0f} "
          f"lines/s wall, {physical / naive_cpu:,.0f} CPU · ours takes {best_cpu / naive_cpu:.2f}x the naive CPU time "
          f"[target ≥ 200,000 lines/s]")
    return data


def bench_memory(data: bytes) -> None:
    path = Path(tempfile.mkdtemp()) / "train.log"
    path.write_bytes(data)
    del data

    def follow_file() -> TrainState:
        parser, state = LogParser(), TrainState()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                state.apply(parser.feed(chunk))
        state.apply(parser.finish())
        return state

    def naive_file() -> list[str]:
        return naive_parse(path.read_bytes())[1]

    for name, function in (("ours", follow_file), ("naive", naive_file)):
        tracemalloc.start()
        result = function()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del result
        print(f"memory following a {path.stat().st_size / 1e6:.0f} MB log: {name} peak +{peak / 1e6:.1f} MB"
              + ("  [target ≤ 50 MB]" if name == "ours" else ""))
    path.unlink()


def bench_ui(seconds: float, rate: int) -> None:
    from lorawizard.core.launch import runs
    from lorawizard.core.session.document import Session
    from lorawizard.core.session.store import save_now
    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.screens import train as train_screen

    folder = Path(tempfile.mkdtemp())
    session = Session.new(folder / "session.toml", name="bench")
    save_now(session, lambda _session: None)
    run_dir = session.paths.runs / "20260101-000000"
    run_dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    import psutil

    record = runs.RunRecord(run_id=run_dir.name, dir=run_dir, argv=["bench"], env={}, cwd=str(run_dir),
                            pid=sleeper.pid, create_time=psutil.Process(sleeper.pid).create_time(),
                            started_ts=time.time(), output_name="bench")
    record.save()
    log = open(run_dir / "train.log", "ab")  # noqa: SIM115
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        step = 0
        batch = rate // 20
        while not stop.is_set():
            started = time.monotonic()
            chunks = []
            for _ in range(batch // 2):
                step += 1
                chunks.append(f"\rsteps:  10%|█         | {step}/9999999 [00:10<01:00,  1.92it/s, avr_loss={0.3 + 1 / step:.3g}]")
                chunks.append(f"INFO some log line number {step} with a path /home/user/runs/x/file.safetensors\n")
            log.write("".join(chunks).encode())
            log.flush()
            written[0] += batch
            stop.wait(max(0.0, 0.05 - (time.monotonic() - started)))

    update_times: list[float] = []
    original = train_screen.TrainScreen.apply_view

    def timed(self, view):  # noqa: ANN001
        started = time.perf_counter()
        original(self, view)
        update_times.append(time.perf_counter() - started)

    train_screen.TrainScreen.apply_view = timed  # type: ignore[method-assign]
    lateness: list[float] = []

    async def run() -> None:
        app = LoraWizardApp(session, start_step="train")
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.5)
            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            expected = loop.time() + 0.01
            while loop.time() < end:
                await asyncio.sleep(0.01)
                now = loop.time()
                lateness.append(max(0.0, now - expected))
                expected = now + 0.01
            stop.set()
            thread.join()
            await pilot.pause(0.5)
            screen = app.screen
            shown = screen.view.step

        print(f"UI while the log grows {written[0] / seconds:,.0f} lines/s for {seconds:.0f} s: "
              f"{len(update_times)} dashboard updates ({len(update_times) / seconds:.1f}/s), update time "
              f"median {statistics.median(update_times) * 1000:.1f} ms, max {max(update_times) * 1000:.1f} ms; "
              f"event-loop lateness p95 {sorted(lateness)[int(len(lateness) * 0.95)] * 1000:.1f} ms, "
              f"max {max(lateness) * 1000:.1f} ms  [target frames < 50 ms]; dashboard reached step {shown:,}")

    try:
        asyncio.run(run())
    finally:
        train_screen.TrainScreen.apply_view = original  # type: ignore[method-assign]
        sleeper.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--ui-seconds", type=float, default=5.0)
    parser.add_argument("--ui-rate", type=int, default=10_000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    data = bench_parser(args.lines)
    bench_memory(data)
    del data
    bench_ui(args.ui_seconds, args.ui_rate)


if __name__ == "__main__":
    main()
