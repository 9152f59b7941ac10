"""More than one GPU: which GPUs, in which order, and how accelerate launches them (data-parallel, torch DDP).

accelerate is the distributed engine (torchrun + NCCL underneath); this module only decides its inputs:

* `chosen_uuids(session)`: `[gpu] uuids = [...]` (several GPUs), else the single `gpu.uuid` (read as before).
  Checked where read: UUID shape, the same GPU twice.
* `plan_launch(session)` → `Launch`: the GPUs present (a GPU that is gone is named), their order (largest memory
  first, then NVML/PCI order: stable, and rank 0 — which also saves and samples — gets the biggest card), the
  environment (`CUDA_VISIBLE_DEVICES` with the UUIDs; `NCCL_P2P_DISABLE=1` where NVML says peer-to-peer is missing
  between two of them, or cannot tell — LoRA gradients are a few MB, so going through host memory costs little), a
  free `main_process_port`, and notes for a person (a GPU busy with another program).
* Mixed architectures that cannot train together are refused: every rank runs the same bf16 program, and bf16 needs
  compute capability 8.0 (Ampere) or newer; older cards also need a different torch build (cu126) than Blackwell
  cards (cu128+) — no single build of torch 2.12+ covers both.
* Test mode `LORAWIZARD_CPU_PROCESSES=N`: N trainer processes on the CPU through accelerate's multi-GPU launcher
  with `ACCELERATE_USE_CPU=true` (torchrun + gloo) — the distributed code path without a GPU (tests/ only).

One GPU stays exactly as before: `distributed_type: 'NO'`, one process, the UUID pinned.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lorawizard.core.gpu.nvml import GB, GpuInfo, Inventory, NvmlAdapter, NvmlUnavailable, default_nvml, inventory
from lorawizard.core.session.document import Session

CPU_PROCESSES_ENV = "LORAWIZARD_CPU_PROCESSES"
DEFAULT_PORT = 29500  # torchrun's default; several machines must agree on one
# sd-scripts' --ddp_timeout (minutes) → the process group's collective timeout. torch's default is 10 min (NCCL);
# rank 0 caching latents/text-encoder outputs while the others wait at a barrier has run past 30 min in public
# reports (kohya-ss/sd-scripts#971), so a long dataset would die in the watchdog. A dead rank is stopped by torchrun
# at once whatever this is; the timeout only ends a real hang, and the dashboard warns after 15 quiet minutes anyway.
DDP_TIMEOUT_MIN = 60
BUSY_BYTES = 1 * GB  # another program holding more than this on a chosen GPU is worth saying
UUID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{2,79}$")  # never a leading "-": it would read as an option
BF16_MIN_CC = (8, 0)


class SelectionError(ValueError):
    """The chosen GPUs cannot be used together; the message is one line meant for a person."""


def chosen_uuids(session: Session) -> list[str]:
    """`gpu.uuids` when set (several GPUs), else `[gpu.uuid]`, else []. Raises SelectionError for bad values."""
    uuid = session.gpu.uuid
    uuids = session.gpu.uuids or ([uuid] if uuid else [])
    for uuid in uuids:
        if not UUID_RE.match(uuid):
            raise SelectionError(f"gpu.uuids: {uuid!r} does not look like an NVML GPU UUID (GPU-xxxxxxxx-…)")
    seen: set[str] = set()
    for uuid in uuids:
        if uuid in seen:
            raise SelectionError(f"gpu.uuids: {uuid} is listed twice — each GPU can run one trainer process")
        seen.add(uuid)
    return uuids


def disagreement_notes(session: Session) -> list[str]:
    """A line when `gpu.uuid` names a GPU that `gpu.uuids` (which wins) leaves out: nobody said so before."""
    uuid, uuids = session.gpu.uuid, session.gpu.uuids
    if uuid and uuids and uuid not in uuids:
        return [f"gpu.uuid ({uuid}) is not one of gpu.uuids: training on gpu.uuids ({', '.join(uuids)}); "
                "gpu.uuid is not used (remove it, or add it to gpu.uuids)"]
    return []


def cpu_processes(environ: dict[str, str] | None = None) -> int:
    """`LORAWIZARD_CPU_PROCESSES` (test mode), 0 when unset."""
    text = (environ if environ is not None else os.environ).get(CPU_PROCESSES_ENV, "").strip()
    if not text:
        return 0
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise SelectionError(f"{CPU_PROCESSES_ENV}={text!r}: expected a number of processes from 1 to 64")
    return int(text)


def training_order(gpus: Iterable[GpuInfo]) -> list[GpuInfo]:
    """Largest memory first, then NVML (PCI bus) order: the same order every time, rank 0 on the biggest card."""
    return sorted(gpus, key=lambda gpu: (-gpu.memory_total, gpu.index, gpu.uuid))


def present(uuids: list[str], inv: Inventory) -> list[GpuInfo]:
    """The chosen GPUs as NVML sees them now; SelectionError names the first one that is gone."""
    found = []
    for uuid in uuids:
        gpu = inv.by_uuid(uuid)
        if gpu is None:
            seen = ", ".join(f"GPU {g.index} {g.uuid}" for g in inv.gpus) or inv.message() or "none"
            raise SelectionError(f"the chosen GPU {uuid} is not visible now (visible: {seen}): choose again in the GPU step")
        found.append(gpu)
    return found


def check_architectures(gpus: list[GpuInfo]) -> None:
    """Refuse GPUs that cannot run the same bf16 program (one older than Ampere beside newer ones)."""
    known = [(gpu, gpu.compute_capability) for gpu in gpus if gpu.compute_capability is not None]
    old = [gpu for gpu, capability in known if tuple(capability) < BF16_MIN_CC]
    new = [gpu for gpu, capability in known if tuple(capability) >= BF16_MIN_CC]
    if old and new:
        slow, fast = old[0], new[0]
        raise SelectionError(
            f"mixed architectures: GPU {slow.index} ({slow.name}, sm_{_sm(slow)}) cannot train in bf16 beside GPU "
            f"{fast.index} ({fast.name}, sm_{_sm(fast)}) — bf16 needs sm_80 or newer on every card: train on the newer ones"
        )


def _sm(gpu: GpuInfo) -> str:
    major, minor = gpu.compute_capability or (0, 0)
    return f"{major}{minor}"


def p2p_pairs(gpus: list[GpuInfo], nvml: NvmlAdapter | None = None) -> list[tuple[GpuInfo, GpuInfo, bool | None]]:
    """(a, b, peer-to-peer works) for every pair, from NVML's nvmlDeviceGetP2PStatus; None when it cannot tell."""
    adapter = nvml if nvml is not None else default_nvml()
    check = getattr(adapter, "p2p_ok", None)
    pairs = []
    for i, first in enumerate(gpus):
        for second in gpus[i + 1 :]:
            try:
                ok = check(first.uuid, second.uuid) if check is not None else None
            except NvmlUnavailable:
                ok = None
            pairs.append((first, second, ok))
    return pairs


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the kernel's choice), for torchrun's rendezvous on one machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class Launch:
    """How the trainer is started: processes, GPUs (in rank order), env, port; `notes` are lines for a person."""

    processes: int = 1
    gpus: list[GpuInfo] = field(default_factory=list)
    uuids: list[str] = field(default_factory=list)  # rank order; what CUDA_VISIBLE_DEVICES and gpu_ids hold
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    cpu: bool = False  # LORAWIZARD_CPU_PROCESSES test mode
    p2p_disabled: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def distributed(self) -> bool:
        return self.processes > 1

    def options(self) -> dict[str, Any]:
        """Trainer options this launch adds (sd-scripts' own flag for the collective timeout)."""
        return {"ddp_timeout": DDP_TIMEOUT_MIN} if self.distributed else {}


