"""Captions core: import, text rules, trigger, bulk edits with undo, token budget, writing for sd-scripts, replay."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lorawizard.core.captions import captionset as cap
from lorawizard.core.captions import step as captions_step
from lorawizard.core.captions.tokens import estimate_counter, load_counter
from lorawizard.core.contract import StepContext
from lorawizard.core.session.document import Session
from lorawizard.headless import replay
from tests.support.captions_fixtures import make_project, make_tokenizers, txt_of
from tests.support.sessions import save

SOURCES = ["a.jpg", "sub/b.jpg", "c.png", "d.jpg"]


def run(session: Session, **kwargs: object):  # noqa: ANN201
    return captions_step.run_step(StepContext(session=session, **kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------- import


@pytest.mark.parametrize(
    ("data", "text", "note"),
    [
        ("ohne Umlaute, a café".encode(), "ohne Umlaute, a café", None),
        ("a café in Zürich".encode("latin-1"), "a café in Zürich", "not UTF-8: decoded as cp1252"),
        (b"\xef\xbb\xbfa woman, red coat", "a woman, red coat", None),
        (b"a woman\r\nred coat\r\n", "a woman, red coat", "2 lines joined into one"),
        (b"", "", "the file was empty"),
        ("a woman".encode("utf-16"), "a woman", "decoded as UTF-16"),
        (b"first line.\nsecond", "first line. second", "2 lines joined"),
    ],
    ids=["utf8", "latin1", "bom", "crlf", "empty", "utf16", "after-period"],
)
def test_decode_caption(data: bytes, text: str, note: str | None) -> None:
    decoded = cap.decode_caption(data)
    assert decoded.text == text
    if note is None:
        assert decoded.notes == ()
    else:
        assert any(note in n for n in decoded.notes), decoded.notes


def test_import_reads_sidecars_never_overwrites_and_flags_odd_files(project: Path) -> None:
    huge = ("word " * 40_000).encode()  # 200 KB
    session = make_project(
        project,
        SOURCES,
        sidecars={
            "a.txt": "ohwx, a woman in a café".encode(),
            "sub/b.caption": "une fenêtre".encode("latin-1"),
            "c.txt": huge,
            "d.txt": b"from the file",
        },
        captions={"d.jpg": "kept from the session"},
        trigger="ohwx",
    )
    result = cap.find_imports(session)
    assert result.captions["a.jpg"] == "a woman in a café"  # leading trigger stripped: it is written anyway
    assert result.captions["sub/b.jpg"] == "une fenêtre"
    assert "not UTF-8" in result.notes["sub/b.jpg"] and "b.caption" in result.notes["sub/b.jpg"]
    assert len(result.captions["c.png"]) <= cap.MAX_IMPORT_BYTES
    assert "200,000 bytes" in result.notes["c.png"]
    assert "d.jpg" not in result.captions

    outcome = run(session)
    saved = Session.load(project / "session.toml").images()
    assert saved["a.jpg"]["caption"] == "a woman in a café"
    assert saved["d.jpg"]["caption"] == "kept from the session"
    assert txt_of(project, 1).read_text(encoding="utf-8") == "ohwx, a woman in a café\n"
    assert txt_of(project, 2).read_text(encoding="utf-8") == "ohwx, une fenêtre\n"
    assert outcome.ok
    assert any("not UTF-8" in line for line in outcome.details)
    # the note survives for the screen
    assert "not UTF-8" in cap.CaptionSet.from_session(Session.load(project / "session.toml")).items[1].note


# ---------------------------------------------------------------- text rules and trigger


def test_multi_line_captions_are_written_as_one_line(project: Path) -> None:
    session = make_project(project, ["a.jpg"], captions={"a.jpg": "a woman\n\n  red   coat\r\nfilm grain.\tsoft\n"})
    assert run(session).ok
    assert txt_of(project, 1).read_bytes() == b"a woman, red coat, film grain. soft\n"


def test_trigger_first_once_and_flagged_elsewhere() -> None:
    assert cap.compose("ohwx", "a woman") == "ohwx, a woman"
    assert cap.compose("ohwx", "ohwx, a woman") == "ohwx, a woman"  # not doubled
    assert cap.compose("ohwx", "ohwxman at sea") == "ohwx, ohwxman at sea"
    assert cap.compose("ohwx", "") == "ohwx"
    assert cap.compose("", "a woman") == "a woman"
    assert cap.compose("ohwx", None) == "ohwx"
    items = [cap.Caption("a", Path("/x/1.png"), "a photo of ohwx"), cap.Caption("b", Path("/x/2.png"), "a woman")]
    captions = cap.CaptionSet(items, "ohwx", estimate_counter())
    captions.refresh()
    assert captions.items[0].line == "ohwx, a photo of ohwx"
    assert captions.filtered("trigger") == [0]
    captions.set_trigger("")
    assert captions.filtered("trigger") == [0, 1]  # no trigger word at all is flagged too
    assert captions.items[0].flags & cap.NO_TRIGGER


def test_changing_the_trigger_rewrites_every_caption_file(project: Path) -> None:
    session = make_project(project, SOURCES[:2], captions={"a.jpg": "a woman", "sub/b.jpg": "a man"}, trigger="ohwx")
    run(session)
    session.set("dataset.trigger", "sks")
    result = run(session)
    assert result.data["written"] == 2
    assert txt_of(project, 1).read_text() == "sks, a woman\n"


def test_edited_counts_what_the_person_changed_not_files_yet_to_write(project: Path) -> None:
    sources = [f"IMG_{n:04d}.jpg" for n in range(1, 7)]
    session = make_project(project, sources, captions={"IMG_0005.jpg": "imported, not written yet",
                                                          "IMG_0006.jpg": "written before"}, trigger="ohwx")
    txt_of(project, 6).write_text("ohwx, written before\n")
    captions = cap.CaptionSet.from_session(session)
    counts = captions.counts()
    assert counts["missing"] == 4 and counts["edited"] == 0  # fresh: nothing was edited (not "edited 6")
    assert [i for i, item in enumerate(captions.items) if item.flags & cap.UNWRITTEN] == [0, 1, 2, 3, 4]
    captions.set_body(0, "a woman on a pier")
    captions.set_body(5, "written before, and changed")
    assert captions.filtered("edited") == [0, 5]
    captions.set_body(5, "written before")  # typed back to what the file says: not an edit any more
    assert captions.filtered("edited") == [0]
    captions.set_trigger("sks")  # a new trigger rewrites every file but edits no caption
    assert captions.counts()["edited"] == 1
    cap.write_captions(captions)
    assert captions.counts()["edited"] == 0 and not any(item.flags & cap.UNWRITTEN for item in captions.items)


# ---------------------------------------------------------------- bulk edits


def _set(bodies: list[str | None]) -> cap.CaptionSet:
    items = [cap.Caption(str(i), Path(f"/x/{i}.png"), body) for i, body in enumerate(bodies)]
    captions = cap.CaptionSet(items, "ohwx", estimate_counter())
    captions.refresh()
    return captions


def test_filters_and_counts_follow_every_edit() -> None:
    captions = _set(["a red coat", None, "a blue coat"])
    assert captions.filtered("missing") == [1] and captions.counts()["missing"] == 1
    captions.filtered("missing").append(2)  # callers get their own list
    captions.set_body(1, "a hat")
    captions.set_body(2, None)
    assert captions.filtered("missing") == [2] and captions.counts()["missing"] == 1
    captions.set_body(0, None)
    assert captions.filtered("missing") == [0, 2] and captions.counts()["missing"] == 2


def test_find_replace_plain_regex_preview_and_undo() -> None:
    captions = _set(["a red coat", "a blue coat", None, "red and red", ""])
    plan = captions.plan_replace("red", "green")
    assert sorted(plan.changes) == [0, 3] and plan.scope == 5 and plan.error is None
    assert plan.examples(1) == [("a red coat", "a green coat")]
    captions.apply(plan)
    assert [c.body for c in captions.items] == ["a green coat", "a blue coat", None, "green and green", ""]

    regex = captions.plan_replace(r"a (\w+) coat", r"a \1 jacket", regex=True)
    assert sorted(regex.changes) == [0, 1]
    captions.apply(regex)
    assert captions.items[1].body == "a blue jacket"

    captions.set_body(0, "edited by hand")
    undone, restored, kept = captions.undo()
    assert undone is not None and "jacket" in undone.description
    assert restored == [1] and kept == 1  # the hand edit survives the undo
    assert captions.items[0].body == "edited by hand" and captions.items[1].body == "a blue coat"
    undone, restored, _ = captions.undo()
    assert captions.items[3].body == "red and red"
    assert captions.undo() == (None, [], 0)


def test_bad_regex_and_empty_find_are_reasons_not_crashes() -> None:
    captions = _set(["a"])
    assert "not a valid regular expression" in (captions.plan_replace("(", "x", regex=True).error or "")
    assert "not a valid regular expression" in (captions.plan_replace("a", r"\2", regex=True).error or "")
    assert captions.plan_replace("", "x").error == "type what to find"
    assert captions.apply(captions.plan_replace("(", "x", regex=True)) == []


def test_a_prepared_bulk_change_commits_what_it_computed_and_keeps_what_changed_meanwhile() -> None:
    """prepare (a worker) only reads; commit (the UI thread) sets the computed values; a caption typed, written or
    re-triggered in between keeps the newer state and is recounted, never given stale flags."""
    captions = _set(["a red coat", "a red hat", "a red car", "a red cup", None])
    before = [(c.body, c.line, c.flags) for c in captions.items]
    result = captions.prepare(captions.plan_replace("red", "green"))
    assert [(c.body, c.line, c.flags) for c in captions.items] == before and captions.undo_stack == []
    assert [file for file, _ in captions.session_changes_for(result)] == ["0", "1", "2", "3"]

    captions.set_body(1, "a hat typed meanwhile")  # typed: kept
    captions.items[2].on_disk = b"ohwx, a green car\n"  # its file was written meanwhile: recounted at commit
    assert [file for file, _ in captions.session_changes_for(result)] == ["0", "2", "3"]
    changed, kept = captions.commit(result)
    assert changed == [0, 2, 3] and kept == 1
    assert [c.body for c in captions.items] == ["a green coat", "a hat typed meanwhile", "a green car", "a green cup", None]
    assert captions.items[0].line == "ohwx, a green coat" and captions.items[0].flags & cap.UNWRITTEN
    assert not captions.items[2].flags & cap.UNWRITTEN  # not the flags computed for the old file
    assert captions.filtered("missing") == [4] and captions.undo_stack[-1].changes.keys() == {0, 2, 3}

    undo = captions.prepare_undo()
    assert undo is not None and undo.undoing is captions.undo_stack[-1]
    captions.set_trigger("sks")  # a new trigger meanwhile: the lines computed with the old one are not used
    restored, kept = captions.commit(undo)
    assert restored == [0, 2, 3] and kept == 0 and captions.undo_stack == []
    assert captions.items[0].body == "a red coat" and captions.items[0].line == "sks, a red coat"
    assert captions.prepare_undo() is None


def test_prefix_suffix_only_where_missing_and_scoped_to_a_filter() -> None:
    captions = _set(["a coat", "film grain, a hat", None, "x"])
    plan = captions.plan_affix("film grain, ", "", indices=[0, 1, 2])
    assert sorted(plan.changes) == [0]
    captions.apply(plan)
    assert captions.items[0].body == "film grain, a coat" and captions.items[3].body == "x"
    plan = captions.plan_affix("", ", soft light")
    assert sorted(plan.changes) == [0, 1, 3]


# ---------------------------------------------------------------- token budget


def test_token_budget_flags_long_captions_with_an_estimate() -> None:
    captions = _set(["a woman", "word " * 80, "word " * 600])
    assert not captions.counter.exact
    assert captions.filtered("over") == [1, 2]
    assert captions.items[1].flags & cap.OVER_CLIP and not captions.items[1].flags & cap.OVER_T5
    assert captions.items[2].flags & cap.OVER_T5
    assert captions.items[0].clip < 10


def test_real_tokenizers_are_used_when_fetched(tmp_path: Path) -> None:
    counter = load_counter(make_tokenizers(tmp_path / "tok"))
    assert counter.exact
    # CLIP: <bos> a photo <eos>; T5: ▁a ▁photo </s>
    assert counter.count("a photo") == (4, 3)
    assert counter.count("A photo")[0] == 4  # CLIP lowercases; T5 does not
    assert counter.count_many(["a", "a photo"]) == [(3, 2), (4, 3)]
    broken = tmp_path / "broken"
    make_tokenizers(broken)
    (broken / "google_t5-v1_1-xxl" / "spiece.model").write_bytes(b"\xff\xff\xff")
    fallback = load_counter(broken)
    assert not fallback.exact and "spiece.model" in fallback.source
    assert not load_counter(tmp_path / "nothing").exact


# ---------------------------------------------------------------- writing and caches


def test_te_cache_deleted_only_for_changed_captions(project: Path) -> None:
    session = make_project(project, SOURCES, captions={s: f"caption {s}" for s in SOURCES}, trigger="ohwx")
    assert run(session).ok
    caches = [txt_of(project, n).with_name(f"{n:04d}_flux_te.npz") for n in range(1, 5)]
    latents = txt_of(project, 1).with_name("0001_1024x1024_flux.npz")
    for path in [*caches, latents]:
        path.write_bytes(b"cache")
    metadata = txt_of(project, 1).parent / "metadata_cache.json"
    metadata.write_text("{}")

    session.update_image("sub/b.jpg", caption="a new caption")  # image 2, bucket 1024x1024
    result = run(session)
    assert result.ok and result.data["written"] == 1 and result.data["unchanged"] == 3
    assert [p.exists() for p in caches] == [True, False, True, True]
    assert latents.exists()
    assert not metadata.exists()  # caches captions when cache_info = true
    assert txt_of(project, 2).read_text() == "ohwx, a new caption\n"

    again = run(session)  # nothing changed: nothing written, nothing deleted
    assert again.data["written"] == 0 and again.data["caches_deleted"] == []


def test_dry_run_changes_nothing_outside_the_project(project: Path) -> None:
    session = make_project(project, SOURCES[:1], captions={"a.jpg": "x"})
    # the same session file, moved beside the project: the dataset is now outside the project folder
    session.set("dataset.source", str(project / "photos"))
    session.set("paths.dataset", str(project / "dataset"))
    session.path = project.parent / "elsewhere" / "session.toml"
    cache = txt_of(project, 1).with_name("0001_flux_te.npz")
    cache.write_bytes(b"c")
    result = run(session, dry_run=True)
    assert result.ok and "would write 1" in result.summary
    assert not txt_of(project, 1).exists() and cache.exists()


def test_dry_run_writes_captions_inside_the_project(project: Path) -> None:
    session = make_project(project, SOURCES[:1], captions={"a.jpg": "x"})
    result = run(session, dry_run=True)
    assert result.ok and "wrote 1" in result.summary
    assert txt_of(project, 1).read_text() == "x\n"


def test_never_an_empty_caption_file(project: Path) -> None:
    session = make_project(project, SOURCES[:2], captions={"a.jpg": "   ", "sub/b.jpg": "x"}, captionless=True)
    txt_of(project, 1).write_text("")  # left from somewhere: sd-scripts would fail on it
    result = run(session)
    assert result.ok and "captionless training intended" in result.summary
    assert not txt_of(project, 1).exists()
    session.set("dataset.trigger", "ohwx")
    run(session)
    assert txt_of(project, 1).read_text() == "ohwx\n"


def test_step_fails_without_prepared_images(project: Path) -> None:
    session = Session.new(project / "session.toml")
    from lorawizard.core.contract import StepFailed

    with pytest.raises(StepFailed, match="run the dataset step first"):
        run(session)


# ---------------------------------------------------------------- replay


def test_replay_exits_1_for_missing_captions_unless_captionless(project: Path) -> None:
    make_project(project, SOURCES, captions={"a.jpg": "one", "sub/b.jpg": "two"}, sidecars={"c.txt": b"three"}, trigger="t")
    before = (project / "session.toml").read_text()
    out, err = io.StringIO(), io.StringIO()
    code = replay(project / "session.toml", ["captions"], out=out, err=err, tty=False)
    assert code == 1
    assert "d.jpg (missing)" in out.getvalue()
    assert "1 of 4 images have no caption" in err.getvalue()
    assert txt_of(project, 3).read_text() == "t, three\n"  # imported in replay, written
    assert (project / "session.toml").read_text() == before  # replay never rewrites the session
    decisions = (project / ".lorawizard" / "replay-decisions.toml").read_text()
    assert "c.png" in decisions and "three" in decisions

    session = Session.load(project / "session.toml")
    session.set("dataset.captionless", True)
    save(session)
    assert replay(project / "session.toml", ["captions"], out=io.StringIO(), err=io.StringIO(), tty=False) == 0


# ---------------------------------------------------------------- session round trip and interrupted writes


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_caption_strings_survive_session_save_and_load(tmp_path_factory, text: str) -> None:
    import tomlkit

    doc = tomlkit.document()
    doc["caption"] = cap.toml_string(text)
    assert tomlkit.parse(doc.as_string())["caption"] == text


def test_bulk_edit_saved_through_the_session(project: Path) -> None:
    tricky = 'a "quoted" back\\slash\ttab\nnew line \x7f é'
    session = make_project(project, SOURCES, captions={s: "plain" for s in SOURCES})
    captions = cap.CaptionSet.from_session(session)
    changed = captions.apply(captions.plan_replace("plain", tricky))
    session.update_images(captions.session_changes(changed))
    save(session)
    assert {v["caption"] for v in Session.load(project / "session.toml").images().values()} == {tricky}


def test_stopping_mid_write_never_leaves_a_cache_beside_a_new_caption(project: Path) -> None:
    from lorawizard.core.contract import Cancelled

    sources = [f"img{n}.jpg" for n in range(40)]
    session = make_project(project, sources, captions={s: "old" for s in sources})
    captions = cap.CaptionSet.from_session(session)
    cap.write_captions(captions)
    for item in captions.items:
        item.te_cache.write_bytes(b"cache of old")
    captions.apply(captions.plan_replace("old", "new"))
    calls = []

    def stop_soon() -> None:
        calls.append(1)
        if len(calls) > 45:  # 40 checks while planning, then a few writes
            raise Cancelled()

    with pytest.raises(Cancelled):
        cap.write_captions(captions, check_cancelled=stop_soon)
    states = [(i.txt_path.read_text(), i.te_cache.exists()) for i in captions.items]
    assert ("new\n", True) not in states
    assert any(text == "new\n" for text, _ in states)


def test_import_follows_the_sidecar_the_dataset_step_assigned(project: Path) -> None:
    import json

    session = make_project(project, ["a.jpg", "a.png"], sidecars={"a.txt": b"for the jpg", "a.caption": b"other"})
    manifest = project / "dataset" / "lorawizard-manifest.json"
    data = json.loads(manifest.read_text())
    data["images"][0]["sidecar"] = "a.caption"  # the dataset step's say
    data["images"][1]["sidecar"] = None  # ambiguous for it: not imported
    manifest.write_text(json.dumps(data))
    assert cap.find_imports(session).captions == {"a.jpg": "other"}


def test_tokenizer_json_is_preferred_and_a_broken_one_falls_back(tmp_path: Path) -> None:
    from lorawizard.core.captions.tokens import CLIP_DIR, T5_DIR, load_clip_tokenizer, load_t5_tokenizer

    folder = make_tokenizers(tmp_path / "tok")
    for name, loader in ((CLIP_DIR, load_clip_tokenizer), (T5_DIR, load_t5_tokenizer)):
        loader(folder / name).save(str(folder / name / "tokenizer.json"))
    (folder / CLIP_DIR / "vocab.json").unlink()  # tokenizer.json alone is enough
    assert load_counter(folder).count("a photo") == (4, 3)
    (folder / T5_DIR / "tokenizer.json").write_text("{not json")
    fallback = load_counter(folder)
    assert not fallback.exact and "tokenizer.json" in fallback.source
