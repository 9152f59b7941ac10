"""The one thumbnail service of the Dataset and Captions screens: decode small pictures (called from a worker
thread, never the UI thread) and keep the most recent ones.

`ThumbnailCache` is a thread-safe LRU of decoded pictures; each entry may carry what a screen drew from the
picture (`drawn`, e.g. the cells of a text renderer), kept only for the `drawn_kept` most recent entries: drawn
cells are ~1,000 objects the garbage collector tracks per image, so keeping them for every cached picture makes
each full collection walk 100,000 more (pauses of 100 ms and up). Pictures that could not be decoded are
remembered with the reason, so moving back over them does not decode them again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from PIL import Image

K = TypeVar("K", bound=Hashable)

LETTERBOX = (24, 24, 28)  # the bars around a letterboxed thumbnail


@dataclass(frozen=True)
class Thumbnail:
    picture: Image.Image
    drawn: Any = None  # what the screen drew from it for its box (None: not drawn, or dropped)


class ThumbnailCache(Generic[K]):
    """The `kept` most recent thumbnails (LRU), and the reasons pictures could not be decoded."""

    def __init__(self, kept: int, *, drawn_kept: int | None = None) -> None:
        self.kept, self.drawn_kept = kept, drawn_kept
        self._entries: OrderedDict[K, Thumbnail] = OrderedDict()
        self._failures: dict[K, str] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: K) -> Thumbnail | None:
        """The thumbnail, marked as the most recent; None when not cached."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def peek(self, key: K) -> Thumbnail | None:
        """The thumbnail without marking it (a worker deciding what is left to decode)."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: K, picture: Image.Image, drawn: Any = None) -> None:
        with self._lock:
            self._entries[key] = Thumbnail(picture, drawn)
            self._entries.move_to_end(key)
            while len(self._entries) > self.kept:
                self._entries.popitem(last=False)
            if drawn is not None and self.drawn_kept is not None:
                for older in list(self._entries)[: -self.drawn_kept]:
                    entry = self._entries[older]
                    if entry.drawn is not None:
                        self._entries[older] = Thumbnail(entry.picture)

    def forget(self, key: K) -> None:
        """Drop a thumbnail (its picture changed on disk)."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Drop every thumbnail (the image widget changed kind: drawn cells no longer fit)."""
        with self._lock:
            self._entries.clear()

    # -- pictures that could not be decoded

    @property
    def failures(self) -> dict[K, str]:
        return self._failures

    def fail(self, key: K, problem: str) -> None:
        with self._lock:
            self._failures[key] = problem

    def problem(self, key: K) -> str | None:
        with self._lock:
            return self._failures.get(key)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()


def letterboxed(path: Path, pixels: int, background: tuple[int, int, int] = LETTERBOX) -> Image.Image | None:
    """A square `pixels`² thumbnail with the picture centred (letterboxed), or None when it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.draft("RGB", (pixels, pixels))
            picture = ImageOps.contain(image.convert("RGB"), (pixels, pixels))
    except (OSError, ValueError):
        return None
    canvas = Image.new("RGB", (pixels, pixels), background)
    canvas.paste(picture, ((pixels - picture.width) // 2, (pixels - picture.height) // 2))
    return canvas


def upright_preview(path: Path, max_side: int) -> tuple[Image.Image | None, str]:
    """(a small upright RGB picture, "") or (None, why it cannot be shown); never raises for a bad file."""
    from lorawizard.core.dataset.imaging import ImageProblem, preview

    try:
        return preview(path, max_side), ""
    except ImageProblem as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - never let a hostile file take the screen down
        return None, f"cannot show it: {type(exc).__name__}"
