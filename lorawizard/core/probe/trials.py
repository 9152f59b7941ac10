"""One probe trial, and the batch search over trials: the lowest part of the GPU & batch-size step (core.probe.step).

A trial (`TrialSpec` → `TrialOutcome`) is a short real run of the trainer, built by the same command builder as
training (`core.launch.command.build_train_command`) with the session's real settings, plus: a dataset config holding
only the bucket under test with enough repeats that every batch is full (`repeats_for`), `--max_train_steps 3`, no
sampling, no saving but the final file into a throwaway folder (`probe_overrides`). `SubprocessTrialRunner` runs it in
its own process group, pinned to one GPU by UUID, samples its peak GPU memory through NVML, reads its log as it grows
(`_LogTail`: the phase, the `steps:` bar, s/step) and `classify` says how it ended (OOM, killed for host RAM, timed
out, failed). Every running trainer is tracked so that leaving lorawizard mid-trial kills it (atexit).

`BatchSearch` proposes the next batch size from the outcomes so far (double, predict from the peaks, bisect);
`areas` groups the buckets by area (one search per area).

Kept apart from the step's flows so that what reads a trial's types — the GPU screen and its tables
(core.probe.trial_rows, fit_rows), bench/bench_probe.py — does not import them, and every flow builds on one module.
"""

from __future__ import annotations

import atexit
import codecs
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lorawizard.core.common.procs import kill_process_group
from lorawizard.core.contract import Cancelled, StepFailed
from lorawizard.core.gpu.nvml import GB, GpuInfo, NvmlAdapter, PeakSampler
from lorawizard.core.gpu.presets import VramPreset
from lorawizard.core.launch.command import preset_overrides
from lorawizard.core.session.document import Session, bucket_area, parse_bucket

MARGIN = 0.95  # the chosen batch size peaks at ≤ 95 % of the GPU's memory
PROBE_STEPS = 3  # optimizer steps per trial (≥ 2: the optimizer state appears at the first)
MAX_BATCH = 32  # the search stops here; bigger batches rarely help a LoRA
TRIAL_TIMEOUT_S = 900.0  # model loading alone can take minutes on a slow disk

OOM_TEXTS = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDA error: out of memory")
# The GPU or its driver failed, not the candidate: every further trial would fail the same way (the fit search stops)
DRIVER_TEXTS = ("CUDA error: unspecified launch failure", "CUDA error: an illegal memory access",
                "CUDA error: unknown error", "CUDA driver version is insufficient", "no CUDA-capable device",
                "CUDA error: uncorrectable ECC error", "CUDA error: device-side assert", "NVIDIA-SMI has failed",
                "Found no NVIDIA driver")
SIGKILL_TEXTS = ("died with <Signals.SIGKILL: 9>", "Signals.SIGKILL")
_BAR_RE = re.compile(r"steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\[[^\]]*?([\d.]+)(it/s|s/it)")
_BAR_START_RE = re.compile(r"steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")

TrialStatus = Literal["ok", "oom", "over-margin", "killed", "timeout", "error"]
STATUS_WORDS: dict[TrialStatus, str] = {
    "ok": "ok",
    "oom": "out of memory",
    "over-margin": "over 95% margin",
    "killed": "killed (host RAM?)",
    "timeout": "timed out",
    "error": "failed",
}


# ---------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialSpec:
    bucket: str  # "1024x1024": the bucket under test (its area stands for every bucket of that area)
    batch: int
    preset: VramPreset
    images: int  # prepared images in that bucket
    number: int = 0  # 1-based, across the whole probe


@dataclass(frozen=True)
class TrialOutcome:
    batch: int
    status: TrialStatus
    peak_bytes: int | None = None  # the trial's own GPU memory peak
    device_peak_bytes: int | None = None  # the whole GPU's peak during the trial (others' memory included)
    s_per_step: float | None = None
    seconds: float = 0.0
    detail: str = ""  # the OOM line, the error line, …
    log: str | None = None  # the trial's log file
    start_seconds: float | None = None  # launch → the first step began: loading the models, caching (measured)

    @property
    def fits(self) -> bool:
        return self.status == "ok"

    def line(self, bucket: str) -> str:
        """`1024x1024  batch  4  21.6 GB  ok  3.9 s/step`."""
        peak = f"{self.peak_bytes / GB:5.1f} GB" if self.peak_bytes is not None else "    — GB"
        speed = f"  {self.s_per_step:.2f} s/step" if self.s_per_step is not None else ""
        return f"{bucket:>9}  batch {self.batch:>3}  {peak}  {STATUS_WORDS.get(self.status, self.status)}{speed}"


ProbeEventKind = Literal["trial-start", "trial-step", "trial-end", "area-done", "step-down"]


