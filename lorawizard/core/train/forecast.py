"""What a run costs before it starts: its time from the probe's measured seconds per step (per bucket, at the batch
size training will use) × the planned steps, plus the phases measured on this machine; money from
`gpu.price_per_hour`.

Measured: s/step per bucket (the probe's trials, 3 optimizer steps each, the first excluded) and the start-up
(launch → first step: loading the models, caching latents and text-encoder outputs; the longest of the probe's
trials, which is the one that wrote the caches). Estimated, and said so: sampling (one denoising step ≈ a third of a training step's time per
image, the rule `core.train.samples.sampling_cost` uses). Not measured: saving checkpoints and states (seconds each
for a LoRA). A hosted trainer's price is put beside it only from the person's own figure
(`gpu.hosted_price_per_1000_steps`, from the price page of the service they would use): we know of no published
per-step price to cite, so none is built in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorawizard.core.common.progress import format_duration
from lorawizard.core.gpu.probe_results import fit_fingerprint, fit_gpu_key, fit_stale_reason, load_results
from lorawizard.core.session.document import Session

NO_HOSTED = ("forecast: no hosted-trainer price beside it — we know of no published per-step price to cite; set "
             "gpu.hosted_price_per_1000_steps from the price page of the one you would use")


@dataclass(frozen=True)
class BucketTime:
    bucket: str
    steps: int
    s_per_step: float | None  # measured at this batch size, else None


@dataclass(frozen=True)
class RunForecast:
    buckets: list[BucketTime]
    startup_s: float | None
    sampling_s: float
    gpus: int

    @property
    def training_s(self) -> float | None:
        if any(b.s_per_step is None for b in self.buckets):
            return None
        return sum(b.steps * (b.s_per_step or 0.0) for b in self.buckets)

    @property
    def total_s(self) -> float | None:
        training = self.training_s
        return None if training is None else training + (self.startup_s or 0.0) + self.sampling_s


def forecast(session: Session, *, counts: dict[str, int] | None = None,
             results: dict[str, Any] | None = None) -> RunForecast | None:
    """The run's forecast from probe.json and the session; None without prepared buckets. `counts` (bucket → images)
    and `results` (probe.json) when the caller has read them already."""
    from lorawizard.core.dataset.step import bucket_counts
    from lorawizard.core.launch import multigpu
    from lorawizard.core.launch.command import CommandError, batch_size_for
    from lorawizard.core.train import samples

    if counts is None:
        try:
            counts = bucket_counts(session)
        except (OSError, ValueError):
            return None
    if not counts:
        return None
    results = load_results(session) if results is None else results
    measured = results.get("buckets", {})
    gpus = max(1, len(session.gpu.uuids))
    epochs, repeats = session.train.max_train_epochs, session.dataset.num_repeats
    rows: list[BucketTime] = []
    for bucket, images in counts.items():
        try:
            batch = batch_size_for(session, bucket)
        except CommandError:
            batch = 1
        entry = measured.get(bucket) or {}
        speed = entry.get("s_per_step") if entry.get("batch_size") == batch else None
        steps = multigpu.steps_per_epoch({bucket: (images, batch)}, repeats, gpus) * epochs
        rows.append(BucketTime(bucket, steps, float(speed) if speed else None))
    phases = (results.get("fit") or {}).get("phases") or {}
    startup = phases.get("startup_s")
    slowest = max((r.s_per_step for r in rows if r.s_per_step), default=None)
    sampling = samples.sampling_seconds(session, slowest) if slowest else 0.0
    return RunForecast(rows, float(startup) if startup else None, sampling, gpus)


def forecast_lines(session: Session, *, counts: dict[str, int] | None = None,
                   results: dict[str, Any] | None = None) -> list[str]:
    """The forecast as report lines (the probe's table, `--dry-run`, the GPU screen); `counts` and `results` as for
    `forecast`."""
    if counts is None:
        from lorawizard.core.dataset.step import bucket_counts

        try:
            counts = bucket_counts(session)
        except (OSError, ValueError):
            return []
    results = load_results(session) if results is None else results
    result = forecast(session, counts=counts, results=results)
    if result is None:
        return []
    parts = [f"{b.bucket} {b.steps} steps × " + (f"{b.s_per_step:.2f} s/step" if b.s_per_step else "? s/step")
             for b in result.buckets]
    lines = ["forecast: " + "; ".join(parts) + (f" ({result.gpus} GPUs)" if result.gpus > 1 else "")]
    stale = fit_staleness(session, counts=counts, results=results)
    if stale:
        lines.append(f"forecast: the probe's fit (gpu.fit = {session.gpu.fit}) is not current — {stale}: run the probe "
                     "again (--steps probe)")
    total = result.total_s
    if total is None:
        missing = [b.bucket for b in result.buckets if b.s_per_step is None]
        lines.append(f"forecast: no measured speed for {', '.join(missing)} at the batch size training uses "
                     "(run the probe)")
        return lines
    startup = (f"start-up {format_duration(result.startup_s)} (loading, caching: the probe's longest launch to first "
               "step)"
               if result.startup_s else "start-up not measured")
    sampling = f"sampling ≈{format_duration(result.sampling_s)} (estimate)" if result.sampling_s else "no sampling"
    lines.append(f"forecast: training {format_duration(result.training_s)} (measured s/step × planned steps) + "
                 f"{startup} + {sampling}; saving not measured")
    money = ""
    price = session.gpu.price_per_hour
    if price:
        cost = total / 3600 * price * result.gpus
        money = f" · ≈{cost:.2f} at {price:g} per GPU-hour (gpu.price_per_hour)"
    lines.append(f"forecast: ≈{format_duration(total)} in all{money}")
    lines.append(hosted_line(session, result))
    return lines


def hosted_line(session: Session, result: RunForecast) -> str:
    """What a hosted trainer would charge for the run's steps, at the person's own figure (`gpu.hosted_price_per_
    1000_steps`); without one, why none is shown. Steps: this run's optimizer steps (at its batch sizes)."""
    per_1000 = session.gpu.hosted_price_per_1000_steps
    if not per_1000:
        return NO_HOSTED
    steps = sum(b.steps for b in result.buckets)
    return f"forecast: hosted at {per_1000:g} per 1,000 steps (your figure): ≈{steps / 1000 * per_1000:.2f} for {steps:,} steps"


def fit_staleness(session: Session, *, counts: dict[str, int] | None = None,
                  results: dict[str, Any] | None = None) -> str | None:
    """Why the session's fastest fit no longer holds (another GPU, other buckets or settings), None when it holds or
    `gpu.fit` is the preset; `counts` and `results` as for `forecast`."""
    from lorawizard.core.dataset.step import bucket_counts

    key = fit_gpu_key(session)  # one card's UUID, or every chosen card's (several GPUs)
    if session.gpu.fit not in ("quality", "fastest") or not key:
        return None
    if counts is None:
        try:
            counts = bucket_counts(session)
        except (OSError, ValueError):
            return None
    results = load_results(session) if results is None else results
    return fit_stale_reason(results.get("fit"), fit_fingerprint(session, key, counts))
