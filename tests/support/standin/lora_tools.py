"""Stand-in for sd-scripts' LoRA tools (tests only; not sd-scripts' code): one script that acts as resize_lora.py,
convert_flux_lora.py, flux_merge_lora.py or flux_minimal_inference.py by the name it is installed under
(`install_lora_tools(sd_scripts)`), with their options, their kind of output (tqdm bars on stderr, log lines, the
`--verbose` retention figures) and files with real safetensors headers (zero-filled tensors).

STANDIN_TOOL_CRASH=1: write half of the output file, then fail with a traceback. STANDIN_TOOL_SLEEP=S: sleep S
seconds between bars (a long merge, for cancel tests). STANDIN_TOOL_KEYS=mismatch: the inference stand-in fails to
load the LoRA as strict loading does; =silent: draw without the LoRA's load line.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

ITEM = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}


def read_header(path: str) -> dict:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def write(path: str, tensors: dict[str, tuple[str, list[int]]], metadata: dict | None = None, *, half: bool = False) -> None:
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = ITEM.get(dtype, 4)
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.write(b"\0" * (offset // 2 if half else offset))


def tensors_of(path: str) -> dict[str, tuple[str, list[int]]]:
    return {k: (v["dtype"], v["shape"]) for k, v in read_header(path).items() if k != "__metadata__"}


def bars(label: str, total: int) -> None:
    pause = float(os.environ.get("STANDIN_TOOL_SLEEP") or 0)
    for done in range(total + 1):
        pct = done * 100 // max(total, 1)
        sys.stderr.write(f"\r{label}: {pct:3d}%|{'#' * (pct // 10):10s}| {done}/{total} [00:00<00:00, 10.0it/s]")
        sys.stderr.flush()
        if pause and done < total:
            time.sleep(pause)
    sys.stderr.write("\n")


def crash_if_asked(output: str, tensors: dict) -> None:
    if os.environ.get("STANDIN_TOOL_CRASH"):
        write(output, tensors, half=True)
        sys.stderr.write("Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: stand-in crash\n")
        raise SystemExit(1)


def resize(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for option in ("--model", "--save_to", "--save_precision", "--device", "--dynamic_method"):
        parser.add_argument(option)
    parser.add_argument("--new_rank", type=int, default=4)
    parser.add_argument("--dynamic_param", type=float)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not args.save_to.endswith(".safetensors"):
        raise SystemExit("The --save_to argument must be specified and must be a .ckpt , .pt, .pth or .safetensors file.")
    source = tensors_of(args.model)
    out: dict[str, tuple[str, list[int]]] = {}
    modules = 0
    for name, (dtype, shape) in source.items():
        rank = args.new_rank if not args.dynamic_method else max(1, args.new_rank - modules % 2)
        if name.endswith((".lora_down.weight", ".lora_A.weight")):
            out[name] = (dtype, [rank, *shape[1:]])
            modules += 1
        elif name.endswith((".lora_up.weight", ".lora_B.weight")):
            out[name] = (dtype, [shape[0], rank])
        else:
            out[name] = (dtype, shape)
    print("INFO     loading Model...")
    crash_if_asked(args.save_to, out)
    bars("", len(source))
    if args.verbose:
        for index in range(modules):
            dyn = f", dynamic | dim: {args.new_rank - index % 2}, alpha: 1.0" if args.dynamic_method else ""
            print(f"lora_unet_double_blocks_0_m{index:<50} | sum(S) retained: 90.0%, fro retained: {96 + index % 3}.0%, "
                  f"max(S) ratio: 5.0{dyn}")
        print("Average Frobenius norm retention: 97.00% | std: 0.008")
    write(args.save_to, out, {"ss_network_dim": str(args.new_rank)})
    print(f"INFO     saving model to: {args.save_to}")


AIT = {"img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"], "img_attn_proj": ["attn.to_out.0"],
       "linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "linear2": ["proj_out"]}


def convert(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for option in ("--src", "--dst", "--src_path", "--dst_path"):
        parser.add_argument(option)
    args = parser.parse_args(argv)
    source = tensors_of(args.src_path)
    out: dict[str, tuple[str, list[int]]] = {}
    print(f"INFO     Loading source file {args.src_path}")
    crash_if_asked(args.dst_path, source)
    if args.src == "sd-scripts" and args.dst == "ai-toolkit":
        for name, (dtype, shape) in source.items():
            if not name.endswith(".lora_down.weight"):
                continue
            module = name[: -len(".lora_down.weight")]
            kind = "single" if "single_blocks" in module else "double"
            block = module.split("_blocks_")[1].split("_")[0]
            tail = module.split(f"_blocks_{block}_")[1]
            prefix = (f"transformer.single_transformer_blocks.{block}." if kind == "single"
                      else f"transformer.transformer_blocks.{block}.")
            for part in AIT.get(tail, [tail.replace("_", ".")]):
                out[f"{prefix}{part}.lora_A.weight"] = (dtype, shape)
                up = source[f"{module}.lora_up.weight"]
                out[f"{prefix}{part}.lora_B.weight"] = (dtype, [up[1][0] // len(AIT.get(tail, [1])), up[1][1]])
    elif args.src == "ai-toolkit" and args.dst == "sd-scripts":
        for name, (dtype, shape) in source.items():
            if name.endswith(".lora_A.weight"):
                module = name[: -len(".lora_A.weight")].replace("transformer.", "lora_unet_").replace(".", "_")
                module = module.replace("lora_unet_transformer_blocks", "lora_unet_double_blocks")
                module = module.replace("lora_unet_single_transformer_blocks", "lora_unet_single_blocks")
                out[f"{module}.lora_down.weight"] = (dtype, shape)
                out[f"{module}.lora_up.weight"] = (dtype, list(source[name.replace("lora_A", "lora_B")][1]))
                out[f"{module}.alpha"] = (dtype, [])
    else:
        raise NotImplementedError(f"Conversion from {args.src} to {args.dst} is not supported")
    print(f"INFO     Saving destination file {args.dst_path}")
    write(args.dst_path, out)


def merge(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for option in ("--flux_model", "--save_to", "--save_precision", "--working_device"):
        parser.add_argument(option)
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--ratios", type=float, nargs="*")
    parser.add_argument("--concat", action="store_true")
    parser.add_argument("--mem_eff_load_save", action="store_true")
    args = parser.parse_args(argv)
    assert len(args.models) == len(args.ratios), "number of models must be equal to number of ratios"
    if args.flux_model:
        base = tensors_of(args.flux_model)
        crash_if_asked(args.save_to, base)
        bars("", len(base))
        print("INFO     merging...")
        bars("", 3)
        write(args.save_to, base)
        return
    merged: dict[str, tuple[str, list[int]]] = {}
    for model in args.models:
        print(f"INFO     loading: {model}")
        tensors = tensors_of(model)
        bars("", len(tensors))
        for name, (dtype, shape) in tensors.items():
            if name not in merged:
                merged[name] = (dtype, list(shape))
            elif name.endswith(".lora_down.weight") and args.concat:
                merged[name][1][0] += shape[0]
            elif name.endswith(".lora_up.weight") and args.concat:
                merged[name][1][1] += shape[1]
    crash_if_asked(args.save_to, merged)
    write(args.save_to, merged)
    print(f"INFO     saving model to: {args.save_to}")


def inference(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for option in ("--ckpt_path", "--clip_l", "--t5xxl", "--ae", "--prompt", "--output_dir", "--dtype"):
        parser.add_argument(option)
    for option in ("--seed", "--steps", "--width", "--height"):
        parser.add_argument(option, type=int)
    parser.add_argument("--lora_weights", nargs="*", default=[])
    args = parser.parse_args(argv)
    from PIL import Image

    shade = 40
    for weights in args.lora_weights:
        path = weights.split(";")[0]
        if os.environ.get("STANDIN_TOOL_KEYS") == "mismatch":
            sys.stderr.write("RuntimeError: Error(s) in loading state_dict for LoRANetwork: Missing key(s)\n")
            raise SystemExit(1)
        if not any(k.startswith("lora") for k in read_header(path)):
            sys.stderr.write("AttributeError: 'NoneType' object has no attribute 'create_network_from_weights'\n")
            raise SystemExit(1)
        shade += sum(s[1][0] for s in tensors_of(path).values() if s[1]) % 150
        if os.environ.get("STANDIN_TOOL_KEYS") != "silent":
            print(f"INFO     Loaded LoRA weights from {path}: <All keys matched successfully>")
    print("INFO     Loaded Flux: <All keys matched successfully>")  # the base's own line: not the LoRA's
    bars("", args.steps)
    os.makedirs(args.output_dir, exist_ok=True)
    out = Path(args.output_dir) / time.strftime("%Y%m%d_%H%M%S.png")
    image = Image.new("RGB", (args.width, args.height), (shade, 255 - shade, 128))
    image.putpixel((0, 0), (0, 0, 0))
    image.save(out)
    print(f"INFO     Saved image to {out}")


TOOLS = {"resize_lora.py": resize, "convert_flux_lora.py": convert, "flux_merge_lora.py": merge,
         "flux_minimal_inference.py": inference}


def install_lora_tools(sd_scripts: Path) -> None:
    """Put the stand-in under each tool's path in a (fake) sd-scripts checkout."""
    text = Path(__file__).read_text()
    for relative in ("networks/resize_lora.py", "networks/convert_flux_lora.py", "networks/flux_merge_lora.py",
                     "flux_minimal_inference.py"):
        path = sd_scripts / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    TOOLS[Path(sys.argv[0]).name](sys.argv[1:])
