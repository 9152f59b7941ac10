"""Children that get a terminal's Ctrl-C whatever the test run's own parent did with SIGINT.

A parent started in the background (`cmd &` in a script, as a suite run by a background job or an agent's shell is)
hands its children an ignored SIGINT, and exec keeps an ignored signal ignored. Replay rightly leaves an ignored
SIGINT ignored (nohup), so a test's Ctrl-C was lost and the test failed "at random": only when run from such a
parent (`timeout`, which installs handlers of its own, hides it). A child that stands for a process in a terminal's
foreground job starts with the handler such a process has.
"""

from __future__ import annotations

import sys

# Python's own SIGINT handler, as `python` installs it when it starts with SIGINT not ignored.
TERMINAL_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def lorawizard_argv(*args: str) -> list[str]:
    """`python -m lorawizard ARGS` as a terminal's foreground job runs it (runpy does what -m does)."""
    code = TERMINAL_SIGINT + "import runpy; runpy.run_module('lorawizard', run_name='__main__', alter_sys=True)\n"
    return [sys.executable, "-c", code, *args]
