"""The probe's saved measurements: peaks and s/step per bucket, how and when measured (train and the GPU screen
read them; the probe step writes them)."""

from __future__ import annotations

import json
from typing import Any

from lorawizard.core.session.document import Session

RESULTS_FILE = "probe.json"  # in <project>/.lorawizard/


def load_results(session: Session) -> dict[str, Any]:
    """The last probe's measurements (`.lorawizard/probe.json`), {} when none."""
    path = session.paths.state / RESULTS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        return {}
