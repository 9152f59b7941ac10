"""Dataset step vs a naive pipeline, measured in one run on the same generated 12-megapixel JPEGs.

    python bench/bench_dataset.py [--images 32] [--keep DIR]

naive: one process; full decode → exif_transpose → centre crop → LANCZOS → PNG (Pillow's default level).
ours:  core.steps.dataset.run_step (draft decoding, reducing_gap, a process pool, PNG level 1, atomic writes).
Then an unchanged re-run of ours. Each phase runs in a fresh Python; its time is measured inside it, its
peak memory (largest sum of RSS over the process and its workers, sampled every 10 ms) from outside. Prints ratios; asserts nothing about time (machines differ).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorawizard.core.contract import StepContext  # noqa: E402
from lorawizard.core.dataset import step as dataset  # noqa: E402
from lorawizard.core.dataset.imaging import center_crop, choose_bucket  # noqa: E402
from lorawizard.core.session.document import Session  # noqa: E402


def run_phase(phase: str, photos: Path, project: Path, max_side: int) -> tuple[float, int, str, float]:
    """Run one phase in a fresh Python (so no phase inherits another's heap); (seconds, peak RSS bytes, summary).

    Peak RSS is the largest sum over that process and its children (the worker pool), sampled every 10 ms.
    """
    argv = [sys.executable, __file__, "--phase", phase, "--photos", str(photos), "--project", str(project),
            "--max-side", str(max_side)]
    child = psutil.Popen(argv, stdout=subprocess.PIPE, text=True)
    peak = 0
    cpu: dict[int, float] = {}  # pid → CPU seconds last seen (workers are the forkserver's children, not ours)
    while child.poll() is None:
        total = 0
        try:
            for proc in [child, *child.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                    times = proc.cpu_times()
                    cpu[proc.pid] = times.user + times.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.01)
    out = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise SystemExit(f"phase {phase} failed ({child.returncode}): {out}")
    data = json.loads(out.strip().splitlines()[-1])
    return data["seconds"], peak, data["summary"], sum(cpu.values())


def make_photos(folder: Path, count: int) -> None:
    """12 Mpx JPEGs with photo-like texture; every third portrait, every fourth stored sideways (EXIF 6)."""
    folder.mkdir(parents=True, exist_ok=True)
    # Smooth shapes, a gradient and fine grain: decodes and compresses like a real 12 Mpx photo (~2-3 MB at
    # quality 90; pure noise would be a worst case no camera produces).
    blobs = Image.merge("RGB", [Image.effect_noise((160, 120), s).resize((4000, 3000), Image.Resampling.BICUBIC) for s in (50, 60, 70)])
    grain = Image.merge("RGB", [Image.effect_noise((4000, 3000), 20) for _ in range(3)])
    gradient = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    textured = Image.blend(Image.blend(blobs, gradient, 0.3), grain, 0.2)
    for n in range(count):
        im = textured.rotate(90 * (n % 2), expand=True) if n % 3 == 0 else textured
        exif = Image.Exif()
        if n % 4 == 0:
            exif[0x0112] = 6
            im = im.transpose(Image.Transpose.ROTATE_90)
        im = Image.eval(im, lambda v, n=n: (v + 7 * n) % 256)  # every file different
        im.save(folder / f"IMG_{n:04d}.jpg", "JPEG", quality=90, exif=exif.tobytes())


def naive(source: Path, out: Path, max_side: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for n, path in enumerate(sorted(source.iterdir()), 1):
        with Image.open(path) as im:
            im.load()
            upright = ImageOps.exif_transpose(im)
        rgb = upright.convert("RGB")
        bucket = choose_bucket(*rgb.size, max_side)
        cropped = rgb.crop(center_crop(*rgb.size, bucket))
        small = cropped.resize(bucket, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, "PNG")
        (out / f"{n:04d}.png").write_bytes(buffer.getvalue())


def ours(project: Path) -> dataset.StepResult:
    session = Session.load(project / "session.toml")
    return dataset.run_step(StepContext(session=session))


def phase_main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    summary = ""
    if args.phase == "naive":
        naive(args.photos, args.project / "naive", args.max_side)
    else:
        result = ours(args.project)
        assert result.ok, result.summary
        if args.phase == "rerun":
            assert result.data["stats"].rendered == 0, "the re-run should have found nothing to do"
        summary = result.summary
    print(json.dumps({"seconds": time.perf_counter() - started, "summary": summary}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--keep", type=Path, help="generate photos here (and reuse them next time)")
    parser.add_argument("--phase", choices=("naive", "ours", "rerun"), help=argparse.SUPPRESS)
    parser.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        return phase_main(args)

    work = Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    photos = args.keep or work / "photos"
    try:
        if not photos.exists() or len(list(photos.glob("*.jpg"))) != args.images:
            shutil.rmtree(photos, ignore_errors=True)
            started = time.perf_counter()
            make_photos(photos, args.images)
            print(f"generated {args.images} JPEGs of 12 Mpx in {time.perf_counter() - started:.1f} s ({photos})")
        project = work / "project"
        project.mkdir()
        (project / "session.toml").write_text(
            f'version = 1\n[dataset]\nsource = "{photos}"\nmax_side = {args.max_side}\n', "utf-8"
        )
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"machine: {os.cpu_count()} CPUs (load {load:.1f} before), Python {sys.version.split()[0]}, Pillow {Image.__version__}")
        naive_s, naive_peak, _, naive_cpu = run_phase("naive", photos, project, args.max_side)
        ours_s, ours_peak, summary, ours_cpu = run_phase("ours", photos, project, args.max_side)
        rerun_s, rerun_peak, _, _ = run_phase("rerun", photos, project, args.max_side)

        mb = 1024 * 1024
        n = args.images
        print(f"naive pipeline   : {naive_s:7.2f} s  ({n / naive_s:5.1f} images/s)  peak RSS {naive_peak / mb:6.0f} MB")
        print(f"dataset step     : {ours_s:7.2f} s  ({n / ours_s:5.1f} images/s)  peak RSS {ours_peak / mb:6.0f} MB"
              " (process + workers)")
        print(f"unchanged re-run : {rerun_s:7.3f} s  peak RSS {rerun_peak / mb:6.0f} MB")
        print(f"ratio naive / dataset step        : {naive_s / ours_s:5.1f}x  (goal >= 4x)")
        print(f"ratio first run / unchanged re-run: {ours_s / rerun_s:5.0f}x  (goal >= 50x)")
        print(f"peak memory of the dataset step   : {ours_peak / mb:.0f} MB  (goal <= 500 MB)")
        print(f"CPU time per image (process tree, sampled): naive {naive_cpu / n:.3f} s, dataset step {ours_cpu / n:.3f} s"
              f" -> {naive_cpu / ours_cpu:.1f}x less work, before the pool's parallelism (wall-clock ratios also depend on"
              " what else the machine runs)")
        print(f"result: {summary}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
