"""What a model file is, from its safetensors header alone: tensor names, shapes and dtypes.

A safetensors file starts with an 8-byte little-endian length and that many bytes of JSON (each tensor's dtype,
shape and data offsets). Only that header is read (bounded: MAX_HEADER_BYTES), never a tensor, so a 20 GB file is
told in a millisecond. What identifies each kind of file is the model family's data (`ModelFamily.file_kinds`);
this module only reads and compares. Pure: no cache here (the finder keeps one beside its hashes).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, NamedTuple

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.profile import FAMILIES, FileKind, ModelFamily

MAX_HEADER_BYTES = 100 * 1024 * 1024  # real headers are KBs to a few MB; more is not a safetensors file

DTYPES = {  # safetensors' names → what people call them
    "F8_E4M3": "fp8 e4m3fn", "F8_E5M2": "fp8 e5m2", "BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64",
}
OTHER, UNREADABLE = "other", "unreadable"


class HeaderError(ValueError):
    """The file has no readable safetensors header (one line: why)."""


class Identity(NamedTuple):
    """What a file is: a `FileKind.name`, "other" (a safetensors file of no kind we know) or "unreadable"."""

    kind: str
    title: str  # in a sentence: "a T5-XXL text encoder", "not a safetensors file"
    short: str = ""  # in a table cell: "T5-XXL"
    dtype: str = ""  # the dtype holding most parameters: "fp8 e4m3fn", "bf16"
    problem: str = ""  # why it is unreadable, or how it misses its kind ("hidden size 1280, not 768")
    tensors: int = 0
    families: str = ""  # a transformer's: the families its header fits, "|"-separated ("flux1-dev|flux1-krea-dev")

    @property
    def readable(self) -> bool:
        return self.kind != UNREADABLE

    def describe(self) -> str:
        """`a T5-XXL text encoder (fp8 e4m3fn)`; `a CLIP-L text encoder (fp16) whose hidden size is 1280, not 768`;
        `not a model file this trainer uses (fp16; 12 tensors, e.g. …)`."""
        text = self.title + (f" ({self.dtype})" if self.dtype else "")
        if self.problem and self.short not in ("", "other"):
            return f"{self.title} ({self.dtype}) whose {self.problem.removeprefix('its ')}" if self.dtype else \
                f"{self.title} whose {self.problem.removeprefix('its ')}"
        return f"{text}; {self.problem}" if self.problem else text

    def cell(self) -> str:
        """Short, for a table cell: `T5-XXL fp8`, `FLUX transformer bf16`."""
        dtype = "fp8" if self.dtype == "fp8 e4m3fn" else self.dtype
        return f"{self.short} {dtype}".strip()

    def record(self) -> dict[str, Any]:
        return self._asdict()

    def fits(self, family: ModelFamily) -> bool:
        """Whether a transformer file is `family`'s by its header (any file that names no family fits)."""
        return not self.families or family.name in self.families.split("|")


def from_record(data: object) -> Identity | None:
    if not isinstance(data, dict):
        return None
    try:
        return Identity(**{k: data[k] for k in Identity._fields})
    except (KeyError, TypeError):
        return None


def read_header(path: Path) -> dict[str, Any]:
    """The header's JSON object (tensor name → {dtype, shape, data_offsets}, and `__metadata__`). Raises HeaderError."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise HeaderError("is shorter than a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                raise HeaderError(f"has a header length of {length:,} bytes (not a safetensors file)")
            raw = handle.read(length)
        size = path.stat().st_size
    except OSError as exc:
        raise HeaderError(f"cannot be read ({exc.strerror or exc})") from None
    if len(raw) < length:
        raise HeaderError("is cut off inside its header (an incomplete download?)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HeaderError("has a header that is not JSON (not a safetensors file)") from None
    if not isinstance(header, dict):
        raise HeaderError("has a header that is not a table of tensors")
    end = max((_end(v) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise HeaderError(f"is {size:,} bytes but its header promises {8 + length + end:,} (an incomplete download?)")
    return header


def _end(entry: object) -> int:
    if not isinstance(entry, dict):
        raise HeaderError("has a header that is not a table of tensors")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise HeaderError("has a tensor without data offsets in its header")
    return int(offsets[1])


def main_dtype(tensors: dict[str, Any]) -> str:
    """The dtype holding the most parameters, as people say it."""
    counts: dict[str, int] = {}
    for entry in tensors.values():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            dtype = str(entry.get("dtype", ""))
            counts[dtype] = counts.get(dtype, 0) + math.prod(shape)
    if not counts:
        return ""
    dtype = max(counts, key=lambda d: counts[d])
    return DTYPES.get(dtype, dtype.lower())


def _matches(kind: FileKind, tensors: dict[str, Any]) -> str | None:
    """The prefix under which the file has one of the kind's keys ("" for none needed), or None."""
    for prefix in kind.prefixes:
        if any(prefix + key in tensors for key in kind.keys):
            return prefix
    if kind.key_parts and any(part in name for name in tensors for part in kind.key_parts):
        return ""
    return None


