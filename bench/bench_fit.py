"""Fastest fit (issue 26): trials and images/s of the search, against trying every candidate and against today's way
(the preset chosen from the card's memory, then its largest batch), and against the same search without the
gradient-checkpointing and optimizer-state rungs, in one run — on the stand-in trainer's memory and speed model
(tests/support/standin/standin_model.py: made-up numbers of FLUX.1's order). MODELLED, NOT MEASURED: the images/s
ratios say what the search finds in that model, not what a real GPU does.

    python bench/bench_fit.py [--fuzz N]

Cards: 12, 16, 24, 48 and 80 GiB, idle (0.3 GB used), and a 24 GiB card with 11.2 GB held by another process.
For each: `quality` (16-bit base) and `fastest` (fp8 allowed), with the default AdamW8bit and with the person's
AdamW (32-bit state; `fastest` may use AdamW8bit): the search's trials (and its bound), every candidate of the
allowed grid (rungs × base precisions × batch 1–32), the found images/s and the best in the grid (equal when the
search is right), the images/s of the search without checkpointing-off and 8-bit-state rungs (swap × base × batch
only), and the preset way's. Then N random models (default 1000; parameters far beyond FLUX.1's): how often the
search finds the grid's best, how often its bound on trials cuts it short. Asserts nothing.
"""

from __future__ import annotations

import random
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


def search(total: int, used: int, policy: fit.FitPolicy, state32: bool) -> tuple[int, fit.Measured | None]:
    limit = fit.limit_bytes(total)
    finder = fit.FitSearch(policy, limit)

    def trial(candidate: fit.Candidate) -> fit.Measured:
        s = candidate.setting
        setting = {"checkpointing": s.checkpointing, "state32": state32 and not s.optimizer}
        peak = model.peak_bytes(s.swap, s.fp8, candidate.batch, SIDE, SIDE, **setting) + used
        if peak > total:
            return fit.Measured(candidate, "oom", trial=1)
        status = "ok" if peak <= limit else "over-margin"
        return fit.Measured(candidate, status, peak,
                            model.step_seconds(s.swap, s.fp8, candidate.batch, SIDE, SIDE, **setting), trial=1)

    found = finder.run(trial)
    return finder.trials, found


def preset_way(total: int, used: int, state32: bool) -> float | None:
    """Today's probe: the preset for the card's memory (fp8, its swap), then the largest batch under 95 % — stepping
    down a preset while batch 1 does not fit."""
    preset = preset_for_memory(total)
    ordered = sorted(BUILTIN_PRESETS, key=lambda p: (-p.min_gb, p.blocks_to_swap))
    for candidate in ordered[ordered.index(preset):]:
        swap = candidate.blocks_to_swap
        fits = [b for b in range(1, 33)
                if model.peak_bytes(swap, True, b, SIDE, SIDE, state32=state32) + used <= total * 0.95]
        if fits:
            return max(fits) / model.step_seconds(swap, True, max(fits), SIDE, SIDE, state32=state32)
    return None


def main() -> None:
    cards = [(12, 0.3), (16, 0.3), (24, 0.3), (24, 11.2), (48, 0.3), (80, 0.3)]
    print(f"{'card':<19}{'fit':<15}{'trials':>7}{'bound':>6}{'grid':>6}{'found img/s':>12}{'grid best':>10}"
          f"{'no-new-rungs':>13}{'preset way':>11}{'found/preset':>13}  chosen")
    totals = [0, 0]
    for gib, used_gb in cards:
        total, used = int(gib * GIB), int(used_gb * GB)
        for fp8s in ((False,), (True, False)):
            for state32 in (False, True):
                twin = "AdamW8bit" if state32 and True in fp8s else ""
                policy = fit.FitPolicy("x", SWAPS, fp8s, no_checkpointing=True, lean_optimizer=twin)
                trials, found = search(total, used, policy, state32)
                _, old = search(total, used, fit.FitPolicy("x", SWAPS, fp8s), state32)
                rungs = tuple((r.swap, r.checkpointing, state32 and not r.optimizer) for r in policy.rungs)
                grid = len(rungs) * len(fp8s) * 32
                best = model.best_setting(rungs, fp8s, 32, SIDE, SIDE, fit.limit_bytes(total) - used)
                best_speed = best[2] / model.step_seconds(best[0], best[1], best[2], SIDE, SIDE, checkpointing=best[3],
                                                          state32=best[4]) if best else None
                found_speed = found.images_per_s if found else None
                preset = preset_way(total, used, state32)
                ratio = f"{found_speed / preset:.2f}×" if found_speed and preset else "—"
                totals[0] += trials
                totals[1] += grid
                name = f"{gib} GiB" + (f" ({used_gb:g} used)" if used_gb > 1 else "")
                mode = ("fastest" if True in fp8s else "quality") + (" AdamW" if state32 else "")
                print(f"{name:<19}{mode:<15}{trials:>7}{policy.budget:>6}{grid:>6}{found_speed or 0:>12.2f}"
                      f"{best_speed or 0:>10.2f}{(old.images_per_s or 0) if old else 0:>13.2f}{preset or 0:>11.2f}"
                      f"{ratio:>13}  {found.candidate.label() if found else '—'}")
    print(f"trials in all: {totals[0]} (search) vs {totals[1]} (every candidate): "
          f"{totals[1] / max(1, totals[0]):.1f}× fewer; images/s modelled, not measured")


