"""[[dataset.images]] outside tomlkit: a large session stays quick in the wizard and keeps what tomlkit kept."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomlkit
import tomlkit.items

from lorawizard.core.session.document import Session, SessionError
from lorawizard.core.session.store import SessionStore
from tests.support.sessions import save

HEAD = """# my own notes at the top
version = 1
name = "big"   # the output name

[paths]

[dataset]
source = "photos"   # the originals
num_repeats = 3

# one entry per image
"""
TAIL = """
# --- the GPU ---
[gpu]
uuid = "GPU-1"

[train]
learning_rate = 1e-4   # spelled like this on purpose
"""


def entry(n: int, comment: bool = False) -> str:
    crop = "crop = [0, 10, 300, 310]\n" if n % 3 == 0 else ""
    note = "# I looked at this one\n" if comment else ""
    return f'[[dataset.images]]\n{note}file = "IMG_{n:05d}.jpg"\nbucket = "1024x1024"\n{crop}caption = "photo {n}"\n\n'


def write(tmp_path: Path, count: int, *, commented: tuple[int, ...] = ()) -> Path:
    path = tmp_path / "session.toml"
    path.write_text(HEAD + "".join(entry(n, n in commented) for n in range(count)) + TAIL, encoding="utf-8")
    return path


def test_unchanged_save_is_byte_identical_and_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, 50, commented=(7,))
    before = path.read_bytes()
    session = Session.load(path)
    assert session.to_text() == before.decode()
    assert save(session) is False
    session.update_image("IMG_00004.jpg", bucket="1024x1024")  # the value it already has
    assert session.to_text() == before.decode()


def test_round_trip_equals_the_decisions_and_comments_survive(tmp_path: Path) -> None:
    path = write(tmp_path, 300, commented=(7, 8))
    session = Session.load(path)
    expected = tomllib.loads(path.read_text(encoding="utf-8"))
    images = {e["file"]: e for e in expected["dataset"]["images"]}
    tricky = 'a "quoted" caption \\ with a\ttab, ünïcödé and \x7f'
    session.update_image("IMG_00007.jpg", caption=tricky)  # an entry with a comment: edited by tomlkit
    images["IMG_00007.jpg"]["caption"] = tricky
    session.update_image("IMG_00009.jpg", crop=[1, 2, 3, 4], skip=True)
    images["IMG_00009.jpg"].update(crop=[1, 2, 3, 4], skip=True)
    session.update_image("IMG_00010.jpg", caption=None)
    del images["IMG_00010.jpg"]["caption"]
    session.update_images((f"IMG_{n:05d}.jpg", {"caption_auto": True}) for n in range(100, 200))
    for n in range(100, 200):
        images[f"IMG_{n:05d}.jpg"]["caption_auto"] = True
    session.update_image("new.jpg", bucket="512x512")
    images["new.jpg"] = {"file": "new.jpg", "bucket": "512x512"}
    session.set("dataset.trigger", "ohwx")  # a key [dataset] did not have: it must not land in the last entry
    expected["dataset"]["trigger"] = "ohwx"
    session.set("train.seed", 7)
    expected["train"]["seed"] = 7
    session.set("captions.kind", "style")  # a table that did not exist
    expected["captions"] = {"kind": "style"}
    assert save(session) is True

    text = path.read_text(encoding="utf-8")
    got = tomllib.loads(text)
    expected["dataset"]["images"] = list(images.values())
    assert got == expected
    for comment in ("# my own notes at the top", '"big"   # the output name', "# the originals", "# one entry per image",
                    "# --- the GPU ---", "1e-4   # spelled like this on purpose"):
        assert comment in text
    assert text.count("# I looked at this one") == 2  # in an entry we changed and in one we did not
    assert list(got) == ["version", "name", "paths", "dataset", "gpu", "train", "captions"]  # key order kept
    again = Session.load(path)
    assert again.images() == session.images()
    assert save(again) is False


def test_a_new_session_records_images_and_reads_back(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml", name="x")
    session.update_images((f"{n}.jpg", {"bucket": "1024x512", "crop": [0, 0, 10, 5]}) for n in range(20))
    session.update_image("0.jpg", caption="first")
    session.set("dataset.max_side", 512)
    save(session)
    got = tomllib.loads(session.path.read_text(encoding="utf-8"))
    assert got["dataset"]["max_side"] == 512
    assert got["dataset"]["images"][0] == {"file": "0.jpg", "bucket": "1024x512", "crop": [0, 0, 10, 5], "caption": "first"}
    assert len(got["dataset"]["images"]) == 20
    assert Session.load(session.path).images() == session.images()


@pytest.mark.parametrize("layout", [
    "inline",  # dataset.images as an inline array: tomlkit reads everything, as before
    "between",  # another table between the entries
])
def test_unusual_layouts_still_round_trip(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "session.toml"
    if layout == "inline":
        path.write_text('version = 1\n[dataset]\nimages = [{file = "a.jpg", caption = "x"}]  # mine\n', encoding="utf-8")
    else:
        path.write_text('version = 1\n[[dataset.images]]\nfile = "a.jpg"\n\n[gpu]\nuuid = "GPU-1"  # mine\n\n'
                        '[[dataset.images]]\nfile = "b.jpg"\n', encoding="utf-8")
    session = Session.load(path)
    assert session._images is None  # the whole document in tomlkit
    session.update_image("a.jpg", caption="y")
    save(session)
    text = path.read_text(encoding="utf-8")
    assert "# mine" in text
    assert tomllib.loads(text)["dataset"]["images"][0] == {"file": "a.jpg", "caption": "y"}


def test_bad_values_in_entries_are_still_refused_with_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, 10)
    path.write_text(path.read_text(encoding="utf-8").replace('bucket = "1024x1024"', 'bucket = "big"', 1), encoding="utf-8")
    with pytest.raises(SessionError, match=r"session.toml:14: dataset.images\[0\].bucket"):
        Session.load(path)


def test_a_20000_image_session_never_goes_through_tomlkit_per_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Structure, not time: tomlkit sees only the small rest of the file, and builds no table per entry."""
    path = write(tmp_path, 20_000, commented=(5,))
    size = path.stat().st_size
    parsed: list[int] = []
    real_parse = tomlkit.parse

    def counting_parse(text: str) -> tomlkit.TOMLDocument:
        parsed.append(len(text))
        return real_parse(text)

    monkeypatch.setattr(tomlkit, "parse", counting_parse)  # the session imports tomlkit when it first needs it
    tables = 0
    real_init = tomlkit.items.Table.__init__

    def counting_init(self: object, *args: object, **kwargs: object) -> None:
        nonlocal tables
        tables += 1
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tomlkit.items.Table, "__init__", counting_init)
    session = Session.load(path)
    store = SessionStore(session, delay=3600)
    store.decide("train.seed", 3)
    store.apply(lambda s: s.update_images((f"IMG_{n:05d}.jpg", {"caption": f"new {n}"}) for n in range(20_000)))
    store.apply(lambda s: s.update_image("IMG_00005.jpg", skip=True))  # the commented one: tomlkit, alone
    assert store.flush() is None
    assert max(parsed) < size / 100, parsed  # never the whole file
    assert tables < 50, tables  # not one per entry
    got = tomllib.loads(path.read_text(encoding="utf-8"))
    assert len(got["dataset"]["images"]) == 20_000
    assert got["dataset"]["images"][5] == {"file": "IMG_00005.jpg", "bucket": "1024x1024", "caption": "new 5", "skip": True}
    assert got["train"]["seed"] == 3
