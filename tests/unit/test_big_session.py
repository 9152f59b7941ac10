"""Large session files (issue #11 item 7): repeated notes are summarised, output stays bounded, a file above the
supported size is refused in one line before it is read, and the read-only (tomllib) load reads exactly what the
wizard's round-trip (tomlkit) load reads. Time is measured by bench/bench_big_session.py, never asserted here."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from lorawizard.core.dataset.step import missing_note
from lorawizard.core.session import document as session_module
from lorawizard.core.session.document import MAX_KEY_WARNINGS, MAX_SESSION_BYTES, SCHEMA, Session, SessionError
from lorawizard.headless import MAX_WARNINGS, replay
from tests.support.sessions import save
from tests.unit.test_session import EXAMPLE


def big_session(project: Path, entries: int, *, stray: str = "x = 1\n", photos: int = 2) -> Path:
    (project / "photos").mkdir(parents=True)
    for n in range(photos):
        Image.effect_noise((1024, 1024), 40 + n).convert("RGB").save(project / "photos" / f"real_{n}.jpg")
    parts = ['version = 1\nname = "big"\n\n[dataset]\nsource = "photos"\n\n']
    for n in range(entries):
        file = f"real_{n}.jpg" if n < photos else f"IMG_{n:06d}.jpg"
        parts.append(f'[[dataset.images]]\nfile = "{file}"\nbucket = "1024x1024"\ncaption = "a photo number {n}"\n{stray}\n')
    parts.append("[gpu]\n\n[train]\n")
    path = project / "session.toml"
    path.write_text("".join(parts))
    return path


def test_twenty_thousand_bad_entries_print_a_bounded_number_of_lines(tmp_path: Path) -> None:
    path = big_session(tmp_path / "project", 20_000)
    out, err = io.StringIO(), io.StringIO()
    code = replay(path, ["dataset"], dry_run=True, out=out, err=err, tty=False)
    printed = out.getvalue() + err.getvalue()
    assert code == 0, printed
    assert printed.count("\n") < 40, printed[:3000]
    warnings = err.getvalue().splitlines()
    assert warnings == [f"lorawizard: warning: {path}:11: unknown key `dataset.images.x` in 20,000 entries "
                        "(kept, not used) (first 3: real_0.jpg, real_1.jpg, IMG_000002.jpg)"]
    assert ("note: session.toml has 19,998 entries for files that are not in the source folder "
            "(first 3: IMG_000002.jpg, IMG_000003.jpg, IMG_000004.jpg)") in out.getvalue()
    report = (tmp_path / "project" / "dataset" / "lorawizard-report.txt").read_text()
    assert "IMG_000999.jpg" in report and "IMG_019999.jpg" not in report  # the report names the first 1,000


def test_big_read_only_load_parses_every_entry(tmp_path: Path) -> None:
    path = big_session(tmp_path / "project", 20_000, stray="", photos=0)
    session = Session.load(path, read_only=True)
    images = session.images()
    assert len(images) == 20_000 and session.warnings == []
    assert images["IMG_012345.jpg"] == {"file": "IMG_012345.jpg", "bucket": "1024x1024", "caption": "a photo number 12345"}
    assert list(images)[:2] == ["IMG_000000.jpg", "IMG_000001.jpg"]  # file order kept


def test_same_values_read_only_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "session.toml"
    path.write_text(EXAMPLE + '\n[train.samples]\nprompts = ["a", "b"]\n')
    wizard, replayed = Session.load(path), Session.load(path, read_only=True)
    for spec in SCHEMA:
        assert wizard.get(spec.key) == replayed.get(spec.key), spec.key
        assert wizard.is_set(spec.key) == replayed.is_set(spec.key), spec.key
    assert wizard.images() == replayed.images()
    assert wizard.batch_sizes() == replayed.batch_sizes()
    assert wizard.warnings == replayed.warnings


def test_read_only_session_takes_replay_decisions(tmp_path: Path) -> None:
    """Replay records what it decided into its (plain dict) session so later steps see it; the file is untouched."""
    path = tmp_path / "session.toml"
    path.write_text(EXAMPLE)
    before = path.read_bytes()
    session = Session.load(path, read_only=True)
    session.set("train.samples.steps", 8)
    session.set_batch_size("512x512", 3)
    session.update_image("new.jpg", caption="drafted", caption_auto=True)
    session.update_image("IMG_0001.jpg", caption="changed")
    assert session.get("train.samples.steps") == 8
    assert session.batch_sizes()["512x512"] == 3
    assert session.images()["new.jpg"] == {"file": "new.jpg", "caption": "drafted", "caption_auto": True}
    assert session.images()["IMG_0001.jpg"]["caption"] == "changed"
    with pytest.raises(SessionError, match="read-only"):
        save(session)
    assert path.read_bytes() == before


def test_many_distinct_unknown_keys_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "session.toml"
    keys = "".join(f"k{n} = 1\n" for n in range(500))
    images = "".join(f'[[dataset.images]]\nfile = "f{n}.jpg"\ny{n} = 1\n' for n in range(500))
    path.write_text(f"version = 1\n[train]\n{keys}\n[dataset]\n{images}")
    for read_only in (True, False):
        warnings = Session.load(path, read_only=read_only).warnings
        assert len(warnings) == 2 * (MAX_KEY_WARNINGS + 1), warnings
        assert f"{path}:3: unknown key `train.k0` (kept, not used)" in warnings
        assert f"{path}: 490 more unknown keys (kept, not used) (first 3: train.k10, train.k11, train.k12)" in warnings
        assert f"{path}:507: unknown key `dataset.images.y0` in 1 entry (kept, not used) (f0.jpg)" in warnings
        assert any(w.endswith("490 more unknown keys in [[dataset.images]] (kept, not used) (first 3: y10, y11, y12)")
                   for w in warnings)


def test_replay_prints_a_bounded_number_of_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "MAX_KEY_WARNINGS", 1000)
    path = tmp_path / "session.toml"
    path.write_text("version = 1\n[train]\n" + "".join(f"k{n} = 1\n" for n in range(50)))
    out, err = io.StringIO(), io.StringIO()
    replay(path, ["captions"], dry_run=True, out=out, err=err, tty=False)
    warnings = [line for line in err.getvalue().splitlines() if "warning" in line]
    assert len(warnings) == MAX_WARNINGS + 1
    assert warnings[-1] == f"lorawizard: warning: ... and 30 more warnings about {path}"


def test_a_file_above_the_supported_size_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "session.toml"
    with path.open("wb") as file:  # sparse: no disk, and nothing is read
        file.write(b"version = 1\n")
        file.truncate(MAX_SESSION_BYTES + 1)
    for read_only in (True, False):
        with pytest.raises(SessionError) as info:
            Session.load(path, read_only=read_only)
        assert str(info.value) == (f"{path}: 16.0 MiB is larger than lorawizard reads (16 MiB, about 100,000 image entries; "
                                   "see Sizes in docs/session.md)")
    out, err = io.StringIO(), io.StringIO()
    assert replay(path, ["dataset"], dry_run=True, out=out, err=err) == 2
    assert err.getvalue().count("\n") == 1 and "larger than lorawizard reads" in err.getvalue()


def test_a_file_at_the_limit_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "MAX_SESSION_BYTES", 64)
    path = tmp_path / "session.toml"
    text = 'version = 1\nname = "x"\n'
    path.write_text(text + "#" * (64 - len(text) - 1) + "\n")
    assert os.path.getsize(path) == 64
    assert Session.load(path, read_only=True).get("name") == "x"
    path.write_text(text + "#" * (64 - len(text)) + "\n")
    with pytest.raises(SessionError, match="larger than lorawizard reads"):
        Session.load(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 1\n[train\nx = 1\n", r":2:\d+: TOML syntax error: \S"),
        ('version = 1\nname = "unterminated\n', r":2:\d+: TOML syntax error: \S"),
        ("version = 1\nname = ", r": TOML syntax error: \S"),
        ("version = 1\nversion = 1\n", r":2:\d+: TOML syntax error: \S"),
    ],
)
def test_read_only_syntax_errors_are_one_line_with_a_position(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "session.toml"
    path.write_text(text)
    with pytest.raises(SessionError, match=message) as info:
        Session.load(path, read_only=True)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def test_missing_note_one_and_many() -> None:
    assert missing_note(["a.jpg"]) == "note: session.toml has an entry for a.jpg, which is not in the source folder"
    assert missing_note(["a.jpg", "b\nc.jpg"]) == (
        "note: session.toml has 2 entries for files that are not in the source folder (a.jpg, b\\nc.jpg)")


def test_read_only_images_are_copies(tmp_path: Path) -> None:
    path = tmp_path / "session.toml"
    path.write_text(EXAMPLE)
    session = Session.load(path, read_only=True)
    got = session.images()["IMG_0001.jpg"]
    got["crop"][0] = 99
    got["caption"] = "changed by a caller"
    assert session.images()["IMG_0001.jpg"]["crop"][0] == 0
    assert session.images()["IMG_0001.jpg"]["caption"] == "a woman in a red raincoat"
