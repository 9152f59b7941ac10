"""Generated images for the dataset tests: every orientation with a marker, every mode, hostile files.

The orientation marker is four coloured quadrants (red, green / blue, white): any rotation or mirror
moves a colour to another corner, so "red is top-left" proves the picture is upright and unmirrored.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageCms

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 30), (30, 30, 220), (240, 240, 240)
# What ImageOps.exif_transpose does for each tag; the fixture stores the inverse so the result is upright.
_INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def quadrants(width: int, height: int) -> Image.Image:
    im = Image.new("RGB", (width, height), WHITE)
    half_w, half_h = width // 2, height // 2
    im.paste(RED, (0, 0, half_w, half_h))
    im.paste(GREEN, (half_w, 0, width, half_h))
    im.paste(BLUE, (0, half_h, half_w, height))
    return im


def quadrant_colours(im: Image.Image) -> tuple[tuple[int, ...], ...]:
    """Mean colour near the centre of each quadrant: top-left, top-right, bottom-left, bottom-right."""
    rgb = im.convert("RGB")
    width, height = rgb.size
    points = [(width // 4, height // 4), (3 * width // 4, height // 4), (width // 4, 3 * height // 4), (3 * width // 4, 3 * height // 4)]
    return tuple(rgb.getpixel(p) for p in points)  # type: ignore[misc]


def near(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=False))


def oriented_jpeg(path: Path, orientation: int, width: int = 600, height: int = 300) -> Path:
    """A JPEG whose pixels are stored transformed so that applying `orientation` shows `quadrants(w, h)`."""
    upright = quadrants(width, height)
    stored = upright if orientation == 1 else upright.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


def photo(path: Path, width: int, height: int, *, fmt: str = "JPEG", seed: int = 0, **save: object) -> Path:
    """A photo-like picture (gradients plus the quadrant marker) of any size."""
    base = quadrants(width, height)
    gradient = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    mixed = Image.blend(base, gradient, 0.25 + (seed % 5) * 0.05)
    mixed.save(path, fmt, **save)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares huge dimensions and carries almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path, width: int = 640, height: int = 480) -> Path:
    buffer = io.BytesIO()
    quadrants(width, height).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def animated_gif(path: Path, width: int = 400, height: int = 400) -> Path:
    frames = [quadrants(width, height), Image.new("RGB", (width, height), (0, 0, 0))]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def sixteen_bit_png(path: Path, width: int = 512, height: int = 512) -> Path:
    """16-bit greyscale: a horizontal ramp 0..65535 (a naive convert('RGB') would be solid white)."""
    ramp = Image.linear_gradient("L").rotate(90, expand=True).resize((width, height))  # left dark → right light
    wide = ramp.convert("I").point(lambda v: v * 257)
    wide.convert("I;16").save(path, "PNG")
    return path


def float_tiff(path: Path, width: int = 512, height: int = 512) -> Path:
    ramp = Image.linear_gradient("L").rotate(90, expand=True).resize((width, height)).convert("F")
    ramp.point(lambda v: v * (6.28 / 255) - 3.14).save(path, "TIFF")  # values -3.14 .. 3.14
    return path


def transparent_png(path: Path, width: int = 512, height: int = 512) -> Path:
    im = Image.new("RGBA", (width, height), (255, 0, 0, 0))  # fully transparent red
    im.paste((0, 0, 255, 255), (0, 0, width // 2, height))  # opaque blue left half
    im.save(path, "PNG")
    return path


def palette_png(path: Path, width: int = 512, height: int = 512) -> Path:
    im = quadrants(width, height).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    im.save(path, "PNG")
    return path


def cmyk_jpeg(path: Path, width: int = 512, height: int = 512) -> Path:
    quadrants(width, height).convert("CMYK").save(path, "JPEG", quality=95)
    return path


def srgb_tagged_jpeg(path: Path, width: int = 512, height: int = 512) -> Path:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    quadrants(width, height).save(path, "JPEG", quality=95, icc_profile=profile)
    return path


def heic_lookalike(path: Path) -> Path:
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    return path


def write_session(project: Path, source: Path, *, max_side: int = 256, images: str = "") -> Path:
    project.mkdir(parents=True, exist_ok=True)
    path = project / "session.toml"
    path.write_text(f'version = 1\n\n[dataset]\nsource = "{source}"\nmax_side = {max_side}\n{images}', "utf-8")
    return path


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def prepared_buckets(dataset: Path, counts: dict[str, int], *, caption: str | None = "tok, a thing\n") -> None:
    """Prepared bucket folders as the dataset step leaves them (`<dataset>/<W>x<H>/0000.png` …, each with its caption
    unless `caption` is None): the bucket counts the probe and the command read. The PNGs are signatures only."""
    for bucket, count in counts.items():
        folder = dataset / bucket
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"{i:04d}.png").write_bytes(PNG_SIGNATURE)
            if caption is not None:
                (folder / f"{i:04d}.txt").write_text(caption)
