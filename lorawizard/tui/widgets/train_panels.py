"""Panels of the Train dashboard: the progress header, GPU and process resources, checkpoints, the log tail."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from lorawizard.core.common.progress import format_bytes, format_duration, format_rate
from lorawizard.core.train.dashboard import TrainView
from lorawizard.tui.tones import Tone, tone

__all__ = ["CheckpointPanel", "DiagnosisLine", "ResourcePanel", "TrainHeader", "TrainView"]


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

    def show(self, view: TrainView) -> None:
        self.view = view
        self.refresh(layout=True)

    def render(self) -> Text:
        view: TrainView | None = getattr(self, "view", None)
        width = max(20, self.size.width or 80)
        if view is None or view.status == "no run":
            return Text("No training run yet. Ctrl+G starts one; r resumes from the newest saved state.", style="dim")
        status_tone = _STATUS_TONES.get(view.status)
        status_style = tone(status_tone, bold=True) if status_tone else "bold"
        top = Text(no_wrap=True, overflow="ellipsis")
        top.append(f" {view.name} ", style="bold reverse")
        top.append(f" {view.status}", style=status_style)
        if view.phase and view.phase not in ("training", "finished") and view.status == "running":
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
        result = Text("\n").join([top, line])
        if view.base_step:
            result.append(f"\n resumed at step {view.base_step}: sd-scripts restarts its own counter, steps here are "
                          "absolute", style="dim italic")
        return result


class ResourcePanel(Static):
    DEFAULT_CSS = """
    ResourcePanel { height: auto; border: round $primary 50%; border-title-color: $text-muted; padding: 0 1; }
    """

    def show(self, view: TrainView) -> None:
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

    def show(self, view: TrainView) -> None:
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

    def show(self, view: TrainView) -> None:
        problem = view.diagnosis
        self.set_class(problem is not None, "-warn")
        if problem is not None:
            self.update(f"✗ {problem.what}\n  → {problem.advice}")
