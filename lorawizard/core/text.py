"""Text from outside (file names, values from session.toml, argv) made safe for one-line reports."""

from __future__ import annotations

import re

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def one_line(text: str) -> str:
    """`text` with line breaks, tabs and other control characters escaped (`\\n`, `\\x1b`, `\\u2028`), so a name
    can neither split a report line nor move the terminal's cursor. Backslashes are doubled only when something
    was escaped, so ordinary text is returned unchanged."""
    if text.isprintable():
        return text
    return "".join(_ESCAPES.get(c) or (c if c.isprintable() else repr(c)[1:-1]) for c in text)


def first_few(items: list[str], total: int | None = None, *, limit: int = 3) -> str:
    """`"(first 3: a.jpg, b.jpg, c.jpg)"` for a summary line of `total` (default len(items)) repeated notes;
    "(a.jpg)" / "(a.jpg, b.jpg)" when there are no more than `limit`. Each name is escaped with `one_line`."""
    total = len(items) if total is None else total
    shown = ", ".join(one_line(item) for item in items[:limit])
    return f"({shown})" if total <= limit else f"(first {limit}: {shown})"


def _cell_width(char: str) -> int:
    """Terminal cells of one character: 2 for wide (East Asian wide/full-width), 0 for combining marks, else 1."""
    if char.isascii():
        return 1
    import unicodedata

    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cell_width(text: str) -> int:
    """Terminal cells `text` takes (ASCII: its length)."""
    return len(text) if text.isascii() else sum(_cell_width(c) for c in text)


def _split_at_cells(word: str, cells: int) -> tuple[str, str]:
    """`word` cut after at most `cells` terminal cells: (head, rest)."""
    if word.isascii():
        return word[:cells], word[cells:]
    used = 0
    for index, char in enumerate(word):
        used += _cell_width(char)
        if used > cells:
            return word[:index], word[index:]
    return word, ""


_TOKENS = re.compile(r"\s+|\S+")


def wrap_cells(text: str, width: int, indent: str = "  ") -> list[str]:
    """`text` soft-wrapped into lines of at most `width` terminal cells, for a log panel: breaks at spaces where it
    can, cuts a word longer than a line (a path, a tqdm bar) where the line ends, and starts each continuation line
    with `indent` so it reads as the same log line. A line that fits (and any `width` < 8) comes back as [text]."""
    if width < 8 or (len(text) <= width and text.isascii()) or cell_width(text) <= width:
        return [text]
    text = text.expandtabs()
    lines: list[str] = []
    line = ""
    for token in _TOKENS.findall(text):
        if token.isspace():
            if line.strip() or not lines:  # kept inside a line (and as the first line's indentation)
                line += token
            continue
        size = cell_width(token)
        if size <= width - cell_width(line):
            line += token
            continue
        if line.strip() and size <= width - len(indent):  # the word fits on a line of its own: break before it
            lines.append(line.rstrip())
            line = indent + token
            continue
        while token:  # longer than a line: fill this line, then the next ones
            room = width - cell_width(line)
            head, token = _split_at_cells(token, room) if room > 0 else ("", token)
            if not head and line.strip() == "" and lines:  # a fresh line too narrow for one wide character
                head, token = token[0], token[1:]
            line += head
            if token:
                lines.append(line.rstrip() if line.strip() else line)
                line = indent
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines

