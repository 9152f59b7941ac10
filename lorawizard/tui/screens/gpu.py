"""GPU & batch size screen: pick one GPU (by UUID), see the VRAM preset with its estimate, probe the largest batch
size per bucket with real trainer runs, and watch every trial live (batch, peak GB, OK/OOM, s/step).

NVML is read in a thread worker; the probe runs through the screen's StepRunner (a thread worker too), whose
trial events arrive here as `ProbeUpdate` messages. Both tables are drawn from snapshots of their rows: the screen
assigns a new tuple to `bucket_rows` or `trial_rows`, and the table bound to it redraws (widgets.probe_tables).
Esc cancels a probe (the trial's process group is killed).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import var
from textual.widgets import Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from lorawizard.core.dataset.step import bucket_counts
from lorawizard.core.gpu import cpu_mode
from lorawizard.core.gpu.nvml import NO_GPU, GpuInfo, Inventory, inventory
from lorawizard.core.gpu.presets import (
    PresetError,
    VramPreset,
    estimate_text,
    load_presets,
    preset_for_memory,
    preset_named,
)
from lorawizard.core.gpu.probe_results import fit_gpu_key, load_results
from lorawizard.core.launch.multigpu import short_name
from lorawizard.core.probe import fit, fit_rows
from lorawizard.core.probe.batch_sources import BucketRow, bucket_rows
from lorawizard.core.probe.shared import ProbeOptions
from lorawizard.core.probe.trial_rows import TrialRow, with_event
from lorawizard.core.probe.trials import ProbeEvent
from lorawizard.core.session.document import MAX_BATCH, parse_bucket
from lorawizard.core.train.forecast import forecast_lines
from lorawizard.tui.messages import StepFinished
from lorawizard.tui.screens.base import StepScreen
from lorawizard.tui.tones import tone
from lorawizard.tui.typed_app import wizard_app
from lorawizard.tui.widgets.probe_tables import BucketTable, FitTable, TrialTable
from lorawizard.tui.widgets.settings_form import SettingsForm

FIT_WORDS = {  # one line at 80 columns with "search: " and " · f changes it"
    "preset": "the preset's settings, the largest batch",
    "quality": "quality first (16-bit): checkpointing, swap, batch",
    "fastest": "fastest: checkpointing, swap, fp8/16-bit, batch",
}


@dataclass
class InventoryLoaded(Message):
    inventory: Inventory
    buckets: dict[str, int]


@dataclass
class ProbeUpdate(Message):
    """A probe event from the worker thread."""

    event: ProbeEvent


class GpuScreen(StepScreen):
    STEP = "probe"
    MAIN = "#buckets"
    AUTO_FOCUS = MAIN
    INTRO = "One GPU trains (chosen by UUID). The probe finds, per bucket, the largest batch size that really trains."

    BINDINGS = [
        Binding("r", "reprobe", "Re-probe all", show=True),
        Binding("u", "refresh", "Refresh GPUs", show=True),
        Binding("space", "toggle_gpu", "Add/remove GPU", show=False),
        Binding("b", "batch_size", "Batch size", show=True),
        Binding("f", "fit", "Search", show=True),
    ]

    CSS_PATH = "gpu.tcss"

    # The tables' rows (snapshots the tables are bound to). None: not read yet / no probe yet. Every assignment
    # redraws, as every refresh did before, even with equal rows (always_update).
    bucket_rows: var[tuple[BucketRow, ...] | None] = var(None, init=False, always_update=True)
    trial_rows: var[tuple[TrialRow, ...] | None] = var(None, init=False, always_update=True)
    fit_rows: var[tuple[fit_rows.FitRow, ...] | None] = var(None, init=False, always_update=True)

    def __init__(self) -> None:
        super().__init__()
        self.inventory: Inventory | None = None
        self.buckets: dict[str, int] = {}

    # -- layout

    def compose_body(self) -> ComposeResult:
        yield Static("looking for NVIDIA GPUs…", id="gpu-state")
        yield OptionList(id="gpu-list")
        with Horizontal(id="preset-row"):
            yield Label("VRAM preset", classes="setting-label")
            yield Select([], id="preset-select", allow_blank=True, prompt="(chosen from the GPU)")
        yield Static("", id="preset-note")
        yield Static("", id="estimate")  # full width: at 80 columns a column beside the preset was 13 cells
        yield Static("", id="fit-line")
        yield BucketTable(id="buckets", cursor_type="row", zebra_stripes=True).data_bind(GpuScreen.bucket_rows)
        yield FitTable(id="fit", cursor_type="none").data_bind(GpuScreen.fit_rows)
        yield TrialTable(id="trials", cursor_type="none").data_bind(GpuScreen.trial_rows)
        yield SettingsForm(["gpu.price_per_hour", "gpu.hosted_price_per_1000_steps"],
                           labels={"gpu.price_per_hour": "price / GPU-hour",
                                   "gpu.hosted_price_per_1000_steps": "hosted / 1k steps"}, id="gpu-prices")

    def on_mount(self) -> None:
        self.query_one("#gpu-list").display = False
        self._fill_presets()
        self.action_refresh()

    # -- reading NVML and the dataset off the UI thread

    def action_refresh(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="gpu-inventory", exit_on_error=False)
    def _load(self) -> None:
        session = wizard_app(self).session
        self.post_message(InventoryLoaded(inventory(), bucket_counts(session)))

    @on(InventoryLoaded)
    def _loaded(self, message: InventoryLoaded) -> None:
        self.inventory, self.buckets = message.inventory, message.buckets
        self._show_gpus()
        self._show_preset()
        self._show_buckets()
        self._show_fit()

    # -- GPUs

    def _chosen(self) -> GpuInfo | None:
        """The one GPU, or with several the smallest of them (it sets the preset and the batch for all)."""
        if self.inventory is None:
            return None
        several = self._several()
        if len(several) > 1:
            return min(several, key=lambda gpu: (gpu.memory_total, gpu.index))
        return self.inventory.choose(wizard_app(self).session.gpu.uuid)

    def _several(self) -> list[GpuInfo]:
        """The GPUs of `gpu.uuids` that are visible now (empty when one GPU trains)."""
        if self.inventory is None:
            return []
        uuids = wizard_app(self).session.gpu.uuids
        return [gpu for gpu in self.inventory.gpus if gpu.uuid in uuids] if len(uuids) > 1 else []

    def action_toggle_gpu(self) -> None:
        """Space: add the highlighted GPU to the ones training together, or take it out."""
        options = self.query_one("#gpu-list", OptionList)
        if self.inventory is None or options.highlighted is None or len(self.inventory.gpus) < 2:
            return
        uuid = options.get_option_at_index(options.highlighted).id
        session = wizard_app(self).session
        current = session.gpu.uuids or [g.uuid for g in [self._chosen()] if g is not None]
        chosen = [u for u in current if u != uuid] if uuid in current else [*current, uuid]
        if len(chosen) > 1:
            error = wizard_app(self).decide("gpu.uuids", chosen)
        else:
            error = wizard_app(self).decide("gpu.uuids", []) or (
                wizard_app(self).decide("gpu.uuid", chosen[0]) if chosen else None)
        if error:
            self.notify(error, severity="error")
        elif len(chosen) > 1:
            self.notify(f"{len(chosen)} GPUs train together: press r to probe each kind of card", timeout=6)
        self._show_gpus()
        self._show_preset()
        self._show_buckets()

    def _show_gpus(self) -> None:
        state = self.query_one("#gpu-state", Static)
        options = self.query_one("#gpu-list", OptionList)
        inv = self.inventory
        if inv is None or not inv.gpus:  # the one rule for "no GPU" (core.gpu.cpu_mode), said in one line
            text = Text()
            text.append(f"{cpu_mode.PROBE_SKIPPED}\n", style=tone("warning", bold=True))
            text.append(f"{inv.message() if inv else NO_GPU} · training runs on the CPU as a test mode "
                        "(Train step says its speed)", style="dim")
            state.update(text)
            state.add_class("problem")
            options.display = False
            return
        state.remove_class("problem")
        chosen = self._chosen()
        saved = wizard_app(self).session.gpu.uuid
        several = self._several()
        marked = {gpu.uuid for gpu in several}
        gone = [u for u in wizard_app(self).session.gpu.uuids if inv.by_uuid(u) is None]
        if gone:
            state.update(f"the chosen GPU {gone[0]} is not visible now: Space on the rows to choose again")
        elif several:
            state.update(f"{len(several)} GPUs train together (one process each); every card trains the same batch, "
                         f"so it must fit the smallest ({short_name(chosen.name)}). Space adds/removes, Enter goes "
                         "back to one:" if chosen else "")
        elif saved and inv.by_uuid(saved) is None:
            state.update(f"the saved GPU {saved} is not visible: using the one with the most free memory")
        else:
            state.update("GPU (Enter on a row to choose, Space to add more; saved by UUID):" if len(inv.gpus) > 1
                         else "GPU:")
        options.clear_options()
        for gpu in inv.gpus:
            if marked:
                mark = "☑" if gpu.uuid in marked else "☐"
            else:
                mark = "●" if chosen is not None and gpu.uuid == chosen.uuid else "○"
            text = Text(f"{mark} {gpu.describe()}", no_wrap=True, overflow="ellipsis")
            vitals = gpu.vitals()
            if vitals:
                text.append(f" · {vitals}", style="dim")
            options.add_option(Option(text, id=gpu.uuid))
        options.display = True
        if chosen is not None:
            options.highlighted = next(i for i, g in enumerate(inv.gpus) if g.uuid == chosen.uuid)

    @on(OptionList.OptionSelected, "#gpu-list")
    def _gpu_selected(self, event: OptionList.OptionSelected) -> None:
        uuid = event.option.id
        if self._several():  # Enter: back to one GPU
            error = wizard_app(self).decide("gpu.uuids", [])
            if error:
                self.notify(error, severity="error")
        if uuid and uuid != wizard_app(self).session.gpu.uuid:
            error = wizard_app(self).decide("gpu.uuid", uuid)
            if error:
                self.notify(error, severity="error")
            elif load_results(wizard_app(self).session).get("gpu", {}).get("uuid") not in (None, uuid):
                self.notify("the batch sizes were measured on another GPU: press r to re-probe", severity="warning",
                            timeout=8)
            self._show_buckets()
        self._show_gpus()
        self._show_preset()

    # -- preset and estimate

    def _presets(self) -> list[VramPreset]:
        try:
            return load_presets(wizard_app(self).session)
        except PresetError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return load_presets(None)

    def _fill_presets(self) -> None:
        select = self.query_one("#preset-select", Select)
        session = wizard_app(self).session
        own = session.train.optimizer_type if session.is_set("train.optimizer_type") else ""
        with select.prevent(Select.Changed):
            select.set_options([(p.title(own), p.name) for p in self._presets()])
            name = wizard_app(self).session.gpu.vram_preset
            if preset_named(name, self._presets()) is not None:
                select.value = name

    def _current_preset(self) -> tuple[VramPreset | None, bool]:
        """(preset, whether the session sets it) — else the one suggested for the chosen GPU."""
        presets = self._presets()
        named = preset_named(wizard_app(self).session.gpu.vram_preset, presets)
        if named is not None:
            return named, True
        gpu = self._chosen()
        return (preset_for_memory(gpu.memory_total, presets), False) if gpu is not None else (None, False)

    def _no_gpu(self) -> bool:
        """NVML was read and sees no GPU: the rule of core.gpu.cpu_mode applies."""
        return self.inventory is not None and not self.inventory.gpus

    def _show_preset(self) -> None:
        preset, saved = self._current_preset()
        estimate = self.query_one("#estimate", Static)
        note = self.query_one("#preset-note", Static)
        estimate.display = preset is not None and not self._no_gpu()  # no GPU: no VRAM guess to show
        if preset is None:
            estimate.update("")
            note.update("")
            return
        estimate.update(self._batch_line(preset))
        source = "" if saved else "suggested for this GPU · "
        t5 = " · use an fp8 T5-XXL file (Models step)" if preset.fp8_t5 else ""
        note.update(f"{source}{preset.note}{t5}")

    def _batch_line(self, preset: VramPreset) -> str:
        """The preset's batch is the guess the probe starts from: said so, and once a probe (or a hand) has set
        sizes, those are shown instead, so "batch 2" never stands beside probed sizes as if it were the answer."""
        session = wizard_app(self).session
        set_sizes = session.batch_sizes()
        if not any(bucket in set_sizes for bucket in self.buckets):
            width, height = parse_bucket(next(iter(self.buckets), "1024x1024"))
            return f"starting guess before the probe: {estimate_text(preset, width, height, preset.batch_size, session)}"
        gpu = self._chosen()
        rows = bucket_rows(session, self.buckets, preset, gpu.memory_total if gpu is not None else None)
        sizes = " · ".join(row.batch for row in rows[:6]) + (" · …" if len(rows) > 6 else "")
        head = "probed: batch" if all(row.source == "probed" for row in rows) else "batch"
        return (f"{head} {sizes} per bucket (table below) · the preset's batch {preset.batch_size} was the "
                "starting guess")

    @on(Select.Changed, "#preset-select")
    def _preset_changed(self, event: Select.Changed) -> None:
        if event.value is Select.BLANK:
            return
        error = wizard_app(self).decide("gpu.vram_preset", event.value)
        if error:
            self.notify(error, severity="error")
        measured_with = load_results(wizard_app(self).session).get("preset")
        if wizard_app(self).session.batch_sizes() and measured_with and measured_with != event.value:
            self.notify(f"the batch sizes were measured with the {measured_with} preset: press r to re-probe",
                        severity="warning", timeout=8)
        self._show_preset()
        self._show_buckets()

    # -- buckets

    def _show_buckets(self) -> None:
        if not self.buckets:
            self.bucket_rows = ()
            return
        preset, _ = self._current_preset()
        gpu = self._chosen()
        self.bucket_rows = tuple(bucket_rows(wizard_app(self).session, self.buckets, preset,
                                             gpu.memory_total if gpu is not None else None, no_gpu=self._no_gpu()))

    # -- fastest fit (gpu.fit): what the probe may change, the last search's table and choice

    def action_fit(self) -> None:
        """f: what the probe may change, in turn: the preset's settings, quality first (16-bit), fastest (fp8 too)."""
        session = wizard_app(self).session
        choices = fit.FIT_CHOICES
        choice = choices[(choices.index(session.gpu.fit) + 1) % len(choices)] if session.gpu.fit in choices \
            else choices[0]
        error = wizard_app(self).decide("gpu.fit", choice)
        if error:
            self.notify(error, severity="error")
            return
        if choice == "quality" and not self._no_gpu():  # the first step away from the preset
            self.notify("ctrl+g or r measures the candidates: short real trainings of checkpointing, swap, base "
                        "precision and batch",
                        timeout=6)
        self._show_fit()

    def _show_fit(self) -> None:
        """The search line (the choice, and once measured: the chosen setting, or why it must be measured again)
        and the candidates' table."""
        session = wizard_app(self).session
        choice = session.gpu.fit if session.gpu.fit in FIT_WORDS else "preset"
        line = Text(f"search: {FIT_WORDS[choice]} · f changes it", style="dim")
        if choice == "preset" or self._no_gpu():
            self.query_one("#fit-line", Static).update(line)
            self.fit_rows = ()
            return
        results = load_results(session)
        saved = results.get("fit")
        saved = saved if isinstance(saved, dict) else None
        gpu = self._chosen()
        key = fit_gpu_key(session, [g.uuid for g in self._several()] or ([gpu.uuid] if gpu else []))
        reason = fit.stale_reason(saved, fit.fingerprint(session, key, self.buckets)) if key else None
        lines = [x for x in (saved or {}).get("lines", []) if isinstance(x, str)]
        chosen = next((x for x in lines if x.startswith("fit: ") and " — " in x and "base" in x.split(" — ")[0]), "")
        if reason:
            line.append(f"\n{reason}: ctrl+g or r measures it", style=tone("warning"))
        elif chosen:
            line.append("\n" + chosen.removeprefix("fit: ") + " · training uses it, not the preset's settings",
                        style=tone("success"))
            # today's prices, not the ones the probe printed with (the form below may have changed them)
            money_lines = forecast_lines(session, counts=self.buckets, results=results)  # read once, above
            for money in [x for x in money_lines if x.startswith(("forecast: ≈", "forecast: hosted"))]:
                line.append("\n" + money, style="dim")
        self.query_one("#fit-line", Static).update(line)
        visits = fit.image_visits(self.buckets, session.dataset.num_repeats, session.train.max_train_epochs,
                                   max(1, len(session.gpu.uuids)))
        self.fit_rows = fit_rows.saved_rows(saved, visits)

    # -- a batch size of one's own

    def action_batch_size(self) -> None:
        """b: set the highlighted bucket's batch size by hand (no GPU to probe, or to override the probe's); empty
        gives it back to the probe or the estimate."""
        from lorawizard.tui.screens.confirm import AskScreen

        table = self.query_one(BucketTable)
        if not self.bucket_rows or table.cursor_row < 0:
            self.notify("no buckets yet: the dataset step makes them", severity="warning")
            return
        bucket = self.bucket_rows[min(table.cursor_row, len(self.bucket_rows) - 1)].bucket
        current = wizard_app(self).session.batch_sizes().get(bucket)

        def answer(text: str | None) -> None:
            if text is None:
                return
            size = int(text) if text.strip() else None
            wizard_app(self).store.apply(lambda session: session.set_batch_size(bucket, size))
            self._show_buckets()

        self.app.push_screen(AskScreen(
            f"Batch size for {bucket} (1–{MAX_BATCH}; empty: the probe's or the estimate)",
            "" if current is None else str(current), placeholder="e.g. 2", check=_batch_problem), answer)

    # -- the probe

    def action_primary(self) -> None:
        self._start_probe(reprobe=False)

    def action_reprobe(self) -> None:
        self._start_probe(reprobe=True)

    def _start_probe(self, *, reprobe: bool) -> None:
        if self.runner.running:
            return
        self.trial_rows = ()
        self.fit_rows = ()
        options: ProbeOptions = {**wizard_app(self).step_options.get("probe", {}), "reprobe": reprobe,
                                 "on_event": self._post_event}
        chosen = self._chosen()
        if chosen is not None and not self._several():  # several GPUs: the step probes each kind of card
            options["gpu_uuid"] = chosen.uuid
        self.runner.start(options)

    def _post_event(self, event: ProbeEvent) -> None:  # worker thread
        self.post_message(ProbeUpdate(event))

    @on(ProbeUpdate)
    def _probe_update(self, message: ProbeUpdate) -> None:
        event = message.event
        if event.kind == "step-down":
            self.notify(event.text, severity="warning", timeout=10)
        elif event.spec is not None and fit_rows.setting_of(event.spec.preset.name) is not None:
            self.fit_rows = fit_rows.with_event(self.fit_rows or (), event)  # a candidate of the fit search
        elif event.spec is not None:  # one new snapshot of the trials per event about a trial
            self.trial_rows = with_event(self.trial_rows or (), event)

    @on(SettingsForm.Saved)
    def _price_saved(self, message: SettingsForm.Saved) -> None:
        """A price changed: the forecast under the fit line says it again (the probe saved the lines it printed)."""
        self._show_fit()

    @on(StepFinished)
    def _finished(self, message: StepFinished) -> None:
        self._fill_presets()
        self._show_gpus()
        self._show_preset()
        self._show_buckets()
        self._show_fit()


def _batch_problem(text: str) -> str | None:
    """A typed batch size: empty, or a whole number from 1 to MAX_BATCH."""
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_BATCH:
        return f"a whole number from 1 to {MAX_BATCH}, got {text!r}"
    return None
