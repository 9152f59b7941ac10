"""The LoRA tools as steps (`--steps resize`, `convert`, `merge`, `merge_base`, `check`; the Samples gallery's LoRA
tools): the trainer's own scripts in the trainer's Python, each refused up front with one line when its input cannot
work, its result named and described beside it (core.loratools.naming) and, with `[tools] check` (the default),
loaded by the family's inference script next to the original (core.loratools.check).

What each refuses: a file that is not a LoRA or not a complete safetensors file, a LoRA of another model, a rank not
below the LoRA's own, a dynamic target out of its range, a conversion into the layout the file already has, a merge
of fewer than two LoRAs or of LoRAs in different layouts, any tool without the disk space for its result (checked
before it starts: a merge into the base needs the base model's size). It warns (and goes on) about merge weights that
do not sum sensibly.

Each tool is planned first (`PLANS`: the argv, the final file name, the bytes it needs), then carried out (`TOOLS`);
`--dry-run` prints the plan and what the check would run, and changes nothing.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.common.progress import format_bytes
from lorawizard.core.contract import StepContext, StepFailed, StepResult
from lorawizard.core.loratools import commands, naming
from lorawizard.core.loratools.commands import ToolCommand
from lorawizard.core.loratools.header import LoraError, LoraInfo, family_problem, inspect
from lorawizard.core.loratools.runner import ToolRun, message_of, run_tool, temp_name
from lorawizard.core.session.document import STATE_DIR, Session

LOG_DIR = "loratools"  # under .lorawizard/
MERGE_BASE_MARGIN = 1.05  # the merged base is about the base's size; a little more for the header and metadata
MERGE_BASE_SPARE = 512 * 1024 * 1024
WEIGHT_SUM_RANGE = (0.0, 2.0)  # Σ weights outside (low, high]: warned, not refused


@dataclass
class Outcome:
    target: Path
    summary: str
    details: list[str] = field(default_factory=list)
    sidecar: dict[str, Any] = field(default_factory=dict)
    original: Path | None = None  # what the check draws beside it
    merged_base: bool = False


@dataclass
class Plan:
    """What one tool would do, decided before anything changes: the argv it runs, the file it writes and the disk that
    takes. `--dry-run` prints it (`dry_run_lines`); a run carries it out (`TOOLS`)."""

    name: str
    intro: str  # `resize mychar-e8.safetensors (rank 8) to rank 4`
    command: ToolCommand
    target: Path  # the final name (the tool writes under a temp name beside it: command.output)
    needed: int  # about how many bytes the result takes
    original: Path | None = None  # what the check draws beside the result
    details: list[str] = field(default_factory=list)  # warnings known before it runs
    result_layout: str = ""  # the result's key layout ("" for a merged base model)
    merged_base: bool = False
    renamed: str = ""  # when the final name depends on what the tool decides (a dynamic resize)
    extra: dict[str, Any] = field(default_factory=dict)  # what carrying it out needs besides (the LoRAs' headers, …)


# ------------------------------------------------------------------ inputs


def source_lora(session: Session) -> Path:
    """`[tools] lora`, else the kept LoRA (the one publish takes); StepFailed when there is none."""
    chosen = session.resolve(session.tools.lora)
    if chosen is not None:
        return chosen
    from lorawizard.core.train.keep import kept_lora

    kept = kept_lora(session)
    if kept is None:
        raise StepFailed("no LoRA to work on: keep one in the Samples gallery (k) or set [tools] lora in session.toml")
    return kept


def read_lora(session: Session, path: Path) -> LoraInfo:
    """The LoRA at `path`, refused in one line when it is none or another model's."""
    family, _tools = commands.family_tools(session)
    try:
        info = inspect(path, family)
    except LoraError as exc:
        raise StepFailed(str(exc)) from None
    problem = family_problem(info, family)
    if problem:
        raise StepFailed(problem)
    return info


