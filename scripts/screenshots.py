"""Regenerate screenshots/: an SVG of every screen of the real app, run headless on a demo project mid-way through.

Usage: python scripts/screenshots.py [--out screenshots]   (writes <n>-<step>.svg at 120x40, 80x24/<n>-<step>.svg,
and help.svg; well under a minute)

The screenshots show demo data and the project's own test doubles, never a real trainer or GPU:
* a dozen generated photos (different aspect ratios, one too small, one with an EXIF rotation) with a few sidecar
  captions (some missing, one over the CLIP budget), prepared by the real dataset and captions steps;
* a fake sd-scripts checkout (tests/support/fake_trainer_env.py, tests/support/standin) whose "python" answers the environment check
  with the fake trainer env's canned answer and runs everything else with the stand-in trainer (tests/support/standin);
* a fake NVML (tests/support/fake_nvml.py) with one RTX 3090; the real probe step measures batch sizes with the stand-in
  trainer's pretend peaks (as tests/unit/test_probe_standin.py does);
* the Train screen watches a real detached run of the stand-in trainer, paced to be mid-way; it is stopped afterwards.
The SVGs are drawn as the terminal shows the screen (drawn_as_shown): every text run starts at its first glyph (SVG
renderers dropped a run's leading blanks: "11 captions·"), the font stack names CJK fonts after Fira Code (sd-scripts'
Japanese log lines were tofu where only Fira Code/monospace was asked for), and scrollbar thumbs are whole cells.
Nothing on your machine is read or changed: HOME, the HF cache and the project live in a temp folder, and every child
process is stopped before the script ends.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from rich.cells import cell_len

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test doubles live in tests/

SIZES = {(120, 40): "", (80, 24): "80x24"}
BYTES_PER_PIXEL = 6144  # the stand-in trainer's pretend VRAM cost (steers the probe's peaks)
STEP_SECONDS = 0.03  # the stand-in trainer's pace: a run lasts long enough to be caught mid-way

# file name, size, EXIF orientation (6: the camera was turned; stored landscape, shown portrait), caption
PHOTOS = [
    ("IMG_0412.jpg", (2016, 1512), None, "standing on a rocky ridge at sunset, wind in the hair, wide shot"),
    ("IMG_0417.jpg", (1512, 2016), None, "portrait in a red jacket, mountains behind, soft evening light"),
    ("PANO_0420.jpg", (2400, 1000), None, "tiny figure in a wide valley panorama under a pale sky"),
    ("IMG_0433.jpg", (1536, 1536), None, None),
    ("DSC_1021.jpg", (1800, 1200), None, "sitting on a wooden bench by a lake, reading a map"),
    ("DSC_1022.jpg", (1200, 1800), None, None),
    ("IMG_0501.jpg", (1920, 1080), None, "walking along a beach at golden hour, footprints in the sand"),
    ("IMG_0502.jpg", (1080, 1920), None, None),
    ("IMG_0519.jpg", (1600, 1200), 6, "holding a coffee cup in a busy cafe, shallow depth of field"),
    ("IMG_0530.jpg", (1400, 1400), None, (
        "a very detailed photograph of a person standing in the middle of a crowded night market with lanterns, "
        "steam rising from food stalls, neon signs reflected in puddles on the wet street, people walking past in "
        "every direction, a bicycle leaning against a wall covered in posters, string lights overhead, a cat "
        "sleeping under a table, smoke from a grill drifting across the frame, warm and cold light mixing, "
        "cinematic composition, sharp focus on the face, film grain, shot on a 35mm lens at night")),
    ("IMG_0544.jpg", (2048, 1536), None, "hiking up a forest trail, backpack, sunlight through the trees"),
    ("thumb_0001.jpg", (320, 240), None, None),  # too small: the dataset step leaves it out
]


def paint(size: tuple[int, int], rng: random.Random):
    """A landscape photo-ish picture: sky gradient, sun, hills, and a person in it."""
    from PIL import Image, ImageDraw, ImageFilter

    width, height = size
    top = tuple(rng.randint(20, 120) for _ in range(3))
    bottom = (rng.randint(200, 255), rng.randint(120, 200), rng.randint(80, 160))
    sky = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), sky)
    draw = ImageDraw.Draw(image)
    sun_x, sun_y, radius = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.4) * height, min(size) * 0.08
    draw.ellipse((sun_x - radius, sun_y - radius, sun_x + radius, sun_y + radius), fill=(255, 230, 160))
    for layer in range(3):
        base = height * (0.55 + 0.12 * layer)
        shade = tuple(max(0, c - 40 * layer) for c in (rng.randint(40, 90), rng.randint(80, 140), rng.randint(60, 110)))
        points = [(0, height)]
        for x in range(0, width + 1, max(1, width // 12)):
            points.append((x, base - rng.uniform(0, height * 0.18)))
        points.append((width, height))
        draw.polygon(points, fill=shade)
    cx, ground, scale = rng.uniform(0.35, 0.65) * width, height * 0.92, min(size) * 0.32
    draw.rounded_rectangle((cx - scale * 0.22, ground - scale * 1.1, cx + scale * 0.22, ground), radius=int(scale * 0.1),
                           fill=(rng.randint(120, 220), 40, 50))
    draw.ellipse((cx - scale * 0.16, ground - scale * 1.45, cx + scale * 0.16, ground - scale * 1.1), fill=(235, 190, 160))
    return image.filter(ImageFilter.GaussianBlur(1))


def make_photos(folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = random.Random(7)
    for name, size, orientation, caption in PHOTOS:
        shown = size if orientation != 6 else (size[1], size[0])
        image = paint(shown, rng)
        exif = Image.Exif()
        if orientation == 6:  # stored as the sensor saw it (turned), with the tag that turns it back
            image = image.transpose(Image.Transpose.ROTATE_90)
            exif[0x0112] = 6
        image.save(folder / name, quality=88, exif=exif)
        if caption:
            (folder / name).with_suffix(".txt").write_text(f"ohwx, {caption}\n")


def make_trainer(home: Path) -> tuple[Path, Path]:
    """A fake sd-scripts checkout (git, branch sd3, origin set) whose .venv/bin/python is the demo trainer Python."""
    from tests.support.standin import make_ready_trainer

    return make_ready_trainer(home)


def make_models(home: Path) -> None:
    """The default preset's files where ComfyUI keeps them: real safetensors headers (tests/support/model_files.py), the
    data a sparse hole; found by name offline and told by their headers (fp8 FLUX, AE, CLIP-L, fp8 T5-XXL)."""
    from lorawizard.core.models import catalog
    from tests.support.model_files import KINDS, write_model, write_safetensors

    kinds = {"flux": "flux", "ae": "ae", "clip_l": "clip_l", "t5xxl": "t5xxl_fp8"}
    folders = {"flux": "unet", "ae": "vae", "clip_l": "clip", "t5xxl": "clip"}
    for role, kind in kinds.items():
        path = home / "ComfyUI" / "models" / folders[role] / catalog.preset(None).file_for(role).filename
        if role == "flux":  # flux1-dev-fp8: its weights in fp8
            write_safetensors(path, {name: ("F8_E4M3" if name.endswith("weight") else dtype, shape)
                                     for name, (dtype, shape) in KINDS[kind].items()})
        else:
            write_model(path, kind)


def make_project(home: Path) -> Path:
    """The demo project: photos, trainer, session; then the real dataset, captions and probe steps."""
    from lorawizard.core.captions import step as captions
    from lorawizard.core.contract import StepContext
    from lorawizard.core.dataset import step as dataset
    from lorawizard.core.models import step as models
    from lorawizard.core.probe import step as probe
    from lorawizard.core.session.document import Session
    from lorawizard.core.session.store import save_now

    project = home / "loras" / "demo"
    make_photos(project / "photos")
    sd_scripts, python = make_trainer(home)
    make_models(home)
    session = Session.open_project(project)
    session.set("name", "demo")
    session.set("dataset.source", "photos")
    session.set("dataset.trigger", "ohwx")
    session.set("paths.sd_scripts", "~/" + str(sd_scripts.relative_to(home)))  # as a person types it
    session.set("paths.python", "~/" + str(python.relative_to(home)))
    session.set("train.save_every_n_epochs", 2)
    save_now(session, lambda _session: None)
    models.run_step(StepContext(session=session, options={"action": "find"}))  # records the ComfyUI files
    for step in (dataset.run_step, captions.run_step):
        step(StepContext(session=session))
    stop_pool_helpers()
    # one caption written by hand afterwards; the others stay missing
    session.update_image("IMG_0433.jpg", caption="laughing, looking over the shoulder, city street at dusk")
    save_now(session, lambda _session: None)
    captions.run_step(StepContext(session=session))
    result = probe.run_step(StepContext(session=session, options={"nvml": idle_gpu()}))
    if not result.ok:
        raise SystemExit(f"demo probe failed: {result.summary}")
    return project


# ---------------------------------------------------------------- fake GPUs (tests/support/fake_nvml.py)

_GPU = None


def gpu():
    global _GPU
    if _GPU is None:
        from tests.support.fake_nvml import fake_gpu

        _GPU = replace(fake_gpu(0, "NVIDIA GeForce RTX 3090", 25.77, 0.4), uuid="GPU-5a1c3090-demo")
    return _GPU


def idle_gpu():
    """The 3090, idle; during the probe it "sees" the stand-in trainer's pretend peak (tests/unit/test_probe_standin.py)."""
    from tests.support.fake_nvml import FakeNvml
    from tests.unit.test_probe_standin import peak_reader

    return FakeNvml([gpu()], processes={gpu().uuid: peak_reader(Path(os.environ["STANDIN_PEAK_FILE"]))},
                    per_process=False)


