"""core.thumbnails: the one thumbnail service of the Dataset and Captions screens."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from lorawizard.core.dataset.thumbnails import LETTERBOX, ThumbnailCache, letterboxed, upright_preview


def _picture(side: int = 4) -> Image.Image:
    return Image.new("RGB", (side, side))


def test_lru_keeps_the_most_recent_and_get_marks_recent() -> None:
    cache: ThumbnailCache[str] = ThumbnailCache(2)
    cache.put("a", _picture())
    cache.put("b", _picture())
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", _picture())
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    assert cache.peek("a") is not None
    cache.forget("a")
    assert cache.get("a") is None
    cache.clear()
    assert len(cache) == 0 and "c" not in cache


def test_drawn_cells_are_kept_only_for_the_most_recent() -> None:
    cache: ThumbnailCache[int] = ThumbnailCache(10, drawn_kept=2)
    for key in range(4):
        cache.put(key, _picture(), drawn=f"cells {key}")
    assert [cache.peek(k).drawn for k in range(4)] == [None, None, "cells 2", "cells 3"]  # type: ignore[union-attr]
    assert all(cache.peek(k) is not None for k in range(4))  # the pictures stay


def test_failures_are_remembered_until_cleared() -> None:
    cache: ThumbnailCache[str] = ThumbnailCache(2)
    cache.fail("x", "cannot decode")
    assert cache.problem("x") == "cannot decode" and "x" in cache.failures
    cache.clear_failures()
    assert cache.problem("x") is None


def test_threads_share_one_cache() -> None:
    cache: ThumbnailCache[int] = ThumbnailCache(50, drawn_kept=5)
    picture = _picture()

    def fill(start: int) -> None:
        for key in range(start, start + 500):
            cache.put(key, picture, drawn=key)
            cache.get(key - 3)

    threads = [threading.Thread(target=fill, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 50


def test_letterboxed_and_preview(tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    Image.new("RGB", (40, 10), (255, 0, 0)).save(wide)
    thumb = letterboxed(wide, 20)
    assert thumb is not None and thumb.size == (20, 20)
    assert thumb.getpixel((10, 0)) == LETTERBOX and thumb.getpixel((10, 10)) == (255, 0, 0)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    assert letterboxed(broken, 20) is None
    picture, problem = upright_preview(wide, 20)
    assert picture is not None and max(picture.size) == 20 and problem == ""
    picture, problem = upright_preview(broken, 20)
    assert picture is None and problem