def device(session: Session) -> str:
    chosen = session.tools.device
    if chosen != "auto":
        return chosen
    from lorawizard.core.gpu.cpu_mode import gpu_visible

    return "gpu" if gpu_visible() else "cpu"


def log_path(session: Session, what: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return session.project_dir / STATE_DIR / LOG_DIR / f"{stamp}-{what}.log"


def _failed(what: str, run: ToolRun) -> StepFailed:
    code = "stopped: it ran too long" if run.returncode == 124 else f"exit {run.returncode}"
    return StepFailed(f"{what} failed ({code}): {run.error_line() or 'no output'}; nothing was written under the "
                      f"final name (the log: {display_path(run.log)})")


# bytes per value of each dtype as core.models.identify.main_dtype says it (resize_lora.py and flux_merge_lora.py save
# in float32 unless told otherwise: their results take 4 bytes a value whatever the input's)
ITEM_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8 e4m3fn": 1, "fp8 e5m2": 1}
FLOAT32 = 4
CONVERT_GROWTH = 3  # at most: a fused QKV becomes three modules with one down matrix each, or a rank-3r block diagonal


def _as_float32(info: LoraInfo) -> int:
    return info.size * FLOAT32 // ITEM_BYTES.get(info.dtype, 2)


def disk_line(folder: Path, needed: int, shown: str) -> str:
    """`disk: about 38.3 MB needed in loras/, 120 GB free` (what the disk check compares; `shown`: the folder)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = format_bytes(shutil.disk_usage(probe).free)
    except OSError:
        free = "free space unknown"
    else:
        free += " free"
    return f"disk: about {format_bytes(needed)} needed in {shown}/, {free}"


def _size_change(before: int, after: int) -> str:
    return f"{format_bytes(before)} → {format_bytes(after)} ({after / before:.0%})" if before else format_bytes(after)


# ------------------------------------------------------------------ resize


def resize_plan(session: Session, info: LoraInfo) -> tuple[int, str, float | None]:
    """(rank, method, param) for resizing `info`, refused in one line when the rank is not below the LoRA's."""
    tools = session.tools
    method = tools.resize_method
    param = tools.resize_param
    if method != "fixed":
        param = commands.DEFAULT_PARAM[method] if param is None else param
        if method in ("sv_fro", "sv_cumulative") and not 0 < param <= 1:
            raise StepFailed(f"[tools] resize_param = {param:g}: {method} keeps a share of the weights, 0 to 1 "
                             "(0.9 keeps 90%)")
        if method == "sv_ratio" and param <= 1:
            raise StepFailed(f"[tools] resize_param = {param:g}: sv_ratio is the largest over the smallest kept "
                             "singular value, above 1 (10 is usual)")
    rank = tools.rank if tools.rank is not None else (info.rank if method != "fixed" else max(1, info.rank // 2))
    if rank > info.rank or (rank == info.rank and method == "fixed"):
        raise StepFailed(f"rank {rank} is not below {info.path.name}'s own {info.rank_text()}: resizing only lowers a "
                         f"rank; choose [tools] rank below {info.rank}")
    return rank, method, param


def resize_report(lines: list[str]) -> dict[str, Any]:
    """What resize_lora.py --verbose says about the error it introduces: each module's share of the Frobenius norm
    kept, their mean and spread, and (dynamic) each module's new rank."""
    import re

    fro: list[float] = []
    ranks: list[int] = []
    average = spread = None
    for line in lines:
        found = re.search(r"fro retained: ([0-9.]+)%", line)
        if found:
            fro.append(float(found.group(1)) / 100)
            dim = re.search(r"dynamic \| dim: (\d+)", line)
            if dim:
                ranks.append(int(dim.group(1)))
        mean = re.search(r"Average Frobenius norm retention: ([0-9.]+)% \| std: ([0-9.]+)", line)
        if mean:
            average, spread = float(mean.group(1)) / 100, float(mean.group(2))
    if average is None and fro:
        average = sum(fro) / len(fro)
    return {"fro_retained_mean": average, "fro_retained_std": spread, "fro_retained_min": min(fro, default=None),
            "modules": len(fro), "dynamic_ranks": ranks}


def _kept_line(report: dict[str, Any]) -> str:
    mean, low = report.get("fro_retained_mean"), report.get("fro_retained_min")
    if mean is None:
        return "the tool reported no retention figures"
    error = max(0.0, 1 - mean * mean) ** 0.5
    lowest = f", the lowest module {low:.1%}" if low is not None else ""
    spread = report.get("fro_retained_std")
    std = f" (std {spread:.3f})" if spread is not None else ""
    return (f"keeps {mean:.1%} of the weights' Frobenius norm on average{std}{lowest}: a relative error of about "
            f"{error:.0%} in each module's update (resize_lora.py's own figures)")


def plan_resize(session: Session) -> Plan:
    source = source_lora(session)
    info = read_lora(session, source)
    rank, method, param = resize_plan(session, info)
    _family, tools = commands.family_tools(session)
    folder = naming.loras_dir(session.project_dir)
    target = naming.free_target(folder, naming.resized_stem(source.stem, rank, method, param), source)
    kept = info.dtype if info.dtype in ("bf16", "fp16") else None  # saved as the source was, not as float32
    command = commands.resize_command(commands.trainer(session), tools, source, temp_name(target), rank,
                                      method=method, param=param, device=device(session), save_precision=kept)
    how = f"rank {rank}" if method == "fixed" else f"{method} {param:g}, at most rank {rank}"
    renamed = ("" if method == "fixed" else
               "renamed after the largest rank the tool keeps (-r<rank>-" f"{naming.METHOD_SHORT[method]}{param:g})")
    return Plan("resize", f"resize {source.name} ({info.rank_text()}) to {how}", command, target,
                (info.size if kept else _as_float32(info)) * rank // max(info.rank, 1), source, result_layout=info.layout,
                renamed=renamed,
                extra={"info": info, "rank": rank, "method": method, "param": param})


def resize(ctx: StepContext, plan: Plan) -> Outcome:
    session = ctx.session
    info: LoraInfo = plan.extra["info"]
    method, param, source = plan.extra["method"], plan.extra["param"], info.path
    family, _tools = commands.family_tools(session)
    run = run_tool(plan.command, log=log_path(session, "resize"), step="resize", final=plan.target,
                   progress=ctx.progress, cancel=ctx.cancel, log_line=ctx.log)
    if run.returncode != 0:
        raise _failed("resize_lora.py", run)
    result = inspect(plan.target, family)
    target = plan.target
    if method != "fixed":  # named by the ranks it chose
        wanted = naming.free_target(target.parent, naming.resized_stem(source.stem, result.rank, method, param),
                                    source)
        if wanted != target:
            os.replace(target, wanted)
            target = wanted
            result = inspect(target, family)
    report = resize_report(run.lines)
    kept = _kept_line(report)
    summary = (f"{target.name}: {result.rank_text()} from {info.rank_text()}, "
               f"{_size_change(info.size, result.size)}; {kept}")
    details = [f"before: {info.line()}", f"after:  {result.line()}", kept]
    sidecar = {"method": method, "param": param, "rank": plan.extra["rank"], "report": report}
    return Outcome(target, summary, details, {"before": info.record(), "after": result.record(), **sidecar}, source)


# ------------------------------------------------------------------ convert


def plan_convert(session: Session) -> Plan:
    source = source_lora(session)
    info = read_lora(session, source)
    family, tools = commands.family_tools(session)
    names = [layout.name for layout in tools.layouts]
    wanted = session.tools.convert_to
    if wanted == "other":
        others = [n for n in names if n != info.layout]
        wanted = others[0]
    if wanted not in names:
        raise StepFailed(f"[tools] convert_to = {wanted!r}: {family.title} LoRAs come in {', '.join(names)}")
    if wanted == info.layout:
        raise StepFailed(f"{source.name} is already in {wanted} layout (its keys: {min(info.ranks)}…): nothing to "
                         "convert")
    layout = next(lay for lay in tools.layouts if lay.name == wanted)
    details = []
    if info.text_encoder_modules and not layout.text_encoder_prefixes:
        details.append(f"warning: its {info.text_encoder_modules} text-encoder modules have no {wanted} form and are "
                       "left out of the converted file")
    folder = naming.loras_dir(session.project_dir)
    suffixes = tuple(lay.suffix for lay in tools.layouts)
    target = naming.free_target(folder, naming.converted_stem(source.stem, layout.suffix, suffixes), source)
    command = commands.convert_command(commands.trainer(session), tools, source, temp_name(target), info.layout, wanted)
    return Plan("convert", f"convert {source.name} ({info.layout} layout) to {wanted}", command, target,
                info.size * CONVERT_GROWTH, source, details, result_layout=wanted, extra={"info": info})


def convert(ctx: StepContext, plan: Plan) -> Outcome:
    session = ctx.session
    info: LoraInfo = plan.extra["info"]
    target, wanted = plan.target, plan.result_layout
    family, tools = commands.family_tools(session)
    run = run_tool(plan.command, log=log_path(session, "convert"), step="convert", final=target,
                   progress=ctx.progress, cancel=ctx.cancel, log_line=ctx.log)
    if run.returncode != 0:
        raise _failed(tools.convert_script or "convert", run)
    result = inspect(target, family)
    if result.layout != wanted:
        target.unlink(missing_ok=True)
        raise StepFailed(f"the converted file's keys are in {result.layout} layout, not {wanted}: removed")
    details = list(plan.details)
    unsupported = [message_of(line) for line in run.lines if "Unsuppored keys" in line or "Unsupported keys" in line]
    if unsupported:
        details.append("warning: the tool left keys out: " + unsupported[0][:200])
    summary = (f"{target.name}: {result.layout_title} layout, from {info.path.name} ({info.layout_title}); "
               f"{result.rank_text()}, {result.modules} modules, {_size_change(info.size, result.size)}")
    details = [f"before: {info.line()}", f"after:  {result.line()}", *details]
    return Outcome(target, summary, details, {"before": info.record(), "after": result.record(), "to": wanted},
                   info.path)


# ------------------------------------------------------------------ merge


def parse_weight(text: str) -> float:
    """A merge weight as a person types it (`0.7`, `-0.5`, `1`); ValueError with one line when it is none."""
    try:
        weight = float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a weight: a number such as 0.5 (negative subtracts the LoRA)") from None
    if not math.isfinite(weight):
        raise ValueError(f"{text.strip()!r} is not a weight: a finite number such as 0.5")
    return weight


def merge_entry(project_dir: Path, path: Path, weight: float) -> str:
    """`[tools] merge`'s entry for `path` at `weight`: `loras/a.safetensors;0.7` (the project's files relative)."""
    return f"{naming.shown(project_dir, path) if path.is_relative_to(project_dir) else path};{weight:.10g}"


def merge_weights(session: Session) -> dict[Path, float]:
    """`[tools] merge` as file → weight (entries that do not read are left out: the merge step says why)."""
    found: dict[Path, float] = {}
    for text in session.tools.merge:
        path_text, _, weight_text = text.rpartition(";") if ";" in text else (text, "", "1")
        path = session.resolve(path_text.strip())
        try:
            weight = parse_weight(weight_text)
        except ValueError:
            continue
        if path is not None:
            found[path] = weight
    return found


def parse_merge(session: Session) -> list[tuple[Path, float]]:
    """`[tools] merge` → (file, weight); StepFailed for fewer than two or a weight that is not a number."""
    entries: list[tuple[Path, float]] = []
    for text in session.tools.merge:
        path_text, _, weight_text = text.rpartition(";") if ";" in text else (text, "", "1")
        try:
            weight = parse_weight(weight_text)
        except ValueError:
            raise StepFailed(f'[tools] merge: "{text}": the weight after ";" is not a number') from None
        path = session.resolve(path_text.strip())
        if path is None:
            raise StepFailed(f'[tools] merge: "{text}" names no file')
        entries.append((path, weight))
    if len(entries) < 2:
        raise StepFailed('merging needs two or more LoRAs: [tools] merge = ["a.safetensors;0.5", "b.safetensors;0.5"]')
    return entries


def weight_warnings(weights: list[float]) -> list[str]:
    """Weights that do not sum sensibly: warned, the merge still runs (a person may want it)."""
    total = sum(weights)
    warnings = []
    low, high = WEIGHT_SUM_RANGE
    if total <= low:
        warnings.append(f"warning: the weights sum to {total:g}: the merged LoRA cancels itself out or works against "
                        "the LoRAs; weights summing to 1 average them")
    elif total > high:
        warnings.append(f"warning: the weights sum to {total:g}: the merged LoRA is as strong as {total:g} LoRAs at "
                        "full strength at once, which usually burns the image; 1 averages them, 2 stacks two")
    if any(weight == 0 for weight in weights):
        warnings.append("warning: a weight of 0 leaves that LoRA out")
    if any(weight < 0 for weight in weights) and total > low:
        warnings.append("warning: a negative weight subtracts that LoRA")
    return warnings


def plan_merge(session: Session) -> Plan:
    entries = parse_merge(session)
    infos = [read_lora(session, path) for path, _ in entries]
    weights = [weight for _, weight in entries]
    _family, tools = commands.family_tools(session)
    own = tools.layouts[0]
    other = [info for info in infos if info.layout != own.name]
    if other:
        raise StepFailed(f"{other[0].path.name} is in {other[0].layout} layout: the merge tool adds {own.name} LoRAs; "
                         "convert it first (--steps convert)")
    details = weight_warnings(weights)
    if not all(info.uniform for info in infos):
        uneven = next(info for info in infos if not info.uniform)
        details.append(f"warning: {uneven.path.name} has {uneven.rank_text()}: its weight is applied only "
                       "approximately")
    ratios = commands.concat_ratios(weights, [info.rank for info in infos])
    folder = naming.loras_dir(session.project_dir)
    target = naming.free_target(folder, naming.merged_stem(session.name, [(i.path.stem, w) for i, w in
                                                                          zip(infos, weights, strict=True)]))
    command = commands.merge_command(commands.trainer(session), tools, [i.path for i in infos], ratios,
                                     temp_name(target))
    listed = " + ".join(f"{w:g}×{i.path.name}" for i, w in zip(infos, weights, strict=True))
    return Plan("merge", f"merge {listed}", command, target, sum(_as_float32(info) for info in infos), infos[0].path,
                details, result_layout=own.name, extra={"infos": infos, "weights": weights, "ratios": ratios,
                                                        "listed": listed})


def merge(ctx: StepContext, plan: Plan) -> Outcome:
    session = ctx.session
    infos: list[LoraInfo] = plan.extra["infos"]
    weights: list[float] = plan.extra["weights"]
    family, tools = commands.family_tools(session)
    run = run_tool(plan.command, log=log_path(session, "merge"), step="merge", final=plan.target,
                   progress=ctx.progress, cancel=ctx.cancel, log_line=ctx.log)
    if run.returncode != 0:
        raise _failed(tools.merge_script, run)
    result = inspect(plan.target, family)
    summary = (f"{plan.target.name}: {plan.extra['listed']} → {result.rank_text()} (the ranks added: each LoRA "
               f"applies with its weight, exactly), {format_bytes(result.size)}")
    details = [*plan.details, *(f"in:  {info.line()}" for info in infos), f"out: {result.line()}"]
    sidecar = {"inputs": [{**i.record(), "path": str(i.path), "weight": w} for i, w in zip(infos, weights, strict=True)],
               "ratios": plan.extra["ratios"], "after": result.record()}
    return Outcome(plan.target, summary, details, sidecar, infos[0].path)


# ------------------------------------------------------------------ merge into the base model


def disk_problem(folder: Path, needed: int, what: str = "the merged model") -> str | None:
    """One line when `folder`'s filesystem has less than `needed` bytes free."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return f"cannot tell the free space in {display_path(folder)}: {exc.strerror or exc}"
    if free < needed:
        return (f"not enough disk for {what}: it needs about {format_bytes(needed)} in "
                f"{display_path(folder)}, and {format_bytes(free)} is free; free some space and run it again")
    return None


def _memory_warning(needed: int) -> str | None:
    """The merge tool holds the whole base model in memory: a warning when less than that is available now."""
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no reading: no warning
        return None
    if available >= needed:
        return None
    return (f"warning: the merge holds the whole base model in memory ({format_bytes(needed)}) and "
            f"{format_bytes(available)} is available now: it may be killed for memory, or swap")


def plan_merge_base(session: Session) -> Plan:
    from lorawizard.core.models.files import resolved_model_paths
    from lorawizard.core.models.identify import identify

    source = source_lora(session)
    info = read_lora(session, source)
    family, tools = commands.family_tools(session)
    own = tools.layouts[0]
    if info.layout != own.name:
        raise StepFailed(f"{source.name} is in {info.layout} layout: merging into the base takes a {own.name} LoRA; "
                         "convert it first (--steps convert)")
    base = resolved_model_paths(session).get(tools.merge_role)
    if base is None or not base.is_file():
        raise StepFailed(f"the base model's file ({base or tools.merge_role}) is not there: run the Models step")
    identity = identify(base, family)
    if identity.kind != tools.merge_role:
        raise StepFailed(f"{base.name} is {identity.describe()}, not the {family.title} transformer to merge into")
    folder = session.project_dir / naming.MERGED_DIR
    needed = int(base.stat().st_size * MERGE_BASE_MARGIN) + MERGE_BASE_SPARE
    target = naming.free_target(folder, naming.base_merged_stem(source.stem, base.stem), source)
    precision = commands.SAVE_PRECISION.get(identity.dtype)
    command = commands.merge_base_command(commands.trainer(session), tools, base, source, temp_name(target),
                                          save_precision=precision, device=device(session))
    details = []
    if info.text_encoder_modules:
        details.append(f"warning: its {info.text_encoder_modules} text-encoder modules are not merged (only the "
                       f"{family.title} transformer is written)")
    memory = _memory_warning(base.stat().st_size)
    if memory:
        details.append(memory)
    return Plan("merge_base", f"merge {source.name} into {base.name} (about {format_bytes(needed)} on disk)", command,
                target, needed, source, details, merged_base=True,
                extra={"info": info, "base": base, "dtype": identity.dtype, "memory": memory})


def merge_base(ctx: StepContext, plan: Plan) -> Outcome:
    session = ctx.session
    info: LoraInfo = plan.extra["info"]
    base: Path = plan.extra["base"]
    _family, tools = commands.family_tools(session)
    if plan.extra["memory"]:
        ctx.log(plan.extra["memory"])
    run = run_tool(plan.command, log=log_path(session, "merge-base"), step="merge_base", final=plan.target,
                   progress=ctx.progress, cancel=ctx.cancel, log_line=ctx.log)
    if run.returncode != 0:
        raise _failed(tools.merge_script, run)
    size = plan.target.stat().st_size
    summary = (f"{display_path(plan.target)}: {base.name} with {info.path.name} merged in, {format_bytes(size)} "
               f"({plan.extra['dtype'] or 'as the base'}); use it in place of the base model, without the LoRA")
    sidecar = {"base": str(base), "base_dtype": plan.extra["dtype"], "lora": info.record(), "size": size}
    return Outcome(plan.target, summary, list(plan.details), sidecar, info.path, merged_base=True)


# ------------------------------------------------------------------ the steps


PLANS = {"resize": plan_resize, "convert": plan_convert, "merge": plan_merge, "merge_base": plan_merge_base}
TOOLS = {"resize": resize, "convert": convert, "merge": merge, "merge_base": merge_base}


def _disk_refusal(plan: Plan) -> str | None:
    return disk_problem(plan.target.parent, plan.needed, "the merged model" if plan.merged_base else plan.target.name)


def dry_run(ctx: StepContext, name: str) -> StepResult:
    """`--dry-run`: the tool's argv (as the training command's dry run prints it), the file it would write and the
    disk check, and what the check would run after it; nothing is written or made."""
    from lorawizard.core.loratools.check import dry_run_lines

    session = ctx.session
    plan = PLANS[name](session)
    ctx.log(f"{plan.intro}: would run")
    ctx.log(plan.command.shell_text(multiline=True))
    renamed = f"; {plan.renamed}" if plan.renamed else ""
    target = naming.shown(session.project_dir, plan.target)
    ctx.log(f"would write {target} with its sidecar {naming.sidecar_of(plan.target).name} (the tool writes "
            f"{plan.command.output.name}, renamed when the file is complete){renamed}")
    ctx.log(disk_line(plan.target.parent, plan.needed, naming.shown(session.project_dir, plan.target.parent)))
    data: dict[str, Any] = {"argv": plan.command.argv, "file": str(plan.target), "needed": plan.needed}
    refusal = _disk_refusal(plan)
    if refusal:
        raise StepFailed(f"dry run: it would be refused: {refusal}")
    if session.tools.check:
        try:
            lines = dry_run_lines(session, plan.target, plan.original, layout=plan.result_layout,
                                  merged_base=plan.merged_base)
        except StepFailed as exc:
            raise StepFailed(f"dry run: {plan.target.name} would be written, but its check cannot run: {exc}") from None
        for line in lines:
            ctx.log(line)
    return StepResult(True, f"dry run: would write {target}; nothing written", list(plan.details), data)


def _finish(ctx: StepContext, name: str, outcome: Outcome, started: float) -> StepResult:
    session = ctx.session
    sidecar: dict[str, Any] = {
        naming.TOOL_KEY: name, "source": str(outcome.original) if outcome.original else None,
        "made": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.monotonic() - started, 1),
        "summary": outcome.summary, **outcome.sidecar,
    }
    details = list(outcome.details)
    data: dict[str, Any] = {"file": str(outcome.target)}
    naming.write_sidecar(outcome.target, sidecar)  # before the check: the file is ours whatever the check says
    if session.tools.check:
        from lorawizard.core.loratools.check import check

        try:
            result = check(session, outcome.target, outcome.original, ctx, log=log_path(session, f"{name}-check"),
                           merged_base=outcome.merged_base)
        except StepFailed as exc:
            sidecar["check"] = {"line": f"does not load: {exc}", "loaded": False, "blank": False}
            naming.write_sidecar(outcome.target, sidecar)
            raise StepFailed(f"{outcome.target.name} was written, but {exc}") from None
        sidecar["check"] = {"line": result.line(), "image": str(result.sample.image), "loaded": result.sample.loaded,
                            "original_image": str(result.original.image) if result.original else None,
                            "difference": result.difference, "blank": result.blank}
        details.append(f"check: {result.line()}")
        data["check"] = sidecar["check"]
        naming.write_sidecar(outcome.target, sidecar)
    if sidecar.get("check", {}).get("blank"):
        return StepResult(False, f"{outcome.target.name} was written, but its check sample is blank: the result "
                          "breaks the model", details, data)
    return StepResult(True, outcome.summary, details, data)


def _run(name: str, ctx: StepContext) -> StepResult:
    if ctx.dry_run:
        return dry_run(ctx, name)
    started = time.monotonic()
    plan = PLANS[name](ctx.session)
    refusal = _disk_refusal(plan)  # before it starts: never a tool cut short by a full disk
    if refusal:
        raise StepFailed(refusal)
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    ctx.log(f"{plan.intro}: {plan.command.shell_text()}")
    outcome = TOOLS[name](ctx, plan)
    return _finish(ctx, name, outcome, started)


def run_resize(ctx: StepContext) -> StepResult:
    return _run("resize", ctx)


def run_convert(ctx: StepContext) -> StepResult:
    return _run("convert", ctx)


def run_merge(ctx: StepContext) -> StepResult:
    return _run("merge", ctx)


def run_merge_base(ctx: StepContext) -> StepResult:
    return _run("merge_base", ctx)


def run_check(ctx: StepContext) -> StepResult:
    """Load `[tools] lora` (or the kept LoRA) with the inference script; beside the file it came from when its sidecar
    names one."""
    from lorawizard.core.common.fsutil import read_json_object
    from lorawizard.core.loratools.check import check

    session = ctx.session
    lora = source_lora(session)
    info = read_lora(session, lora)
    source = read_json_object(naming.sidecar_of(lora)).get("source")
    original = Path(source) if isinstance(source, str) and Path(source) != lora else None
    if ctx.dry_run:
        from lorawizard.core.loratools.check import dry_run_lines

        for line in dry_run_lines(session, lora, original, layout=info.layout, what="the LoRA"):
            ctx.log(line)
        return StepResult(True, f"dry run: would check {naming.shown(session.project_dir, lora)}; nothing written",
                          data={"file": str(lora)})
    result = check(session, lora, original, ctx, log=log_path(session, "check"))
    ok = not result.blank
    record = {"line": result.line(), "image": str(result.sample.image), "loaded": result.sample.loaded,
              "original_image": str(result.original.image) if result.original else None,
              "difference": result.difference, "blank": result.blank}
    return StepResult(ok, f"{lora.name}: {result.line()}", [], {"file": str(lora), "check": record})


# ------------------------------------------------------------------ what a person types (the wizard's r)

_METHOD_WORDS = {"fixed": "fixed", "rank": "fixed", "fro": "sv_fro", "sv_fro": "sv_fro", "cum": "sv_cumulative",
                 "cumulative": "sv_cumulative", "sv_cumulative": "sv_cumulative", "ratio": "sv_ratio",
                 "sv_ratio": "sv_ratio"}


def parse_resize(text: str) -> tuple[dict[str, Any], str | None]:
    """`4` → rank 4; `fro 0.9` → sv_fro keeping 90% (largest rank: the LoRA's); `fro 0.9 16` → at most rank 16.
    Returns (the [tools] settings, None) or ({}, a one-line problem)."""
    words = text.replace(",", " ").split()
    method = "fixed"
    if words and not words[0].replace(".", "", 1).isdigit():
        chosen = _METHOD_WORDS.get(words[0].lower())
        if chosen is None:
            return {}, f"{words[0]!r}: a rank (4), or fro / cum / ratio and a target (fro 0.9)"
        method, words = chosen, words[1:]
    try:
        numbers = [float(word) for word in words]
    except ValueError:
        return {}, "numbers only after the method: fro 0.9, or fro 0.9 16 (at most rank 16)"
    if method == "fixed":
        if len(numbers) != 1 or numbers[0] < 1 or numbers[0] != int(numbers[0]):
            return {}, "a rank is one whole number, such as 4"
        return {"tools.resize_method": "fixed", "tools.rank": int(numbers[0]), "tools.resize_param": None}, None
    if not 1 <= len(numbers) <= 2:
        return {}, f"{method}: a target, and optionally the largest rank (fro 0.9 16)"
    rank = numbers[1] if len(numbers) == 2 else None
    if rank is not None and (rank < 1 or rank != int(rank)):
        return {}, "the largest rank is one whole number, such as 16"
    return {"tools.resize_method": method, "tools.resize_param": numbers[0],
            "tools.rank": int(rank) if rank is not None else None}, None