RANGES = {  # wide on purpose: far beyond FLUX.1's numbers, to find where the search's rules give way
    "BASE_GB": (8, 30), "OVERHEAD_GB": (1, 5), "GB_PER_MEGAPIXEL": (0.5, 5), "STEP_SECONDS": (0.005, 0.2),
    "IMAGE_SECONDS": (0.01, 0.3), "FP8_FACTOR": (0.9, 1.4), "SWAP_SECONDS": (0.0, 0.02), "NO_CKPT_MEMORY": (1.5, 6),
    "NO_CKPT_COMPUTE": (0.6, 0.9), "STATE_32BIT_GB": (0.2, 3), "STATE_8BIT_SECONDS": (0.0, 0.01)}


def fuzz(models: int, seed: int = 1) -> None:
    """Random memory/speed models and cards: how often the search (with its bound) finds the grid's best, how often
    the bound cuts it short, and the worst images/s it settles for."""
    rng = random.Random(seed)
    found_best = cut = 0
    worst = 1.0
    for _ in range(models):
        env = {f"STANDIN_{k}": str(rng.uniform(*r)) for k, r in RANGES.items()}
        total = int(rng.choice([8, 10, 12, 16, 24, 32, 40, 48, 80, 96]) * GIB)
        used = int(rng.uniform(0, 0.3) * total) if rng.random() < 0.3 else int(0.3 * GB)
        fp8s = rng.choice([(False,), (True, False)])
        state32 = rng.random() < 0.5
        policy = fit.FitPolicy("x", SWAPS, fp8s, no_checkpointing=True,
                               lean_optimizer="AdamW8bit" if state32 and True in fp8s else "")
        limit = fit.limit_bytes(total)

        def trial(candidate: fit.Candidate, env: dict[str, str] = env, used: int = used,
                  state32: bool = state32, total: int = total, limit: int = limit) -> fit.Measured:
            s = candidate.setting
            setting = {"checkpointing": s.checkpointing, "state32": state32 and not s.optimizer}
            peak = model.peak_bytes(s.swap, s.fp8, candidate.batch, SIDE, SIDE, env, **setting) + used
            if peak > total:
                return fit.Measured(candidate, "oom", trial=1)
            return fit.Measured(candidate, "ok" if peak <= limit else "over-margin", peak,
                                model.step_seconds(s.swap, s.fp8, candidate.batch, SIDE, SIDE, env, **setting), trial=1)

        finder = fit.FitSearch(policy, limit)
        found = finder.run(trial)
        cut += any("budget" in note for note in finder.notes)
        rungs = tuple((r.swap, r.checkpointing, state32 and not r.optimizer) for r in policy.rungs)
        best = model.best_setting(rungs, fp8s, fit.MAX_BATCH, SIDE, SIDE, limit - used, env)
        if best is None:
            found_best += found is None
            continue
        swap, fp8, batch, checkpointing, state = best
        best_speed = batch / model.step_seconds(swap, fp8, batch, SIDE, SIDE, env, checkpointing=checkpointing,
                                                state32=state)
        ratio = (found.images_per_s or 0.0) / best_speed if found else 0.0
        found_best += ratio >= 0.999
        worst = min(worst, ratio)
    print(f"random models ({models}, parameters far beyond FLUX.1's): the grid's best found in "
          f"{found_best / models:.1%}; the bound cut the search short in {cut / models:.1%}; the worst settled for "
          f"{worst:.2f}× the best images/s")


if __name__ == "__main__":
    main()
    fuzz(int(sys.argv[sys.argv.index("--fuzz") + 1]) if "--fuzz" in sys.argv else 1000)
