"""Where the CSS lives: screens style themselves from a .tcss file beside them (CSS_PATH), never from inline strings
(reusable widgets keep DEFAULT_CSS); every stylesheet named exists and ships in the wheel (package-data)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path, PurePath

from textual.app import App
from textual.screen import Screen

import lorawizard.tui

ROOT = Path(__file__).resolve().parents[2]
SCREENS = ROOT / "lorawizard" / "tui" / "screens"
INLINE = {"CSS", "DEFAULT_CSS"}


def inline_css(source: str) -> list[str]:
    """The classes in `source` that assign CSS or DEFAULT_CSS in their body."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
                found += [f"{node.name}.{t.id}" for t in targets if isinstance(t, ast.Name) and t.id in INLINE]
    return found


def test_inline_css_is_found_where_a_class_defines_it() -> None:
    assert inline_css('class A:\n    DEFAULT_CSS = "A { height: 1; }"\n') == ["A.DEFAULT_CSS"]
    assert inline_css('class B:\n    CSS: str = "B {}"\n    CSS_PATH = "b.tcss"\n') == ["B.CSS"]


def test_no_screen_module_defines_inline_css() -> None:
    offenders = {path.name: found for path in sorted(SCREENS.glob("*.py")) if (found := inline_css(path.read_text()))}
    assert not offenders, f"move this CSS into a .tcss beside the screen (CSS_PATH): {offenders}"


def styled_classes() -> list[type]:
    """Every App and Screen class defined in lorawizard.tui that names stylesheets."""
    classes = []
    for info in pkgutil.walk_packages(lorawizard.tui.__path__, "lorawizard.tui."):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if (inspect.isclass(cls) and issubclass(cls, (App, Screen)) and cls.__module__ == module.__name__
                    and cls.__dict__.get("CSS_PATH")):
                classes.append(cls)
    return classes


def css_paths(cls: type) -> list[Path]:
    """As Textual resolves CSS_PATH: relative to the file that defines the class."""
    named = cls.__dict__["CSS_PATH"]
    paths = named if isinstance(named, list) else [named]
    return [(Path(inspect.getfile(cls)).parent / PurePath(path)).resolve() for path in paths]


def shipped(path: Path, package_data: dict[str, list[str]]) -> bool:
    package_dir = path.parent
    package = ".".join(package_dir.relative_to(ROOT).parts)
    return (package_dir / "__init__.py").exists() and any(fnmatch(path.name, glob) for glob in package_data.get(package, []))


def test_every_css_path_exists_and_ships_in_the_package() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    named = {path: cls.__name__ for cls in styled_classes() for path in css_paths(cls)}
    assert any(path.parent == SCREENS for path in named)  # the screens' own stylesheets were found
    missing = [f"{name}: {path}" for path, name in named.items() if not path.is_file()]
    assert not missing, f"CSS_PATH names a file that is not there: {missing}"
    unshipped = [str(path.relative_to(ROOT)) for path in named if not shipped(path, package_data)]
    assert not unshipped, f"no [tool.setuptools.package-data] glob ships these: {unshipped}"
    unused = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "lorawizard").rglob("*.tcss")) if path not in named]
    assert not unused, f"stylesheets no CSS_PATH names: {unused}"


def test_a_stylesheet_outside_the_package_data_is_not_shipped() -> None:
    package_data = {"lorawizard.tui": ["*.tcss"]}
    assert shipped(ROOT / "lorawizard" / "tui" / "app.tcss", package_data)
    assert not shipped(SCREENS / "dataset.tcss", package_data)