def busy_gpu():
    """The 3090 while training: 19 GB for the trainer, busy and warm."""
    from tests.support.fake_nvml import FakeNvml

    hot = replace(gpu(), utilization_pct=97, temperature_c=71, power_w=338.0)
    return FakeNvml([hot], processes={hot.uuid: {4242: int(18.9e9)}})


# ---------------------------------------------------------------- capture


async def until(pilot, predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the app")
        await pilot.pause(0.1)


async def capture(project: Path, out: Path, size: tuple[int, int], *, with_help: bool) -> list[Path]:
    from lorawizard.core.gpu import nvml as core_gpu
    from lorawizard.core.launch import runs
    from lorawizard.core.registry import STEP_ORDER
    from lorawizard.core.session.document import Session
    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.widgets.train_panels import TrainHeader

    core_gpu.set_default_nvml(idle_gpu())
    whole_cell_scrollbars()
    app = LoraWizardApp(Session.open_project(project), start_step="env")
    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)

    def shoot(name: str) -> None:
        app.clear_notifications()
        (out / name).write_text(drawn_as_shown(app.export_screenshot()), encoding="utf-8")
        written.append(out / name)

    async with app.run_test(size=size) as pilot:
        for number, step in enumerate(STEP_ORDER, start=1):
            await pilot.press(str(number))
            await pilot.pause()
            screen = app.screen
            if step == "env":
                await pilot.press("ctrl+g")
                await until(pilot, lambda s=screen: bool(s.findings) and not s.runner.running)
            if step == "captions":  # on the caption that is over the CLIP budget
                for _ in range(4):
                    await pilot.press("ctrl+n")
            if step == "train":
                core_gpu.set_default_nvml(busy_gpu())
                started = screen.record
                await pilot.press("ctrl+g")
                header = screen.query_one(TrainHeader)

                def midway(screen=screen, header=header, started=started) -> bool:
                    view = getattr(header, "view", None)
                    return (screen.record is not started and view is not None and view.status == "running"
                            and bool(view.total_steps) and view.step >= 0.45 * view.total_steps
                            and len(view.checkpoints) >= 2)

                await until(pilot, midway, timeout=60)
                await pilot.pause(0.4)
            else:  # workers start more workers (a table, then its preview images): wait until all are done
                for _ in range(4):
                    await pilot.pause(0.15)
                    await app.workers.wait_for_complete()
            await pilot.pause(0.3)
            shoot(f"{number}-{step}.svg")
        if with_help:  # over the running dashboard
            await pilot.press("question_mark")
            await pilot.pause(0.3)
            shoot("help.svg")
        for record in [r for r in runs.list_runs(project / "runs") if r.is_alive()]:
            runs.stop(record)  # SIGINT to its process group, escalating; returns once it has ended
            await until(pilot, lambda r=record: not r.is_alive(), timeout=30)
    return written


# ---------------------------------------------------------------- the SVG, drawn as the terminal shows it

# Textual's SVG names Fira Code, then `monospace`: without a font that has CJK glyphs a wide log line (sd-scripts
# prints Japanese) is drawn as tofu. The stack names common monospace and CJK fonts; a viewer uses the first it has.
FONT_STACK = ('"Fira Code", "DejaVu Sans Mono", "Noto Sans Mono CJK SC", "Noto Sans CJK SC", "Source Han Sans SC", '
              '"WenQuanYi Micro Hei Mono", "WenQuanYi Zen Hei Mono", "Sarasa Mono SC", "MS Gothic", monospace')
_RUN = re.compile(r'(<text class="[^"]*" x=")([\d.]+)(" y="[\d.]+" textLength=")([\d.]+)(" [^>]*>)((?:&#160;)+)([^<]+</text>)')


def drawn_as_shown(svg: str) -> str:
    """The screenshot with each text run starting at its first glyph and a font stack with CJK fonts.

    A run of equally styled cells that starts with blanks (" · ", " │ ", a step's " 4○ Captions ") is drawn by SVG
    renderers without those leading blanks, its glyphs stretched from the run's x: "11 captions·", "3● Dataset 4○". The
    blanks are dropped here and the run's x moved past them, so every glyph sits in the cell the terminal shows it in.
    """
    svg = svg.replace("font-family: Fira Code, monospace;", f"font-family: {FONT_STACK};")

    def start_at_glyph(match: re.Match[str]) -> str:
        head, x, middle, length, tail, blanks, rest = match.groups()
        text = html.unescape(rest[: -len("</text>")])
        count = blanks.count("&#160;")
        cell = float(length) / (count + cell_len(text))
        return f"{head}{float(x) + count * cell:g}{middle}{float(length) - count * cell:g}{tail}{rest}"

    return _RUN.sub(start_at_glyph, svg)


