"""Test helper: small safetensors files with real tensor names, shapes and dtypes (the header is real; the data is a
sparse hole of the right length, so a 4096×4096 tensor costs no disk and no time)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

ITEM = {"F8_E4M3": 1, "F8_E5M2": 1, "BF16": 2, "F16": 2, "F32": 4}

# A few of each real file's tensors (names and shapes as in the real files; see ../shared/e2e/make_tiny_models.py).
KINDS: dict[str, dict[str, tuple[str, list[int]]]] = {
    "flux": {
        "double_blocks.0.img_attn.qkv.weight": ("BF16", [9216, 3072]),
        "double_blocks.0.img_attn.qkv.bias": ("BF16", [9216]),
        "single_blocks.0.modulation.lin.bias": ("BF16", [9216]),
        "guidance_in.in_layer.bias": ("BF16", [3072]),
        "img_in.weight": ("BF16", [3072, 64]),
    },
    "ae": {
        "decoder.conv_in.weight": ("F32", [512, 16, 3, 3]),
        "decoder.conv_in.bias": ("F32", [512]),
        "encoder.conv_out.weight": ("F32", [32, 512, 3, 3]),
    },
    "clip_l": {
        "text_model.embeddings.token_embedding.weight": ("F16", [49408, 768]),
        "text_model.encoder.layers.0.self_attn.q_proj.weight": ("F16", [768, 768]),
        "text_model.final_layer_norm.weight": ("F16", [768]),
    },
    "clip_g": {  # SDXL's second text encoder: CLIP-L's names, another width
        "text_model.encoder.layers.0.self_attn.q_proj.weight": ("F16", [1280, 1280]),
        "text_model.final_layer_norm.weight": ("F16", [1280]),
    },
    "t5xxl": {
        "encoder.block.0.layer.0.SelfAttention.q.weight": ("F16", [4096, 4096]),
        "encoder.block.0.layer.0.layer_norm.weight": ("F16", [4096]),
        "shared.weight": ("F16", [32128, 4096]),
    },
    "t5xxl_fp8": {
        "encoder.block.0.layer.0.SelfAttention.q.weight": ("F8_E4M3", [4096, 4096]),
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": ("F8_E4M3", [10240, 4096]),
        "encoder.block.0.layer.0.layer_norm.weight": ("BF16", [4096]),
    },
    "lora": {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": ("BF16", [16, 3072]),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": ("BF16", [9216, 16]),
        "lora_unet_double_blocks_0_img_attn_qkv.alpha": ("BF16", []),
    },
    "sdxl_unet": {
        "model.diffusion_model.input_blocks.0.0.weight": ("F16", [320, 4, 3, 3]),
    },
}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], *, metadata: dict | None = None) -> Path:
    """A valid safetensors file: the header, then a hole as long as the tensors' bytes."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * ITEM[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    return path


def write_model(path: Path, kind: str) -> Path:
    """A file that is `kind` (a key of KINDS) by its header."""
    return write_safetensors(path, KINDS[kind])
