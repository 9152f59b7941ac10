"""Check it loads: one image from the family's inference script with the LoRA, beside the original's.

The inference script (flux_minimal_inference.py for FLUX.1) loads the base model, applies the LoRA with
`load_state_dict(strict=True)` (a missing or surplus key fails it) and draws one image with a fixed prompt, seed, step
count and size (`[tools] check_*`). The same settings draw the original LoRA once (kept while its file and the
settings are unchanged), so a resize, conversion or merge that broke the LoRA is seen side by side, and measured:
the mean pixel difference from the original's sample, and a blank (one-colour) image is called out.

The images go to `loras/checks/<stem>-<key>.png`, the key a hash of the file's resolved path, size and mtime and the
settings (`sample_name`): two LoRAs of one name in different folders, or one file before and after it changed, never
share an image, so a result's side-by-side keeps showing the original it was drawn beside. `loras/checks/checks.json`
says, per LoRA file, what was drawn with which settings, whether it loaded, and how long it took. A LoRA in a layout the script does not load as it is
(ai-toolkit's) is converted back to the trainer's layout in a temp folder first, and the check says so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json, read_json_object
from lorawizard.core.contract import StepContext, StepFailed
from lorawizard.core.loratools import commands, naming
from lorawizard.core.loratools.commands import ToolCommand
from lorawizard.core.loratools.header import LoraInfo, inspect
from lorawizard.core.loratools.runner import run_tool, temp_name
from lorawizard.core.session.document import Session

CHECKS_FILE = "checks.json"
LOADED_MARK = "All keys matched successfully"
LORA_LINE = "Loaded LoRA weights from"  # flux_minimal_inference.py: `Loaded LoRA weights from <file>: <All keys …>`
BLANK_SPREAD = 2  # pixel levels: an image whose values all lie within this of each other is blank
CHECK_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class CheckSettings:
    prompt: str
    seed: int
    steps: int
    size: int

    def record(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "seed": self.seed, "steps": self.steps, "size": self.size}


@dataclass(frozen=True)
class Sample:
    lora: str  # the LoRA file's name ("" for the base model alone)
    image: Path
    loaded: bool
    seconds: float
    note: str = ""


@dataclass(frozen=True)
class CheckResult:
    sample: Sample
    original: Sample | None
    difference: float | None  # mean absolute pixel difference from the original's sample, 0–1
    blank: bool

    def line(self) -> str:
        """`loads (all keys matched); sample loras/checks/x-r4.png, 3.1% from the original's`."""
        what = "loads (all keys matched)" if self.sample.loaded else "drew an image"
        parts = [f"{what}; sample {self.sample.image.parent.parent.name}/{self.sample.image.parent.name}/"
                 f"{self.sample.image.name}"]
        if self.difference is not None:
            parts.append(f"{self.difference:.1%} mean pixel difference from the original's")
        if self.blank:
            parts.append("the sample is blank (one colour): the LoRA breaks the model")
        if self.sample.note:
            parts.append(self.sample.note)
        return ", ".join(parts)


def settings_for(session: Session) -> CheckSettings:
    from lorawizard.core.train.samples import default_prompts

    tools = session.tools
    prompt = tools.check_prompt
    if not prompt:
        prompts = session.train.samples.prompts
        prompt = (prompts or default_prompts(session.dataset.trigger))[0]
    return CheckSettings(" ".join(str(prompt).split()), tools.check_seed, tools.check_steps, tools.check_size)


def checks_dir(session: Session) -> Path:
    return naming.loras_dir(session.project_dir) / naming.CHECKS_DIR


def sample_name(path: Path | None, settings: CheckSettings) -> str:
    """`mychar-e8-3f2a9c01d4.png`: the stem to read, then a stable key of what was drawn (see the module's doc);
    `base-<key>.png` for the base model alone."""
    if path is None:
        what: list[Any] = ["base"]
    else:
        stat = path.stat()
        what = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    key = hashlib.sha256(json.dumps([*what, settings.record()]).encode()).hexdigest()[:10]
    return f"{path.stem if path is not None else 'base'}-{key}.png"


def _stamp(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime": stat.st_mtime}


def recorded(session: Session, path: Path, settings: CheckSettings) -> Sample | None:
    """The check already drawn for `path` with these settings (its file unchanged), or None."""
    entry = read_json_object(checks_dir(session) / CHECKS_FILE).get(str(path))
    if not isinstance(entry, dict) or not path.is_file():
        return None
    image = checks_dir(session) / str(entry.get("image", ""))
    if entry.get("settings") != settings.record() or entry.get("file") != _stamp(path) or not image.is_file():
        return None
    if image.name != sample_name(path, settings):  # drawn before images had keys: maybe another file's; drawn again
        return None
    return Sample(path.name, image, bool(entry.get("loaded")), float(entry.get("seconds") or 0), str(entry.get("note", "")))


def all_checks(session: Session) -> dict[str, dict[str, Any]]:
    """checks.json: LoRA path → {image, settings, loaded, seconds, note, file}."""
    data = read_json_object(checks_dir(session) / CHECKS_FILE)
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _remember(session: Session, path: Path, sample: Sample, settings: CheckSettings) -> None:
    index = checks_dir(session) / CHECKS_FILE
    data = read_json_object(index)
    data[str(path)] = {"image": sample.image.name, "settings": settings.record(), "loaded": sample.loaded,
                       "seconds": round(sample.seconds, 1), "note": sample.note, "file": _stamp(path)}
    atomic_write_json(index, data)


def _models(session: Session, base: Path | None) -> dict[str, Path]:
    from lorawizard.core.models.files import resolved_model_paths

    _family, tools = commands.family_tools(session)
    models = resolved_model_paths(session)
    if base is not None:
        models[tools.merge_role] = base
    missing = [f"{role} ({path})" for role, path in models.items()  # `base`: just written (or, a dry run, to be)
               if role in dict(tools.inference_roles) and not path.is_file() and path != base]
    if missing:
        raise StepFailed(f"the check needs the base model's files, and {', '.join(missing)} is not there: "
                         "run the Models step")
    return models


def _loadable(session: Session, info: LoraInfo, work: Path, ctx: StepContext, log: Path) -> tuple[Path, str]:
    """The file the inference script can load: the LoRA itself, or its conversion into the trainer's layout."""
    _family, tools = commands.family_tools(session)
    layout = next((lay for lay in tools.layouts if lay.name == info.layout), None)
    if layout is None or layout.loads:
        return info.path, ""
    own = tools.layouts[0]
    converted = work / f"{info.path.stem}-{own.suffix}.safetensors"
    command = commands.convert_command(commands.trainer(session), tools, info.path, temp_name(converted),
                                       info.layout, own.name)
    run = run_tool(command, log=log, step=ctx_step(ctx), final=converted, progress=ctx.progress, cancel=ctx.cancel,
                   log_line=ctx.log)
    if run.returncode != 0:
        raise StepFailed(f"cannot check {info.path.name}: converting it to {own.name} layout for the inference script "
                         f"failed: {run.error_line()}")
    return converted, f"loaded through its {own.name} conversion (the inference script reads only that layout)"


def ctx_step(ctx: StepContext) -> str:
    return str(ctx.options.get("step_name") or "check") if ctx.options else "check"


def _inference(session: Session, loras: list[Path], base: Path | None, out_dir: Path) -> ToolCommand:
    """The inference script drawing the check's image with `loras` (on `base` when given, else the session's)."""
    _family, tools = commands.family_tools(session)
    settings = settings_for(session)
    command = commands.inference_command(
        commands.trainer(session), tools, _models(session, base), loras=loras, out_dir=out_dir,
        prompt=settings.prompt, seed=settings.seed, steps=settings.steps, size=settings.size,
        tokenizers=session.paths.tokenizers)
    if session.train.mixed_precision == "no" and "dtype" in tools.inference_options:
        command.argv[command.argv.index("--dtype") + 1] = "float32"
    return command


def _draw_lines(session: Session, path: Path, layout: str, *, what: str, merged_base: bool = False) -> list[str]:
    """What drawing `path` would run (a LoRA in `layout`, or with `merged_base` a base model file), or that its
    sample is drawn already."""
    settings = settings_for(session)
    if path.is_file():
        earlier = recorded(session, path, settings)
        if earlier is not None:
            return [f"check: {what}'s sample is drawn already, with these settings: "
                    f"{naming.shown(session.project_dir, earlier.image)}"]
    _family, tools = commands.family_tools(session)
    temp = checks_dir(session) / ".check-TEMP"  # a temp folder the check makes (tempfile) and removes
    lines = [f"check: would draw {what} {path.name} with {tools.inference_script} into "
             f"{naming.shown(session.project_dir, checks_dir(session))}/ (its --output_dir is a temp folder there):"]
    loras: list[Path] = []
    if not merged_base:
        loadable = path
        chosen = next((lay for lay in tools.layouts if lay.name == layout), None)
        if chosen is not None and not chosen.loads:
            own = tools.layouts[0]
            loadable = temp / f"{path.stem}-{own.suffix}.safetensors"
            convert = commands.convert_command(commands.trainer(session), tools, path, temp_name(loadable), layout,
                                               own.name)
            lines += [f"first converted to {own.name} layout in that temp folder (the script loads only that layout):",
                      convert.shell_text(multiline=True)]
        loras = [loadable]
    lines.append(_inference(session, loras, path if merged_base else None, temp / "out").shell_text(multiline=True))
    return lines


def dry_run_lines(session: Session, result: Path, original: Path | None, *, layout: str,
                  merged_base: bool = False, what: str = "the result") -> list[str]:
    """What the check would run for `result` (which may not exist yet: `layout` is its key layout) and for `original`
    beside it, changing nothing; StepFailed when the check could not run (the base model's files missing)."""
    settings = settings_for(session)
    lines = [f'check: the prompt "{settings.prompt}", seed {settings.seed}, {settings.steps} steps, '
             f"{settings.size}×{settings.size} px ([tools] check_*), the same for both images"]
    lines += _draw_lines(session, result, layout, what="the merged model" if merged_base else what,
                         merged_base=merged_base)
    if original is not None and original.is_file():
        from lorawizard.core.loratools.header import LoraError

        try:
            original_layout = inspect(original, commands.family_tools(session)[0]).layout
        except LoraError as exc:
            return [*lines, f"check: the original cannot be drawn: {exc}"]
        lines += _draw_lines(session, original, original_layout, what="the original")
    return lines


def draw(session: Session, lora: Path | None, ctx: StepContext, *, log: Path, base: Path | None = None) -> Sample:
    """One image with `lora` (None: the base model alone; `base`: another base file, e.g. a merged one), recorded."""
    settings = settings_for(session)
    key = lora if lora is not None else base
    if key is not None:
        earlier = recorded(session, key, settings)
        if earlier is not None:
            return earlier
    _family, tools = commands.family_tools(session)
    folder = checks_dir(session)
    folder.mkdir(parents=True, exist_ok=True)
    name = sample_name(key, settings)
    with tempfile.TemporaryDirectory(prefix=".check-", dir=folder) as temp:
        work = Path(temp)
        loras: list[Path] = []
        note = ""
        if lora is not None:
            loadable, note = _loadable(session, inspect(lora, _family), work, ctx, log)
            loras = [loadable]
        command = _inference(session, loras, base, work / "out")
        started = time.monotonic()
        run = run_tool(command, log=log, step=ctx_step(ctx), progress=ctx.progress, cancel=ctx.cancel,
                       timeout_s=CHECK_TIMEOUT_S, log_line=ctx.log)
        images = sorted((work / "out").glob("*.png")) if (work / "out").is_dir() else []
        if run.returncode != 0 or not images:
            what = lora.name if lora is not None else (base.name if base is not None else "the base model")
            raise StepFailed(f"{what} does not load with {tools.inference_script}: {run.error_line() or 'no image'} "
                             f"(the log: {log})")
        # the base model's files say "All keys matched" too: only the LoRA's own line counts
        loaded = lora is None or any(LORA_LINE in line and LOADED_MARK in line for line in run.lines)
        target = folder / name
        shutil.move(str(images[-1]), target)
    sample = Sample(key.name if key is not None else "", target, loaded, time.monotonic() - started, note)
    if key is not None:
        _remember(session, key, sample, settings)
    return sample


def compare(image: Path, original: Path) -> tuple[float | None, bool]:
    """(mean absolute pixel difference 0–1 from `original`, None when the sizes differ; `image` is blank)."""
    from PIL import Image, ImageChops, ImageStat

    with Image.open(image) as a_file:
        a = a_file.convert("RGB")
    lo, hi = zip(*a.getextrema(), strict=True)
    blank = max(hi) - min(lo) <= BLANK_SPREAD
    try:
        with Image.open(original) as b_file:
            b = b_file.convert("RGB")
    except OSError:
        return None, blank
    if a.size != b.size:
        return None, blank
    mean = ImageStat.Stat(ImageChops.difference(a, b)).mean
    return sum(mean) / len(mean) / 255.0, blank


def check(session: Session, result: Path, original: Path | None, ctx: StepContext, *, log: Path,
          merged_base: bool = False) -> CheckResult:
    """Draw `result` (a LoRA, or with `merged_base` a base model file with the LoRA merged in) and `original` (a LoRA
    drawn on the session's base) with the same settings; compare them."""
    sample = draw(session, None if merged_base else result, ctx, log=log, base=result if merged_base else None)
    before = draw(session, original, ctx, log=log) if original is not None and original.is_file() else None
    difference, blank = compare(sample.image, before.image) if before is not None else compare(sample.image, sample.image)
    return CheckResult(sample, before, difference if before is not None else None, blank)