def whole_cell_scrollbars() -> None:
    """Scrollbar thumbs in whole cells: their ends' eighth blocks (▂, ▇) are drawn by an SVG font as stray blocks
    beside the thumb. Textual's documented hook (ScrollBar.renderer); only these screenshots use it."""
    from textual.scrollbar import ScrollBar, ScrollBarRender

    class WholeCells(ScrollBarRender):
        VERTICAL_BARS = [" "] * 8
        HORIZONTAL_BARS = [" "] * 8

    ScrollBar.renderer = WholeCells


def stop_pool_helpers() -> None:
    """The dataset step's process pool leaves multiprocessing's forkserver and resource tracker running: stop them."""
    from multiprocessing import forkserver, resource_tracker

    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
        stop = getattr(helper, "_stop", None)
        if stop is not None:
            stop()


def stop_children() -> list[str]:
    """Ends any child process still running (there should be none) and says which ones there were."""
    import psutil

    children = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
    names = [f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in children]
    for child in children:
        child.terminate()
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        child.kill()
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    args = parser.parse_args()
    out = args.out.resolve()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lw-demo-") as temp:
        home = Path(temp) / "home"
        home.mkdir()
        os.environ.update(HOME=str(home), HF_HOME=str(home / ".cache" / "huggingface"), HF_HUB_OFFLINE="1",
                          LORAWIZARD_IMAGES="halfcell", COLUMNS="80",
                          STANDIN_STEP_SECONDS=str(STEP_SECONDS), STANDIN_PEAK_FILE=str(Path(temp) / "peak.json"),
                          STANDIN_BYTES_PER_PIXEL=str(BYTES_PER_PIXEL),
                          STANDIN_VRAM_BUDGET=str(int((gpu().memory_total * 0.95 - gpu().memory_used) / BYTES_PER_PIXEL)))
        for key in ("HF_TOKEN", "CUDA_VISIBLE_DEVICES", "HF_ENDPOINT"):
            os.environ.pop(key, None)
        from lorawizard.tui.images import choose_renderer

        choose_renderer("halfcell")
        project = home / "loras" / "demo"
        try:
            make_project(home)
            for (width, height), folder in SIZES.items():
                target = out / folder if folder else out
                for path in asyncio.run(capture(project, target, (width, height), with_help=not folder)):
                    print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        finally:
            from lorawizard.core.launch import runs

            for record in runs.list_runs(project / "runs"):
                if record.is_alive():
                    runs.stop(record)
            stop_pool_helpers()
            left = stop_children()
            if left:
                print("stopped child processes left behind:", *left, sep="\n  ", file=sys.stderr)
    print(f"done in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
