"""No function or method in lorawizard/ above cyclomatic complexity 25 by radon (issue 22): past that a function
wants splitting into named helpers, or a table of small handlers where it is a long if/elif over kinds."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from radon.complexity import cc_visit
from radon.visitors import Class, Function

ROOT = Path(__file__).resolve().parents[2] / "lorawizard"
LIMIT = 25


def _walk(blocks: Iterable[Function | Class], prefix: str = "") -> Iterator[tuple[str, Function]]:
    """(qualified name, function) for every function, method and closure, however deeply nested."""
    for block in blocks:
        name = f"{prefix}{block.name}"
        if isinstance(block, Class):
            yield from _walk([*block.methods, *block.inner_classes], f"{name}.")
        else:
            yield name, block
            yield from _walk(block.closures, f"{name}.")


def too_complex(source: str, where: str) -> list[str]:
    """`where:line name (complexity)` for each function of `source` above LIMIT."""
    # cc_visit lists methods both inside their class and on their own: start from the top level only
    top = [block for block in cc_visit(source) if isinstance(block, Class) or not block.is_method]
    found = sorted(_walk(top), key=lambda named: named[1].lineno)
    return [f"{where}:{function.lineno} {name} ({function.complexity})"
            for name, function in found if function.complexity > LIMIT]


def test_no_function_in_lorawizard_is_above_the_limit() -> None:
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 50  # the walk found the package
    offenders = [line for path in modules
                 for line in too_complex(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT.parent)))]
    assert not offenders, f"cyclomatic complexity above {LIMIT} (split into helpers):\n" + "\n".join(offenders)


def _branches(count: int, indent: str) -> str:
    return "".join(f"{indent}if x == {i}:\n{indent}    return {i}\n" for i in range(count))


def test_the_check_names_methods_and_closures_above_the_limit_and_passes_the_limit_itself() -> None:
    source = (
        "class Outer:\n"
        "    class Inner:\n"
        "        def method(self, x):\n" + _branches(LIMIT, "            ") +
        "def function(x):\n"
        "    def closure(x):\n" + _branches(LIMIT, "        ") +
        "    return closure\n"
        "def at_the_limit(x):\n" + _branches(LIMIT - 1, "    ")
    )
    assert too_complex(source, "m.py") == [f"m.py:3 Outer.Inner.method ({LIMIT + 1})",
                                           f"m.py:{5 + 2 * LIMIT} function.closure ({LIMIT + 1})"]
