"""What the models step reports per file role (a row of the Models screen) and the options it reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

from lorawizard.core.common.progress import format_bytes

ModelsAction = Literal["download", "find", "captioner"]
RoleStateWord = Literal["unknown", "checking", "found", "missing", "downloading", "error"]


@dataclass
class RoleState:
    role: str  # flux | ae | clip_l | t5xxl | tokenizers
    file: str  # file name (or the tokenizer repos)
    repo: str
    state: RoleStateWord = "unknown"
    path: Path | None = None
    source: str = ""
    verified: bool = False  # sha256 matched the hub's
    note: str = ""
    size: int | None = None
    done: int = 0
    rate: float | None = None
    eta_s: float | None = None
    what: str = ""  # what the file's header says it is, for a table cell: "T5-XXL fp8" (core.models.identify)

    def line(self) -> str:
        """One plain line for logs and replay."""
        if self.state == "found":
            check = "✓ verified" if self.verified else f"({self.note})" if self.note else ""
            what = f" · {self.what}" if self.what else ""
            return f"{self.role}: found at {self.path} [{self.source}]{what} {check}".rstrip()
        if self.state == "missing":
            size = f" ({format_bytes(self.size)})" if self.size else " (size unknown)"
            where = f"{self.repo}/{self.file}" if self.repo else self.file
            return f"{self.role}: missing {where}{size}"
        if self.state == "error":
            return f"{self.role}: error: {self.note}"
        return f"{self.role}: {self.state} {self.file}"



class ModelsOptions(TypedDict, total=False):
    """What the models step reads from `ctx.options` (all optional)."""

    action: ModelsAction
    on_state: Callable[[RoleState], None]  # each row's change (the Models screen)
    rows_only: bool  # per-file progress only in the rows, not as progress events
    header_search: bool  # read every model file's header even when all were found (a folder was just added)
