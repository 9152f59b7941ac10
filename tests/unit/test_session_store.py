"""SessionStore: one writer for session.toml; concurrent decisions, debounced writes, flush waits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lorawizard.core.session.document import Session, SessionError
from lorawizard.core.session.store import SessionStore
from tests.support.sessions import save


def new_store(project: Path, delay: float = 3600.0) -> SessionStore:
    session = Session.new(project / "session.toml")
    save(session)
    return SessionStore(session, delay=delay)


def test_concurrent_decisions_from_several_threads_lose_nothing_and_share_one_write(project: Path) -> None:
    store = new_store(project)  # the window stays open until we close it
    start = threading.Barrier(4)

    def decide(worker: int) -> None:
        start.wait()
        for n in range(50):
            file = f"w{worker}/{n:03}.jpg"
            store.apply(lambda session, file=file, n=n: session.update_image(file, caption=f"c{n}"))

    threads = [threading.Thread(target=decide, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.writes == 0  # nothing written yet: one window, still open
    window = store._timer
    assert window is not None
    window.cancel()
    window.function()  # the window closes: one write carries all 200 decisions
    assert store.writes == 1
    images = Session.load(project / "session.toml").images()
    assert len(images) == 200 and images["w3/049.jpg"]["caption"] == "c49"
    assert store.flush() is None and store.writes == 1  # nothing new: no second write


def test_the_window_closes_by_itself(project: Path) -> None:
    store = new_store(project, delay=0.01)
    store.decide("name", "mylora")
    for _ in range(500):
        if store.writes:
            break
        time.sleep(0.01)
    assert store.writes == 1 and Session.load(project / "session.toml").get("name") == "mylora"


def test_a_new_project_gets_no_file_until_something_is_decided(project: Path) -> None:
    store = SessionStore(Session.new(project / "session.toml"))
    assert store.flush() is None and not (project / "session.toml").exists()
    store.decide("name", "mylora")
    assert store.flush() is None and Session.load(project / "session.toml").get("name") == "mylora"


def test_a_bad_decision_is_refused_at_once_and_changes_nothing(project: Path) -> None:
    store = new_store(project)
    with pytest.raises(SessionError):
        store.decide("train.learning_rate", "fast")
    assert store.flush() is None and store.writes == 0


def test_a_queued_change_waits_for_the_write_in_flight_and_the_newest_wins(project: Path) -> None:
    store = new_store(project)
    with store.lock:  # another thread is writing: a keystroke must not wait for it
        held = threading.Thread(target=lambda: [
            store.apply(lambda s: s.update_image("a.jpg", caption="first"), queue_as="a.jpg"),
            store.apply(lambda s: s.update_image("a.jpg", caption="second"), queue_as="a.jpg")])
        held.start()
        held.join()
        assert store.queued == ["a.jpg"]
    assert "a.jpg" not in store.session.images()
    assert store.flush() is None
    assert Session.load(project / "session.toml").images()["a.jpg"]["caption"] == "second"


def test_a_change_made_after_a_queued_one_is_not_undone_by_it(project: Path) -> None:
    store = new_store(project)
    with store.lock:
        queued = threading.Thread(
            target=store.apply, args=(lambda s: s.update_image("a.jpg", caption="older"),), kwargs={"queue_as": "a.jpg"})
        queued.start()
        queued.join()
    store.apply(lambda s: s.update_image("a.jpg", caption="newer"), queue_as="a.jpg")  # the lock is free now
    assert store.flush() is None
    assert Session.load(project / "session.toml").images()["a.jpg"]["caption"] == "newer"


def test_flush_waits_for_a_write_in_flight(project: Path) -> None:
    store = new_store(project)
    held, flushing = threading.Event(), threading.Event()
    problems: list[str | None] = []

    def write_in_flight() -> None:
        with store.lock:
            held.set()
            flushing.wait(10)
            time.sleep(0.05)  # let flush reach the lock
            store.decide("name", "late")  # re-entrant: the holder may change the session

    holder = threading.Thread(target=write_in_flight)
    holder.start()
    held.wait(10)
    flusher = threading.Thread(target=lambda: (flushing.set(), problems.append(store.flush())))
    flusher.start()
    flusher.join()
    holder.join()
    assert problems == [None]
    assert Session.load(project / "session.toml").get("name") == "late"  # written after the holder was done


def test_a_failed_save_says_what_to_do_and_keeps_the_decision(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = new_store(project)
    store.decide("dataset.trigger", "ohwx")

    def refuse() -> bool:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(store.session, "_write_file", refuse)
    problem = store.flush()
    assert problem is not None and "Operation not permitted" in problem and "make its folder writable" in problem
    monkeypatch.undo()  # the folder is writable again: the next flush writes what was kept
    assert store.flush() is None
    assert 'trigger = "ohwx"' in (project / "session.toml").read_text()


# ---------------------------------------------------------------- a hand edit while the wizard is open


def _hand_edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_hand_edit_made_while_the_wizard_is_open_is_kept(project: Path) -> None:
    """QA: with the wizard open, a person set max_train_epochs = 10 (with a comment) in an editor; the wizard's next
    save (a new trigger) wrote its own copy over the file: back to the old value, the comment gone, nothing said."""
    path = project / "session.toml"
    store = new_store(project)
    store.decide("train.max_train_epochs", 12)
    store.decide("dataset.trigger", "ohwx")
    assert store.flush() is None
    _hand_edit(path, "max_train_epochs = 12", "max_train_epochs = 10  # fewer, by hand")
    notices: list[str] = []
    store._on_notice = notices.append
    store.decide("dataset.trigger", "sks")
    store.apply(lambda session: session.update_image("a.jpg", caption="a red coat"))
    assert store.flush() is None
    text = path.read_text()
    assert "max_train_epochs = 10  # fewer, by hand" in text and 'trigger = "sks"' in text
    saved = Session.load(path)
    assert saved.get("train.max_train_epochs") == 10 and saved.images()["a.jpg"]["caption"] == "a red coat"
    assert store.session.get("train.max_train_epochs") == 10  # the wizard sees the hand edit from now on
    assert len(notices) == 1 and "edited outside lorawizard" in notices[0]
    store.decide("dataset.trigger", "zkq")  # no new hand edit: an ordinary write, no notice
    assert store.flush() is None and len(notices) == 1 and "# fewer, by hand" in path.read_text()


def test_a_hand_edit_that_does_not_read_is_never_written_over(project: Path) -> None:
    path = project / "session.toml"
    store = new_store(project)
    store.decide("train.max_train_epochs", 12)
    assert store.flush() is None
    _hand_edit(path, "max_train_epochs = 12", "max_train_epochs = 0")
    store.decide("dataset.trigger", "sks")
    problem = store.flush()
    assert problem is not None and "max_train_epochs" in problem and "not written over" in problem
    assert len(problem.splitlines()) == 1 and "max_train_epochs = 0" in path.read_text()  # the person's file
    _hand_edit(path, "max_train_epochs = 0", "max_train_epochs = 8")  # fixed: the waiting decision goes in
    assert store.flush() is None
    saved = Session.load(path)
    assert saved.get("train.max_train_epochs") == 8 and saved.get("dataset.trigger") == "sks"


def test_a_touched_file_is_not_taken_for_a_hand_edit(project: Path) -> None:
    import os

    path = project / "session.toml"
    store = new_store(project)
    store.decide("dataset.trigger", "ohwx")
    assert store.flush() is None
    os.utime(path, ns=(1, 1))  # same text, another mtime
    notices: list[str] = []
    store._on_notice = notices.append
    store.decide("dataset.trigger", "sks")
    assert store.flush() is None and notices == [] and Session.load(path).get("dataset.trigger") == "sks"
