"""Text cut to the cells it is drawn in: words cut at the end with "…", paths cut in the middle.

A path's ends say the most (where it starts, which file it is), so a long path loses its middle:
`~/loras/demo/models/…/Qwen2.5-VL-3B-Instruct`. `FitPaths` is a Rich renderable that does this at the width it is
drawn at (a Static in a dialog, a DataTable cell), so a resize needs no code; paths under the home folder are shown
`~/…` (fsutil.display_path).
"""

from __future__ import annotations

import re
from pathlib import Path

from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

from lorawizard.core.common.fsutil import display_path

ELLIPSIS = "…"
MIN_PATH = 12  # a path is never cut shorter than this (the line wraps or ends with … instead)

# A path in a line of text: starts with / or ~/ at the start, after a blank, a parenthesis or a quote; ends before
# a blank or before the punctuation that ends a clause ("… does not exist.", "(at /x/y)").
PATH_RE = re.compile(r"(?<![^\s(\"'“‘=])(?:~(?=/)|/)\S*[^\s.,;:)\"'”’]")


def fit_words(text: str, width: int) -> str:
    """`text` in at most `width` cells: whole, or cut after a word with "…" (mid-word only when one word fills it)."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS if width == 1 else ""
    head = set_cell_size(text, width - 1)
    whole_word = text[len(head)] == " "  # the cut falls on a blank: the last word is whole
    at_word = head if whole_word or " " not in head.strip() else head.rsplit(" ", 1)[0]
    if cell_len(at_word) < (width - 1) // 2:  # one long word (a path): cut it rather than leave a stub
        at_word = head
    return at_word.rstrip(" ,;:(") + ELLIPSIS


def _tail(text: str, width: int) -> str:
    """The last characters of `text` that fit in `width` cells."""
    out = ""
    for char in reversed(text):
        if cell_len(char + out) > width:
            break
        out = char + out
    return out


def cut_middle(path: str, width: int) -> str:
    """`path` in at most `width` cells, its middle replaced by "…". The end keeps the file name whole when it can
    (and as many folders before it as leave the start a third), the start ends at a folder:
    `~/ComfyUI/…/unet/flux1-dev-fp8.safetensors`."""
    if cell_len(path) <= width:
        return path
    if width <= 1:
        return ELLIPSIS if width == 1 else ""
    room = width - 1
    folders = path.split("/")
    tail = "/" + folders[-1] if len(folders) > 1 else path
    if cell_len(tail) <= room - 2:
        for folder in reversed(folders[1:-1]):
            longer = f"/{folder}{tail}"
            if cell_len(longer) > room - room // 3:
                break
            tail = longer
    else:  # the name alone is too long: its end, and a third of the room for the start
        tail = _tail(path, room - max(1, room // 3))
    head = set_cell_size(path, room - cell_len(tail)).rstrip()
    slash = head.rfind("/")
    if slash >= 1:
        head = head[: slash + 1]
    return head + ELLIPSIS + tail


def shown_path(text: str) -> str:
    """A path as written in a line: `~/…` under the home folder (display_path), else as it is."""
    return display_path(text) if text.startswith("/") else text


def shell_tilde(text: str) -> str:
    """A shell command as shown: the home folder written `~` where it starts an unquoted word (after a blank, the
    start or `VAR=`), where a shell expands it the same when the line is pasted; quoted words stay as they are."""
    home = str(Path.home()).rstrip("/")
    if len(home) < 2:
        return text
    return re.sub(r"(?<![^\s=])" + re.escape(home) + r"(?=/|\s|$)", "~", text)


def fit_paths(text: Text | str, width: int, *, one_line: bool = False) -> Text:
    """`text` with its paths shown `~/…` and cut in the middle for `width` cells (see FitPaths)."""
    return FitPaths(text, one_line=one_line).fitted(width)


class FitPaths:
    """A Rich renderable: `text` with every path in it shown `~/…` and cut in the middle to the width it is drawn at.

    one_line: the whole text is one line (a table cell): its paths share what the other words leave of the width.
    Otherwise the text wraps and each path is cut to fit on a line of its own.
    """

    def __init__(self, text: Text | str, *, one_line: bool = False) -> None:
        self.text = Text(text) if isinstance(text, str) else text
        self.one_line = one_line

    @property
    def plain(self) -> str:
        """The text with its paths `~/…`, uncut."""
        return self.fitted(10**6).plain

    def __str__(self) -> str:
        return self.plain

    def fitted(self, width: int) -> Text:
        text = self.text
        matches = list(PATH_RE.finditer(text.plain))
        shown = [shown_path(m.group()) for m in matches]
        plain = text.plain
        if self.one_line:
            other = cell_len(plain) - sum(cell_len(m.group()) for m in matches)
            shared = max(MIN_PATH, (width - other) // max(1, len(matches)))
        out = text.blank_copy()
        position = 0
        for match, path in zip(matches, shown, strict=True):
            if self.one_line:
                budget = shared
            else:  # on a line of its own, or after a short lead ("✗ "): then it stays on that line; and a comma fits
                column = cell_len(plain[plain.rfind("\n", 0, match.start()) + 1 : match.start()])
                budget = max(MIN_PATH, width - (column if column <= 4 else 0) - 1)
            out.append_text(text[position : match.start()])
            piece = text[match.start() : match.end()]
            piece.plain = cut_middle(path, budget)  # shorter: spans over the whole path keep its style
            out.append_text(piece)
            position = match.end()
        out.append_text(text[position:])
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.fitted(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        whole = self.fitted(options.max_width)
        return Measurement.get(console, options, whole)


def shell_words(line: str) -> list[str]:
    """`line` split at the blanks outside quotes (a quoted word with blanks stays one word, its quotes kept)."""
    words: list[str] = []
    word, quote = "", ""
    for char in line:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == " ":
            if word:
                words.append(word)
            word = ""
            continue
        word += char
    return [*words, word] if word else words


def wrap_shell(command: str, width: int, *, indent: str = "  ") -> str:
    """A multi-line shell command (lines joined by ` \\`) wrapped to `width` cells: a line too long breaks between
    words, each broken line ending ` \\` too, so that every line but the last ends with it and the whole still pastes
    as one command. A word longer than a line stays whole (the line folds)."""
    out: list[str] = []
    for line in command.split("\n"):
        continued = line.endswith(" \\")
        body = line[:-2] if continued else line
        lead = body[: len(body) - len(body.lstrip(" "))]
        pieces: list[str] = []
        piece = ""
        for word in shell_words(body):
            longer = f"{piece} {word}" if piece else lead + word
            if piece and cell_len(longer) + 2 > width:
                pieces.append(piece)
                longer = indent + word
            piece = longer
        pieces.append(piece)
        out.append(" \\\n".join(pieces) + (" \\" if continued else ""))
    return "\n".join(out)



class FitName:
    """A Rich renderable: a file name (or any one-line path) cut in the middle (cut_middle) to the width it is drawn at,
    as every screen cuts one: `thum…0001.jpg` keeps its number and extension, `sub/…/IMG_0412.jpg` its folder and name
    (a table column, a list row). Words may stand before it (`prefix`, kept) and after it (`suffix`: " · 7.5 GB · …",
    cut at a word while the name stays whole, left out when the name needs the room). Its `plain` is the whole text."""

    def __init__(self, name: str, style: str = "", suffix: str = "", prefix: str = "") -> None:
        self.name, self.style, self.suffix, self.prefix = name, style, suffix, prefix
        self.plain = prefix + name + suffix

    def __str__(self) -> str:
        return self.plain

    def fitted(self, width: int) -> Text:
        room = max(1, width - cell_len(self.prefix))
        rest = room - cell_len(self.name)
        if not self.suffix or rest < 0:
            shown = cut_middle(self.name, room)
        elif cell_len(self.suffix) <= rest:
            shown = self.name + self.suffix
        elif rest >= 4:
            shown = self.name + fit_words(self.suffix, rest)
        else:
            shown = self.name
        return Text(self.prefix + shown, style=self.style, no_wrap=True, overflow="ellipsis", end="")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.fitted(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(MIN_PATH, cell_len(self.plain)), cell_len(self.plain))
