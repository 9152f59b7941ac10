"""Sample images during training: the prompt file sd-scripts reads, and the images it writes back.

`[train.samples]` in session.toml → a JSON prompt file per run (sd-scripts' `load_prompts` reads a `.json` list of
dicts as is, so no prompt text is ever parsed for ` --w`-style options) and the `--sample_*` options. sd-scripts
writes `<output_dir>/sample/<output_name>_e<NNNNNN>_<NN>_<YYYYmmddHHMMSS>[_<seed>].png` (epoch-based and first
samples; `NN` = the prompt's index in the file); `gallery()` turns a run's sample folder(s) into a grid, skipping
foreign names and half-written files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json
from lorawizard.core.session.document import Session, parse_bucket

PROMPT_FILE = "sample_prompts.json"
SAMPLE_DIR = "sample"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def default_prompts(trigger: str) -> list[str]:
    """Three prompts from the trigger word: the subject alone, in a new setting, in another style."""
    subject = trigger.strip() or "the subject"
    return [
        f"{subject}, a photo, plain background",
        f"{subject} on a city street at night, neon lights",
        f"{subject}, an oil painting in the style of an old master",
    ]


@dataclass(frozen=True)
class SampleSettings:
    prompts: list[str]
    every_n_epochs: int
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    at_first: bool
    cfg_scale: float = 1.0  # real CFG (sd-scripts' `scale`, since PR #2157 apart from the embedded `guidance_scale`)
    negative_prompt: str = ""

    def entries(self) -> list[dict[str, Any]]:
        """The JSON prompt file's content (sd-scripts' keys); `scale` and `negative_prompt` only with a real CFG
        (Chroma's), which sd-scripts otherwise skips (its default scale is 1.0)."""
        cfg = {"scale": self.cfg_scale, "negative_prompt": self.negative_prompt} if self.cfg_scale != 1.0 else {}
        return [
            {"prompt": text, "width": self.width, "height": self.height, "sample_steps": self.steps,
             "guidance_scale": self.guidance, "seed": self.seed, **cfg}
            for text in self.prompts
        ]


def sample_settings(session: Session) -> SampleSettings | None:
    """The session's sampling settings with defaults filled in; None when `prompts = []` (sampling off)."""
    prompts = session.train.samples.prompts
    if prompts is None:
        prompts = default_prompts(session.dataset.trigger)
    if not prompts:
        return None
    width, height = session.train.samples.width, session.train.samples.height
    if width is None or height is None:
        bucket_w, bucket_h = _largest_bucket(session)
        width, height = width or bucket_w, height or bucket_h
    return SampleSettings(
        prompts=list(prompts),
        every_n_epochs=session.train.samples.every_n_epochs or session.train.save_every_n_epochs,
        width=int(width), height=int(height),
        steps=session.train.samples.steps, guidance=session.train.samples.guidance,
        seed=session.train.samples.seed, at_first=session.train.samples.at_first,
        cfg_scale=session.train.samples.cfg_scale, negative_prompt=session.train.samples.negative_prompt,
    )


def _largest_bucket(session: Session) -> tuple[int, int]:
    from lorawizard.core.dataset.step import bucket_counts

    buckets = list(bucket_counts(session))  # largest area first
    if buckets:
        return parse_bucket(buckets[0])
    side = session.dataset.max_side
    return side, side


def write_prompt_file(settings: SampleSettings, run_dir: Path) -> Path:
    path = Path(run_dir).absolute() / PROMPT_FILE
    atomic_write_json(path, settings.entries())
    return path


def sample_overrides(session: Session, run_dir: Path) -> dict[str, Any]:
    """Trainer options for sampling (writes the run's JSON prompt file); all None when sampling is off."""
    settings = sample_settings(session)
    if settings is None:
        return {"sample_prompts": None, "sample_every_n_epochs": None, "sample_at_first": None}
    return {
        "sample_prompts": write_prompt_file(settings, run_dir),
        "sample_every_n_epochs": settings.every_n_epochs,
        "sample_at_first": True if settings.at_first else None,
    }


def sampling_cost(session: Session, s_per_step: float | None = None, *, resume: bool = False) -> str:
    """What sampling adds, for the estimate and the probe's report (a rough figure, and it says so); a resume makes no
    baseline (its chain's first run did)."""
    settings = sample_settings(session)
    if settings is None:
        return "sampling off (train.samples.prompts = [])"
    times = _sampling_rounds(session, settings, resume)
    images = times * len(settings.prompts)
    megapixels = settings.width * settings.height / (1024 * 1024)
    text = (f"sampling: {len(settings.prompts)} prompts × {times} times = {images} images at "
            f"{settings.width}×{settings.height}, {settings.steps} steps each; needs ≈{1 + megapixels:.1f} GB more VRAM "
            "(the VAE and one image's activations; estimate, the probe does not sample)")
    if s_per_step:
        from lorawizard.core.common.progress import format_duration

        text += f", ≈{format_duration(sampling_seconds(session, s_per_step, resume=resume))} more training time"
    return text


def _sampling_rounds(session: Session, settings: SampleSettings, resume: bool) -> int:
    return session.train.max_train_epochs // settings.every_n_epochs + (1 if settings.at_first and not resume else 0)


def sampling_seconds(session: Session, s_per_step: float, *, resume: bool = False) -> float:
    """The time a run's sampling adds (0 with sampling off), the one rule the estimate, the forecast and the queue use:
    one denoising step ≈ a forward pass of one image ≈ a third of a training step's time per image; a real CFG runs
    the transformer twice per step (the prompt and the negative prompt)."""
    settings = sample_settings(session)
    if settings is None:
        return 0.0
    images = _sampling_rounds(session, settings, resume) * len(settings.prompts)
    seconds = images * settings.steps * s_per_step / 3
    return seconds * 2 if settings.cfg_scale != 1.0 else seconds


# ------------------------------------------------------------------ reading the images back

_NAME_TAIL = re.compile(r"e(?P<epoch>\d{6})_(?P<index>\d{2})_(?P<stamp>\d{14})(?:_(?P<seed>\d+))?\.png")


@dataclass(frozen=True)
class SampleImage:
    path: Path
    epoch: int  # 0 = the baseline before training
    index: int  # the prompt's index in the prompt file
    stamp: str
    seed: int | None


def parse_sample_name(path: Path, output_name: str) -> SampleImage | None:
    """sd-scripts' epoch/first sample name for this output name, else None (step samples and foreign files)."""
    name = Path(path).name
    prefix = f"{output_name}_" if output_name else ""
    if not name.startswith(prefix):
        return None
    match = _NAME_TAIL.fullmatch(name[len(prefix):])
    if match is None:
        return None
    seed = match.group("seed")
    return SampleImage(Path(path), int(match.group("epoch")), int(match.group("index")), match.group("stamp"),
                       int(seed) if seed else None)


def is_complete_png(path: Path) -> bool:
    """PNG signature at the start and the IEND chunk at the end: a file still being written has no IEND yet."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(0, 2)
            size = handle.tell()
            if size < 20:
                return False
            handle.seek(size - 8)
            tail = handle.read(8)
    except OSError:
        return False
    return head == _PNG_SIGNATURE and tail == _PNG_END


@dataclass
class Gallery:
    """Rows = prompts, columns = epochs (baseline 0 first); newest image per cell."""

    epochs: list[int] = field(default_factory=list)
    rows: int = 0
    cells: dict[tuple[int, int], SampleImage] = field(default_factory=dict)  # (prompt index, epoch) → image
    prompts: list[str] = field(default_factory=list)

    def image(self, row: int, epoch: int) -> SampleImage | None:
        return self.cells.get((row, epoch))

    def files(self, epoch: int) -> list[Path]:
        return [self.cells[(row, epoch)].path for row in range(self.rows) if (row, epoch) in self.cells]


def gallery(run_dirs: Iterable[Path], output_name: str, prompts: list[str] | None = None) -> Gallery:
    """The samples of a run (and the runs it resumed from: pass them oldest first)."""
    result = Gallery(prompts=list(prompts or []))
    for run_dir in run_dirs:
        folder = Path(run_dir) / SAMPLE_DIR
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for path in entries:
            image = parse_sample_name(path, output_name)
            if image is None or not is_complete_png(path):
                continue
            key = (image.index, image.epoch)
            old = result.cells.get(key)
            if old is None or image.stamp >= old.stamp:
                result.cells[key] = image
    result.epochs = sorted({epoch for _, epoch in result.cells})
    result.rows = max([len(result.prompts)] + [index + 1 for index, _ in result.cells])
    return result


def read_prompts(run_dir: Path) -> list[str]:
    """The prompts a run was given (its JSON prompt file), [] when it has none."""
    import json

    try:
        data = json.loads((Path(run_dir) / PROMPT_FILE).read_text(encoding="utf-8"))
        return [str(entry.get("prompt", "")) if isinstance(entry, dict) else str(entry) for entry in data]
    except (OSError, ValueError, AttributeError, TypeError):
        return []
