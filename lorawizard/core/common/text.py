"""Text from outside (file names, values from session.toml, argv) made safe for one-line reports."""

from __future__ import annotations

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