@dataclass(frozen=True)
class ProbeEvent:
    """Live reports for a screen: a trial started, advanced a step, or finished (with its outcome)."""

    kind: ProbeEventKind
    spec: TrialSpec | None = None
    step: int = 0
    steps: int = 0
    outcome: TrialOutcome | None = None
    text: str = ""  # trial-step: the phase ("loading models", "caching latents", "training", …)
    peak_bytes: int | None = None  # trial-step: the trial's GPU memory peak so far


TrialRunner = Callable[[TrialSpec, Callable[[ProbeEvent], None]], TrialOutcome]


def classify(returncode: int | None, text: str, steps_done: int, steps_wanted: int) -> tuple[TrialStatus, str]:
    """(status, detail) of a finished trial from its exit status and log text."""
    for needle in OOM_TEXTS:
        index = text.find(needle)
        if index >= 0:
            start = text.rfind("\n", 0, index) + 1
            end = text.find("\n", index)
            line = text[start : end if end >= 0 else None].strip()
            short = re.match(r"^(.*?Tried to allocate [^.]*\.\d+ \w+\.)", line)  # torch's first sentence or two
            return "oom", (short.group(1) if short else line)[:200]
    if returncode == -signal.SIGKILL or any(needle in text for needle in SIGKILL_TEXTS):
        return "killed", "the trainer was killed (SIGKILL): usually the kernel's OOM killer, host RAM ran out"
    if returncode == 0 and (steps_done >= steps_wanted or "model saved." in text):
        return "ok", ""
    if returncode == 0:
        return "error", "the trainer exited without training (no data found?)" + _last_line(text)
    return "error", f"the trainer failed (exit status {returncode})" + _last_line(text)


def _last_line(text: str) -> str:
    """The line that says what went wrong: the trainer's exception (not the launcher's CalledProcessError)."""
    lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
    lines = [line for line in lines if not line.startswith(("Traceback", "File ", "^", "subprocess.CalledProcessError"))]
    errors = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Invalid)\b", line)]
    chosen = errors or lines
    return f": {chosen[-1][:240]}" if chosen else ""


def repeats_for(images: int, batch: int, steps: int = PROBE_STEPS) -> int:
    """num_repeats so that images × repeats is a multiple of `batch` (every batch full) and gives ≥ `steps` batches."""
    images = max(1, images)
    unit = math.lcm(images, batch) // images  # repeats per "all batches full" block
    blocks = math.ceil(batch * steps / (images * unit))
    return unit * max(1, blocks)


def probe_overrides(session: Session, preset: VramPreset, steps: int = PROBE_STEPS) -> dict[str, Any]:
    """Trainer overrides for a trial: a few steps, nothing sampled or saved but the final file, the given preset."""
    overrides: dict[str, Any] = preset_overrides(session, preset)
    overrides.update({
        "max_train_steps": steps,
        "max_train_epochs": None,
        "save_every_n_epochs": None,
        "save_every_n_steps": None,
        "save_state": None,
        "save_state_on_train_end": None,
        "sample_prompts": None,
        "sample_every_n_epochs": None,
        "sample_every_n_steps": None,
        "sample_at_first": None,
        "log_with": None,
    })
    return overrides


