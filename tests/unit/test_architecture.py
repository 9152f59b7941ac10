"""The allowed import directions (docs/architecture.md, "Layers"): read from the source, every import counted —
top-level, lazy (inside a function) and `if TYPE_CHECKING:` alike — so a circle cannot hide behind a lazy import."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "lorawizard"

# core/'s packages from the bottom up: a module may import its own package and those listed before it, never after.
CORE_LAYERS: tuple[str, ...] = (
    "common",  # atomic writes, child processes, progress, one-line text
    "profile",  # model-family profiles: a base model's facts
    "session",  # session.toml and its one writer
    "contract",  # StepContext, StepResult, StepFailed, Cancelled
    "gpu",  # NVML, VRAM presets, the probe's saved measurements
    "models",
    "dataset",
    "launch",  # the trainer's command, multi-GPU/machine plans, detached runs, the project lock
    "environment",
    "captions",
    "train",
    "probe",
    "loratools",  # resize, convert, merge a finished LoRA with the trainer's tools; check it loads
    "publish",
    "step_states",  # every step's start-up guess
    "registry",  # the one step table
)
# lorawizard's top level: what may import what (core is the bottom; trainer_side runs in another Python).
TOP_ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "trainer_side": {"trainer_side"},
    "tui": {"core", "tui"},
    "headless": {"core", "headless"},
    "runctl": {"core", "runctl", "headless"},
    "cli": {"core", "tui", "headless", "runctl", "cli", "__init__"},
    "__main__": {"cli"},
    "__init__": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> Iterator[tuple[str, int]]:
    """(imported lorawizard module, line) for every import statement in module `name`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target in MODULES and target != name:
                yield target, node.lineno


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def core_layer(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) < 3 or parts[1] != "core":
        return None
    return CORE_LAYERS.index(parts[2]) if parts[2] in CORE_LAYERS else None


def test_every_core_package_has_a_layer() -> None:
    unplaced = sorted({name.split(".")[2] for name in MODULES if core_layer(name) is None
                       and name.startswith("lorawizard.core.") and name.split(".")[2] not in ("data",)})
    assert not unplaced, f"core/ packages without a layer in CORE_LAYERS (and docs/architecture.md): {unplaced}"


def test_core_imports_only_downward() -> None:
    wrong = []
    for name in MODULES:
        layer = core_layer(name)
        if layer is None:
            continue
        for target, line in imports_of(name):
            target_layer = core_layer(target)
            if target_layer is not None and target_layer > layer:
                wrong.append(f"{MODULES[name].relative_to(ROOT.parent)}:{line} imports {target} "
                             f"({CORE_LAYERS[target_layer]} is above {CORE_LAYERS[layer]})")
    assert not wrong, "\n".join(wrong)


def test_top_level_directions() -> None:
    wrong = [f"{MODULES[name].relative_to(ROOT.parent)}:{line} imports {target}"
             for name in MODULES for target, line in imports_of(name)
             if top(target) not in TOP_ALLOWED.get(top(name), set())]
    assert not wrong, "\n".join(wrong)


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {name: {target for target, _ in imports_of(name)} for name in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return found


def test_no_import_circle_anywhere() -> None:
    assert cycles() == []


@pytest.mark.parametrize("source, target", [("lorawizard.core.session.document", "lorawizard.core.registry"),
                                            ("lorawizard.core.common.fsutil", "lorawizard.core.session.document")])
def test_the_direction_check_can_fail(source: str, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upward import planted in a low module is caught (the checks above are not vacuous)."""
    original = imports_of

    def planted(name: str) -> Iterator[tuple[str, int]]:
        yield from original(name)
        if name == source:
            yield target, 1

    monkeypatch.setitem(globals(), "imports_of", planted)
    with pytest.raises(AssertionError):
        test_core_imports_only_downward()


def test_the_documented_layers_are_the_checked_ones() -> None:
    """docs/architecture.md's layer table lists core's packages in CORE_LAYERS' order (the map stays true)."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+)(?:/|\.py)` \|", doc, flags=re.MULTILINE)
    assert tuple(rows) == CORE_LAYERS
