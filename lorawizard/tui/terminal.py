"""The terminal's answers: asked once, in one round trip, before the app starts; never typed into a widget.

`probe()` asks the terminal which image protocol it speaks (kitty graphics query, then primary device attributes,
DA1, which every terminal answers and which comes back last: the end of the round trip). textual-image would ask
the same with a 0.1 s timeout per question, and it asks when `textual_image.renderable` is first imported, which
inside a running app means its reader races Textual's for stdin: it swallowed the first key and let the reply
`ESC [ ? 1 ; 2 c` through as keys, typed into the focused field (issue 11). So textual-image is imported only
with its probe switched off (images.py), and `ReplyFilteringParser` drops terminal replies that arrive late.
"""

from __future__ import annotations

import os
import re
import select
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from textual._xterm_parser import XTermParser
    from textual.message import Message

TGP_QUERY = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"  # kitty graphics: "could you show this 1×1 pixel?"
CELL_SIZE_QUERY = "\x1b[16t"
DA1_QUERY = "\x1b[c"
TIMEOUT_S = 0.3  # only a terminal that never answers DA1 waits this long

_DA1 = re.compile(r"\x1b\[\?([\d;]*)c")
_TGP_REPLY = re.compile(r"\x1b_G[^\x1b]*\x1b\\")
_CELL_SIZE = re.compile(r"\x1b\[6;(\d+);(\d+)t")
# Replies a terminal may send to us or to a library: DA1/DA2 (`c`), window/cell reports (`t`), APC/DCS/OSC strings.
TERMINAL_REPLY = re.compile(
    r"\x1b\[[?>=][\d;]*c|\x1b\[[2-9];\d+;\d+t|\x1b[_P][^\x1b]*\x1b\\|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
)
_CSI_REPLY = re.compile(r"\x1b\[[?>=][\d;]*c|\x1b\[[2-9];\d+;\d+t")


@dataclass(frozen=True)
class ProbeResult:
    renderer: str  # "sixel", "tgp", "halfcell" or "unicode" (not a terminal)
    cell_size: tuple[int, int]  # pixels per cell (width, height); VT340's 10×20 when unknown
    typed: str = ""  # keys the person pressed while we waited: replayed into the app, never lost
    answered: bool = True  # False when the terminal did not answer DA1 within TIMEOUT_S


def probe(timeout: float = TIMEOUT_S) -> ProbeResult:
    """One round trip to the terminal (no-op when stdin/stdout are not terminals)."""
    stdin, stdout = sys.__stdin__, sys.__stdout__
    if stdin is None or stdout is None or not (stdin.isatty() and stdout.isatty()):
        return ProbeResult("unicode", (10, 20))
    cell = _ioctl_cell_size(stdout.fileno())
    import termios
    import tty

    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)
    try:
        stdout.write(TGP_QUERY + ("" if cell else CELL_SIZE_QUERY) + DA1_QUERY)
        stdout.flush()
        received = _read_until_da1(fd, timeout)
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    return parse_replies(received, cell)


def parse_replies(received: str, cell: tuple[int, int] | None = None) -> ProbeResult:
    """What the terminal said (and what the person typed meanwhile) → the renderer; pure, for tests."""
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
    return ProbeResult(renderer, cell or (10, 20), TERMINAL_REPLY.sub("", received), answered=da1 is not None)


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


def _read_until_da1(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not _DA1.search(data.decode(errors="replace")):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


# -- late replies: never keys


def _textual_parser_class() -> type[XTermParser]:
    from textual import events
    from textual._xterm_parser import XTermParser
    from textual.keys import Keys

    class ReplyFilteringParser(XTermParser):
        """Textual's parser turns an escape sequence it does not know into keys; a terminal reply is not keys.

        Whole replies inside one read are cut out before parsing; a CSI reply split across reads is recognised
        when the parser has gathered it (it asks `_sequence_to_key_events` after each character).
        """

        def feed(self, data: str) -> Iterable[Message]:
            filtered = TERMINAL_REPLY.sub("", data)
            if data and not filtered:
                return ()  # feed("") means end of input to the parser
            return super().feed(filtered)

        def _sequence_to_key_events(self, sequence: str, alt: bool = False) -> Iterable[events.Key]:
            if _CSI_REPLY.fullmatch(sequence):
                yield events.Key(Keys.Ignore, sequence)  # the parser drops Ignore keys
                return
            yield from super()._sequence_to_key_events(sequence, alt)

    return ReplyFilteringParser


def install_reply_filter() -> None:
    """Make Textual's input thread use ReplyFilteringParser. Private Textual API (textual==8.2.8, pinned): the Linux
    driver builds `XTermParser(...)` by module-global name in `run_input_thread`, with no hook to pass another."""
    if sys.platform == "win32":
        return
    from textual.drivers import linux_driver

    linux_driver.XTermParser = _textual_parser_class()  # type: ignore[misc]


def typed_keys(text: str) -> list[Message]:
    """Keys typed during the probe, as Textual events, to post once the app runs."""
    from textual._xterm_parser import XTermParser

    parser = XTermParser()
    events = list(parser.feed(text))
    try:
        events += list(parser.feed(""))  # end of input: flushes a lone Escape
    except EOFError:
        pass
    return events
