"""Panels of the Train dashboard: the progress header, GPU and process resources, checkpoints, the log tail, the
newest sample.

Each panel has a `view` reactive: the Train screen binds it to its own (`data_bind(TrainScreen.view)`), so the one
assignment of a tick's `TrainView` there reaches every panel at once, and each draws its part in `watch_view`.
Nothing is drawn before the first view arrives (init=False); a bound panel gets the screen's current one on mount.
The reactives are `var`s: each panel refreshes what it changed itself, so nothing is repainted twice.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.containers import Vertical
from textual.reactive import var
from textual.widgets import Static

from lorawizard.core.common.fsutil import display_path, tilde_paths
from lorawizard.core.common.progress import format_bytes, format_duration, format_rate
from lorawizard.core.train.dashboard import TrainView
from lorawizard.tui.text_fit import cut_middle
from lorawizard.tui.tones import Tone, tone
from lorawizard.tui.widgets.wrap_log import WrapLog

__all__ = ["BarLine", "CheckpointPanel", "DiagnosisLine", "LogTail", "ResourcePanel", "SamplePanel", "TrainHeader",
           "TrainView"]


def _rate(rate: float | None) -> str:
    return format_rate(rate, "steps") or "–"


_STATUS_TONES: dict[str, Tone] = {"running": "success", "finished": "info", "failed": "error", "stopped": "warning",
                                  "lost": "error"}


def _bar(fraction: float, width: int) -> Text:
    filled = fraction * width
    full = int(filled)
    text = Text("█" * full, style=tone("success"))
    if full < width:
        if filled - full >= 0.5:
            text.append("▌", style=tone("success"))
        else:
            text.append("░", style="dim")
        text.append("░" * (width - full - 1), style="dim")
    return text


class TrainHeader(Static):
    DEFAULT_CSS = """
    TrainHeader { height: auto; padding: 0 0 0 0; }
    """

    view: var[TrainView] = var(TrainView, init=False)

    def watch_view(self) -> None:
        self.refresh(layout=True)  # a resumed run adds a line

    def render(self) -> Text:
        view = self.view
        width = max(20, self.size.width or 80)
        if view.status == "no run":
            return Text("No training run yet. Ctrl+G starts one; r resumes from the newest saved state.", style="dim")
        status_tone = _STATUS_TONES.get(view.status)
        status_style = tone(status_tone, bold=True) if status_tone else "bold"
        top = Text(no_wrap=True, overflow="ellipsis")
        top.append(f" {view.name} ", style="bold reverse")
        top.append(f" {view.status}", style=status_style)
        if view.phase and view.phase not in ("training", "finished") and view.status == "running" and view.progress is None:
            top.append(f" · {view.phase}", style=tone("warning"))
        if view.epochs and view.epoch:  # sd-scripts draws its bar before "epoch 1/N": no "epoch 0"
            top.append(f" · epoch {view.epoch}/{view.epochs}")
        if view.total_steps:
            top.append(f" · step {view.step}/{view.total_steps}")
        top.append(f" · run {view.run_id}", style="dim")
        line = Text(no_wrap=True, overflow="ellipsis")
        fraction = (view.step / view.total_steps) if view.total_steps else 0.0
        stats = (f" {fraction:4.0%}  {_rate(view.rate)}  elapsed {format_duration(view.elapsed_s)}"
                 f"  ETA {format_duration(view.eta_s) if view.status == 'running' else '–'}")
        bar_width = max(10, width - len(stats) - 1)
        line.append(" ")
        line.append_text(_bar(max(0.0, min(1.0, fraction)), bar_width - 1))
        line.append(stats)
        lines = [top, line]
        phase = phase_line(view)
        if phase is not None:
            lines.append(phase)
        result = Text("\n").join(lines)
        if view.base_step:
            runs = f" · run {view.chain} of its chain, all shown (steps are absolute)" if view.chain > 1 \
                else ": sd-scripts restarts its own counter, steps here are absolute"
            result.append(f"\n resumed at step {view.base_step}{runs}", style="dim italic")
        return result


def phase_line(view: TrainView) -> Text | None:
    """What the trainer does before, between and after its training steps (loading, caching, sampling, saving),
    with its own count, rate and time left: e.g. `▸ caching text encoder outputs 1/2 · 41.2 s/batch · 0:41 left`."""
    progress = view.progress
    if progress is None or view.status != "running" or progress.label in ("training", "finished"):
        return None
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f" ▸ {progress.label}", style=tone("warning"))
    if progress.total:
        text.append(f" {progress.done}/{progress.total}")
    rate = format_rate(progress.rate, progress.unit)
    if rate:
        text.append(f" · {rate}")
    if progress.elapsed_s is not None:
        text.append(f" · {format_duration(progress.elapsed_s)} in")
    if progress.left_s is not None:
        text.append(f" · {format_duration(progress.left_s)} left")
    return text


class ResourcePanel(Static):
    DEFAULT_CSS = """
    ResourcePanel { height: auto; border: round $primary 50%; border-title-color: $text-muted; padding: 0 1; }
    """

    view: var[TrainView] = var(TrainView, init=False)

    def show(self, view: TrainView) -> None:
        """Draw `view` (a panel that is not bound to a screen)."""
        self.view = view

    def watch_view(self, view: TrainView) -> None:
        gpu = view.gpu
        text = Text(no_wrap=True, overflow="ellipsis")
        if len(view.gpus) > 1:  # several GPUs: one line each, in rank order
            self.border_title = f"{len(view.gpus)} GPUs"
            for rank, card in enumerate(view.gpus):
                total = card.memory_total
                util = f"{card.utilization_pct}%" if card.utilization_pct is not None else "–"
                name = card.name.replace("NVIDIA ", "").replace("GeForce ", "")
                text.append(f"{rank} {name[:12]:<12} {card.memory_used / 1e9:4.1f}/{total / 1e9:.0f} GB ")
                text.append_text(_bar(card.memory_used / total if total else 0, 6))
                text.append(f" {util:>4}\n")
        elif gpu is not None:
            short = gpu.name.replace("NVIDIA ", "").replace("GeForce ", "")
            self.border_title = f"GPU {gpu.index} · {short}"
            used, total = gpu.memory_used, gpu.memory_total
            text.append(f"mem {used / 1e9:4.1f}/{total / 1e9:.1f} GB ")
            text.append_text(_bar(used / total if total else 0, 8))
            text.append("\n")
            util = f"{gpu.utilization_pct}%" if gpu.utilization_pct is not None else "–"
            temp = f"{gpu.temperature_c}°C" if gpu.temperature_c is not None else "–"
            power = f"{gpu.power_w:.0f} W" if gpu.power_w is not None else "–"
            text.append(f"util {util}  temp {temp}  {power}\n")
        else:
            self.border_title = "GPU"
            text.append((view.gpu_note or "no GPU reading") + "\n", style="dim")
        if view.procs:
            cpu = f"{view.cpu_pct:.0f}%" if view.cpu_pct is not None else "–"
            ram = format_bytes(view.rss) if view.rss is not None else "–"
            text.append(f"CPU {cpu} · RAM {ram} · {view.procs} procs")
        else:
            text.append("trainer not running", style="dim")
        self.update(text)


class CheckpointPanel(Static):
    DEFAULT_CSS = """
    CheckpointPanel { height: auto; max-height: 8; border: round $primary 50%; border-title-color: $text-muted; padding: 0 1; }
    """

    view: var[TrainView] = var(TrainView, init=False)

    def watch_view(self, view: TrainView) -> None:
        self.border_title = f"checkpoints ({len(view.checkpoints)})"
        text = Text(no_wrap=True, overflow="ellipsis")
        if not view.checkpoints:
            text.append("none yet", style="dim")
        for index, (name, epoch, size) in enumerate(view.checkpoints[-4:]):
            if index:
                text.append("\n")
            label = f"epoch {epoch}" if epoch is not None else "final"
            text.append(f"{label:>8} ", style="bold" if epoch is None else "")
            text.append(f"{format_bytes(size):>8} ", style="dim")
            text.append(name)
        if view.newest_state:
            text.append(f"\nr resumes: {view.newest_state}", style=tone("success"))
        self.update(text)


class DiagnosisLine(Static):
    DEFAULT_CSS = """
    DiagnosisLine { height: auto; color: $error; text-style: bold; display: none; }
    DiagnosisLine.-warn { display: block; }
    """

    view: var[TrainView] = var(TrainView, init=False)

    def watch_view(self, view: TrainView) -> None:
        problem = view.diagnosis
        self.set_class(problem is not None, "-warn")
        if problem is not None:
            self.update(f"✗ {problem.what}\n  → {problem.advice}")


class BarLine(Static):
    """The trainer's own progress bar line, as it last drew it."""

    view: var[TrainView] = var(TrainView, init=False)

    def watch_view(self, view: TrainView) -> None:
        self.update(view.bar_line)


