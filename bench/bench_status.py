"""`lorawizard DIR --status` on a 1 MB and a 1 GB train.log (issue 23 B15): the same cost, and bounded memory.

The 1 GB log is made cheaply: the real log's head, a hole (sparse) and 1 MB of sd-scripts' step bars at the end, so
that both logs end alike. Each `--status` runs as the CLI in a fresh process (wall time and peak RSS from wait4),
N times, interleaved, with the run's log index removed first ("cold": head + tail read) and kept ("warm": only what
the log gained since the last look). Printed: medians, the 1 GB / 1 MB ratio (goal ≤ 1.5×), peak RSS.

Also, in one process each: the naive way (the whole log parsed, as before) on the 1 MB log and on 64 MB of short
lines, and the peak RSS of parsing a 400 MB line without a line break (was 412 MB).
Usage: PYTHONPATH=. python bench/bench_status.py [N]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorawizard.core.launch.runs import RunRecord  # noqa: E402
from lorawizard.core.train.step import INDEX_FILE  # noqa: E402
from tests.support.standin import make_train_project  # noqa: E402

REAL_LOG = ROOT / "tests" / "support" / "real_logs" / "train.log"


def bars(size: int) -> bytes:
    out, n = [], 0
    total = 0
    while total < size:
        n += 1
        line = f"\rsteps:  {n % 100}%|#####     | {n}/999999 [01:00<00:20, 5.00it/s, avr_loss=0.312]"
        if n % 50 == 0:
            line += "\n"
        out.append(line)
        total += len(line)
    return "".join(out).encode() + b"\n"


def project(where: Path, size: int) -> Path:
    session = make_train_project(where, epochs=1)
    run_dir = session.paths.runs / "20260101-000000"
    run_dir.mkdir(parents=True)
    RunRecord(run_id=run_dir.name, dir=run_dir, argv=["python"], env={}, cwd=str(run_dir), output_name="tiny",
              started_ts=time.time()).save()
    (run_dir / "exit.json").write_text(json.dumps({"returncode": 0, "status": "finished", "ended": time.time()}))
    tail = bars(1 << 20)
    with open(run_dir / "train.log", "wb") as handle:
        handle.write(REAL_LOG.read_bytes())
        if size > handle.tell() + len(tail):
            handle.truncate(size - len(tail))
            handle.seek(size - len(tail))
        handle.write(tail)
    return session.project_dir


def status_once(folder: Path, cold: bool) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of one `lorawizard DIR --status` in a fresh process."""
    if cold:
        for index in folder.glob(f"runs/*/{INDEX_FILE}"):
            index.unlink()
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "lorawizard", str(folder), "--status"], stdout=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"--status exited {child.returncode} in {folder}")
    return elapsed, usage.ru_maxrss * 1024


def in_child(code: str) -> tuple[float, int]:
    """(seconds, peak RSS) of a snippet run in a fresh interpreter."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("snippet failed")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


NAIVE = """
import sys
from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train.step import RunFollower
follower = RunFollower(RunRecord.load(sys.argv[1] if len(sys.argv) > 1 else {run!r}), catch_up=False)
follower.finish()
"""


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        small, big = project(Path(tmp) / "small", 1_000_000), project(Path(tmp) / "big", 1 << 30)
        print(f"logs: {(small / 'runs/20260101-000000/train.log').stat().st_size:,} B and "
              f"{(big / 'runs/20260101-000000/train.log').stat().st_size:,} B (sparse)")
        for cold in (True, False):
            times: dict[str, list[float]] = {"1 MB": [], "1 GB": []}
            rss: dict[str, int] = {"1 MB": 0, "1 GB": 0}
            status_once(small, False), status_once(big, False)  # warm the page cache and the index
            for _ in range(runs):
                for label, folder in (("1 MB", small), ("1 GB", big)):
                    seconds, peak = status_once(folder, cold)
                    times[label].append(seconds)
                    rss[label] = max(rss[label], peak)
            a, b = statistics.median(times["1 MB"]), statistics.median(times["1 GB"])
            what = "cold (no index: head + tail)" if cold else "warm (index: new bytes only)"
            print(f"--status {what}: 1 MB {a * 1000:.0f} ms, 1 GB {b * 1000:.0f} ms, ratio {b / a:.2f}x (goal <= 1.5x); "
                  f"peak RSS {rss['1 MB'] / 2**20:.0f} / {rss['1 GB'] / 2**20:.0f} MiB")
        # the naive way: the whole log parsed (what --status did before)
        lines = Path(tmp) / "lines"
        folder = project(lines, 0)
        log = folder / "runs/20260101-000000/train.log"
        with open(log, "ab") as handle:  # in pieces: a big parent would show in its children's peak RSS (fork)
            for start in range(0, 3_000_000, 100_000):
                handle.write(b"".join(f"hook output line {n}\n".encode() for n in range(start, start + 100_000)))
        run = str(small / "runs/20260101-000000")
        seconds, peak = in_child(NAIVE.format(run=run))
        ours, _ = in_child(NAIVE.format(run=run).replace("catch_up=False", "catch_up=True"))
        print(f"1 MB log in-process: naive (whole log) {seconds * 1000:.0f} ms, ours {ours * 1000:.0f} ms")
        size = log.stat().st_size
        seconds, peak = in_child(NAIVE.format(run=str(log.parent)))
        ours, ours_peak = in_child(NAIVE.format(run=str(log.parent)).replace("catch_up=False", "catch_up=True"))
        print(f"{size / 1e6:.0f} MB of short lines: naive (whole log) {seconds:.2f} s, {peak / 2**20:.0f} MiB; "
              f"ours (head + tail) {ours:.2f} s, {ours_peak / 2**20:.0f} MiB; ratio {seconds / ours:.1f}x")
        # a 400 MB line without a break, parsed whole (memory per line is capped)
        with open(log, "wb") as handle:
            handle.truncate(400_000_000)  # NUL bytes: one line without a break
        seconds, peak = in_child(NAIVE.format(run=str(log.parent)))
        print(f"a 400 MB line without a break, parsed whole: {seconds:.2f} s, peak RSS {peak / 2**20:.0f} MiB "
              "(was 412 MB)")


if __name__ == "__main__":
    main()
