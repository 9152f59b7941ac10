"""Regenerate screenshots/: an SVG of every screen of the real app, run headless on a generated demo project.

Usage: python scripts/screenshots.py [--size 120x40] [--out screenshots]
Nothing on your machine is read or changed: HOME, the HF cache and the project live in a temp folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_demo_project(folder: Path) -> Path:
    """A project with a few generated photos of different shapes and a session that points at them."""
    from PIL import Image, ImageDraw

    photos = folder / "photos"
    photos.mkdir(parents=True)
    shapes = [(1600, 1200, "tomato"), (1200, 1600, "steelblue"), (2400, 1000, "seagreen"), (1024, 1024, "orchid"),
              (300, 200, "gold")]
    for number, (width, height, colour) in enumerate(shapes, start=1):
        image = Image.new("RGB", (width, height), colour)
        draw = ImageDraw.Draw(image)
        draw.ellipse((width * 0.3, height * 0.2, width * 0.7, height * 0.8), fill="white")
        image.save(photos / f"IMG_{number:04d}.jpg", quality=90)
    (photos / "IMG_0001.txt").write_text("a red wall behind a white ball, studio light\n")
    (folder / "session.toml").write_text(
        "# lorawizard session: every decision lives here. Edit freely; see docs/session.md.\n"
        "version = 1\n"
        'name = "demo"\n\n'
        "[dataset]\n"
        'source = "photos"\n'
        'trigger = "ohwx"\n'
    )
    return folder


async def capture(project: Path, out: Path, size: tuple[int, int]) -> list[Path]:
    from lorawizard.core.session import Session
    from lorawizard.core.steps import STEP_ORDER
    from lorawizard.tui.app import LoraWizardApp

    app = LoraWizardApp(Session.open_project(project), start_step="env")
    written: list[Path] = []
    async with app.run_test(size=size) as pilot:
        for number, step in enumerate(STEP_ORDER, start=1):
            await pilot.press(str(number))
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause(0.3)
            name = f"{number}-{step}.svg"
            app.save_screenshot(filename=name, path=str(out))
            written.append(out / name)
        await pilot.press("question_mark")
        await pilot.pause()
        app.save_screenshot(filename="help.svg", path=str(out))
        written.append(out / "help.svg")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="120x40")
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lorawizard-shots-") as temp:
        home = Path(temp) / "home"
        home.mkdir()
        os.environ.update(HOME=str(home), HF_HOME=str(home / ".hf"), HF_HUB_OFFLINE="1", LORAWIZARD_IMAGES="halfcell")
        os.environ.pop("HF_TOKEN", None)
        from lorawizard.tui.images import choose_renderer

        choose_renderer("halfcell")
        project = make_demo_project(home / "loras" / "demo")
        for path in asyncio.run(capture(project, args.out.resolve(), (width, height))):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
