"""The stand-in trainer's memory and speed model per setting (a test double: made-up numbers of FLUX.1's order, not
measurements). Used by the stand-in `flux_train_network.py` when `STANDIN_MODEL=1`, and by the tests that compute
the known optimum by brute force.

- memory: the base's weights (`BASE_GB` in 16-bit; half with `--fp8_base`), less the swapped blocks'
  (`--blocks_to_swap N` of `BLOCKS` equal blocks holding `SWAPPABLE` of the weights), plus `OVERHEAD_GB` (with an
  8-bit optimizer state), plus `STATE_32BIT_GB` with an optimizer of 32-bit state (AdamW, Lion, …), plus
  `GB_PER_MEGAPIXEL` per image of the batch (× `NO_CKPT_MEMORY` without `--gradient_checkpointing`: every block's
  activations kept);
- time per step: `STEP_SECONDS` (fixed per step: data loading, the optimizer) + `STATE_8BIT_SECONDS` with an 8-bit
  state (quantising it) + the images' compute (`IMAGE_SECONDS` per megapixel, × `FP8_FACTOR` with an fp8 base:
  upcasting costs time; × `NO_CKPT_COMPUTE` without checkpointing: no forward pass recomputed) + `SWAP_SECONDS` per
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
    "NO_CKPT_MEMORY": 3.0,
    "NO_CKPT_COMPUTE": 0.75,
    "STATE_32BIT_GB": 2.0,
    "STATE_8BIT_SECONDS": 0.001,
}
STATE_32BIT = ("adamw", "pagedadamw", "pagedadamw32bit", "lion", "sgdnesterov")  # sd-scripts' names, lower-case


def state_32bit(optimizer: str | None) -> bool:
    return (optimizer or "adamw8bit").lower() in STATE_32BIT


def parameter(name: str, env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    return float(env.get(f"STANDIN_{name}", DEFAULTS[name]))


def peak_bytes(swap: int, fp8: bool, batch: int, width: int, height: int, env: Mapping[str, str] | None = None, *,
               checkpointing: bool = True, state32: bool = False) -> int:
    p = {name: parameter(name, env) for name in DEFAULTS}
    weights = p["BASE_GB"] * (0.5 if fp8 else 1.0)
    swapped = weights * p["SWAPPABLE"] * min(swap, p["BLOCKS"]) / p["BLOCKS"]
    megapixels = width * height / (1024 * 1024)
    activations = batch * megapixels * p["GB_PER_MEGAPIXEL"] * (1.0 if checkpointing else p["NO_CKPT_MEMORY"])
    state = p["STATE_32BIT_GB"] if state32 else 0.0
    return int((weights - swapped + p["OVERHEAD_GB"] + state + activations) * GB)


def step_seconds(swap: int, fp8: bool, batch: int, width: int, height: int,
                 env: Mapping[str, str] | None = None, *, checkpointing: bool = True, state32: bool = False) -> float:
    p = {name: parameter(name, env) for name in DEFAULTS}
    megapixels = width * height / (1024 * 1024)
    compute = batch * megapixels * p["IMAGE_SECONDS"] * (p["FP8_FACTOR"] if fp8 else 1.0) \
        * (1.0 if checkpointing else p["NO_CKPT_COMPUTE"])
    return p["STEP_SECONDS"] + (0.0 if state32 else p["STATE_8BIT_SECONDS"]) + compute + swap * p["SWAP_SECONDS"]


Rung = tuple[int, bool, bool]  # (swap, checkpointing, 32-bit optimizer state)


def best_setting(rungs: tuple[Rung, ...], fp8s: tuple[bool, ...], max_batch: int, width: int, height: int,
                 limit: int, env: Mapping[str, str] | None = None) -> tuple[int, bool, int, bool, bool] | None:
    """The known optimum by brute force over every rung × base precision × batch: (swap, fp8, batch, checkpointing,
    state32) with the most images/s whose peak ≤ `limit` (ties: less memory)."""
    found: list[tuple[float, int, tuple[int, bool, int, bool, bool]]] = []
    for swap, checkpointing, state32 in rungs:
        for fp8 in fp8s:
            for batch in range(1, max_batch + 1):
                peak = peak_bytes(swap, fp8, batch, width, height, env, checkpointing=checkpointing, state32=state32)
                if peak <= limit:
                    speed = batch / step_seconds(swap, fp8, batch, width, height, env, checkpointing=checkpointing,
                                                 state32=state32)
                    found.append((speed, -peak, (swap, fp8, batch, checkpointing, state32)))
    return max(found)[2] if found else None
