"""GPU smoke test: the probe and a short training through `--replay` on one GPU and, when there are two or more, on two.

    python scripts/gpu_smoke.py --sd-scripts ~/sd-scripts [--python <trainer python>] [--workdir /tmp/lw-gpu-smoke]
                                [--tokenizers DIR] [--t5-fp8] [--gpus 1,2] [--fit quality|fastest]

Needs a machine with NVIDIA GPUs and a trainer venv (torch with CUDA + sd-scripts' requirements). It writes tiny
random FLUX.1-dev files of the right shapes (scripts/gpu_smoke_models.py, run in the trainer's Python: 1 double +
1 single block, full-size T5-XXL — ~10 GB of disk), four 512x512 images with captions, and a project per run; then
`python -m lorawizard --replay session.toml --steps probe,train` with one GPU (`gpu.uuid`) and with two
(`gpu.uuids`). The report (`<workdir>/report.md` and `report.json`) has per run: the probe's trials and peaks, the
batch sizes chosen, sd-scripts' s/step, the NVML readings seen during training (peak memory, utilisation per GPU),
the replay's exit code and the run's diagnosis. Tokenizers are downloaded from the Hub on first use unless
`--tokenizers` names a folder that has them (sd-scripts' --tokenizer_cache_dir layout).
`--fit` sets `gpu.fit` (issue 26): the probe searches checkpointing × optimizer state × swap × base × batch (on the binding card with
`--gpus`, the other cards checked), training uses the choice, and
the report compares the probe's s/step for the chosen setting with training's (the forecast's premise: within 15 %).
Exit status: 0 when every run trained and saved a LoRA, 1 otherwise, 2 when there is no GPU or no trainer Python.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorawizard.core.gpu import nvml as core_gpu  # noqa: E402
from lorawizard.core.session.document import Session  # noqa: E402
from lorawizard.core.session.store import save_now  # noqa: E402
from lorawizard.core.train.logparse import TrainState, parse_bytes  # noqa: E402

CAPTIONS = ("smk, a red circle", "smk, a blue square", "smk, a green triangle", "smk, a yellow ring")


class NvmlWatch:
    """Samples every GPU through NVML (what the dashboard reads) every `interval` s: peak memory and utilisation."""

    def __init__(self, uuids: list[str], interval: float = 1.0) -> None:
        self.uuids, self.interval = uuids, interval
        self.peak_used: dict[str, int] = {}
        self.peak_util: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> NvmlWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for gpu in core_gpu.inventory().gpus:
                if gpu.uuid in self.uuids:
                    self.peak_used[gpu.uuid] = max(self.peak_used.get(gpu.uuid, 0), gpu.memory_used)
                    self.peak_util[gpu.uuid] = max(self.peak_util.get(gpu.uuid, 0), gpu.utilization_pct or 0)
            self.samples += 1
            self._stop.wait(self.interval)


def make_models(python: str, sd_scripts: Path, out: Path, fp8: bool) -> dict[str, int]:
    if (out / "done.json").is_file():
        return json.loads((out / "done.json").read_text())
    argv = [python, str(ROOT / "scripts" / "gpu_smoke_models.py"), str(sd_scripts), str(out)] + (["--t5-fp8"] if fp8 else [])
    done = subprocess.run(argv, capture_output=True, text=True, cwd=sd_scripts)
    if done.returncode != 0:
        raise SystemExit(f"gpu_smoke: making the random models failed:\n{done.stderr[-3000:]}")
    sizes = json.loads(done.stdout.strip().splitlines()[-1])
    (out / "done.json").write_text(json.dumps(sizes))
    return sizes


def make_project(folder: Path, args: argparse.Namespace, models: Path, t5_name: str, uuids: list[str]) -> Session:
    from PIL import Image, ImageDraw

    bucket = folder / "dataset" / "512x512"
    bucket.mkdir(parents=True, exist_ok=True)
    colours = ("red", "blue", "green", "yellow")
    for number, (colour, caption) in enumerate(zip(colours, CAPTIONS, strict=True), start=1):
        image = Image.new("RGB", (512, 512), "white")
        ImageDraw.Draw(image).ellipse((96, 96, 416, 416), fill=colour)
        image.save(bucket / f"{number:04d}.png")
        (bucket / f"{number:04d}.txt").write_text(caption + "\n")
    session = Session.new(folder / "session.toml", name="smoke")
    session.set("paths.sd_scripts", str(args.sd_scripts))
    session.set("paths.python", str(args.python))
    session.set("paths.tokenizers", str(args.tokenizers or (args.workdir / "tokenizers")))
    session.set("models.flux", str(models / "flux1-dev-tiny-1d1s.safetensors"))
    session.set("models.ae", str(models / "ae-random.safetensors"))
    session.set("models.clip_l", str(models / "clip_l-random.safetensors"))
    session.set("models.t5xxl", str(models / t5_name))
    session.set("dataset.num_repeats", 4)
    session.set("train.max_train_epochs", 2)
    session.set("train.save_every_n_epochs", 1)
    session.set("gpu.uuid", uuids[0])
    if getattr(args, "fit", None):
        session.set("gpu.fit", args.fit)
    if len(uuids) > 1:
        session.set("gpu.uuids", uuids)
    save_now(session, lambda _session: None)
    return session


def run_one(name: str, session: Session, uuids: list[str]) -> dict:
    started = time.monotonic()
    with NvmlWatch(uuids) as watch:
        done = subprocess.run([sys.executable, "-m", "lorawizard", "--replay", str(session.path), "--steps", "probe,train"],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.monotonic() - started
    probe = {}
    probe_file = session.paths.state / "probe.json"
    if probe_file.is_file():
        probe = json.loads(probe_file.read_text())
    logs = sorted(session.paths.runs.glob("*/train.log"))
    state = TrainState(processes=len(uuids))
    if logs:
        state.apply(parse_bytes(logs[-1].read_bytes()))
    trials = []
    for cards in ([probe.get("buckets", {}), *list(probe.get("per_card", {}).values())]):
        entries = cards.values() if isinstance(cards, dict) else cards
        for entry in entries:
            for trial in entry.get("trials", []):
                trials.append({k: trial.get(k) for k in ("batch", "status", "peak_bytes", "device_peak_bytes", "s_per_step")})
    loras = sorted(p.name for p in logs[-1].parent.glob("*.safetensors")) if logs else []
    probed = [b.get("s_per_step") for b in probe.get("buckets", {}).values() if b.get("s_per_step")]
    trained = 1 / state.rate if state.rate else None
    fit = probe.get("fit") or {}
    return {
        "fit_chosen": fit.get("chosen"), "fit_trials": fit.get("trials"), "fit_budget": fit.get("budget"),
        "forecast_s_per_step": max(probed) if probed else None,
        "forecast_ratio": round(trained / max(probed), 3) if probed and trained else None,  # within 0.85–1.15?
        "run": name, "gpus": uuids, "exit_code": done.returncode, "seconds": round(seconds, 1),
        "batch_sizes": Session.load(session.path).batch_sizes(), "probe_trials": trials,
        "s_per_step": round(1 / state.rate, 3) if state.rate else None, "steps": state.step,
        "total_steps": state.total_steps, "steps_per_epoch": state.steps_per_epoch, "model_saved": state.model_saved,
        "loras": loras, "failures": [f"{f.kind} (rank {f.rank}): {f.text[:160]}" for f in state.failures],
        "nvml_peak_used_gb": {u: round(v / 1e9, 2) for u, v in watch.peak_used.items()},
        "nvml_peak_util_pct": watch.peak_util, "nvml_samples": watch.samples,
        "replay_tail": done.stdout[-2500:], "replay_stderr": done.stderr[-1500:],
    }


def report_markdown(gpus: list, results: list[dict]) -> str:
    lines = ["# lorawizard GPU smoke report", "", "GPUs: " + "; ".join(g.describe() for g in gpus), ""]
    lines += ["| run | exit | batch sizes | s/step | steps/epoch | LoRA | NVML peak GB | NVML peak util | wall |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['exit_code']} | {r['batch_sizes']} | {r['s_per_step']} | {r['steps_per_epoch']} "
                     f"| {', '.join(r['loras']) or '—'} | {r['nvml_peak_used_gb']} | {r['nvml_peak_util_pct']} "
                     f"| {r['seconds']} s |")
    for r in results:
        lines += ["", f"## {r['run']}: probe trials", ""]
        lines += [f"- batch {t['batch']}: {t['status']}, peak {t['peak_bytes']}, device peak {t['device_peak_bytes']}, "
                  f"{t['s_per_step']} s/step" for t in r["probe_trials"]] or ["- none recorded"]
        if r["failures"]:
            lines += ["", "failures:"] + [f"- {f}" for f in r["failures"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd-scripts", type=Path, required=True)
    parser.add_argument("--python", type=Path, help="the trainer's Python (default <sd-scripts>/.venv/bin/python)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lw-gpu-smoke"))
    parser.add_argument("--tokenizers", type=Path)
    parser.add_argument("--t5-fp8", action="store_true", help="a 4.8 GB fp8 T5-XXL instead of 9.1 GiB bf16")
    parser.add_argument("--gpus", default="1,2", help="runs to do: GPU counts, e.g. 1 or 1,2")
    parser.add_argument("--fit", choices=("quality", "fastest"), help="gpu.fit: the probe's fastest-fit search")
    args = parser.parse_args(argv)
    args.sd_scripts = args.sd_scripts.expanduser().absolute()
    args.python = (args.python or args.sd_scripts / ".venv" / "bin" / "python").expanduser().absolute()
    args.workdir = args.workdir.expanduser().absolute()
    inv = core_gpu.inventory()
    if not inv.gpus:
        print(f"gpu_smoke: {inv.message()}", file=sys.stderr)
        return 2
    if not args.python.is_file():
        print(f"gpu_smoke: no trainer Python at {args.python} (--python)", file=sys.stderr)
        return 2
    gpus = sorted(inv.gpus, key=lambda g: (-g.memory_free, g.index))
    print(f"gpu_smoke: {len(gpus)} GPU(s); making the random models in {args.workdir / 'models'} …", flush=True)
    sizes = make_models(str(args.python), args.sd_scripts, args.workdir / "models", args.t5_fp8)
    t5_name = next(name for name in sizes if name.startswith("t5xxl"))
    results = []
    for count in (int(c) for c in args.gpus.split(",") if c.strip()):
        if count > len(gpus):
            print(f"gpu_smoke: skipping the {count}-GPU run: only {len(gpus)} GPU(s)", flush=True)
            continue
        uuids = [g.uuid for g in gpus[:count]]
        folder = args.workdir / f"project-{count}gpu"
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        session = make_project(folder, args, args.workdir / "models", t5_name, uuids)
        print(f"gpu_smoke: {count} GPU(s): replay probe,train in {folder} …", flush=True)
        result = run_one(f"{count} GPU{'s' if count > 1 else ''}", session, uuids)
        print(f"gpu_smoke: {result['run']}: exit {result['exit_code']}, batch {result['batch_sizes']}, "
              f"{result['s_per_step']} s/step, LoRA {result['loras']}", flush=True)
        if result["fit_chosen"] is not None:
            print(f"gpu_smoke: fit {result['fit_chosen']} in {result['fit_trials']} trials (≤ {result['fit_budget']}); "
                  f"training s/step / the probe's = {result['forecast_ratio']} (the forecast holds within 0.85–1.15)",
                  flush=True)
        results.append(result)
    (args.workdir / "report.json").write_text(json.dumps({"gpus": [g.describe() for g in gpus], "runs": results},
                                                         indent=1))
    (args.workdir / "report.md").write_text(report_markdown(gpus, results))
    print(f"gpu_smoke: report in {args.workdir / 'report.md'}")
    return 0 if results and all(r["exit_code"] == 0 and r["model_saved"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
