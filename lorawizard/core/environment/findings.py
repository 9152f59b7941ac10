"""Findings of the environment doctor: one checked thing each (ok / warning / error) with its fix, and the
whole examination."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FindingStatus = Literal["ok", "warning", "error"]
FixAction = Literal["clone", "venv", "install", "libpath", "fp32"]  # a one-key fix (EnvOptions.fix, Finding.action, the screen's c/v/i/l/p)
STATUS_MARKS = {"ok": "✓", "warning": "!", "error": "✗"}


@dataclass


class Finding:
    key: str  # "sd_scripts", "python", "torch", "cuda", "gpu", "accelerate", "requirements", "models", "command", ...
    status: FindingStatus
    title: str
    message: str  # one line
    fix: str = ""  # what to do, one line
    commands: list[list[str]] = field(default_factory=list)  # to run by hand (argv lists; shown shell-quoted)
    action: FixAction | None = None  # the one-key fix that solves it

    def line(self) -> str:
        text = f"{STATUS_MARKS[self.status]} {self.title}: {self.message}"
        return text + (f" — {self.fix}" if self.fix else "")

    def command_lines(self) -> list[str]:
        return [shlex.join(argv) for argv in self.commands]


@dataclass


class Examination:
    """What the environment step found (its findings and the command preview); core.diagnosis is for failed runs."""

    findings: list[Finding]
    sd_scripts: Path | None = None
    python: Path | None = None
    check: dict[str, Any] | None = None  # check_environment.py's JSON
    command: Any = None  # core.command.TrainCommand of the preview, when it could be built
    command_files_written: bool = False
    command_problem: str | None = None  # why there is no command (one line)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        if self.errors:
            first = self.errors[0]
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return f"{len(self.errors)} problem{'s' if len(self.errors) > 1 else ''}: {first.title}: {first.message}{more}"
        parts = ["environment ready"]
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''}")
        return ", ".join(parts)
