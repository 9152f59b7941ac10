"""Auto-captions: draft captions with a local vision-language model in the trainer's Python, then review them.

The model runs in `trainer_side/caption_images.py`, a subprocess of the trainer's Python (torch and transformers
come from sd-scripts' venv, never into this process), in its own process group (cancel kills the group; the GPU
is free when it ends). It streams one JSON line per image; each draft is cleaned here (`clean_caption`) and stored
as the image's caption marked `caption_auto = true` until a person accepts or edits it. A caption a person wrote,
edited, imported or accepted is never replaced unless asked (`overwrite`).

Settings (`[captions]` in session.toml): `kind` (subject | style), `instruction` (default built from kind and the
trigger word), `model` (a catalog name or a folder with a transformers checkpoint), `max_tokens`, `device`
(auto | gpu | cpu), `auto` (replay drafts the missing captions).
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from lorawizard.core.captions.tokens import budgets
from lorawizard.core.common.fsutil import atomic_write_json
from lorawizard.core.common.procs import kill_process_group
from lorawizard.core.common.progress import Progress, ProgressMeter, format_duration, format_rate
from lorawizard.core.contract import Cancelled, StepContext, StepFailed
from lorawizard.core.models import catalog
from lorawizard.core.models.captioner_folders import captioner_folder, folder_problem
from lorawizard.core.profile import family_for
from lorawizard.core.session.document import Session
from lorawizard.core.session.store import save_change

SCRIPT = Path(__file__).resolve().parents[2] / "trainer_side" / "caption_images.py"
MARKER = "LORAWIZARD-CAPTION "
JOB_FILE = "captioner-job.json"  # in <project>/.lorawizard/
LOG_FILE = "captioner.log"  # the subprocess' stderr (transformers' warnings, tracebacks of a broken venv)
MAX_PIXELS = 640 * 640  # what the model sees of each image (decoded and shrunk in the subprocess)
T5_MARGIN = 16  # tokens kept free beside the trigger word and separators
SAVE_EVERY_S = 2.0  # drafts streaming in go to session.toml's writer this often (outside the wizard: one write each)

# ---------------------------------------------------------------- the instruction

_STYLE_OF_WRITING = (
    "Write one paragraph of plain sentences: no lists, no markdown, no headings, and do not start with "
    "“The image shows” or “This image”; begin with what is seen."
)
INSTRUCTIONS = {
    "subject": (
        "Caption this image for training an image model on one particular subject{trigger}. Describe everything "
        "except who the subject is: their clothing and accessories, pose and action, expression, the setting and "
        "background, the lighting, the camera angle, distance and framing, and the style or medium of the image. "
        "Never describe the subject's face, facial features, hair, body, age or identity, and never name them. "
    ),
    "style": (
        "Caption this image for training an image model on one particular art style{trigger}. Describe only the "
        "content: who and what is shown, what they wear and do, the objects, the setting and the composition. "
        "Never describe the style: no words about the medium, technique, brushwork, colour palette, rendering, "
        "mood or artist. "
    ),
}


def build_instruction(kind: str, trigger: str = "") -> str:
    """The default instruction for a subject or style LoRA (one paragraph, what NOT to learn is described)."""
    template = INSTRUCTIONS.get(kind, INSTRUCTIONS["subject"])
    named = f" (called “{trigger}”; do not write that name)" if trigger.strip() else ""
    return template.format(trigger=named) + _STYLE_OF_WRITING


def instruction_for(session: Session) -> str:
    custom = session.captions.instruction
    if isinstance(custom, str) and custom.strip():
        return " ".join(custom.split())
    return build_instruction(session.captions.kind, session.dataset.trigger)


def max_new_tokens(session: Session, trigger_tokens: int = 0) -> int:
    """`[captions] max_tokens`, kept inside the family's T5 budget (512; schnell 256) beside the trigger word."""
    wanted = session.captions.max_tokens
    return max(16, min(wanted, budgets(family_for(session))[1] - trigger_tokens - T5_MARGIN))


# ---------------------------------------------------------------- cleaning what a model writes

