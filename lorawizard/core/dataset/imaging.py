"""Image work for the dataset step: probing, buckets and crops, decoding upright, 8-bit sRGB, rendering.

Pure functions on paths and numbers, safe to run in worker processes. Orientation is always applied with
Pillow's `ImageOps.exif_transpose` (never by hand: some decoders, libtiff for one, already apply it).
Every failure becomes an `ImageProblem` carrying a one-line reason for a person.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lorawizard.core.common.fsutil import STORAGE_ERRNOS, atomic_write_bytes

# Our own limits, checked from the header before anything is decoded. 80 Mpx is below Pillow's own
# decompression-bomb warning (89 Mpx) and above every camera most people own (61 Mpx).
MAX_PIXELS = 80_000_000
MAX_ASPECT = 8.0  # beyond 8:1 a 2:1 bucket keeps a quarter of the picture or less
BACKGROUND = (128, 128, 128)  # neutral grey behind transparent pixels
# Lossless either way. For photos, zlib's run-length strategy after PNG's row filters is ~10x faster than
# Pillow's default (level 6) and its files are no larger (measured: 0.07 s vs 0.75 s, 1.46 MB vs 1.48 MB).
PNG_COMPRESS_LEVEL = 1
PNG_COMPRESS_TYPE = zlib.Z_RLE
RECIPE = "v1:lanczos-rg3:bg808080:srgb"  # change when the rendering changes, so re-runs re-render
ORIENTATION_TAG = 0x0112
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"heif")
HEIF_HINT = "HEIC/HEIF photo: install pillow-heif (pip install 'lorawizard[heif]') or convert it to JPEG"

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a cut-off file is an error, never half a picture
# Hostile files make Pillow warn; we turn every problem into a reason ourselves. (Global filters, because
# warnings.catch_warnings is not thread-safe and the scan probes in threads.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")


class ImageProblem(Exception):
    """An image that cannot be used; str() is a one-line reason."""


@dataclass(frozen=True)
class Probe:
    """What the header says, before any pixel is decoded."""

    ok: bool
    reason: str = ""  # why not ok (one line)
    format: str = ""
    mode: str = ""
    width: int = 0  # upright (after orientation)
    height: int = 0
    orientation: int = 1
    frames: int = 1
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "reason": self.reason, "format": self.format, "mode": self.mode, "width": self.width,
            "height": self.height, "orientation": self.orientation, "frames": self.frames, "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Probe:
        return cls(**{**data, "notes": tuple(data.get("notes", ()))})


# ---------------------------------------------------------------- HEIF


_heif_state: bool | None = None


def heif_available() -> bool:
    """Registers pillow-heif's opener when it is installed (the `lorawizard[heif]` extra)."""
    global _heif_state
    if _heif_state is None:
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
            _heif_state = True
        except Exception:  # not installed, or broken: HEIC files get a clear reason instead
            _heif_state = False
    return _heif_state


def looks_like_heif(head: bytes) -> bool:
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


# ---------------------------------------------------------------- probing


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _open(path: Path) -> Image.Image:
    """Image.open with every failure turned into an ImageProblem."""
    heif_available()  # once per process: worker processes need pillow-heif's opener too
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageProblem(f"decompression bomb: {_short(exc).split(',')[0]}") from None
    except UnidentifiedImageError:
        with open(path, "rb") as handle:
            head = handle.read(16)
        if looks_like_heif(head):
            raise ImageProblem("corrupt HEIC/HEIF photo (pillow-heif cannot read it)" if heif_available() else HEIF_HINT) from None
        raise ImageProblem("not an image Pillow can read") from None
    except PermissionError:
        raise ImageProblem("unreadable: permission denied") from None
    except OSError as exc:
        raise ImageProblem(f"cannot read it: {_short(exc)}") from None
    except Exception as exc:  # ValueError (PNG text bombs), TypeError, ... from hostile headers
        raise ImageProblem(f"corrupt file: {_short(exc)}") from None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:
        return 1  # a broken EXIF block: decoding will tell whether the file is usable


