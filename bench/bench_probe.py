"""Batch-size probe: trials needed to find the limit, ours vs the notes' way, in one run (simulated GPU).

    python bench/bench_probe.py [--max-limit 32]

A trial is a real trainer run (model loading alone takes tens of seconds to minutes), so the number of trials is
what matters. The simulated GPU: peak = base + batch × per-image, OOM above 100 %, "fits" ≤ 95 %.

naive ("try higher values and work down until it stops crashing", the notes): start at 32, step down by 1.
doubling + bisect: start at the preset's 2, double while it fits, then bisect (no memory readings).
ours: the same start, but after two trials NVML peaks predict the limit (at most a 4× jump), then one trial
above it confirms. Prints trials per limit and totals; asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorawizard.core.probe.trials import MARGIN, BatchSearch, TrialOutcome  # noqa: E402

GB = 1000**3


def gpu(limit: int, total: int = 24 * GB):  # noqa: ANN201
    usable = int(total * MARGIN)
    base = 6 * GB
    per = (usable - base) // limit - 1

    def trial(batch: int, with_peaks: bool) -> TrialOutcome:
        peak = base + batch * per
        if peak > total:
            return TrialOutcome(batch, "oom")
        status = "ok" if peak <= usable else "over-margin"
        return TrialOutcome(batch, status, peak - base, peak if with_peaks else None)

    return trial, usable


def search(limit: int, *, with_peaks: bool, cap: int) -> tuple[int, int]:
    trial, usable = gpu(limit)
    s = BatchSearch(2, limit_bytes=usable, max_batch=cap)
    while (batch := s.next()) is not None:
        s.add(trial(batch, with_peaks))
    return s.best, len(s.outcomes)


def naive(limit: int, cap: int) -> tuple[int, int]:
    trial, _ = gpu(limit)
    tried = 0
    for batch in range(cap, 0, -1):
        tried += 1
        if trial(batch, False).fits:
            return batch, tried
    return 0, tried


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-limit", type=int, default=32)
    args = parser.parse_args()
    cap = args.max_limit
    print(f"{'limit':>5} {'naive':>6} {'double+bisect':>14} {'ours':>5} {'bound ⌈log2⌉+2':>15}")
    totals = [0, 0, 0]
    for limit in range(1, cap + 1):
        n = naive(limit, cap)
        d = search(limit, with_peaks=False, cap=cap)
        o = search(limit, with_peaks=True, cap=cap)
        assert n[0] == d[0] == o[0] == limit, (limit, n, d, o)
        totals = [totals[0] + n[1], totals[1] + d[1], totals[2] + o[1]]
        print(f"{limit:>5} {n[1]:>6} {d[1]:>14} {o[1]:>5} {math.ceil(math.log2(limit)) + 2:>15}")
    print(f"total {totals[0]:>6} {totals[1]:>14} {totals[2]:>5}")
    print(f"ratio naive/ours {totals[0] / totals[2]:.1f}x, double+bisect/ours {totals[1] / totals[2]:.2f}x "
          f"(trials over limits 1..{cap}; each trial is one trainer launch)")


if __name__ == "__main__":
    main()