class SubprocessTrialRunner:
    """Runs one trial as a real trainer process in its own process group, sampling its peak GPU memory."""

    def __init__(
        self,
        session: Session,
        gpu: GpuInfo,
        workdir: Path,
        *,
        cancel: threading.Event,
        nvml: NvmlAdapter | None = None,
        timeout_s: float = TRIAL_TIMEOUT_S,
        steps: int = PROBE_STEPS,
        sample_interval: float = 0.25,
        env: dict[str, str] | None = None,
    ) -> None:
        self.session, self.gpu, self.workdir, self.cancel = session, gpu, workdir, cancel
        self.nvml, self.timeout_s, self.steps, self.sample_interval = nvml, timeout_s, steps, sample_interval
        self.base_env = env

    def command(self, spec: TrialSpec) -> Any:
        """Write the trial's config files and return its TrainCommand (nothing is started)."""
        from lorawizard.core.launch import command as builder

        trial_dir = self.workdir / f"trial-{spec.number:02d}-{spec.bucket}-b{spec.batch}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        launch = builder.plan_launch(self.session, uuids=[self.gpu.uuid])  # a trial is one process on one GPU
        accelerate = builder.write_accelerate_config(self.session, self.workdir / "accelerate.yaml", launch)
        dataset = builder.write_dataset_config(
            self.session, trial_dir / "dataset_config.toml", buckets=[spec.bucket], batch_sizes={spec.bucket: spec.batch},
            num_repeats=repeats_for(spec.images, spec.batch, self.steps),
        )
        return builder.build_train_command(
            self.session, dataset_config=dataset, accelerate_config=accelerate, output_dir=trial_dir / "out",
            output_name="probe", overrides=probe_overrides(self.session, spec.preset, self.steps), launch=launch,
        )

    def __call__(self, spec: TrialSpec, report: Callable[[ProbeEvent], None]) -> TrialOutcome:
        from lorawizard.core.launch.command import CommandError

        try:
            cmd = self.command(spec)
        except (CommandError, OSError) as exc:
            raise StepFailed(f"cannot build the trial's command: {exc}") from None
        trial_dir = Path(cmd.options["output_dir"]).parent
        log_path = trial_dir / "trial.log"
        env = cmd.full_env(self.base_env)
        env["CUDA_VISIBLE_DEVICES"] = self.gpu.uuid  # pinned by UUID, whatever else is set
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("COLUMNS", "200")  # rich records on one line each
        started = time.monotonic()
        with open(log_path, "wb") as log:
            try:
                process = subprocess.Popen(
                    cmd.argv, cwd=cmd.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise StepFailed(f"cannot start the trainer {cmd.argv[0]}: {exc.strerror or exc}") from None
        _track(process)
        sampler = PeakSampler(self.gpu.uuid, lambda: process_tree(process.pid), self.nvml,
                              interval=self.sample_interval).start()
        tail = _LogTail(log_path)
        ended_by: str | None = None
        last_peak: int | None = None
        try:
            while process.poll() is None:
                if self.cancel.is_set():
                    ended_by = "cancel"
                    break
                if time.monotonic() - started > self.timeout_s:
                    ended_by = "timeout"
                    break
                if tail.read() or sampler.peak != last_peak:
                    last_peak = sampler.peak
                    report(ProbeEvent("trial-step", spec, tail.step, tail.total or self.steps, text=tail.phase,
                                      peak_bytes=last_peak))
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                kill_process_group(process)
            _untrack(process)
            sampler.stop()
        tail.read()
        seconds = time.monotonic() - started
        common: dict[str, Any] = dict(peak_bytes=sampler.peak, device_peak_bytes=sampler.device_peak, seconds=seconds,
                                      log=str(log_path))
        shutil.rmtree(trial_dir / "out", ignore_errors=True)  # the throwaway LoRA; the log stays
        if ended_by == "cancel":
            raise Cancelled()
        if ended_by == "timeout":
            return TrialOutcome(spec.batch, "timeout", **common,
                                detail=f"no result within {self.timeout_s:.0f} s (hung?); the trial was stopped")
        status, detail = classify(process.returncode, tail.text, tail.step, self.steps)
        s_per_step = tail.seconds_per_step()
        first = tail.first_seen.get(1)
        start = max(0.0, first - started - (s_per_step or 0.0)) if first is not None else None
        return TrialOutcome(spec.batch, status, s_per_step=s_per_step, detail=detail, start_seconds=start, **common)


PHASES = (  # log text → what a trial is busy with before its first step (model loading can take minutes)
    ("Checking the state dict", "loading models"),
    ("Loading state dict from", "loading models"),
    ("caching latents", "caching latents"),
    ("caching Text Encoder outputs", "caching text encoders"),
    ("prepare optimizer", "preparing the optimizer"),
    ("running training", "training"),
)


class _LogTail:
    """Reads a growing trial log; tracks the phase, the `steps:` bar and when each step first appeared."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.text = path, 0, ""
        self.step, self.total = 0, 0
        self.phase = "starting"
        self.first_seen: dict[int, float] = {}
        self.rate_s: float | None = None
        self._pending = ""  # the last, maybe incomplete, piece (tqdm's current bar has no line end yet)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def read(self) -> bool:
        """Read what was appended; True when the step or the phase changed."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return False
        if not data:
            return False
        self.offset += len(data)
        chunk = self._decoder.decode(data)
        self.text += chunk
        if len(self.text) > 2_000_000:
            self.text = self.text[-1_000_000:]
        now, before = time.monotonic(), (self.step, self.phase)
        pieces = re.split(r"[\r\n]", self._pending + chunk)
        self._pending = pieces[-1]
        for piece in pieces:  # the pending piece too: it is parsed again, complete, next time (idempotent)
            for needle, phase in PHASES:
                if needle in piece and self.step == 0:
                    self.phase = phase
            match = _BAR_START_RE.search(piece)
            if not match:
                continue
            step, total = int(match.group(1)), int(match.group(2))
            self.first_seen.setdefault(step, now)
            self.step, self.total = max(self.step, step), total
            if self.step:
                self.phase = "training"
            rate = _BAR_RE.search(piece)
            if rate and step > 0:
                value = float(rate.group(3))
                self.rate_s = value if rate.group(4) == "s/it" else (1 / value if value else None)
        return (self.step, self.phase) != before

    def seconds_per_step(self) -> float | None:
        """Time per step after the first (which also allocates the optimizer state); tqdm's rate as a fallback."""
        seen = sorted(k for k in self.first_seen if k >= 1)
        if len(seen) >= 2 and seen[-1] > seen[0]:
            elapsed = self.first_seen[seen[-1]] - self.first_seen[seen[0]]
            if elapsed > 0:
                return elapsed / (seen[-1] - seen[0])
        return self.rate_s


_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()
_atexit_registered = False


def _track(process: subprocess.Popen[bytes]) -> None:
    global _atexit_registered
    with _running_lock:
        if not _atexit_registered:
            atexit.register(_kill_running)
            _atexit_registered = True
        _running.add(process)


def _untrack(process: subprocess.Popen[bytes]) -> None:
    with _running_lock:
        _running.discard(process)


def _kill_running() -> None:
    """Leaving lorawizard mid-trial (q, a crash) must not leave a trainer holding the GPU."""
    with _running_lock:
        processes = list(_running)
        _running.clear()
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def process_tree(pid: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid] + [child.pid for child in root.children(recursive=True)]
    except psutil.Error:
        return []


# ---------------------------------------------------------------- the search


@dataclass
class BatchSearch:
    """Largest batch size that fits, from trial outcomes. `next()` proposes, `add()` learns.

    `limit_bytes` (95 % of the GPU) and the trials' peaks let it predict the limit once two trials have run; without
    peaks it doubles and bisects.
    """

    start: int
    limit_bytes: int | None = None
    max_batch: int = MAX_BATCH
    outcomes: list[TrialOutcome] = field(default_factory=list)
    _prediction_failed: bool = False

    @property
    def best(self) -> int:
        return max((o.batch for o in self.outcomes if o.fits), default=0)

    @property
    def lowest_failure(self) -> int | None:
        return min((o.batch for o in self.outcomes if not o.fits), default=None)

    @property
    def done(self) -> bool:
        return self.next() is None

    def add(self, outcome: TrialOutcome) -> None:
        predicted = self._predict()
        if not outcome.fits and predicted is not None and outcome.batch <= predicted:
            self._prediction_failed = True  # the memory model was too hopeful: bisect from now on
        self.outcomes.append(outcome)

    def _points(self) -> list[tuple[int, int]]:
        """(batch, GPU peak) of trials that ran to the end (fitting or over the margin)."""
        points: dict[int, int] = {}
        for o in self.outcomes:
            if o.status in ("ok", "over-margin") and o.device_peak_bytes is not None:
                points[o.batch] = o.device_peak_bytes
        return sorted(points.items())

    def _predict(self) -> int | None:
        """The largest batch predicted to peak under `limit_bytes`, from the two largest measured batches."""
        if self.limit_bytes is None or self._prediction_failed:
            return None
        points = self._points()
        if len(points) < 2:
            return None
        (b1, m1), (b2, m2) = points[-2], points[-1]
        per = (m2 - m1) / (b2 - b1)
        if per <= 0:
            return None
        base = m2 - per * b2
        return max(0, math.floor((self.limit_bytes - base) / per + 1e-9))

    def next(self) -> int | None:
        lo, hi = self.best, self.lowest_failure
        tried = {o.batch for o in self.outcomes}
        if hi is not None and hi <= lo + 1:
            return None  # lo fits, lo + 1 doesn't (or nothing fits: hi == 1)
        if lo >= self.max_batch:
            return None
        if not self.outcomes:
            return max(1, min(self.start, self.max_batch))
        ceiling = min(self.max_batch, hi - 1) if hi is not None else self.max_batch
        predicted = self._predict()
        if predicted is not None:
            # prediction at lo → confirm lo + 1 fails; never more than 4× the largest fitting size in one jump
            candidate = min(max(predicted, lo + 1), ceiling, max(lo * 4, lo + 1))
        elif hi is None:
            candidate = min(lo * 2, ceiling)
        else:
            candidate = (lo + hi) // 2 if hi - lo > 1 else lo + 1
        if candidate in tried or candidate <= lo:
            return lo + 1 if lo + 1 not in tried else None
        return candidate


# ---------------------------------------------------------------- buckets


def areas(buckets: dict[str, int]) -> list[tuple[str, list[str], int]]:
    """[(representative bucket, every bucket of that area, images in the representative)], largest area first.

    The representative is the bucket of that area with the most images (ties: the wider one).
    """
    groups: dict[int, list[str]] = {}
    for bucket in buckets:
        groups.setdefault(bucket_area(bucket), []).append(bucket)
    result = []
    for area in sorted(groups, reverse=True):
        members = sorted(groups[area], key=lambda b: (-buckets[b], -parse_bucket(b)[0]))
        result.append((members[0], sorted(members), buckets[members[0]]))
    return result
