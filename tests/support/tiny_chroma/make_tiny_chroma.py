"""Write a random Chroma transformer with few blocks, for the tiny-Chroma e2e run (tests/e2e/test_chroma_e2e.py).

Run in the trainer's Python with sd-scripts' folder as the working directory (its `library` package is imported):
    cd <sd-scripts> && <venv>/bin/python <this file> OUT.safetensors [--double 1 --single 1]
The keys and shapes are sd-scripts' own `chroma_models.Chroma` state dict (BFL names: `distilled_guidance_layer.*`,
`double_blocks.N.*`, `single_blocks.N.*`, no `vector_in`/`guidance_in`/modulation layers), built from `chroma_params`
with only the block counts changed (the shim in this folder makes sd-scripts build the same), bf16, torch's default
initialisation. About 0.6 B parameters (1.2 GB): the approximator and one block of each kind at full width.
"""
import argparse
import dataclasses
import os
import sys

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--double", type=int, default=1)
    parser.add_argument("--single", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())
    from library import chroma_models
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    params = dataclasses.replace(chroma_models.chroma_params, depth=args.double, depth_single_blocks=args.single)
    model = chroma_models.Chroma(params)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    partial = args.out + ".partial"
    save_file(state, partial)
    os.replace(partial, args.out)
    print(f"chroma: {sum(v.numel() for v in state.values()) / 1e6:.1f}M params, {len(state)} tensors -> {args.out}")


if __name__ == "__main__":
    main()
