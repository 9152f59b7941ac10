"""Fastest fit (issue 26): trials and images/s of the search, against trying every candidate and against today's way
(the preset chosen from the card's memory, then its largest batch), in one run — on the stand-in trainer's memory
and speed model (tests/support/standin/standin_model.py: made-up numbers of FLUX.1's order). MODELLED, NOT MEASURED:
the images/s ratios say what the search finds in that model, not what a real GPU does.

    python bench/bench_fit.py

Cards: 12, 16, 24, 48 and 80 GiB, idle (0.3 GB used), and a 24 GiB card with 11.2 GB held by another process.
For each: `quality` (16-bit base) and `fastest` (fp8 allowed): the search's trials (and its bound), every candidate
(swap levels × base precisions × batch 1–32: the exhaustive grid), the found images/s and the best in the grid
(equal when the search is right), and the preset way's images/s. Asserts nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorawizard.core.gpu.presets import BUILTIN_PRESETS, preset_for_memory  # noqa: E402
from lorawizard.core.probe import fit  # noqa: E402
from tests.support.standin import standin_model as model  # noqa: E402

GB = 1000**3
GIB = 1024**3
SWAPS = (0, 8, 16, 22, 28, 35)
SIDE = 1024


def speed(swap: int, fp8: bool, batch: int) -> float:
    return batch / model.step_seconds(swap, fp8, batch, SIDE, SIDE)


def search(total: int, used: int, fp8s: tuple[bool, ...]) -> tuple[int, fit.Measured | None]:
    limit = fit.limit_bytes(total)
    finder = fit.FitSearch(fit.FitPolicy("fastest" if True in fp8s else "quality", SWAPS, fp8s), limit)

    def trial(candidate: fit.Candidate) -> fit.Measured:
        s = candidate.setting
        peak = model.peak_bytes(s.swap, s.fp8, candidate.batch, SIDE, SIDE) + used
        if peak > total:
            return fit.Measured(candidate, "oom", trial=1)
        status = "ok" if peak <= limit else "over-margin"
        return fit.Measured(candidate, status, peak, model.step_seconds(s.swap, s.fp8, candidate.batch, SIDE, SIDE),
                            trial=1)

    found = finder.run(trial)
    return finder.trials, found


def preset_way(total: int, used: int) -> float | None:
    """Today's probe: the preset for the card's memory (fp8, its swap), then the largest batch under 95 % — stepping
    down a preset while batch 1 does not fit."""
    preset = preset_for_memory(total)
    ordered = sorted(BUILTIN_PRESETS, key=lambda p: (-p.min_gb, p.blocks_to_swap))
    for candidate in ordered[ordered.index(preset):]:
        fits = [b for b in range(1, 33)
                if model.peak_bytes(candidate.blocks_to_swap, True, b, SIDE, SIDE) + used <= total * 0.95]
        if fits:
            return speed(candidate.blocks_to_swap, True, max(fits))
    return None


def main() -> None:
    cards = [(12, 0.3), (16, 0.3), (24, 0.3), (24, 11.2), (48, 0.3), (80, 0.3)]
    print(f"{'card':<20}{'fit':<9}{'trials':>7}{'bound':>6}{'grid':>6}{'found img/s':>13}{'grid best':>10}"
          f"{'preset way':>11}{'found/preset':>13}")
    totals = [0, 0]
    for gib, used_gb in cards:
        total, used = int(gib * GIB), int(used_gb * GB)
        for fp8s in ((False,), (True, False)):
            trials, found = search(total, used, fp8s)
            grid = len(SWAPS) * len(fp8s) * 32
            best = model.best(SWAPS, fp8s, 32, SIDE, SIDE, fit.limit_bytes(total) - used)
            best_speed = speed(*best) if best else None
            found_speed = found.images_per_s if found else None
            old = preset_way(total, used)
            ratio = f"{found_speed / old:.2f}×" if found_speed and old else "—"
            totals[0] += trials
            totals[1] += grid
            name = f"{gib} GiB" + (f" ({used_gb:g} used)" if used_gb > 1 else "")
            print(f"{name:<20}{'fastest' if True in fp8s else 'quality':<9}{trials:>7}"
                  f"{fit.FitPolicy('x', SWAPS, fp8s).budget:>6}{grid:>6}"
                  f"{found_speed or 0:>13.2f}{best_speed or 0:>10.2f}{old or 0:>11.2f}{ratio:>13}")
    print(f"trials in all: {totals[0]} (search) vs {totals[1]} (every candidate): "
          f"{totals[1] / max(1, totals[0]):.1f}× fewer; images/s modelled, not measured")


if __name__ == "__main__":
    main()
