"""Failures of runs on several GPUs (torchrun + NCCL), as they read in a log, with what to do and where the text
comes from. The parser (core.logparse) turns a matching line into `Failure(kind, ...)`; core.diagnosis words it.

Every `example` is a line as printed in a public report (the first URL of `sources`); tests feed them through the
parser. Texts are taken from those reports and PyTorch/NCCL messages, not written from memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownFailure:
    kind: str
    needles: tuple[str, ...]  # any of them in a line (case-sensitive, as printed)
    what: str  # one line: what happened
    advice: str  # one line: what to do
    example: str  # a real line from the first source
    sources: tuple[str, ...]


TABLE: tuple[KnownFailure, ...] = (
    KnownFailure(
        "nccl_timeout",
        ("Watchdog caught collective operation timeout",),
        "a collective operation timed out: one process waited for another that never came (hung, much slower, "
        "or still caching on rank 0)",
        "if it happened while caching latents or text-encoder outputs, give more time (train.extra_args "
        "--ddp_timeout <minutes>); at the first step it is usually peer-to-peer: set NCCL_P2P_DISABLE=1; "
        "the other rank's lines in the log (l) show which one stopped",
        "[rank1]:[E626 06:24:44.903881913 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation "
        "timeout: WorkNCCL(SeqNum=808, OpType=ALLREDUCE, NumelIn=9801523, NumelOut=9801523, Timeout(ms)=600000) ran "
        "for 600020 milliseconds before timing out.",
        ("https://github.com/XPixelGroup/BasicSR/issues/737",
         "https://github.com/kohya-ss/sd-scripts/issues/971",
         "https://github.com/pytorch/pytorch/issues/118369"),
    ),
    KnownFailure(
        "nccl_duplicate_gpu",
        ("Duplicate GPU detected",),
        "two trainer processes landed on the same GPU",
        "choose each GPU once in the GPU step and don't set CUDA_VISIBLE_DEVICES yourself (lorawizard pins them by UUID)",
        "Duplicate GPU detected : rank 3 and rank 0 both on CUDA device f000",
        ("https://github.com/NVIDIA/Megatron-LM/issues/661",
         "https://github.com/horovod/horovod/issues/3929"),
    ),
    KnownFailure(
        "nccl_cuda_error",
        ("unhandled cuda error", "ncclUnhandledCudaError"),
        "NCCL hit a CUDA error talking between the GPUs (often peer-to-peer on consumer boards)",
        "set NCCL_P2P_DISABLE=1 for the run, update the NVIDIA driver, and check that both GPUs work alone "
        "(probe each); details: run once with NCCL_DEBUG=INFO",
        "[rank7]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, "
        "unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL version 2.20.5",
        ("https://github.com/NVIDIA/nccl/issues/1410",
         "https://github.com/NVIDIA/nccl/issues/1024",
         "https://github.com/pytorch/pytorch/issues/49095"),
    ),
    KnownFailure(
        "nccl_system_error",
        ("unhandled system error", "ncclSystemError"),
        "NCCL could not set up communication between the processes (a system call failed: shared memory, sockets)",
        "in Docker give the container more shared memory (--ipc=host or --shm-size=8g); else set "
        "NCCL_P2P_DISABLE=1 and run once with NCCL_DEBUG=INFO to see which call failed",
        "NCCL error in: /opt/pytorch/pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1275, unhandled system "
        "error (run with NCCL_DEBUG=INFO for details), NCCL version 2.18.1 ncclSystemError",
        ("https://github.com/NVIDIA/nccl/issues/1016",
         "https://github.com/pytorch/pytorch/pull/45950",
         "https://github.com/NVIDIA/nccl/issues/207"),
    ),
    KnownFailure(
        "port_in_use",
        ("The server socket has failed to listen", "EADDRINUSE"),
        "the rendezvous port is already taken (another training run?)",
        "start again: lorawizard picks a free port each time; if gpu.main_process_port is set, change or remove it",
        "RuntimeError: The server socket has failed to listen on any local network address. port: 29500, useIpv6: 0, "
        "code: -98, name: EADDRINUSE, message: address already in use.",
        ("https://github.com/om-ai-lab/VLM-R1/issues/289",
         "https://github.com/showlab/Tune-A-Video/issues/90"),
    ),
    KnownFailure(
        "gpu_busy",
        ("all CUDA-capable devices are busy or unavailable", "CUDA-capable device(s) is/are busy or unavailable"),
        "a chosen GPU is taken by another program (exclusive compute mode) or unavailable",
        "close the other program (nvidia-smi lists it) or choose other GPUs; `sudo nvidia-smi -c 0` returns a GPU "
        "to the shared (default) compute mode",
        "RuntimeError: CUDA error: all CUDA-capable devices are busy or unavailable",
        ("https://github.com/facebookresearch/detectron2/issues/2580",
         "https://github.com/pytorch/pytorch/issues/2704"),
    ),
    KnownFailure(
        "nccl_error",
        ("NCCL error", "DistBackendError"),
        "NCCL (the GPUs' communication library) failed",
        "set NCCL_P2P_DISABLE=1 and try again; run once with NCCL_DEBUG=INFO to see the cause",
        "torch.distributed.DistBackendError: NCCL error in: /opt/pytorch/pytorch/torch/csrc/distributed/c10d/"
        "ProcessGroupNCCL.cpp:1727, invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version 2.19.3",
        ("https://github.com/NVIDIA/Megatron-LM/issues/661",),
    ),
)

BY_KIND = {entry.kind: entry for entry in TABLE}
_ANY = re.compile("|".join(re.escape(needle) for entry in TABLE for needle in entry.needles))


def match(text: str) -> KnownFailure | None:
    """The first table entry whose needle is in `text` (more specific entries come first), else None."""
    if _ANY.search(text) is None:
        return None
    return next((entry for entry in TABLE if any(needle in text for needle in entry.needles)), None)