def plan_launch(
    session: Session,
    *,
    nvml: NvmlAdapter | None = None,
    uuids: list[str] | None = None,
    port: int | None = None,
    check_gpus: bool = True,
    environ: dict[str, str] | None = None,
) -> Launch:
    """The launch for the session's GPUs (or `uuids`: the probe pins one). SelectionError (one line) when unusable.

    `check_gpus=False` skips NVML (a dry run on a machine without the GPUs, or another machine's config).
    """
    port = port or _session_port(session)
    cpu = cpu_processes(environ) if uuids is None else 0
    if cpu:
        env = {"ACCELERATE_USE_CPU": "true"}
        if cpu == 1:
            return Launch(1, [], [], env, None, cpu=True)
        return Launch(cpu, [], [], env, port or free_port(), cpu=True,
                      notes=[f"test mode {CPU_PROCESSES_ENV}={cpu}: {cpu} trainer processes on the CPU (gloo)"])
    wanted = list(uuids) if uuids is not None else chosen_uuids(session)
    if len(wanted) <= 1:
        return _one_gpu(session, wanted, pinned=uuids is not None, nvml=nvml if check_gpus else None,
                        check_gpus=check_gpus)
    launch = Launch(len(wanted), notes=disagreement_notes(session) if uuids is None else [])
    gpus: list[GpuInfo] = []
    if check_gpus:
        adapter = nvml if nvml is not None else default_nvml()
        gpus = training_order(present(wanted, inventory(adapter)))
        check_architectures(gpus)
        launch.uuids = [gpu.uuid for gpu in gpus]
        missing = [(a, b, ok) for a, b, ok in p2p_pairs(gpus, adapter) if ok is not True]
        if missing:
            launch.p2p_disabled = True
            a, b, ok = missing[0]
            why = "NVML cannot tell whether" if ok is None else "NVML says"
            launch.notes.append(
                f"peer-to-peer: {why} GPU {a.index} and GPU {b.index} can{'' if ok is None else 'not'} reach each other "
                "directly → NCCL_P2P_DISABLE=1 (through host memory; LoRA gradients are small, it costs little)"
            )
        launch.notes += busy_notes(gpus, adapter)
    else:
        launch.uuids = wanted
        launch.p2p_disabled = True
        launch.notes.append("GPUs not checked here (no NVML reading) → NCCL_P2P_DISABLE=1 to be safe")
    launch.gpus = gpus
    launch.env = {"CUDA_VISIBLE_DEVICES": ",".join(launch.uuids)}
    if launch.p2p_disabled:
        launch.env["NCCL_P2P_DISABLE"] = "1"
    launch.port = port or free_port()
    return launch