_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|okay|ok)[,!.]?\s*)?"
    r"(?:here(?:'s| is)\s+(?:a|the|my)\s+(?:detailed\s+)?(?:description|caption)[^:.]*[:.]\s*"
    r"|(?:in\s+)?(?:the|this)\s+(?:image|photo(?:graph)?|picture|illustration|artwork|painting|scene)"
    r"(?:\s+(?:shows|depicts|features|presents|captures|displays|portrays|contains|is of|is showing))?(?:[\s,:]+|$)"
    r"(?:(?:a|an)\s+(?:photo|photograph|picture|image)\s+of\s+)?"
    r"|(?:a|an)\s+(?:photo|photograph|picture|image)\s+of\s+)",
    re.IGNORECASE,
)
_MARKDOWN = [
    (re.compile(r"```.*?```", re.DOTALL), " "),
    (re.compile(r"^\s{0,3}#{1,6}\s*", re.MULTILINE), ""),  # headings
    (re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+", re.MULTILINE), ""),  # list markers
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),  # bold
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"\1"),  # italics
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links
]
_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+|$)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff\ufffd]")  # \x1e etc. would split lines


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def clean_caption(
    text: str,
    *,
    trigger: str = "",
    truncated: bool = False,
    fits: Callable[[str], bool] | None = None,
) -> str:
    """A model's answer → one caption line: no preamble, markdown, newlines or repeated sentences.

    `truncated` (the model hit its token limit): an unfinished last sentence is dropped. `fits(text)` says whether
    a caption is within the token budget; sentences are dropped from the end until it does.
    """
    text = _CONTROL.sub("", text)
    for pattern, replacement in _MARKDOWN:
        text = pattern.sub(replacement, text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = ""
    for line in lines:  # a line without final punctuation ends a sentence too
        if joined and joined[-1] not in ".!?:;,":
            joined += "."
        joined = f"{joined} {line}" if joined else line
    text = " ".join(joined.split()).strip().strip('"“”').strip()
    text = _PREAMBLE.sub("", text, count=1)
    if trigger:
        text = re.sub(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)[,:]?\s*", "", text, flags=re.IGNORECASE).strip()
    sentences = _sentences(text)
    if truncated and len(sentences) > 1 and sentences[-1][-1] not in ".!?":
        sentences.pop()  # cut off mid-sentence by the token limit
    kept: list[str] = []
    seen: set[str] = set()
    for sentence in sentences:
        key = re.sub(r"\W+", " ", sentence.lower()).strip()
        if key and key not in seen:
            seen.add(key)
            sentence = _dedupe_phrases(sentence)
            kept.append(sentence[0].upper() + sentence[1:] if sentence[0].isalpha() else sentence)
    if fits is not None:
        while len(kept) > 1 and not fits(" ".join(kept)):
            kept.pop()
    return " ".join(kept).strip()


def _dedupe_phrases(sentence: str) -> str:
    """`red, red, red, red.` → `red.`: a model stuck in a loop repeats comma phrases."""
    parts = [p.strip() for p in sentence.split(",")]
    out: list[str] = []
    for part in parts:
        if out and part.lower().rstrip(".!?") == out[-1].lower().rstrip(".!?"):
            if part[-1:] in ".!?" and out[-1][-1:] not in ".!?":
                out[-1] += part[-1]
            continue
        out.append(part)
    return ", ".join(out)


# ---------------------------------------------------------------- the model


@dataclass
class ModelChoice:
    name: str  # catalog name, or the folder as written
    folder: Path
    spec: catalog.Captioner | None  # None: a local folder of the user's


def choose_model(session: Session) -> ModelChoice:
    """`[captions] model`: a catalog name (its folder under models/captioners/) or a folder of the user's."""
    value = (session.captions.model or catalog.DEFAULT_CAPTIONER).strip()
    spec = catalog.CAPTIONERS.get(value)
    if spec is not None:
        return ModelChoice(value, captioner_folder(session, spec), spec)
    folder = session.resolve(value)
    if folder is None or not ("/" in value or value.startswith(("~", ".")) or folder.exists()):
        names = ", ".join(catalog.CAPTIONERS)
        raise StepFailed(f"captions.model = {value!r} is neither a catalog captioner ({names}) nor a folder")
    return ModelChoice(value, folder, None)


# ---------------------------------------------------------------- where it runs


def trainer_python(session: Session) -> Path:
    from lorawizard.core.environment.step import find_python, find_sd_scripts

    python = find_python(session, find_sd_scripts(session))
    if python is None or not python.exists():
        raise StepFailed("the trainer's Python was not found (paths.python / sd-scripts' venv): run the Environment step")
    return python


def busy_training(session: Session, gpu_uuid: str | None) -> str | None:
    """A one-line refusal when a training run of this project uses that GPU (or any GPU, when unknown)."""
    from lorawizard.core.launch.runs import live_run

    record = live_run(session.paths.runs)
    if record is None:
        return None
    if gpu_uuid and record.gpu_uuid and record.gpu_uuid != gpu_uuid:
        return None
    return (f"training run {record.run_id} is using the GPU: captioning would take its memory; wait for it to "
            "finish or stop it (Train step)")


@dataclass
class Placement:
    device: str  # "gpu" | "cpu"
    gpu_uuid: str | None
    note: str  # for people: which GPU, or why the CPU and how slow


# ---------------------------------------------------------------- how long it takes

SPEED_FILE = "captioner-speed.json"  # in <project>/.lorawizard/: seconds per image measured, by model and device


def guess_s_per_image(spec: catalog.Captioner | None, device: str) -> float:
    """The catalog's rough cost of one caption on `device` ("cpu" | "gpu"): a guess, until images are timed."""
    if device == "cpu":
        return spec.cpu_s_per_image if spec is not None else catalog.CPU_S_PER_IMAGE_UNKNOWN
    return spec.gpu_s_per_image if spec is not None else catalog.GPU_S_PER_IMAGE_UNKNOWN


def measured_s_per_image(session: Session, model: str, device: str) -> float | None:
    """Seconds per image the last run of `model` on `device` measured in this project (None: never measured)."""
    try:
        data = json.loads((session.paths.state / SPEED_FILE).read_text(encoding="utf-8"))
        value = data[model][device]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def remember_s_per_image(session: Session, model: str, device: str, seconds: float) -> None:
    path = session.paths.state / SPEED_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    entry = data.get(model)
    data[model] = {**(entry if isinstance(entry, dict) else {}), device: round(seconds, 3)}
    try:
        atomic_write_json(path, data)
    except OSError:
        pass  # bookkeeping only: the next estimate is a guess again


@dataclass
class DraftEstimate:
    """Seconds per image and the ETA of one drafting run: a guess (`guess_s`: the catalog's, or the last run's
    measurement) before any image, then the rate measured on this run from the first images on. The clock starts
    when the model is ready (`ready`), so loading it never counts as an image's time."""

    total: int
    guess_s: float
    guess_from: str = "a guess"  # what the guess is: "a guess", "measured on the last run"
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    timed: int = 0  # images since the clock started
    since: float | None = None
    last: float | None = None  # when the latest image came
    loaded: bool = False  # the model said it is ready

    def start(self) -> None:
        """The run starts (the clock starts here unless the model says when it is ready)."""
        self.since = self.clock()

    def ready(self) -> None:
        """The model is loaded: images are timed from now."""
        self.since, self.timed, self.loaded = self.clock(), 0, True

    def advance(self, count: int = 1) -> None:
        self.done += count
        self.timed += count
        self.last = self.clock()
        if self.since is None:
            self.since = self.last

    @property
    def measured(self) -> bool:
        return self.timed > 0 and self.since is not None and self.last is not None and self.last > self.since

    @property
    def s_per_image(self) -> float:
        if self.measured:
            assert self.since is not None and self.last is not None  # noqa: S101 - measured says so
            return (self.last - self.since) / self.timed
        return self.guess_s

    @property
    def eta_s(self) -> float:
        """The images still to do at the rate (measured: less the time since the latest image, never below 0)."""
        left = max(0, self.total - self.done) * self.s_per_image
        if self.measured and self.last is not None:
            left -= self.clock() - self.last
        return max(0.0, left)

    def progress(self, step: str, task: str, *, finished: bool = False) -> Progress:
        """The same numbers as a progress event (replay's lines): its detail says `measured` or what the guess is."""
        return Progress(step, task, self.done, self.total, "images", 1 / self.s_per_image,
                        0.0 if finished else self.eta_s, "measured" if self.measured else self.guess_from, finished)

    def line(self) -> str:
        """`6.1 s/image (measured) · ETA 3:40`, or before any image `~120 s/image (a guess) · ETA ~1:20:00`."""
        if self.measured:
            return f"{format_rate(1 / self.s_per_image, 'images')} (measured) · ETA {format_duration(self.eta_s)}"
        return f"~{format_rate(1 / self.guess_s, 'images')} ({self.guess_from}) · ETA ~{format_duration(self.eta_s)}"


def first_guess(session: Session, model: str, spec: catalog.Captioner | None, device: str) -> tuple[float, str]:
    """Seconds per image before this run times any: the last run's measurement, else the catalog's guess."""
    measured = measured_s_per_image(session, model, device)
    if measured is not None:
        return measured, "measured on the last run"
    return guess_s_per_image(spec, device), "a guess"


def place(session: Session, images: int, spec: catalog.Captioner | None, *, nvml: Any = None,
          model: str | None = None) -> Placement:
    """GPU when there is one (the session's), else the CPU with an up-front estimate; `[captions] device` decides.
    `model` (the `[captions] model` name): a speed measured by its last run is the estimate instead of the guess."""
    wanted = session.captions.device
    per_image, source = first_guess(session, model or (spec.name if spec else ""), spec, "cpu")
    total = f"about {format_duration(per_image * images)} for {images} images"
    if source == "a guess":
        estimate = (f"on the CPU this is slow: roughly {per_image:g} s per image, {total} (a rough guess until the "
                    "first images are timed)")
    else:
        estimate = f"on the CPU: {format_rate(1 / per_image, 'images')} ({source}), {total}"
    if wanted == "cpu":
        return Placement("cpu", None, estimate)
    from lorawizard.core.gpu.nvml import inventory

    try:
        found = inventory(nvml)
        gpus, problem = list(found.gpus), found.problem
    except Exception as exc:  # noqa: BLE001 - NVML missing or broken: same as no GPU
        gpus, problem = [], str(exc)
    uuid = session.gpu.uuid
    chosen = next((g for g in gpus if g.uuid == uuid), gpus[0] if gpus else None)
    if chosen is None:
        if wanted == "gpu":
            raise StepFailed(f"no GPU found ({problem or 'NVML sees none'}): set captions.device = \"cpu\" to caption slowly")
        return Placement("cpu", None, f"no GPU found; {estimate}")
    free = chosen.memory_free / 2**30
    need = spec.vram_gb if spec is not None else None
    note = f"GPU {chosen.index} {chosen.name}, {free:.1f} GB free"
    if need is not None and free < need * 0.6:
        note += f" (this captioner wants ~{need:g} GB: it may run out of memory; a smaller batch is tried first)"
    return Placement("gpu", chosen.uuid, note)


# ---------------------------------------------------------------- running the subprocess


# the protocol's events (trainer_side/caption_images.py's docstring)
EventKind = Literal["loading", "ready", "caption", "skip", "oom", "progress", "done", "fatal"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


@dataclass
class Event:
    kind: EventKind
    data: dict[str, Any]


@dataclass
class DraftReport:
    drafted: dict[str, str] = field(default_factory=dict)  # file → cleaned caption
    skipped: dict[str, str] = field(default_factory=dict)  # file → why (undecodable, empty answer, …)
    device: str = ""
    batch: int = 0
    images_per_s: float | None = None
    seconds: float = 0.0
    fatal: str | None = None  # why the model could not run (one line)


def write_job(session: Session, images: list[tuple[str, Path]], model: ModelChoice, *, instruction: str,
              max_tokens: int, device: str) -> Path:
    spec = model.spec
    job = {
        "model": str(model.folder),
        "name": spec.title if spec else model.name,
        "min_transformers": spec.min_transformers if spec else None,
        "images": [{"file": file, "path": str(path)} for file, path in images],
        "instruction": instruction,
        "max_new_tokens": max_tokens,
        "device": device,
        "max_pixels": MAX_PIXELS,
        "batch_size": 0,
    }
    path = session.paths.state / JOB_FILE
    atomic_write_json(path, job)
    return path


def run_captioner(
    python: Path,
    job: Path,
    *,
    on_event: Callable[[Event], None],
    cancel: threading.Event,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
) -> int:
    """Run the captioner script; call `on_event` for each protocol line as it arrives. Returns the exit code.

    Own process group: cancel kills the group (raises Cancelled after it is gone). stderr goes to `log_path`.
    """
    argv = [str(python), str(SCRIPT), "--job", str(job)]
    environment = dict(os.environ if env is None else env)
    environment.setdefault("PYTHONUNBUFFERED", "1")
    environment.setdefault("TOKENIZERS_PARALLELISM", "false")
    stderr: Any = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stderr = log_path.open("wb")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=environment)
    except OSError as exc:
        raise StepFailed(f"{python} does not run: {exc.strerror or exc}") from None
    finally:
        if log_path is not None:
            stderr.close()
    lines: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None  # noqa: S101
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    reader = threading.Thread(target=read, name="captioner-stdout", daemon=True)
    reader.start()
    try:
        while True:
            if cancel.is_set():
                raise Cancelled()
            try:
                raw = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if raw is None:
                break
            text = raw.decode("utf-8", "replace").strip()
            if not text.startswith(MARKER):
                continue  # transformers and friends print to stdout too
            try:
                data = json.loads(text[len(MARKER):])
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("event") in EVENT_KINDS:  # another word: nobody handles it
                on_event(Event(cast(EventKind, data["event"]), data))
        return proc.wait()
    finally:
        if proc.poll() is None:
            kill_process_group(proc)
        reader.join(2)
        if proc.stdout is not None:
            proc.stdout.close()


def _last_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    found = [line.strip() for line in text.splitlines() if line.strip()]
    return found[-1][:300] if found else ""


def draft(
    session: Session,
    images: list[tuple[str, Path]],
    *,
    on_draft: Callable[[str, str], None],
    cancel: threading.Event,
    log: Callable[[str], object] = lambda line: None,
    meter: ProgressMeter | None = None,
    fits: Callable[[str], bool] | None = None,
    trigger_tokens: int = 0,
    placement: Placement | None = None,
    on_estimate: Callable[[DraftEstimate], object] | None = None,
) -> DraftReport:
    """Caption `images` ((session file key, prepared image)); each cleaned draft goes to `on_draft(file, text)`.
    `on_estimate` hears the run's DraftEstimate at the start (a guess), when the model is ready and after each image
    (the rate measured from the first images on).

    Raises StepFailed with one line when the model cannot run, Cancelled on cancel (drafts so far were delivered).
    """
    report = DraftReport()
    if not images:
        return report
    model = choose_model(session)
    problem = folder_problem(model.folder)
    if problem:
        hint = " (Models step: download the captioner)" if model.spec is not None else ""
        raise StepFailed(f"captioner {model.name}: {problem}{hint}")
    placement = placement or place(session, len(images), model.spec, model=model.name)
    if placement.device == "gpu":
        refusal = busy_training(session, placement.gpu_uuid)
        if refusal:
            raise StepFailed(refusal)
    python = trainer_python(session)
    trigger = session.dataset.trigger
    job = write_job(session, images, model, instruction=instruction_for(session),
                    max_tokens=max_new_tokens(session, trigger_tokens), device=placement.device)
    from lorawizard.core.launch.command import library_path_env  # lazy: the Captions screen's first frame

    env = {**os.environ, **library_path_env(session)}  # NixOS: the driver's libraries, as the trainer gets them
    if placement.gpu_uuid:
        env["CUDA_VISIBLE_DEVICES"] = placement.gpu_uuid
    log(f"captioner {model.name}: {placement.note}" if placement.device == "cpu" else  # the note says "on the CPU"
        f"captioner {model.name} on {placement.note}")
    started = time.monotonic()
    estimate = DraftEstimate(len(images), *first_guess(session, model.name, model.spec, placement.device))
    estimate.start()
    tell = on_estimate or (lambda estimate: None)
    tell(estimate)

    def handle(event: Event) -> None:
        data = event.data
        if event.kind in ("caption", "skip"):
            estimate.advance()
        if event.kind == "ready":
            estimate.ready()
            report.device, report.batch = str(data.get("device", "")), int(data.get("batch") or 0)
            log(f"model loaded in {data.get('load_seconds', '?')} s on {report.device}, batch {report.batch} "
                f"(transformers {data.get('transformers', '?')}, torch {data.get('torch', '?')})")
        elif event.kind == "caption":
            file = str(data.get("file", ""))
            text = clean_caption(str(data.get("caption", "")), trigger=trigger, truncated=bool(data.get("truncated")),
                                 fits=fits)
            if text:
                report.drafted[file] = text
                on_draft(file, text)
            else:
                report.skipped[file] = "nothing left after cleaning the model's answer"
            if meter is not None:
                meter.advance(1, file)
        elif event.kind == "skip":
            file = str(data.get("file", ""))
            report.skipped[file] = str(data.get("reason", "skipped"))
            log(f"not captioned: {file}: {report.skipped[file]}")
            if meter is not None:
                meter.advance(1, file)
        elif event.kind == "oom":
            log(f"out of GPU memory: retrying with batch {data.get('batch')}")
        elif event.kind == "progress":
            rate = data.get("images_per_s")
            if isinstance(rate, (int, float)):
                report.images_per_s = float(rate)
        elif event.kind == "done":
            rate = data.get("images_per_s")
            report.images_per_s = float(rate) if isinstance(rate, (int, float)) else report.images_per_s
        elif event.kind == "fatal":
            report.fatal = str(data.get("reason") or data.get("kind") or "the captioner failed")
        if event.kind in ("ready", "caption", "skip"):
            tell(estimate)

    log_path = session.paths.state / LOG_FILE
    try:
        code = run_captioner(python, job, on_event=handle, cancel=cancel, env=env, log_path=log_path)
    finally:
        if estimate.measured:  # the next run's first estimate (a stop halfway measured it too)
            remember_s_per_image(session, model.name, placement.device, estimate.s_per_image)
    report.seconds = time.monotonic() - started
    if report.fatal:
        raise StepFailed(f"the captioner cannot run: {report.fatal}")
    if code != 0:
        tail = _last_line(log_path)
        if "No module named 'torch'" in tail or "No module named torch" in tail:
            raise StepFailed(f"the trainer's Python ({python}) has no torch: install sd-scripts' requirements")
        raise StepFailed(f"the captioner stopped (exit {code}){': ' + tail if tail else ''} (log: {log_path})")
    return report


def rate_line(report: DraftReport) -> str:
    rate = f", {format_rate(report.images_per_s, 'images')}" if report.images_per_s else ""
    where = f" on {report.device}" if report.device else ""
    return f"drafted {len(report.drafted)} captions in {format_duration(report.seconds)}{where}{rate}"


def targets(items: Iterable[Any], *, files: set[str] | None = None, overwrite: bool = False) -> list[Any]:
    """Which captions a captioner may (re)draft: missing, empty and auto drafts; a person's only with `overwrite`."""
    out = []
    for item in items:
        if files is not None and item.file not in files:
            continue
        persons = bool(item.body and item.body.strip()) and not item.auto
        if persons and not overwrite:
            continue
        if files is None and item.auto and not overwrite:
            continue  # "draft the missing ones" keeps existing drafts
        out.append(item)
    return out


def draft_missing(ctx: StepContext) -> DraftReport | None:
    """The captions step with `[captions] auto = true`: draft every image without a caption (drafts marked auto).

    In replay the drafts go through `ctx.record` (the user's session file is never rewritten); otherwise they go to
    session.toml through the store (`save_change`) every few seconds and at the end (a cancel keeps the drafts so far).
    """
    from lorawizard.core.captions.captionset import CaptionSet, compose

    session = ctx.session
    captions = CaptionSet.from_session(session, read_disk=False)
    chosen = targets(captions.items)
    if not chosen:
        ctx.log("auto-captions: every image has a caption, nothing to draft")
        return None
    counter, trigger = captions.counter, captions.trigger
    trigger_tokens = counter.count(trigger)[1] if trigger else 0
    images = [(item.file, item.output) for item in chosen]
    if ctx.dry_run:
        model = choose_model(session)
        problem = folder_problem(model.folder)
        ctx.log(f"would draft {len(images)} captions with {model.name}" + (f" ({problem})" if problem else ""))
        return None
    last: list[DraftEstimate] = []

    def estimated(estimate: DraftEstimate) -> None:  # the catalog's guess, then the rate measured from the first images
        last[:] = [estimate]
        ctx.progress(estimate.progress("captions", "drafting captions"))

    pending: list[tuple[str, dict[str, Any]]] = []  # drafts not yet handed to the session's writer
    last_save = [time.monotonic()]

    def save_pending() -> None:
        drafts = pending.copy()
        pending.clear()
        last_save[0] = time.monotonic()
        if drafts:
            save_change(session, lambda changed: changed.update_images(drafts), ctx.store)

    def store(file: str, text: str) -> None:
        if session.read_only:
            ctx.record(f"dataset.images:{file}", {"caption": text, "caption_auto": True})
            return
        pending.append((file, {"caption": text, "caption_auto": True}))
        if time.monotonic() - last_save[0] >= SAVE_EVERY_S:
            save_pending()

    try:
        report = draft(session, images, on_draft=store, cancel=ctx.cancel, log=ctx.log, on_estimate=estimated,
                       fits=lambda text: counter.count(compose(trigger, text))[1] <= counter.t5_limit,
                       trigger_tokens=trigger_tokens)
    finally:
        if not session.read_only:
            save_pending()
    if last:
        ctx.progress(last[0].progress("captions", "drafting captions", finished=True))
    ctx.log(rate_line(report) + (f"; {len(report.skipped)} not captioned" if report.skipped else ""))
    return report
