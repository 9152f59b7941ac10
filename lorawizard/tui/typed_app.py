"""One typed way to reach the wizard App from a screen or widget (instead of `self.app.x  # type: ignore`).

`WizardApp` says what screens and widgets may use of the App; tui/app.py's LoraWizardApp provides it. A Protocol,
not an import of the App: the App imports the screens, and the screens must not import it back.
"""

from __future__ import annotations

from typing import Protocol, cast

from textual.dom import DOMNode

from lorawizard.core.contract import StepState
from lorawizard.core.registry import OptionsByStep
from lorawizard.core.session.document import Session
from lorawizard.core.session.store import SessionStore


class WizardApp(Protocol):
    session: Session
    store: SessionStore  # the one writer of session.toml
    step_options: OptionsByStep  # extra options per step (tests' doubles)
    step_states: dict[str, StepState]  # what the step bar shows; replaced, never changed in place

    @property
    def project_label(self) -> str: ...

    def decide(self, key: str, value: object) -> str | None: ...

    def set_step_state(self, step: str, state: StepState) -> None: ...

    def action_goto(self, step: str) -> None: ...


def wizard_app(node: DOMNode) -> WizardApp:
    """`node.app` as the wizard App it is (a cast, not a check: test harness apps stand in for it)."""
    return cast("WizardApp", node.app)
