"""The one step registry: every name in it resolves, and everything that lists steps is derived from it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lorawizard.core import registry
from lorawizard.core.registry import STEPS, OptionsByStep, resolve


@pytest.mark.parametrize("spec", STEPS, ids=lambda spec: spec.name)
def test_every_reference_resolves(spec: registry.StepSpec) -> None:
    assert callable(resolve(spec.run))
    for reference in (spec.screen, spec.guess):
        if reference is not None:
            assert callable(resolve(reference)), reference
    if spec.options is not None:
        options = resolve(spec.options)
        # OptionsByStep names the same TypedDict for this step (mypy checks options built through it)
        named = OptionsByStep.__annotations__[spec.name]
        assert getattr(named, "__forward_arg__", named) == getattr(options, "__name__", None)


def test_options_by_step_has_exactly_the_steps_with_options() -> None:
    assert set(OptionsByStep.__annotations__) == {spec.name for spec in STEPS if spec.options is not None}


def test_the_derived_tables_follow_the_table() -> None:
    wizard = [spec for spec in STEPS if spec.wizard]
    assert registry.STEP_ORDER == tuple(spec.name for spec in wizard)
    assert registry.REPLAY_STEPS == registry.STEP_ORDER + tuple(spec.name for spec in STEPS if not spec.wizard)
    assert registry.SCREENS == {spec.name: spec.screen for spec in STEPS if spec.screen}
    assert all(spec.screen for spec in wizard), "every numbered wizard step has a screen"
    assert registry.parse_steps(",".join(reversed(registry.REPLAY_STEPS))) == list(registry.REPLAY_STEPS)


def test_the_app_and_the_cli_take_their_steps_from_the_registry() -> None:
    from lorawizard.cli import build_parser
    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.widgets.step_bar import SHORT_TITLES

    assert list(LoraWizardApp.MODES) == list(registry.STEP_ORDER)
    number_keys = {b.key: b.action for b in LoraWizardApp.BINDINGS if b.key.isdigit()}  # type: ignore[union-attr]
    assert number_keys == {str(n): f"goto('{name}')" for n, name in enumerate(registry.STEP_ORDER, 1)}
    assert SHORT_TITLES is registry.SHORT_TITLES
    steps_help = next(a.help for a in build_parser()._actions if "--steps" in a.option_strings)
    assert ",".join(registry.REPLAY_STEPS) in (steps_help or "")


def test_the_registry_imports_only_the_standard_library() -> None:
    """`--help` and the first frame read the table: it must not pull the session, the steps or tomlkit."""
    code = ("import sys, json; import lorawizard.core.registry; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('lorawizard', 'tomlkit')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == ["lorawizard", "lorawizard.core", "lorawizard.core.registry"]
