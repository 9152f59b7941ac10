"""Issue 23 D: "after resizing to 40×12 and back, the Train screen stays scrolled with its top panel cut off".

Seen again once Tab had moved focus into the settings at 40×12 (the body scrolled to show the field) and Esc left
it: back at 120×40 the body stayed scrolled. Outside a field, a new size now shows the body from its top.
"""

from __future__ import annotations

from pathlib import Path

from lorawizard.core.session.document import Session
from lorawizard.tui.app import LoraWizardApp
from tests.tui.test_train_screen import dashboard_view


async def test_the_dashboards_top_is_on_screen_after_a_tiny_terminal_and_back(tmp_path: Path) -> None:
    app = LoraWizardApp(Session.open_project(tmp_path), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.screen.apply_view(dashboard_view(tmp_path))
        await pilot.pause()
        await pilot.resize_terminal(40, 12)
        for _ in range(3):  # the run goes on while the terminal is tiny
            app.screen.apply_view(dashboard_view(tmp_path))
            await pilot.pause(0.05)
        await pilot.press("tab", "tab")  # and a key or two
        await pilot.press("escape")
        await pilot.resize_terminal(120, 40)
        app.screen.apply_view(dashboard_view(tmp_path))
        await pilot.pause(0.1)
        header = app.screen.query_one("#train-header")
        body = app.screen.query_one(".step-body")
        assert body.scroll_y == 0
        assert 0 < header.region.y < 10 and header.region.height > 0
