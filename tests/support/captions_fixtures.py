"""Test fixtures for the captions step: a project with originals, prepared PNGs and a dataset manifest; a save in
flight (save_in_flight) and the bulk dialog's preview (bulk_replace_preview).

The manifest is written directly in the dataset step's format, so these tests don't depend on that step.
Also a tiny CLIP vocabulary and a hand-made sentencepiece model, to exercise the real-tokenizer path.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from lorawizard.core.captions.tokens import CLIP_DIR, T5_DIR
from lorawizard.core.session.document import Session
from lorawizard.core.session.store import SessionStore
from tests.support.sessions import save

COLOURS = [(200, 60, 50), (40, 120, 200), (60, 170, 90), (220, 190, 60), (150, 80, 170), (90, 90, 90)]


def make_project(
    project: Path,
    sources: list[str],
    *,
    sidecars: dict[str, bytes] | None = None,
    captions: dict[str, str] | None = None,
    trigger: str = "",
    captionless: bool = False,
    image_size: int = 32,
) -> Session:
    """Originals under project/photos, prepared PNGs under project/dataset/<bucket>/NNNN.png, a manifest, a session."""
    photos = project / "photos"
    dataset = project / "dataset"
    records = []
    for number, source in enumerate(sources, start=1):
        original = photos / source
        original.parent.mkdir(parents=True, exist_ok=True)
        original.write_bytes(b"not really a jpeg")
        bucket = "1024x1024" if number % 3 else "1024x512"
        output = dataset / bucket / f"{number:04d}.png"
        output.parent.mkdir(parents=True, exist_ok=True)
        colour = COLOURS[number % len(COLOURS)]
        image = Image.new("RGB", (image_size, image_size if number % 3 else image_size // 2), colour)
        for x in range(image.width // 4, image.width // 2):  # a little shape so halfcell output is not flat
            for y in range(image.height // 4, image.height // 2):
                image.putpixel((x, y), (255, 255, 255))
        image.save(output)
        records.append(
            {"output": f"{bucket}/{number:04d}.png", "source": source, "sha256": "0" * 64, "bucket": bucket, "crop": [0, 0, 10, 10]}
        )
    dataset.mkdir(parents=True, exist_ok=True)
    (dataset / "lorawizard-manifest.json").write_text(json.dumps({"version": 1, "max_side": 1024, "images": records}))
    for name, data in (sidecars or {}).items():
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(data)
    session = Session.new(project / "session.toml", name="test")
    session.set("dataset.source", "photos")
    if trigger:
        session.set("dataset.trigger", trigger)
    if captionless:
        session.set("dataset.captionless", True)
    for file, caption in (captions or {}).items():
        session.update_image(file, caption=caption)
    save(session)
    return session


def txt_of(project: Path, number: int) -> Path:
    bucket = "1024x1024" if number % 3 else "1024x512"
    return project / "dataset" / bucket / f"{number:04d}.txt"


# ---------------------------------------------------------------- tiny tokenizers


def make_tokenizers(folder: Path) -> Path:
    """A CLIP vocab.json/merges.txt with a few merges and a T5 spiece.model, in the models step's layout."""
    from tokenizers.pre_tokenizers import ByteLevel

    clip = folder / CLIP_DIR
    clip.mkdir(parents=True)
    vocab: dict[str, int] = {}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    for token in ("ph", "ot", "phot", "photo</w>"):
        vocab.setdefault(token, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (clip / "vocab.json").write_text(json.dumps(vocab))
    (clip / "merges.txt").write_text("#version: 0.2\np h\no t\nph ot\nphot o</w>\n")

    def field(number: int, wire: int, payload: bytes) -> bytes:
        key = bytes([(number << 3) | wire])
        return key + bytes([len(payload)]) + payload if wire == 2 else key + payload

    def piece(text: str, score: float, kind: int) -> bytes:
        body = field(1, 2, text.encode()) + field(2, 5, struct.pack("<f", score)) + field(3, 0, bytes([kind]))
        return field(1, 2, body)

    pieces = ["▁a", "▁photo", "▁", *"abcdefghijklmnopqrstuvwxyz", ",", "!", "."]
    model = piece("<pad>", 0, 3) + piece("</s>", 0, 3) + piece("<unk>", 0, 2)
    model += b"".join(piece(text, -1.0 - i, 1) for i, text in enumerate(pieces))
    t5 = folder / T5_DIR
    t5.mkdir(parents=True)
    (t5 / "spiece.model").write_bytes(model)
    return folder


@contextmanager
def save_in_flight(store: SessionStore) -> Iterator[None]:
    """Another thread holds the store's lock (as a write in flight does) until the block ends."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10), "the other thread never took the store's lock"
    try:
        yield
    finally:
        release.set()
        thread.join()


async def bulk_replace_preview(pilot: Any, find: str, replace: str) -> str:
    """Ctrl+R on the Captions screen: the bulk dialog with `find` typed and `replace` set; the preview's text."""
    from textual.widgets import Input

    from lorawizard.tui.screens.captions import BulkEditScreen

    await pilot.press("ctrl+r")
    await pilot.pause()
    assert isinstance(pilot.app.screen, BulkEditScreen)
    await pilot.press(*find)
    pilot.app.screen.query_one("#bulk-second", Input).value = replace
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()  # the preview is computed in a worker
    await pilot.pause()
    return str(pilot.app.screen.query_one("#bulk-preview").render())
