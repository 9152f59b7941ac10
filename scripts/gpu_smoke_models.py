"""Run INSIDE the trainer's Python (torch, safetensors, sd-scripts importable): write tiny random FLUX.1-dev files.

    <trainer python> scripts/gpu_smoke_models.py SD_SCRIPTS OUT_DIR [--t5-fp8] [--no-t5]

The shapes come from sd-scripts' own model classes (built on the meta device, so nothing big is allocated): a FLUX
DiT with 1 double + 1 single block (sd-scripts reads the block counts from the file), the AE, CLIP-L and a
full-size T5-XXL (its config is fixed in sd-scripts: 9.1 GiB in bf16, 4.8 GB with --t5-fp8). Weights are random
(normal, std 0.02; norm scales 1), so a run trains noise — enough to exercise memory, speed and the launcher.
Prints one JSON line: {file: bytes}.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path


def random_state(model, dtype):  # noqa: ANN001, ANN201
    import torch

    state = {}
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if name.endswith(("scale", "norm.weight", "layer_norm.weight", "ln_1.weight", "ln_2.weight")) or (
            "norm" in name and name.endswith(".weight") and len(shape) == 1
        ):
            value = torch.ones(shape, dtype=torch.float32)
        elif name.endswith(".bias"):
            value = torch.zeros(shape, dtype=torch.float32)
        elif tensor.dtype in (torch.int64, torch.int32):
            value = torch.arange(shape[-1]).expand(shape).clone() if shape else torch.zeros((), dtype=tensor.dtype)
            state[name] = value
            continue
        else:
            value = torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02)
        state[name] = value.to(dtype)
    return state


def main(argv: list[str]) -> int:
    sd_scripts, out = Path(argv[0]).absolute(), Path(argv[1]).absolute()
    fp8 = "--t5-fp8" in argv
    sys.path.insert(0, str(sd_scripts))
    import torch
    from library import flux_models, flux_utils
    from safetensors.torch import save_file

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}

    def save(name: str, state: dict) -> None:
        path = out / name
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        sizes[name] = path.stat().st_size

    spec = flux_models.configs["dev"]
    with torch.device("meta"):
        flux = flux_models.Flux(replace(spec.params, depth=1, depth_single_blocks=1))
        ae = flux_models.AutoEncoder(spec.ae_params)
    save("flux1-dev-tiny-1d1s.safetensors", random_state(flux, torch.bfloat16))
    save("ae-random.safetensors", random_state(ae, torch.float32))
    clip = flux_utils.load_clip_l(None, torch.bfloat16, "cpu", state_dict={})  # state_dict={}: stays on meta
    save("clip_l-random.safetensors", random_state(clip, torch.bfloat16))
    if "--no-t5" in argv:  # a quick check of the small files only
        print(json.dumps(sizes))
        return 0
    t5 = flux_utils.load_t5xxl(None, torch.bfloat16, "cpu", state_dict={})
    t5_dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    t5_state = random_state(t5, torch.bfloat16)
    if fp8:  # sd-scripts keeps norms and the embedding in higher precision when it meets an fp8 file
        t5_state = {k: (v.to(t5_dtype) if v.dim() == 2 and "shared" not in k and "embed" not in k else v)
                    for k, v in t5_state.items()}
    save(f"t5xxl-random_{'fp8' if fp8 else 'bf16'}.safetensors", t5_state)
    print(json.dumps(sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
