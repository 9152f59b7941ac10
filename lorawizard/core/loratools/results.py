"""What the LoRA tools made, from the sidecars beside their files (`--status`, the Samples gallery's LoRA panel)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import read_json_object
from lorawizard.core.common.progress import format_bytes
from lorawizard.core.loratools import naming
from lorawizard.core.session.document import Session


@dataclass(frozen=True)
class Made:
    path: Path
    tool: str
    source: str
    summary: str
    made: str
    check: dict[str, Any]
    layout: str = ""  # its key layout, as its header said when it was made

    def line(self) -> str:
        """`resize · mychar-e8-r4.safetensors 1.2 MB from mychar-e8.safetensors · loads, sample …`."""
        size = format_bytes(self.path.stat().st_size) if self.path.is_file() else "gone"
        source = f" from {Path(self.source).name}" if self.source else ""
        check = self.check.get("line") if self.check else "not checked"
        return f"{self.tool} · {self.path.name} {size}{source} · {check}"

    def short(self) -> str:
        """`convert · mychar-e8-aitoolkit.safetensors 3.4 MB ai-toolkit · loads, sample 4.2% off` (a list row)."""
        size = format_bytes(self.path.stat().st_size) if self.path.is_file() else "gone"
        layout = f" {self.layout}" if self.layout else ""
        return f"{self.tool} · {self.path.name} {size}{layout} · {check_words(self.check)}"


def check_words(check: dict[str, Any]) -> str:
    """A check in a few words: `loads, sample 4.2% off` (the mean pixel difference from the original's sample),
    `loads`, `does not load`, `blank sample: breaks the model`, `not checked`."""
    if not check:
        return "not checked"
    if check.get("blank"):
        return "blank sample: breaks the model"
    if not check.get("loaded") and not check.get("image"):
        return "does not load"
    words = "loads" if check.get("loaded") else "drew an image"
    difference = check.get("difference")
    if isinstance(difference, int | float):
        words += f", sample {difference:.1%} off"
    return words


def made(session: Session) -> list[Made]:
    """Every result of the tools in loras/ and merged/, oldest first (a layout named only when it is not the
    trainer's own)."""
    from lorawizard.core.profile import family_for

    tools = family_for(session).lora_tools
    own = tools.layouts[0].name if tools is not None else ""
    found = []
    for folder in (naming.loras_dir(session.project_dir), session.project_dir / naming.MERGED_DIR):
        try:
            sidecars = sorted(folder.glob("*.json"))
        except OSError:
            continue
        for sidecar in sidecars:
            data = read_json_object(sidecar)
            tool = data.get(naming.TOOL_KEY)
            target = sidecar.with_suffix(naming.SUFFIX)
            if not isinstance(tool, str) or not target.is_file():
                continue
            check = data.get("check") if isinstance(data.get("check"), dict) else {}
            after = data.get("after") if isinstance(data.get("after"), dict) else {}
            found.append(Made(target, tool, str(data.get("source") or ""), str(data.get("summary") or ""),
                              str(data.get("made") or ""), check or {},
                              "" if (after or {}).get("layout") == own else str((after or {}).get("layout") or "")))
    return sorted(found, key=lambda m: m.made)


def status_lines(session: Session, limit: int = 8) -> list[str]:
    """`--status`'s lines about the tools' results (the newest `limit`), [] when there are none."""
    results = made(session)
    if not results:
        return []
    shown = results[-limit:]
    more = f" ({len(results) - limit} older not shown)" if len(results) > limit else ""
    return [f"LoRA tools: {len(results)} file{'s' if len(results) != 1 else ''}{more}",
            *(f"  {m.line()}" for m in shown)]
