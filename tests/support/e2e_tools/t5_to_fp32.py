"""Write an fp32 copy of a safetensors file tensor by tensor (peak memory: one tensor), for the CPU e2e harness.

Why: on a CPU without native bf16 the e2e runs use fp32 (`train.mixed_precision = "no"`); sd-scripts then casts the
bf16 T5-XXL to fp32 at load (peak ~22 GiB resident for one process). Loaded from an fp32 file the cast is a no-op:
~11 GiB resident per process (measured). Two processes still do not fit in 24 GiB: the file-backed pages were not
shared (each rank's anonymous memory grew to ~11.3 GiB). Run it with the trainer's Python (needs torch + safetensors):
    /work/e2e/venv/bin/python tests/support/e2e_tools/t5_to_fp32.py IN.safetensors OUT.safetensors
"""

from __future__ import annotations

import json
import os
import struct
import sys

import torch
from safetensors import safe_open


def main(source: str, target: str) -> None:
    with open(source, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    metadata = header.pop("__metadata__", None)
    names = sorted(header, key=lambda n: header[n]["data_offsets"][0])
    new, offset = {}, 0
    for name in names:
        count = 1
        for dim in header[name]["shape"]:
            count *= dim
        new[name] = {"dtype": "F32", "shape": header[name]["shape"], "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    if metadata:
        new["__metadata__"] = metadata
    text = json.dumps(new, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    partial = target + ".tmp"
    with safe_open(source, framework="pt") as tensors, open(partial, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            out.write(tensors.get_tensor(name).to(torch.float32).contiguous().numpy().tobytes())
    os.replace(partial, target)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
