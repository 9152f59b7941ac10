"""Step options are typed end to end: a misspelt option key or state word is a mypy error wherever options are built."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.registry import OptionsByStep, options_for
from tests.support.mypy_snippets import flagged_notes

pytest.importorskip("mypy")

SNIPPET = '''
from lorawizard.core.session.document import Session
from lorawizard.core.contract import StepContext
from lorawizard.core.registry import OptionsByStep, StepOptions
from lorawizard.core.environment.step import EnvOptions
from lorawizard.core.models.step import ModelsOptions
from lorawizard.core.probe.shared import ProbeOptions


def build(session: Session) -> None:
    StepContext(session=session, options={"reprobe": True})  # fine
    # options are typed where they are built (the registry's StepOptions / OptionsByStep): the contract imports no step
    typo: StepOptions = {"reprobee": True}  # BAD 1: no step has this key
    good: ProbeOptions = {"reprobe": True, "max_batch": 4}  # fine
    bad: ProbeOptions = {"reprobe": True, "max_batch": "4"}  # BAD 2: wrong value type
    by_step: OptionsByStep = {"probe": {"reprobe": True}, "train": {"detach": True}}  # fine
    wrong_step: OptionsByStep = {"train": {"reprobe": True}}  # BAD 3: reprobe is the probe step's
    fix: EnvOptions = {"fix": "install"}  # fine
    no_fix: EnvOptions = {"fix": "reboot"}  # BAD 4: not a fix
    find: ModelsOptions = {"action": "find"}  # fine
    no_action: ModelsOptions = {"action": "fetch"}  # BAD 5: not a models action
'''


def test_mypy_rejects_a_wrong_option_key_and_accepts_the_right_ones(tmp_path: Path) -> None:
    flagged, output = flagged_notes(SNIPPET, tmp_path)
    assert flagged == {"BAD 1: no step has this key", "BAD 2: wrong value type",
                       "BAD 3: reprobe is the probe step's", "BAD 4: not a fix",
                       "BAD 5: not a models action"}, output


def test_replay_gives_each_step_only_its_own_options() -> None:
    by_step: OptionsByStep = {"probe": {"reprobe": True}, "train": {"detach": True}}
    assert options_for(by_step, "train") == {"detach": True}
    assert options_for(by_step, "probe") == {"reprobe": True}
    assert options_for(by_step, "dataset") == {}
    fresh = options_for(by_step, "train")
    fresh["detach"] = False
    assert by_step["train"] == {"detach": True}
