"""Run mypy (the project's config) on a code snippet and say which lines it flagged, by their `# BAD n: …` note."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def flagged_notes(snippet: str, tmp_path: Path) -> tuple[set[str], str]:
    """The trailing `# …` notes of the snippet's lines mypy reports an error on, and mypy's whole output."""
    source = textwrap.dedent(snippet)
    path = tmp_path / "snippet.py"
    path.write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
         str(tmp_path / "cache"), "--no-error-summary", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    lines = source.splitlines()
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    return {lines[int(line.split(":")[1]) - 1].split("# ")[-1] for line in errors}, result.stdout + result.stderr
