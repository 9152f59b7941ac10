"""Contact sheets: one PNG per sample prompt, a grid of run × epoch with labels, written into the project.

`write_contact_sheets(session)` lays out every run of the project (core.train.compare.project_runs: the base run,
each variant, earlier runs) — one row per run, one column per epoch, the prompt's text on top — and writes
`<project>/samples-compare/prompt-NN.png` (atomically: a temp file and a rename; the run folders' samples are only
read). Memory stays bounded: each sample is opened, shrunk to a thumbnail (Pillow's draft mode for JPEG, `reduce`
for PNG) and closed before the next, so only one sheet and one sample are in memory at a time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import new_file_mode
from lorawizard.core.session.document import Session
from lorawizard.core.train.compare import Comparison, RunGroup, compare, project_runs

OUT_DIR = "samples-compare"
SHEET_PREFIX = "prompt-"
THUMB = 256  # a cell's longest side in pixels
MAX_SIDE = 8192  # a sheet's widest side: cells shrink (down to MIN_THUMB) to stay under it
MIN_THUMB = 96
PAD = 6
LINE_H = 14  # Pillow's default bitmap font is about 11 pixels high
BACKGROUND = (24, 24, 28)
CELL_EMPTY = (48, 48, 54)
TEXT = (230, 230, 230)
MUTED = (150, 150, 160)


def sheet_path(out_dir: Path, row: int) -> Path:
    return Path(out_dir) / f"{SHEET_PREFIX}{row + 1:02d}.png"


def write_contact_sheets(session: Session, out_dir: Path | None = None, *,
                         groups: Sequence[RunGroup] | None = None, thumb: int = THUMB) -> list[Path]:
    """One PNG per prompt (rows: runs, columns: epochs) into `out_dir` (default `<project>/samples-compare/`); the
    paths written, [] when no run has samples. Sheets of prompts no longer sampled are removed from that folder."""
    folder = Path(out_dir) if out_dir is not None else session.project_dir / OUT_DIR
    chosen = [g for g in (project_runs(session) if groups is None else groups) if g.gallery.cells]
    grid = compare(chosen)
    if not grid.columns:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for row in range(grid.rows):
        path = sheet_path(folder, row)
        _save_atomic(render_sheet(grid, row, thumb=thumb), path)
        written.append(path)
    _remove_stale(folder, {p.name for p in written})
    return written


def render_sheet(grid: Comparison, row: int, *, thumb: int = THUMB) -> Any:
    """The sheet of prompt `row` as a PIL image (rows: the grid's groups with samples, columns: its epochs)."""
    from PIL import Image, ImageDraw

    groups = [g for g in grid.groups if any(label == g.label for label, _ in grid.columns)]
    epochs = grid.epochs
    label_w = max(80, min(240, 7 * max(len(g.label) for g in groups) + 2 * PAD))
    side = min(thumb, max(MIN_THUMB, (MAX_SIDE - label_w) // max(1, len(epochs)) - PAD))
    title_lines = _wrap(f"prompt {row + 1}: {grid.prompts[row]}", max(20, (label_w + len(epochs) * (side + PAD)) // 7))
    top = PAD + LINE_H * len(title_lines) + PAD + LINE_H + PAD  # title, then the epochs' labels
    width = label_w + len(epochs) * (side + PAD) + PAD
    height = top + len(groups) * (side + PAD + LINE_H) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, line in enumerate(title_lines):
        draw.text((PAD, PAD + index * LINE_H), line, fill=TEXT)
    last = {g.label: max(g.gallery.epochs, default=0) for g in groups}
    for col, epoch in enumerate(epochs):
        x = label_w + col * (side + PAD)
        draw.text((x, top - LINE_H - PAD), "baseline" if epoch == 0 else f"epoch {epoch}", fill=TEXT)
    for line_no, group in enumerate(groups):
        y = top + line_no * (side + PAD + LINE_H)
        draw.text((PAD, y + LINE_H), _fit(group.label, label_w - 2 * PAD), fill=TEXT)
        draw.text((PAD, y + 2 * LINE_H), _fit(group.run_id, label_w - 2 * PAD), fill=MUTED)
        for col, epoch in enumerate(epochs):
            x = label_w + col * (side + PAD)
            image = grid.image(row, group.label, epoch)
            box = (x, y + LINE_H, x + side, y + LINE_H + side)
            picture = _thumbnail(image.path, side) if image is not None else None
            if picture is None:
                draw.rectangle(box, fill=CELL_EMPTY)
                draw.text((x + PAD, y + LINE_H + PAD), "missing" if image is None else "unreadable", fill=MUTED)
                continue
            sheet.paste(picture, (x + (side - picture.width) // 2, y + LINE_H + (side - picture.height) // 2))
            picture.close()
            if epoch == last[group.label] and epoch:
                draw.text((x, y), "last", fill=MUTED)
    return sheet


def _thumbnail(path: Path, side: int) -> Any:
    """The image shrunk to fit side×side (RGB), or None when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as source:
            source.draft("RGB", (side, side))  # JPEG decodes at a fraction of its size; a no-op for PNG
            factor = max(1, min(source.width, source.height) // (2 * side))
            picture = source.reduce(factor) if factor > 1 else source.copy()
        picture.thumbnail((side, side))
        return picture.convert("RGB") if picture.mode != "RGB" else picture
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def _fit(text: str, pixels: int) -> str:
    chars = max(4, pixels // 6)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _wrap(text: str, chars: int, lines: int = 3) -> list[str]:
    words, out, current = " ".join(text.split()).split(" "), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > chars:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: max(0, chars - 1)] + "…"
    return [line[:chars] for line in out]


def _save_atomic(picture: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            picture.save(handle, format="PNG")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        picture.close()


def _remove_stale(folder: Path, keep: set[str]) -> None:
    for old in folder.glob(f"{SHEET_PREFIX}*.png"):
        if old.name not in keep and old.name[len(SHEET_PREFIX):-4].isdigit():
            old.unlink(missing_ok=True)