def _one_gpu(session: Session, wanted: list[str], *, pinned: bool, nvml: NvmlAdapter | None,
             check_gpus: bool) -> Launch:
    """One process (or none chosen). One entry of `gpu.uuids` is checked as several are: the GPU must be there now."""
    if wanted and not pinned and session.gpu.uuids and check_gpus:
        present(wanted, inventory(nvml if nvml is not None else default_nvml()))
    env = {"CUDA_VISIBLE_DEVICES": wanted[0]} if wanted else {}
    return Launch(1, [], wanted, env, notes=[] if pinned else disagreement_notes(session))


def _session_port(session: Session | None) -> int | None:
    """`gpu.main_process_port` when the person fixed one; it must be free now (another run may hold it)."""
    port = session.gpu.main_process_port if session is not None else None
    if port is None:
        return None
    if not 1024 <= port <= 65535:
        raise SelectionError(f"gpu.main_process_port: expected a TCP port from 1024 to 65535, got {port}")
    if port_in_use(port):
        raise SelectionError(f"gpu.main_process_port: port {port} is in use (another training run?) — free it, or "
                             "remove gpu.main_process_port and lorawizard picks a free one")
    return port


def busy_notes(gpus: list[GpuInfo], nvml: NvmlAdapter) -> list[str]:
    """A line per chosen GPU that another program already uses heavily (the probed batch may no longer fit)."""
    notes = []
    for gpu in gpus:
        try:
            others = nvml.process_memory(gpu.uuid)
        except NvmlUnavailable:
            others = None
        used = sum(others.values()) if others else gpu.memory_used
        if used > BUSY_BYTES:
            who = f" by pid {', '.join(str(p) for p in sorted(others))}" if others else ""
            notes.append(f"GPU {gpu.index} ({gpu.name}) is in use{who}: {used / GB:.1f} GB taken — close that program, "
                         "or the batch sizes probed on an idle card may not fit")
    return notes


