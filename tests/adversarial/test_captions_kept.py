"""Issue 23 A8: a caption edited by hand in `dataset/<bucket>/NNNN.txt` is the person's caption: taken in, never
replaced by an auto draft, never overwritten.

Seen: `--replay session.toml --steps dataset,captions` with `captions.auto = true` drafted every caption; the person
fixed one caption file in an editor; the next identical replay drafted that image again and wrote the draft over it.
"""

from __future__ import annotations

import io
from pathlib import Path

from lorawizard.core.captions import step as captions_step
from lorawizard.core.captions.written import RECORD_FILE
from lorawizard.core.contract import StepContext
from lorawizard.core.dataset.manifest import load_manifest
from lorawizard.core.session.document import Session
from lorawizard.headless import replay
from tests.support.captions_fixtures import make_project, txt_of
from tests.support.dataset_fixtures import photo
from tests.support.sessions import save
from tests.support.standin import make_standin_captioner_python
from tests.unit.test_autocaption import make_model_folder

MINE = "my own words: a red coat on a rainy street"


def _replay(session_path: Path, steps: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = replay(session_path, steps, out=out, err=err, tty=False)
    return code, out.getvalue(), err.getvalue()


def _photo_project(tmp_path: Path) -> Session:
    """Three photos, the stand-in captioner, `captions.auto = true`, trigger "tok"."""
    project = tmp_path / "p"
    photos = project / "photos"
    photos.mkdir(parents=True)
    for n in range(3):
        photo(photos / f"IMG_{n}.jpg", 640, 480, seed=n)
    session = Session.new(project / "session.toml", name="kept")
    session.set("dataset.source", "photos")
    session.set("dataset.max_side", 256)
    session.set("dataset.trigger", "tok")
    session.set("captions.auto", True)
    session.set("paths.python", str(make_standin_captioner_python(tmp_path)))
    session.set("captions.model", str(make_model_folder(tmp_path / "vlm")))
    session.set("captions.device", "cpu")
    save(session)
    return session


def test_a_caption_file_edited_by_hand_survives_the_next_dataset_and_captions_replay(tmp_path: Path) -> None:
    session = _photo_project(tmp_path)
    code, _out, err = _replay(session.path, ["dataset", "captions"])
    assert code == 0, err
    prepared = load_manifest(Session.load(session.path))
    assert len(prepared) == 3
    first = prepared[0].output.with_suffix(".txt")
    assert first.read_text().startswith("tok, A ")  # a draft
    first.write_text(f"tok, {MINE}\n")  # the person fixes it in an editor
    second = prepared[1].output.with_suffix(".txt")
    drafted = second.read_text()

    code, out, err = _replay(session.path, ["dataset", "captions"])
    assert code == 0, err
    assert first.read_text() == f"tok, {MINE}\n"  # neither redrafted nor overwritten
    assert second.read_text() == drafted  # an untouched draft is kept as it was
    assert "edited by hand" in out
    decisions = (session.paths.state / "replay-decisions.toml").read_text()
    assert MINE in decisions and "caption_auto = false" in decisions.split(MINE, 1)[1].split("\n[", 1)[0]

    code, out, err = _replay(session.path, ["dataset", "captions"])  # and again: the file is still the person's
    assert code == 0, err
    assert first.read_text() == f"tok, {MINE}\n" and second.read_text() == drafted


def test_a_hand_edit_of_a_drafts_file_becomes_the_persons_caption_in_the_session(tmp_path: Path) -> None:
    """The wizard's way (a session that is written): the edit is imported with caption_auto false; a later edit in
    the session (the wizard) is written, not taken back from the file."""
    session = make_project(tmp_path / "p", ["a.jpg", "b.jpg"], trigger="tok")
    session.update_image("a.jpg", caption="a draft of a", caption_auto=True)
    session.update_image("b.jpg", caption="a draft of b", caption_auto=True)
    save(session)
    assert captions_step.run_step(StepContext(session=session)).ok
    assert (session.paths.state / RECORD_FILE).is_file()
    txt_of(session.project_dir, 1).write_text(f"tok, {MINE}\n")

    session = Session.load(session.path)
    result = captions_step.run_step(StepContext(session=session))
    assert result.ok and result.data["hand_edited"] == ["a.jpg"]
    saved = Session.load(session.path).images()
    assert saved["a.jpg"]["caption"] == MINE and "caption_auto" not in saved["a.jpg"]
    assert saved["b.jpg"]["caption_auto"] is True  # an untouched draft stays a draft
    assert txt_of(session.project_dir, 1).read_text() == f"tok, {MINE}\n"

    session = Session.load(session.path)
    session.update_image("a.jpg", caption="changed again in the wizard")
    save(session)
    result = captions_step.run_step(StepContext(session=Session.load(session.path)))
    assert result.ok and result.data["hand_edited"] == []
    assert txt_of(session.project_dir, 1).read_text() == "tok, changed again in the wizard\n"


def test_a_caption_file_a_person_put_there_is_never_deleted_or_replaced(tmp_path: Path) -> None:
    """No caption in the session, no record of ours: a file the person wrote beside the image is theirs."""
    session = make_project(tmp_path / "p", ["a.jpg"], trigger="tok")
    txt_of(session.project_dir, 1).write_text(f"{MINE}\n")
    result = captions_step.run_step(StepContext(session=session))
    assert result.ok, result.summary
    assert txt_of(session.project_dir, 1).read_text() == f"tok, {MINE}\n"  # taken in; the trigger goes first
    assert Session.load(session.path).images()["a.jpg"]["caption"] == MINE


def test_a_file_that_says_what_the_session_says_is_not_a_hand_edit(tmp_path: Path) -> None:
    """A write cut short before the record was kept (or a lost record): a draft's file holds the draft, so the draft
    stays a draft (not turned into the person's caption)."""
    session = make_project(tmp_path / "p", ["a.jpg"], trigger="tok")
    session.update_image("a.jpg", caption="a draft of a", caption_auto=True)
    save(session)
    txt_of(session.project_dir, 1).write_text("tok, a draft of a\n")
    result = captions_step.run_step(StepContext(session=session))
    assert result.ok and result.data["hand_edited"] == [] and result.data["auto"] == ["a.jpg"]
    assert Session.load(session.path).images()["a.jpg"]["caption_auto"] is True


async def test_the_captions_screen_shows_a_hand_edited_file_as_the_persons_caption(isolated_home: Path) -> None:
    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.screens.captions import CaptionsScreen
    from tests.support.waiting import pilot_until

    session = make_project(isolated_home / "p", ["a.jpg", "b.jpg"], trigger="tok")
    session.update_image("a.jpg", caption="a draft of a", caption_auto=True)
    session.update_image("b.jpg", caption="theirs")
    save(session)
    assert captions_step.run_step(StepContext(session=session)).ok
    txt_of(session.project_dir, 1).write_text(f"tok, {MINE}\n")
    app = LoraWizardApp(Session.open_project(session.project_dir), start_step="captions")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot_until(pilot, lambda: isinstance(app.screen, CaptionsScreen) and app.screen.captions is not None,
                          60, "the captions")
        assert isinstance(app.screen, CaptionsScreen) and app.screen.captions is not None
        item = app.screen.captions.items[0]
        assert item.body == MINE and not item.auto and app.screen.editor.text == MINE
        assert any("edited by hand" in n.message for n in app._notifications)
        await pilot.press("ctrl+q")
    assert "caption_auto" not in Session.load(session.path).images()["a.jpg"]


def test_files_lorawizard_wrote_are_not_taken_back_in_on_the_next_run(tmp_path: Path) -> None:
    """A missing caption's file holds the trigger alone, a caption typed with the trigger in front is written once:
    neither is a hand edit on the next run (the session is left as it is)."""
    session = make_project(tmp_path / "p", ["a.jpg", "b.jpg"], trigger="tok", captions={"b.jpg": "tok, a man"})
    session.set("dataset.captionless", True)
    save(session)
    for _ in range(2):
        session = Session.load(session.path)
        result = captions_step.run_step(StepContext(session=session))
        assert result.ok and result.data["hand_edited"] == [] and result.data["uncaptioned"] == ["a.jpg"]
    saved = Session.load(session.path).images()
    assert "caption" not in saved.get("a.jpg", {}) and saved["b.jpg"]["caption"] == "tok, a man"


def test_before_training_a_hand_edited_file_is_said_as_the_persons_not_as_old_text(tmp_path: Path) -> None:
    """The warning before a run called a file edited by hand "the old text" and asked whether to train on it; it is
    the person's caption, trained on as it is. A file written before the session's caption changed is still stale."""
    from lorawizard.core.captions.written import files_before_training

    session = make_project(tmp_path / "p", ["a.jpg", "b.jpg"], trigger="tok")
    session.update_image("a.jpg", caption="a draft of a", caption_auto=True)
    session.update_image("b.jpg", caption="a draft of b", caption_auto=True)
    save(session)
    assert captions_step.run_step(StepContext(session=session)).ok
    txt_of(session.project_dir, 1).write_text(f"tok, {MINE}\n")  # a.jpg's file, by hand
    session = Session.load(session.path)
    session.update_image("b.jpg", caption="b, changed in the wizard", caption_auto=False)  # its file is now stale
    save(session)
    assert files_before_training(Session.load(session.path)) == (["b.jpg"], ["a.jpg"])