def _shape_problem(kind: FileKind, tensors: dict[str, Any], prefix: str) -> str:
    for key, axis, size, what in kind.shapes:
        entry = tensors.get(prefix + key)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if isinstance(shape, list) and len(shape) > axis and shape[axis] != size:
            return f"its {what} is {shape[axis]}, not {size}"
    return ""


# Quantised fp8 files that sd-scripts' loaders read as plain fp8, without what makes their weights right: ComfyUI's
# "scaled fp8" (a `scaled_fp8` marker and one `<layer>.scale_weight` per weight) and its newer `.comfy_quant` layers
# (Chroma1-HD-fp8mixed, FLUX.1 Krea's `*_fp8_scaled`).
_SCALED_FP8 = ("scaled_fp8", ".scaled_fp8", ".scale_weight", ".comfy_quant")


def _precision_problem(tensors: dict[str, Any], dtype: str) -> str:
    """Why sd-scripts cannot train from these weights as they are stored, or ""."""
    if any(name == _SCALED_FP8[0] or name.endswith(_SCALED_FP8[1:]) for name in tensors):
        return ("its fp8 weights are ComfyUI's scaled fp8, which sd-scripts reads without their scales: use the "
                "16-bit file (train.base_precision = \"fp8\" casts it at load)")
    if dtype == DTYPES["F8_E5M2"]:
        return "its weights are fp8 e5m2: sd-scripts' --fp8_base takes only e4m3fn fp8 files, or 16-bit ones"
    return ""


def transformer_families(tensors: dict[str, Any], prefix: str = "") -> list[ModelFamily]:
    """The families whose transformer signature the tensor names fit (FLUX.1-dev and Krea [dev] share one: the
    same architecture with other weights, so their files cannot be told apart by header)."""
    names = {name[len(prefix):] for name in tensors if name.startswith(prefix)}
    return [f for f in FAMILIES.values() if f.signature is not None and f.signature.matches(names)]


def _family_words(families: list[ModelFamily]) -> str:
    """`FLUX.1 schnell`; `FLUX.1-dev or FLUX.1 Krea [dev] (one architecture: a header cannot tell which)`."""
    if len(families) == 1:
        return families[0].title
    return " or ".join(f.title for f in families) + " (one architecture: a header cannot tell which)"


def classify(header: dict[str, Any], family: ModelFamily) -> Identity:
    """What a parsed header is, by the family's file kinds (first match wins; shapes second); a transformer's
    families by their signatures; a precision sd-scripts cannot read is the file's problem."""
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    dtype = main_dtype(tensors)
    for kind in family.file_kinds:
        prefix = _matches(kind, tensors)
        if prefix is None:
            continue
        problem = _shape_problem(kind, tensors, prefix) or ("" if kind.name == "lora" else _precision_problem(tensors, dtype))
        title, families = kind.title, ""
        if kind.name == family.roles[0].name:  # the transformer: whose?
            fits = transformer_families(tensors, prefix)
            families = "|".join(f.name for f in fits)
            if fits:
                title = f"a {_family_words(fits)} transformer"
        return Identity(OTHER if problem else kind.name, title, kind.short, dtype, problem, len(tensors), families)
    example = f"e.g. {min(tensors)}" if tensors else "no tensors"
    return Identity(OTHER, "not a model file this trainer uses", "other", dtype, f"{len(tensors)} tensors, {example}",
                    len(tensors))


def identify(path: Path, family: ModelFamily) -> Identity:
    """What `path` is, from its header only."""
    try:
        header = read_header(Path(path))
    except HeaderError as exc:
        return Identity(UNREADABLE, "not a safetensors file", problem=str(exc))
    return classify(header, family)


def _family_problem(path: Path, identity: Identity, family: ModelFamily) -> str:
    """`flux1-schnell.safetensors is a FLUX.1 schnell transformer (bf16), not Chroma's: …` (one line)."""
    name = display_path(path).rsplit("/", 1)[-1]
    first = identity.families.split("|")[0]
    return (f"{name} is {identity.describe()}, not {family.title}'s: choose a {family.title} file, or set "
            f'models.family = "{first}"')


def role_problem(path: Path, role: str, identity: Identity, family: ModelFamily) -> str | None:
    """One line when the file cannot be `role`'s file, naming what it is and the role: `t5xxl_fp16.safetensors is a
    T5-XXL text encoder, not CLIP-L`; None when it is the role's kind."""
    if identity.kind == role:
        return None if identity.fits(family) else _family_problem(path, identity, family)
    wanted = family.file_kind(role)
    titles = {r.name: r.title for r in family.roles}
    want = wanted.short if wanted is not None else titles.get(role, role)
    name = display_path(path).rsplit("/", 1)[-1]
    if not identity.readable:
        return f"{name} {identity.problem}: not usable as the {want} file"
    if identity.problem and identity.short == want:  # the names are right, a width is not (another CLIP)
        return f"{name} has {want}'s tensor names but {identity.problem}: not the {want} file"
    if identity.short == "other":
        return f"{name} is not {want}: no tensor is named like {want}'s ({identity.problem})"
    return f"{name} is {identity.describe()}, not {want}"