def steps_per_epoch(batches: dict[str, tuple[int, int]], repeats: int, processes: int = 1) -> int:
    """Optimizer steps per epoch as sd-scripts counts them: {bucket: (images, batch)} → Σ ⌈images×repeats / batch⌉
    batches, shared by the processes (accelerate gives each process ⌈batches / processes⌉; even_batches pads)."""
    total = sum(-(-images * repeats // max(1, batch)) for images, batch in batches.values())
    return -(-total // max(1, processes))


@dataclass(frozen=True)
class CardSpeed:
    """One kind of card from the probe: how many of them, its own largest batch and s/step at that batch."""

    name: str
    count: int
    batch: int
    s_per_step: float | None


def speed_summary(cards: list[CardSpeed], batch: int) -> list[str]:
    """What the slower card costs and what the cards together gain, in plain words (estimates, labelled so).

    DDP runs the same `batch` on every card and each step waits for the slowest. s/step at `batch` on a card that
    could take more is scaled linearly from its measured s/step (an estimate; all-reduce of LoRA gradients ignored).
    """
    seconds = {c.name: c.s_per_step for c in cards if c.s_per_step}
    timed = [c for c in cards if c.name in seconds]
    if len(timed) < len(cards) or not cards:
        return ["no step times measured: run the probe to see what each card costs and gains"]
    at_batch = {c.name: seconds[c.name] * batch / c.batch for c in timed}
    slow = max(timed, key=lambda c: at_batch[c.name])
    fast = min(timed, key=lambda c: at_batch[c.name])
    step = at_batch[slow.name]
    processes = sum(c.count for c in cards)
    together = processes * batch / step
    alone = max(c.batch / seconds[c.name] for c in timed)
    best = max(timed, key=lambda c: c.batch / seconds[c.name])
    short = short_name
    lines = []
    if slow.name != fast.name:
        idle = 1 - at_batch[fast.name] / step
        lines.append(f"each step waits for the slowest card: {short(slow.name)} ~{step:.2f} s/step at batch {batch}, "
                     f"{short(fast.name)} ~{at_batch[fast.name]:.2f} — the {short(fast.name)} idles ~{idle:.0%} of "
                     "every step")
    ratio = together / alone
    verdict = "faster" if ratio > 1.05 else ("no faster" if ratio >= 0.95 else "slower")
    lines.append(f"estimate: {processes} GPUs ≈ {together:.2f} images/s; the {short(best.name)} alone at its own batch "
                 f"{best.batch} ≈ {alone:.2f} images/s → ×{ratio:.2f} ({verdict} together)")
    return lines


def short_name(name: str) -> str:
    """`RTX 3090` for `NVIDIA GeForce RTX 3090`."""
    return name.replace("NVIDIA ", "").replace("GeForce ", "")


def side_by_side_line(gpus: list[Any], variants: int) -> str | None:
    """Two or more different cards: one run per GPU (a queue of variants side by side, `gpu.parallel_runs`) often
    uses them better than data-parallel, which runs at the slowest card's pace within the smallest one's memory."""
    kinds = {(g.name, g.memory_total) for g in gpus}
    if len(gpus) < 2 or len(kinds) < 2:
        return None
    queued = (f"your {variants} variant(s) and the base run" if variants else
              "a queue of variants ([[train.variants]] in session.toml)")
    return (f"{len(gpus)} different cards: data-parallel runs at the slowest card's pace within the smallest one's "
            f"memory; {queued} can instead run side by side, one run per GPU, each at its card's own pace and batch "
            "— set gpu.parallel_runs = true")
