"""The terminal's answers: asked once, in one round trip, after the first frame; never typed into a widget.

The wizard asks the terminal which image protocol it speaks (kitty graphics query, then primary device attributes,
DA1, which every terminal answers and which comes back last: the end of the round trip). It asks from inside the
running app, after the first frame is drawn (issue 12.9: a probe before App.run put a round trip, or a 0.3 s wait
for a terminal that never answers, in front of the first frame). Textual's input thread reads the answer:
`ReplyFilteringParser` cuts every terminal reply out of the input (a reply is never keys: issue 11, the reply
`ESC [ ? 1 ; 2 c` typed into the focused field) and hands the ones we asked for to the `ReplyCollector`.
textual-image would ask the same itself with a 0.1 s timeout per question when `textual_image.renderable` is
first imported, racing Textual's reader for stdin; so it is imported only with its probe switched off (images.py).
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from textual._xterm_parser import XTermParser
    from textual.message import Message

TGP_QUERY = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"  # kitty graphics: "could you show this 1×1 pixel?"
CELL_SIZE_QUERY = "\x1b[16t"
DA1_QUERY = "\x1b[c"
TIMEOUT_S = 0.5  # a terminal that never answers DA1: halfcell after this long (the app is already drawn)

_DA1 = re.compile(r"\x1b\[\?([\d;]*)c")
_TGP_REPLY = re.compile(r"\x1b_G[^\x1b]*\x1b\\")
_CELL_SIZE = re.compile(r"\x1b\[6;(\d+);(\d+)t")
# Replies a terminal may send to us or to a library: DA1/DA2 (`c`), window/cell reports (`t`), APC/DCS/OSC strings.
TERMINAL_REPLY = re.compile(
    r"\x1b\[[?>=][\d;]*c|\x1b\[[2-9];\d+;\d+t|\x1b[_P][^\x1b]*\x1b\\|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
)
_CSI_REPLY = re.compile(r"\x1b\[[?>=][\d;]*c|\x1b\[[2-9];\d+;\d+t")
# Any whole CSI sequence (parameters, intermediates, a final byte): one Textual does not know as a key is not keys
# either (a pasted `\x1b[31m` once switched steps with its `3` and `1`). Mouse reports and mode reports are read by
# the parser after it asks for keys, so they are left to it.
_WHOLE_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_PARSER_READS_ITSELF = re.compile(r"\x1b\[(?:<|M|\?\d+;\d+\$y)")


class ProbeResult(NamedTuple):
    renderer: str  # "sixel", "tgp" or "halfcell"
    cell_size: tuple[int, int]  # pixels per cell (width, height); VT340's 10×20 when unknown
    answered: bool = True  # False when the terminal did not answer DA1 within TIMEOUT_S


def queries(cell_known: bool) -> str:
    """The round trip's questions: kitty graphics, the cell size (when the ioctl did not tell), DA1 last."""
    return TGP_QUERY + ("" if cell_known else CELL_SIZE_QUERY) + DA1_QUERY


def cell_size_from_ioctl() -> tuple[int, int] | None:
    stdout = sys.__stdout__
    if stdout is None or not stdout.isatty():
        return None
    return _ioctl_cell_size(stdout.fileno())


class ReplyCollector:
    """Gathers the replies the input parser cut out (input thread) until DA1 ends the round trip, then calls
    `on_answer` once with what they mean. Replies that nobody asked for are dropped all the same."""

    def __init__(self, on_answer: Callable[[ProbeResult], object], cell: tuple[int, int] | None = None) -> None:
        self._on_answer, self._cell = on_answer, cell
        self._seen = ""
        self._done = False
        self._lock = threading.Lock()

    def add(self, reply: str) -> None:
        with self._lock:
            if self._done:
                return
            self._seen += reply
            if not _DA1.search(self._seen):
                return
            self._done = True
        self._on_answer(parse_replies(self._seen, self._cell))

    def give_up(self) -> None:
        """No DA1 in time: decide from what came (halfcell unless a kitty reply came), and stop listening."""
        with self._lock:
            if self._done:
                return
            self._done = True
        self._on_answer(parse_replies(self._seen, self._cell))


_collector: ReplyCollector | None = None


def listen(collector: ReplyCollector | None) -> None:
    """Hand the replies the input parser sees to `collector` (None: drop them, as always)."""
    global _collector
    _collector = collector


def _collect(reply: str) -> None:
    collector = _collector
    if collector is not None:
        collector.add(reply)


def parse_replies(received: str, cell: tuple[int, int] | None = None) -> ProbeResult:
    """What the terminal said → the renderer; pure, for tests."""
    da1 = _DA1.search(received)
    if cell is None and (size := _CELL_SIZE.search(received)):
        height, width = int(size.group(1)), int(size.group(2))
        cell = (width, height) if width and height else None
    if da1 and "4" in da1.group(1).split(";"):
        renderer = "sixel"  # textual-image's order: Sixel before kitty graphics
    elif any(match.group(0).endswith(";OK\x1b\\") for match in _TGP_REPLY.finditer(received)):
        renderer = "tgp"
    else:
        renderer = "halfcell"
    return ProbeResult(renderer, cell or (10, 20), answered=da1 is not None)


def _ioctl_cell_size(fd: int) -> tuple[int, int] | None:
    import fcntl
    import struct
    import termios

    try:
        rows, columns, width, height = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    if not (rows and columns and width and height):
        return None
    return width // columns, height // rows


# -- late replies: never keys


def _textual_parser_class() -> type[XTermParser]:
    from textual import events
    from textual._xterm_parser import XTermParser
    from textual.keys import Keys

    class ReplyFilteringParser(XTermParser):
        """Textual's parser turns an escape sequence it does not know into keys; a terminal reply is not keys, nor is
        any other whole CSI sequence that is not a key (colours in a paste that is not bracketed).

        Whole replies inside one read are cut out before parsing; a CSI reply split across reads is recognised
        when the parser has gathered it (it asks `_sequence_to_key_events` after each character). Either way the
        reply goes to the collector when the wizard is waiting for the terminal's answer.
        """

        def feed(self, data: str) -> Iterable[Message]:
            for reply in TERMINAL_REPLY.finditer(data):
                _collect(reply.group(0))
            filtered = TERMINAL_REPLY.sub("", data)
            if data and not filtered:
                return ()  # feed("") means end of input to the parser
            return super().feed(filtered)

        def _sequence_to_key_events(self, sequence: str, alt: bool = False) -> Iterable[events.Key]:
            if _CSI_REPLY.fullmatch(sequence):
                _collect(sequence)
                yield events.Key(Keys.Ignore, sequence)  # the parser drops Ignore keys
                return
            keys = list(super()._sequence_to_key_events(sequence, alt))
            if not keys and _WHOLE_CSI.fullmatch(sequence) and not _PARSER_READS_ITSELF.match(sequence):
                keys = [events.Key(Keys.Ignore, sequence)]  # colours in a paste: dropped whole, not typed as keys
            yield from keys

    return ReplyFilteringParser


def install_reply_filter() -> None:
    """Make Textual's input thread use ReplyFilteringParser. Private Textual API (textual==8.2.8, pinned): the Linux
    driver builds `XTermParser(...)` by module-global name in `run_input_thread`, with no hook to pass another."""
    if sys.platform == "win32":
        return
    from textual.drivers import linux_driver

    linux_driver.XTermParser = _textual_parser_class()  # type: ignore[misc]
