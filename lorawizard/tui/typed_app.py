"""One typed way to reach the wizard App from a screen or widget (instead of `self.app.x  # type: ignore`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.dom import DOMNode

if TYPE_CHECKING:  # app.py imports the screens, which import this module
    from lorawizard.tui.app import LoraWizardApp


def wizard_app(node: DOMNode) -> LoraWizardApp:
    """`node.app` as the LoraWizardApp it is (a cast, not a check: test harness apps stand in for it)."""
    return cast("LoraWizardApp", node.app)
