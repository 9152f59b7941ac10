"""SessionStore: the one writer of session.toml in the wizard.

Decisions come from the UI thread (settings, crops, captions) and from step workers (`ctx.record`). Each change
runs under one lock; the file is written at most once per debounce window, by a timer thread, so the UI thread never
pays for serialising 5,000 images (~60 ms). `flush()` (leave, quit, end of a step) is the only wait: it writes now,
after a write in flight. A change that must not wait (a keystroke while a write is in flight) is queued by a key,
the newest per key wins, and runs under the lock before the next write.

A person may edit session.toml by hand while the wizard is open. Before each write the store looks at the file: when
it changed since the wizard last read or wrote it, the store reads it again and makes the changes made since its last
write on top of it, so the hand edit and the wizard's newer decisions both stay. A hand edit that does not read (a
bad value) is never written over: the write waits, saying why, until the file is fixed.

Every write of session.toml goes through a store: Session's own write is private to it (a test checks). Outside
the wizard (a step run without its store, a script) `save_now` makes a change and writes it at once through a
short-lived store, so a hand edit is merged there too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.session.document import Session, SessionError

SAVE_DELAY = 0.5  # seconds from the first change to the write that carries it (and every change made meanwhile)

Change = Callable[[Session], None]


class SessionStore:
    def __init__(self, session: Session, *, delay: float = SAVE_DELAY,
                 on_error: Callable[[str], object] = lambda problem: None,
                 on_notice: Callable[[str], object] = lambda line: None) -> None:
        self.session = session
        self.lock = threading.RLock()  # held while the Session is changed or written; readers off the UI thread too
        self.delay = delay
        self.writes = 0  # files written (a window with nothing new writes nothing)
        self._on_error = on_error  # a timer-thread write that failed (flush returns its problem instead)
        self._on_notice = on_notice  # a hand edit of the file was taken in
        self._unsaved: list[Change] = []  # the changes made since the last write, in order (made again on a hand edit)
        self._queued: dict[Hashable, Change] = {}
        self._changed = False  # a change ran since the last write (a new project's file appears only then)
        self._queue_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()

    # -- changes

    def decide(self, key: str, value: object) -> None:
        """Validate and store one setting (SessionError: nothing changed); written within `delay`."""
        self.apply(lambda session: session.set(key, value))

    def apply(self, change: Change, *, queue_as: Hashable | None = None) -> bool:
        """Run `change(session)` under the lock and schedule a write; its SessionError reaches the caller.

        With `queue_as`, a busy lock (a write in flight) does not block: the change waits under that key and runs
        before the next write (a failure then goes to `on_error`). Returns whether the change ran now.
        """
        if queue_as is not None and not self.lock.acquire(blocking=False):
            with self._queue_lock:
                self._queued.pop(queue_as, None)  # to the end: it runs after changes queued before it
                self._queued[queue_as] = change
            self._schedule()
            return False
        if queue_as is None:
            self.lock.acquire()
        try:
            problems = self._run_queued()  # changes queued earlier go first: an older text never wins
            change(self.session)
            self._unsaved.append(change)
            self._changed = True
        finally:
            self.lock.release()
        if problems:
            self._on_error("; ".join(problems))
        self._schedule()
        return True

    @property
    def queued(self) -> list[Hashable]:
        with self._queue_lock:
            return list(self._queued)

    # -- writing

    def flush(self) -> str | None:
        """Write now on this thread (after a write in flight). A one-line problem, or None when saved."""
        with self._timer_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        return self._write()

    def sync(self) -> str | None:
        """Before a step runs or a run launches: write what is pending, then take in a hand edit made on disk even
        when nothing is pending, so the step uses the file as it is now (a hand edit made with the wizard open once
        trained on the old values). Returns a one-line problem when the file on disk does not read: the step must
        not start then. A save that failed otherwise (a read-only folder) goes to `on_error`, as the timer's do."""
        problem = self.flush()
        with self.lock:
            usable, edited = self._take_in_hand_edit()
        if not usable:
            return edited
        for line in (problem, edited):  # a save that failed; a decision the edited file refused
            if line is not None:
                self._on_error(line)
        return None

    def _schedule(self) -> None:
        with self._timer_lock:
            if self._timer is None:  # a window is open: this change goes with its write
                self._timer = threading.Timer(self.delay, self._window_closed)
                self._timer.daemon = True
                self._timer.start()

    def _window_closed(self) -> None:
        with self._timer_lock:
            self._timer = None
        problem = self._write()
        if problem is not None:
            self._on_error(problem)

    def _run_queued(self) -> list[str]:
        """Run the queued changes in order (the caller holds the lock); their one-line problems."""
        problems: list[str] = []
        with self._queue_lock:
            queued, self._queued = list(self._queued.values()), {}
        for change in queued:
            try:
                change(self.session)
                self._unsaved.append(change)
                self._changed = True
            except SessionError as exc:
                problems.append(str(exc))
        return problems

    def _take_in_hand_edit(self) -> tuple[bool, str | None]:
        """The file changed on disk since the last read or write (the caller holds the lock): read it again and make
        the unsaved changes on top of it. (whether to write now, a one-line problem): a file that does not read is
        not written over."""
        if not self.session.changed_on_disk():
            return True, None
        shown = display_path(self.session.path)
        try:
            fresh = Session.load(self.session.path)
        except SessionError as exc:
            return False, (f"{exc} ({shown} was edited outside lorawizard: not written over; fix it, and your decisions "
                           "since are saved with the next change)")
        refused: list[str] = []
        for change in self._unsaved:
            try:
                change(fresh)
            except SessionError as exc:
                refused.append(str(exc))
        self.session.adopt(fresh)
        self._on_notice(f"{shown} was edited outside lorawizard: your edit is kept, with the wizard's newer decisions")
        return True, "; ".join(refused) or None

    def _write(self) -> str | None:
        with self.lock:
            problems = self._run_queued()
            if not self._changed:
                return "; ".join(problems) or None
            try:
                may_write, edited = self._take_in_hand_edit()
                if edited is not None:
                    problems.append(edited)
                if not may_write:  # _changed stays set: written once the file reads again
                    return "; ".join(problems)
                self._changed = False
                if self.session._write_file():  # the one caller: every write merges a hand edit first
                    self.writes += 1
                self._unsaved = []
            except SessionError as exc:
                self._changed = True  # the next flush tries again
                problems.append(str(exc))
            except OSError as exc:
                self._changed = True
                # say what to do: the decisions are kept in memory and the next save tries again
                problems.append(f"could not save {display_path(self.session.path)}: {exc.strerror or exc}: make its "
                                "folder writable; your decisions are kept and saved with the next change (quitting "
                                "before then loses them)")
        return "; ".join(problems) or None


def save_now(session: Session, change: Change) -> bool:
    """Make `change` and write session.toml at once through a short-lived store, for code outside the wizard (a step
    run without the wizard's store, a script): a hand edit on disk is merged just as the wizard merges it. Whether the
    file was written; SessionError with the one-line problem (the change stays in memory)."""
    store = SessionStore(session)
    store.apply(change)
    problem = store.flush()
    if problem is not None:
        raise SessionError(problem)
    return store.writes > 0


def save_change(session: Session, change: Change, store: SessionStore | None) -> None:
    """Make `change` through the session's one writer: the wizard's `store` (written within its delay, and when a
    step ends), or, where there is none, a short-lived one that writes now (save_now)."""
    if store is None:
        save_now(session, change)
    else:
        store.apply(change)