def probe_image(path: Path) -> Probe:
    """Header facts and the header-level checks (size limits, aspect); never decodes pixels."""
    try:
        if path.stat().st_size == 0:
            return Probe(False, "empty file (0 bytes)")
        if not heif_available():
            with open(path, "rb") as handle:
                if looks_like_heif(handle.read(16)):
                    return Probe(False, HEIF_HINT)
        im = _open(path)
    except ImageProblem as exc:
        return Probe(False, str(exc))
    except PermissionError:
        return Probe(False, "unreadable: permission denied")
    except OSError as exc:
        return Probe(False, f"cannot read it: {_short(exc)}")
    with im:
        fmt, mode = im.format or "?", im.mode
        try:
            width, height = im.size
        except Exception as exc:
            return Probe(False, f"corrupt header: {_short(exc)}", fmt, mode)
        problem = check_dimensions(width, height)
        if problem:
            return Probe(False, problem, fmt, mode, width, height)
        try:
            frames = int(getattr(im, "n_frames", 1))
        except Exception:
            frames = 1  # some corrupt files fail here; loading the first frame will tell
        orientation = _orientation(im)
        notes: list[str] = []
        if fmt != "TIFF" and orientation in (5, 6, 7, 8):  # Pillow reports TIFF sizes upright already
            width, height = height, width
        if orientation != 1:
            notes.append(f"rotated (EXIF {orientation})")
        if frames > 1:
            notes.append(f"{frames} frames: first used")
    return Probe(True, "", fmt, mode, width, height, orientation, frames, tuple(notes))


def check_dimensions(width: int, height: int) -> str | None:
    if width <= 0 or height <= 0:
        return f"invalid size {width}×{height}"
    if width * height > MAX_PIXELS:
        return f"absurd dimensions {width}×{height} ({width * height / 1e6:.0f} Mpx; limit {MAX_PIXELS // 1_000_000} Mpx)"
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        return f"aspect ratio {aspect:.1f}:1 is too extreme for the buckets (limit {MAX_ASPECT:g}:1)"
    return None


# ---------------------------------------------------------------- buckets and crops

Crop = tuple[int, int, int, int]


def buckets_for(max_side: int) -> list[tuple[int, int]]:
    """M×M, M×M/2 and M/2×M: width × height."""
    half = max_side // 2
    return [(max_side, max_side), (max_side, half), (half, max_side)]


