"""The stand-in trainer's memory and speed model per setting (a test double: made-up numbers of FLUX.1's order, not
measurements). Used by the stand-in `flux_train_network.py` when `STANDIN_MODEL=1`, and by the tests that compute
the known optimum by brute force.

- memory: the base's weights (`BASE_GB` in 16-bit; half with `--fp8_base`), less the swapped blocks'
  (`--blocks_to_swap N` of `BLOCKS` equal blocks holding `SWAPPABLE` of the weights), plus `OVERHEAD_GB`, plus
  `GB_PER_MEGAPIXEL` per image of the batch;
- time per step: `STEP_SECONDS` (fixed per step: data loading, the optimizer) + the images' compute
  (`IMAGE_SECONDS` per megapixel, × `FP8_FACTOR` with an fp8 base: upcasting costs time) + `SWAP_SECONDS` per
  swapped block (PCIe transfers, once per step whatever the batch).

Every parameter can be set as `STANDIN_<NAME>` in the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

GB = 1000**3
DEFAULTS = {
    "BASE_GB": 23.8,
    "BLOCKS": 57,
    "SWAPPABLE": 0.9,
    "OVERHEAD_GB": 3.0,
    "GB_PER_MEGAPIXEL": 2.5,
    "STEP_SECONDS": 0.02,
    "IMAGE_SECONDS": 0.05,
    "FP8_FACTOR": 1.15,
    "SWAP_SECONDS": 0.002,
}


def parameter(name: str, env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    return float(env.get(f"STANDIN_{name}", DEFAULTS[name]))


def peak_bytes(swap: int, fp8: bool, batch: int, width: int, height: int, env: Mapping[str, str] | None = None) -> int:
    p = {name: parameter(name, env) for name in DEFAULTS}
    weights = p["BASE_GB"] * (0.5 if fp8 else 1.0)
    swapped = weights * p["SWAPPABLE"] * min(swap, p["BLOCKS"]) / p["BLOCKS"]
    megapixels = width * height / (1024 * 1024)
    return int((weights - swapped + p["OVERHEAD_GB"] + batch * megapixels * p["GB_PER_MEGAPIXEL"]) * GB)


def step_seconds(swap: int, fp8: bool, batch: int, width: int, height: int,
                 env: Mapping[str, str] | None = None) -> float:
    p = {name: parameter(name, env) for name in DEFAULTS}
    megapixels = width * height / (1024 * 1024)
    compute = batch * megapixels * p["IMAGE_SECONDS"] * (p["FP8_FACTOR"] if fp8 else 1.0)
    return p["STEP_SECONDS"] + compute + swap * p["SWAP_SECONDS"]


def best(swaps: tuple[int, ...], fp8s: tuple[bool, ...], max_batch: int, width: int, height: int, limit: int,
         env: Mapping[str, str] | None = None) -> tuple[int, bool, int] | None:
    """The known optimum by brute force: (swap, fp8, batch) with the most images/s whose peak ≤ `limit` (ties: less
    memory)."""
    found: list[tuple[float, int, tuple[int, bool, int]]] = []
    for swap in swaps:
        for fp8 in fp8s:
            for batch in range(1, max_batch + 1):
                peak = peak_bytes(swap, fp8, batch, width, height, env)
                if peak <= limit:
                    speed = batch / step_seconds(swap, fp8, batch, width, height, env)
                    found.append((speed, -peak, (swap, fp8, batch)))
    return max(found)[2] if found else None