class LogTail(WrapLog):
    """The log's newest lines: each view brings the lines read since the last one (all of them again on reset)."""

    view: var[TrainView] = var(TrainView, init=False)

    def watch_view(self, view: TrainView) -> None:
        if view.reset_lines:
            self.clear()
        if view.new_lines:
            self.write_lines([_line_text(line) for line in view.new_lines])
        shown = cut_middle(display_path(view.log_path), max(12, (self.size.width or 80) - 10)) if view.log_path else ""
        self.border_title = f"log · {shown}" if shown else "log"  # a long path loses its middle, not its name


def _line_text(line: Any) -> str:
    """A logparse.Line as the log panel shows it: paths from home as `~/…` (as its title), warnings named."""
    text = tilde_paths(getattr(line, "text", str(line)))
    level = getattr(line, "level", "")
    if level in ("WARNING", "ERROR", "CRITICAL"):
        text = f"{level}: {text}"
    return text[:1000]


class SamplePanel(Vertical):
    """The newest sample image (shown by the screen's CSS only where there is room, class -has-image)."""

    view: var[TrainView] = var(TrainView, init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.shown: Path | None = None  # the image mounted now: a view with the same one leaves it be

    def watch_view(self, view: TrainView) -> None:
        sample = view.sample
        self.set_class(sample is not None, "-has-image")
        if sample is None or sample == self.shown:
            return
        from lorawizard.tui.images import image_widget_class

        self.shown = sample
        self.remove_children()
        match = re.search(r"_e(\d{6})_", sample.name)
        self.border_title = f"sample · epoch {int(match.group(1))}" if match else "sample"
        try:
            self.mount(image_widget_class()(str(sample)))
        except Exception:  # noqa: BLE001 - an unreadable image must not break the dashboard
            self.mount(Static(f"(cannot show {sample.name})"))