def bucket_name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def choose_bucket(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest in log space (ties go to the square)."""
    ratio = math.log(width / height)
    return min(buckets_for(max_side), key=lambda b: (round(abs(ratio - math.log(b[0] / b[1])), 9), b[0] != b[1]))


def center_crop(width: int, height: int, bucket: tuple[int, int]) -> Crop:
    """The largest window of the bucket's aspect, centred."""
    bw, bh = bucket
    if width * bh >= height * bw:  # too wide: full height
        cw, ch = max(1, round(height * bw / bh)), height
    else:
        cw, ch = width, max(1, round(width * bh / bw))
    cw, ch = min(cw, width), min(ch, height)
    left, top = (width - cw) // 2, (height - ch) // 2
    return (left, top, left + cw, top + ch)


def fit_crop(crop: Crop, width: int, height: int, bucket: tuple[int, int]) -> Crop:
    """`crop` made valid: inside the image and of the bucket's aspect, keeping its centre and about its size."""
    left, top, right, bottom = crop
    bw, bh = bucket
    full = center_crop(width, height, bucket)
    max_w, max_h = full[2] - full[0], full[3] - full[1]
    area = max(1, right - left) * max(1, bottom - top)
    want_w = math.sqrt(area * bw / bh)  # same area, the bucket's aspect
    cw = max(1, min(max_w, round(want_w)))
    ch = max(1, min(max_h, round(cw * bh / bw)))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    new_left = round(min(max(cx - cw / 2, 0), width - cw))
    new_top = round(min(max(cy - ch / 2, 0), height - ch))
    return (new_left, new_top, new_left + cw, new_top + ch)


def crop_ok(crop: Crop, width: int, height: int, bucket: tuple[int, int]) -> bool:
    left, top, right, bottom = crop
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        return False
    aspect, wanted = (right - left) / (bottom - top), bucket[0] / bucket[1]
    return abs(math.log(aspect / wanted)) <= 0.02


def move_crop(crop: Crop, dx: float, dy: float, width: int, height: int) -> Crop:
    """Shift by a fraction of the crop's own size, clamped to the image."""
    left, top, right, bottom = crop
    cw, ch = right - left, bottom - top

    def step(fraction: float, size: int) -> int:
        pixels = round(fraction * size)
        return pixels if pixels or not fraction else (1 if fraction > 0 else -1)  # tiny crops still move

    new_left = int(min(max(left + step(dx, cw), 0), width - cw))
    new_top = int(min(max(top + step(dy, ch), 0), height - ch))
    return (new_left, new_top, new_left + cw, new_top + ch)


def scale_crop(crop: Crop, factor: float, width: int, height: int, bucket: tuple[int, int]) -> Crop:
    """Grow or shrink around the centre, within the image and the bucket's aspect."""
    left, top, right, bottom = crop
    cw = (right - left) * factor
    cx, cy = (left + right) / 2, (top + bottom) / 2
    ch = cw * bucket[1] / bucket[0]
    return fit_crop((round(cx - cw / 2), round(cy - ch / 2), round(cx + cw / 2), round(cy + ch / 2)), width, height, bucket)


# ---------------------------------------------------------------- decoding


def _icc_to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if not icc or im.mode not in ("RGB", "RGBA", "CMYK"):
        return im
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = (ImageCms.getProfileDescription(source) or "").lower()
        space = source.profile.xcolor_space.strip().upper()
    except Exception:
        return im  # an unreadable profile: keep the pixels as they are
    if "srgb" in description and im.mode != "CMYK":
        return im
    wanted = {"RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK"}[im.mode]
    if space != wanted:
        return im
    alpha = im.getchannel("A") if im.mode == "RGBA" else None
    base = im.convert("RGB") if im.mode == "RGBA" else im
    try:
        out = ImageCms.profileToProfile(base, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:
        return im
    assert out is not None
    if alpha is not None:
        out.putalpha(alpha)
    return out


def _flatten(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, BACKGROUND)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _deep_to_l(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale → 8 bits by scaling, never by clipping."""
    if im.mode == "F":
        low, high = cast("tuple[float, float]", im.getextrema())  # one band
        if low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        span = (high - low) or 1.0
        return im.point(lambda v: (v - low) * (255.0 / span)).convert("L")
    wide = im.convert("I") if im.mode != "I" else im
    low, high = cast("tuple[int, int]", wide.getextrema())
    if im.mode.startswith("I;16") or (low >= 0 and high <= 65535 and high > 255):
        low, span = 0, 65535
    elif low >= 0 and high <= 255:
        low, span = 0, 255
    else:
        span = (high - low) or 1
    return wide.point(lambda v: v * (255.0 / span) + (-low * 255.0 / span)).convert("L")


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB: alpha on a neutral background, ICC → sRGB, deep images scaled."""
    icc = im.info.get("icc_profile")
    transparency = im.info.get("transparency")
    mode = im.mode
    if mode == "RGB" and transparency is None:
        return _icc_to_srgb(im, icc)
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = _deep_to_l(im)
        if transparency is not None and not isinstance(transparency, bytes) and mode != "F":
            from PIL import ImageMath

            wide = im.convert("I") if im.mode != "I" else im
            mask = ImageMath.lambda_eval(lambda a: (a["im"] != int(transparency)) * 255, im=wide)
            rgba = grey.convert("RGBA")
            rgba.putalpha(mask.convert("L"))
            return _flatten(rgba)
        return grey.convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        converted = ImageCms.applyTransform(im, transform)  # a new image (None only when asked to work in place)
        return converted if converted is not None else im
    if mode == "CMYK":
        converted = _icc_to_srgb(im, icc)
        return converted if converted.mode == "RGB" else im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or transparency is not None:
        rgba = im.convert("RGBA")
        rgba = _icc_to_srgb(rgba, icc)
        return _flatten(rgba)
    if mode == "1":
        return im.convert("L").convert("RGB")
    try:
        return _icc_to_srgb(im.convert("RGB"), icc if mode == "RGB" else None)
    except Exception as exc:
        raise ImageProblem(f"unsupported colour mode {mode}: {_short(exc)}") from None


def load_upright(path: Path, *, scale: float = 1.0) -> tuple[Image.Image, dict[str, Any]]:
    """Decode the first frame (JPEG at a reduced scale when `scale` < 1 allows), upright, 8-bit RGB.

    Returns the image and facts: `decoded_scale` (decoded size / full size), `frames`.
    """
    im = _open(path)
    try:
        width, height = im.size
        problem = check_dimensions(width, height)
        if problem:
            raise ImageProblem(problem)
        full_w = im.size[0]
        if scale < 1.0 and im.format in ("JPEG", "MPO"):
            want = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
            try:
                im.draft(None, want)
            except Exception:
                pass
        decoded_scale = im.size[0] / full_w
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # no copy when upright already
        rgb = to_rgb8(im)
        rgb.load()
    except ImageProblem:
        im.close()
        raise
    except MemoryError:
        im.close()
        raise ImageProblem("too large to decode in memory") from None
    except Image.DecompressionBombError as exc:
        im.close()
        raise ImageProblem(f"decompression bomb: {_short(exc).split(',')[0]}") from None
    except (OSError, SyntaxError) as exc:
        im.close()
        text = _short(exc)
        if "truncated" in text.lower() or "Truncated" in text:
            raise ImageProblem(f"truncated file ({text})") from None
        raise ImageProblem(f"corrupt or unsupported: {text}") from None
    except Exception as exc:  # decoders raise ValueError, TypeError, IndexError, struct.error, ...
        im.close()
        raise ImageProblem(f"corrupt file ({type(exc).__name__}: {_short(exc)})") from None
    if rgb is not im:  # (when already 8-bit RGB it is the same object; Pillow closed the file after load)
        im.close()
    return rgb, {"decoded_scale": decoded_scale}


# ---------------------------------------------------------------- rendering (runs in worker processes)


@dataclass(frozen=True)
class RenderJob:
    source: str  # absolute path
    output: str  # absolute path; "" = only check that the image decodes
    bucket: tuple[int, int]
    crop: Crop  # in full-resolution upright pixels
    width: int  # upright full size the crop refers to
    height: int


@dataclass
class RenderOutcome:
    ok: bool
    reason: str = ""
    bytes: int = 0
    notes: list[str] = field(default_factory=list)
    storage_errno: int = 0  # the output could not be written: disk full, read-only, over quota (STORAGE_ERRNOS)


def render(job: RenderJob) -> RenderOutcome:
    """Crop, resize (Lanczos with `reducing_gap`) and write a lossless 8-bit RGB PNG atomically."""
    try:
        left, top, right, bottom = job.crop
        scale = min(1.0, job.bucket[0] / (right - left))
        if not job.output:  # only check that it decodes (images that are skipped for being small)
            load_upright(Path(job.source), scale=min(scale, 0.125))
            return RenderOutcome(True)
        im, _facts = load_upright(Path(job.source), scale=scale)
        ratio_w, ratio_h = im.size[0] / job.width, im.size[1] / job.height
        if abs(ratio_w - ratio_h) > 0.02 * max(ratio_w, ratio_h):
            raise ImageProblem(f"decoded as {im.size[0]}×{im.size[1]}, not upright {job.width}×{job.height} as its header said")
        box = (left * ratio_w, top * ratio_h, min(right * ratio_w, im.size[0]), min(bottom * ratio_h, im.size[1]))
        out = im.resize(job.bucket, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        buffer = io.BytesIO()
        out.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_COMPRESS_TYPE)
        data = buffer.getvalue()
        try:
            atomic_write_bytes(job.output, data)
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:  # the disk's fault, not the image's: the step stops (never "bad input")
                return RenderOutcome(False, exc.strerror or str(exc), bytes=len(data), storage_errno=exc.errno or 0)
            raise
        notes = []
        if all(high - low <= 2 for low, high in cast("tuple[tuple[int, int], ...]", out.getextrema())):  # RGB
            notes.append("one flat colour: nothing to learn from it")
        return RenderOutcome(True, bytes=len(data), notes=notes)
    except ImageProblem as exc:
        return RenderOutcome(False, str(exc))
    except MemoryError:
        return RenderOutcome(False, "too large to decode in memory")
    except OSError as exc:
        if Path(job.output).parent.exists() and not os.access(Path(job.output).parent, os.W_OK):
            return RenderOutcome(False, f"cannot write {job.output}: permission denied")
        return RenderOutcome(False, f"failed: {_short(exc)}")
    except Exception as exc:  # never let one image stop the step
        return RenderOutcome(False, f"failed ({type(exc).__name__}: {_short(exc)})")


def preview(path: Path, max_side: int = 320) -> Image.Image:
    """A small upright RGB picture for the screen (JPEG decoded at a reduced scale). Raises ImageProblem."""
    with _open(path) as im:
        width, height = im.size
    scale = min(1.0, max_side / max(width, height))
    rgb, _ = load_upright(path, scale=scale)
    rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return rgb
