"""Test helpers: sd-scripts' text-encoder caches (`*_flux_te.npz`) written without numpy, in a stand-in project."""

from __future__ import annotations

import zipfile
from pathlib import Path

from lorawizard.core.session.document import Session
from tests.support.sessions import save
from tests.support.standin import make_train_project


def npy(descr: str, shape: tuple[int, ...], data: bytes) -> bytes:
    """An .npy array as numpy writes it (format 1.0), so that no numpy is needed here."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin-1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def write_cache(path: Path, tokens: int = 512, mask: bool = False) -> None:
    """A `*_flux_te.npz` with sd-scripts' arrays (np.savez: an uncompressed zip); the big one's data left out."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("l_pooled.npy", npy("<f4", (768,), b"\0" * 3072))
        archive.writestr("t5_out.npy", npy("<f4", (tokens, 4096), b""))
        archive.writestr("txt_ids.npy", npy("<f4", (tokens, 3), b""))
        archive.writestr("t5_attn_mask.npy", npy("<i8", (tokens,), b""))
        archive.writestr("apply_t5_attn_mask.npy", npy("|b1", (), b"\x01" if mask else b"\x00"))


def project_with_caches(tmp_path: Path, family: str | None = None, *, tokens: int = 512, mask: bool = False) -> Session:
    session = make_train_project(tmp_path, images=3, epochs=1)
    for png in sorted((session.paths.dataset / "512x512").glob("*.png")):
        write_cache(png.with_name(png.stem + "_flux_te.npz"), tokens, mask)
        png.with_name(png.stem + "_512x512_flux.npz").write_bytes(b"latents")
    if family:
        session.set("models.family", family)
        save(session)
    return session


def caches(session: Session) -> list[str]:
    return sorted(p.name for p in session.paths.dataset.glob("*/*_flux_te.npz"))
