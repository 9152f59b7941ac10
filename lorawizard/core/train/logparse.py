"""sd-scripts console output → events (bytes in, events out; no Textual, no I/O).

The trainer's log is stdout and stderr of `accelerate launch … <the trainer script>` in one file: tqdm bars
redrawn with '\\r' (sd-scripts.md §3.1), rich log records wrapped at 80 columns with continuation lines indented by
29 spaces, plain `print` lines, Python tracebacks. `LogParser.feed(bytes)` returns the events completed by those
bytes; the events are the same whatever the chunk boundaries (a partial UTF-8 sequence, a partial line or a
half-written rich record is carried to the next call). `finish()` at end of file flushes what is left; `flush()`
(after a quiet spell while tailing) closes a pending rich record early.

`TrainState` folds events into what the dashboard and the headless follower show: absolute step and epoch
(sd-scripts restarts its step counter at 0 after `--resume`), rate, ETA, downsampled loss history, checkpoints,
states, failures, a bounded tail of display lines. Memory stays bounded whatever the log length.
"""

from __future__ import annotations

import codecs
import math
import re
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from lorawizard.core.train import ddp_failures

# ------------------------------------------------------------------ events


@dataclass(slots=True)
class Line:
    """One logical line for display: a rich record unwrapped into one line, a print line, a finished bar."""

    text: str
    level: str = ""  # "INFO", "WARNING", "ERROR" for log records; "" for plain output
    rank: int | None = None  # the process that printed it, when torchrun's `[rankN]:` prefix says so


@dataclass(slots=True)
class Bar:
    """A tqdm redraw. `desc` is "steps" for the training bar, "" or e.g. "read caption" for others."""

    desc: str
    n: int
    total: int
    elapsed_s: float
    remaining_s: float | None
    rate: float | None  # iterations per second (s/it is converted)
    loss: float | None  # avr_loss (may be nan)
    postfix: str = ""


@dataclass(slots=True)
class Totals:
    """The `running training / 学習開始` block."""

    images: int | None
    batches_per_epoch: int | None
    epochs: int | None
    batch_sizes: str
    grad_accum: int | None
    total_steps: int | None


@dataclass(slots=True)
class Epoch:
    n: int
    total: int


@dataclass(slots=True)
class Phase:
    """What the trainer is busy with before/around training (loading, caching, sampling, saving)."""

    name: str


@dataclass(slots=True)
class CheckpointSaved:
    path: str


@dataclass(slots=True)
class StateSaved:
    path: str
    epoch: int
    step: int  # sd-scripts' own (within-run) step


@dataclass(slots=True)
class SampleStarted:
    step: int


@dataclass(slots=True)
class Resumed:
    path: str
    epoch: int | None
    step: int | None


@dataclass(slots=True)
class ModelSaved:
    pass


@dataclass(slots=True)
class Failure:
    """A known failure. kind: oom, missing_model, dataset_config, no_data, resume_missing, exception,
    interrupted, launcher (accelerate's CalledProcessError or torchrun's ChildFailedError; `code` is the child's
    status, negative = signal), rank_failed (torchrun's "Root Cause": the rank that failed first), and the
    several-GPU kinds of core.ddp_failures (nccl_timeout, nccl_cuda_error, …). `rank`: which process, when known."""

    kind: str
    text: str
    code: int | None = None
    rank: int | None = None


Event = Line | Bar | Totals | Epoch | Phase | CheckpointSaved | StateSaved | SampleStarted | Resumed | ModelSaved | Failure

# ------------------------------------------------------------------ patterns

_SPLIT = re.compile(r"[\r\n]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Za-z0-9]|\x1b[=>]")
_LEVELS = {"INFO     ": "INFO", "WARNING  ": "WARNING", "ERROR    ": "ERROR", "DEBUG    ": "DEBUG", "CRITICAL ": "CRITICAL"}
_SRC = re.compile(r"\s(\S+:\d+)$")
_CONT = " " * 29
_EPOCH = re.compile(r"^epoch (\d+)/(\d+)$")
_TOTAL = re.compile(r"^  (num train images \* repeats|num validation images \* repeats|num reg images|num batches per epoch|num epochs|batch size per device|"
                    r"gradient accumulation steps|total optimization steps) / [^:=]*[:=] ?(.*)$")
_STATE = re.compile(r"^save train state to (.+?)/train_state\.json at epoch (\d+) step (\d+)")
_LOADSTATE = re.compile(r"^load train state from (.+?)/train_state\.json: .*?'current_epoch': (\d+).*?'current_step': (\d+)")
_SAMPLE = re.compile(r"^generating sample images at step / .*?(\d+)\s*$")
_OVERRIDE = re.compile(r"^override steps\. steps for \d+ epochs is / .*?: (\d+)")
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Invalid))(?::(?: (.*))?)?$")
_RANK = re.compile(r"^\[rank(\d+)\]:\s?(.*)$")  # torchrun's prefix on a process's lines (tracebacks)
_RANK_INSIDE = re.compile(r"\[Rank (\d+)\]")  # ProcessGroupNCCL's own "[Rank 1] Watchdog caught …"
_ROOT_FIELD = re.compile(r"^\s+(rank|exitcode)\s*: (-?\d+)")
_CALLED = re.compile(r"returned non-zero exit status (-?\d+)|died with <Signals\.\w+: (\d+)>")

_PHASES = (
    ("Loading dataset config", "reading the dataset"),
    ("Loading state dict from", "loading models"),
    ("Building Flux", "loading models"),
    ("caching latents", "caching latents"),
    ("caching Text Encoder outputs", "caching text encoder outputs"),
    ("cache Text Encoder outputs for", "encoding sample prompts"),
    ("preparing accelerator", "preparing"),
    ("prepare optimizer", "preparing"),
    ("saving last state", "saving"),
    ("Saving current state to", "saving"),
    ("enable block swap", "loading models"),
)
_INTERESTING = (
    "epoch ", "saving checkpoint: ", "save train state to ", "model saved.", "running training",
    "generating sample images", "load train state from", "resume training from", "override steps", "No data found",
    "Invalid user config", "Traceback", *(prefix for prefix, _ in _PHASES),
)


def _cells(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


_SECONDS_CACHE: dict[str, float | None] = {}


def _seconds(text: str) -> float | None:
    cached = _SECONDS_CACHE.get(text, -1.0)
    if cached != -1.0:
        return cached
    value = _seconds_uncached(text)
    if len(_SECONDS_CACHE) < 8192:
        _SECONDS_CACHE[text] = value
    return value


def _seconds_uncached(text: str) -> float | None:
    if len(text) == 5 and text[2] == ":":  # MM:SS, the common case
        try:
            return float(int(text[:2]) * 60 + int(text[3:]))
        except ValueError:
            return None
    if "?" in text:
        return None
    total = 0.0
    for part in text.split(":"):
        total = total * 60 + int(part)
    return total


def _int(text: str) -> int | None:
    try:
        return int(text.strip().split(",")[0])
    except ValueError:
        return None


def parse_bar(text: str) -> Bar | None:
    parsed = _fast_bar(text)
    return parsed[0] if parsed else None


_DESC_CACHE: dict[str, str] = {}


def _fast_bar(text: str) -> tuple[Bar, int] | None:
    """The tqdm layout parsed with str methods (2-3x faster than the regex); None when it is not a bar."""
    pct_at = text.find("%|")
    if pct_at < 1:
        return None
    body_end = text.find("|", pct_at + 2)
    open_at = text.find(" [", body_end)
    close_at = text.find("]", open_at)
    if body_end < 0 or open_at < 0 or close_at < 0:
        return None
    try:
        n_text, slash, total_text = text[body_end + 1 : open_at].strip().partition("/")
        elapsed, less, rest = text[open_at + 2 : close_at].partition("<")
        remaining, comma, rest = rest.partition(",")
        if not (slash and less and comma):
            return None
        rate_text, _, post = rest.strip().partition(", ")
        if rate_text.endswith("it/s"):
            number = rate_text[:-4]
            rate = None if number == "?" else float(number)
        elif rate_text.endswith("s/it"):
            number = rate_text[:-4]
            rate = None if number == "?" else (1.0 / float(number) if float(number) > 0 else None)
        else:
            return None
        n, total = int(n_text), int(total_text)
        head = text[:pct_at]
        desc = _DESC_CACHE.get(head)
        if desc is None:
            digits = head.rstrip("0123456789")
            if len(digits) == pct_at:
                return None
            desc = digits.rstrip()
            desc = desc[:-1].strip() if desc.endswith(":") else desc.strip()
            if len(_DESC_CACHE) < 4096:
                _DESC_CACHE[head] = desc
        loss = None
        if post:
            at = post.find("avr_loss=")
            if at >= 0:
                end = post.find(",", at)
                loss = float(post[at + 9 : end if end >= 0 else len(post)])
        return Bar(desc, n, total, _seconds(elapsed) or 0.0, _seconds(remaining), rate, loss, post), close_at + 1
    except ValueError:
        return None


# ------------------------------------------------------------------ the parser


MAX_LINE = 16384  # characters of one physical line (or one unwrapped rich record) kept; the rest is dropped
_MAX_PARTIAL = 65536  # an unterminated line longer than this is cut: its head is kept, the rest skipped to a break


class LogParser:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._skipping = False  # dropping the rest of a runaway line up to its next break
        self._record: list[str] | None = None  # [level, piece, piece, ...]
        self._record_width = 0
        self._record_size = 0  # characters in the record so far (bounded by MAX_LINE)
        self._last_piece_cells = 0
        self._last_piece = ""
        self._early_bar: str | None = None  # text of a bar already reported from the unterminated tail
        self._open_bar: str | None = None  # last bar drawn, shown as a line once something else is printed
        self._totals: dict[str, str] | None = None
        self._tracebacks: set[int | None] = set()  # ranks (None: no prefix) inside a traceback
        self._rank: int | None = None  # rank of the line being read
        self._root_cause: dict[str, int] | None = None  # torchrun's "Root Cause (first observed failure)" block
        self._failed: set[tuple[str, int | None]] = set()  # (kind, rank) already reported: once per process

    # -- public

    def feed(self, data: bytes) -> list[Event]:
        return self.feed_text(self._decoder.decode(data))

    def feed_text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if not text:
            return events
        if self._skipping:  # the rest of a runaway line: memory per line stays bounded whatever its length
            found = _SPLIT.search(text)
            if found is None:
                return events
            self._skipping = False
            text = text[found.start() :]
        parts = _SPLIT.split(self._partial + text)
        self._partial = parts.pop()
        if len(self._partial) > _MAX_PARTIAL:  # a runaway line without breaks: its head is a line, the rest skipped
            parts.append(self._partial)
            self._partial = ""
            self._skipping = True
        segment = self._segment
        for part in parts:
            if part:
                segment(part if len(part) <= MAX_LINE else part[:MAX_LINE], events)
        if self._partial and "%|" in self._partial:
            self._peek_bar(events)
        return events

    def flush(self) -> list[Event]:
        """Close a pending rich record now (call when the log has been quiet for a moment)."""
        events: list[Event] = []
        self._close_record(events)
        return events

    def finish(self) -> list[Event]:
        events = self.feed_text(self._decoder.decode(b"", final=True))
        if self._partial:
            part, self._partial = self._partial, ""
            self._segment(part, events)
        self._close_record(events)
        self._close_totals(events)
        if self._open_bar is not None:
            events.append(Line(self._open_bar))
            self._open_bar = None
        return events

    # -- segments

    def _peek_bar(self, events: list[Event]) -> None:
        text = self._partial
        if "\x1b" in text:
            text = _ANSI.sub("", text)
        parsed = _fast_bar(text)
        if parsed is not None and text[: parsed[1]] != self._early_bar:
            if self._record is not None:
                self._close_record(events)
            if self._totals is not None:
                self._close_totals(events)
            self._early_bar = text[: parsed[1]]
            self._open_bar = self._early_bar
            events.append(parsed[0])

    def _segment(self, text: str, events: list[Event]) -> None:
        if "\x1b" in text:
            text = _ANSI.sub("", text)
            if not text:
                return
        if "%|" in text:
            parsed = _fast_bar(text)
            if parsed is not None:
                bar, end = parsed
                bar_text = text[:end]
                if bar_text != self._early_bar:
                    if self._record is not None:
                        self._close_record(events)
                    if self._totals is not None:
                        self._close_totals(events)
                    events.append(bar)
                self._early_bar = None
                self._open_bar = bar_text
                if end < len(text) and text[end:].strip():
                    self._segment(text[end:], events)
                return
        self._early_bar = None
        if text[:5] == "[rank":
            match = _RANK.match(text)
            if match:
                self._close_record(events)
                self._rank = int(match.group(1))
                self._message(match.group(2).rstrip(), "", events)
                return
        self._rank = None
        if len(text) > 29 and text[19] == " " and text[20:29] in _LEVELS and (text[0] == " " or text[0].isdigit()):
            self._start_record(text, events)
            return
        if self._record is not None and text.startswith(_CONT):
            piece = text[29:].rstrip()
            # rich folds only a word longer than the line, and starts it on a line of its own: a full line that is
            # one word was folded (no space was there); a full line of words ended at a space rich dropped
            if self._record_size > MAX_LINE:  # a record of endless continuation lines: the rest is dropped
                return
            self._record_size += len(piece) + 1
            if self._last_piece_cells >= self._record_width and " " not in self._last_piece.strip():
                self._record[-1] += piece
            else:
                self._record.append(piece)
            self._last_piece_cells, self._last_piece = _cells(piece), piece
            return
        self._close_record(events)
        if not text.strip():
            return
        if self._open_bar is not None:
            events.append(Line(self._open_bar))
            self._open_bar = None
        self._message(text.rstrip(), "", events)

    def _start_record(self, text: str, events: list[Event]) -> None:
        self._close_record(events)
        if self._open_bar is not None:
            events.append(Line(self._open_bar))
            self._open_bar = None
        level = _LEVELS[text[20:29]]
        source = _SRC.search(text)
        if source:
            body = text[29 : source.start()]
            self._record_width = _cells(text) - 29 - 1 - len(source.group(1))
        else:
            body = text[29:]
            self._record_width = _cells(text) - 29
        piece = body.rstrip()
        self._record = [level, piece]
        self._record_size = len(piece)
        self._last_piece_cells, self._last_piece = _cells(piece), piece

    def _close_record(self, events: list[Event]) -> None:
        record = self._record
        if record is None:
            return
        self._record = None
        message = " ".join(piece for piece in record[1:] if piece) if len(record) > 2 else record[1]
        self._message(message, record[0], events)

    def _close_totals(self, events: list[Event]) -> None:
        totals = self._totals
        if totals is None:
            return
        self._totals = None
        events.append(Totals(
            _int(totals.get("num train images * repeats", "")), _int(totals.get("num batches per epoch", "")),
            _int(totals.get("num epochs", "")), totals.get("batch size per device", "").strip(),
            _int(totals.get("gradient accumulation steps", "")), _int(totals.get("total optimization steps", "")),
        ))

    # -- messages

    def _message(self, text: str, level: str, events: list[Event]) -> None:
        if self._totals is not None and self._totals_field(text, level, events):
            return
        if not level and self._launcher_message(text, events):
            return
        if self._traceback_end(text, level, events):
            return
        events.append(Line(text, level, self._rank))
        if not text.startswith(_INTERESTING):
            if level == "ERROR" or (not level and text[:1].isalpha() and _EXC.match(text)):
                self._other(text, level, events)
            return
        for prefix, handle in _MESSAGE_HANDLERS:
            if text.startswith(prefix):
                handle(self, text, level, events)
                return
        for prefix, phase in _PHASES:
            if text.startswith(prefix):
                events.append(Phase(phase))
                break

    def _totals_field(self, text: str, level: str, events: list[Event]) -> bool:
        """One line of the `running training` block (True: consumed); any other line ends the block."""
        assert self._totals is not None
        match = _TOTAL.match(text)
        if not match:
            self._close_totals(events)
            return False
        self._totals[match.group(1)] = match.group(2)
        events.append(Line(text, level))
        if match.group(1) == "total optimization steps":
            self._close_totals(events)
        return True

    def _launcher_message(self, text: str, events: list[Event]) -> bool:
        """A plain line from torchrun or NCCL: the Root Cause block, a known several-GPU failure, the SIGTERM to
        the other ranks (True: handled)."""
        if self._root_cause is not None and self._torchrun_root(text, events):
            return True
        known = ddp_failures.match(text)
        if known is not None:
            self._tracebacks.discard(self._rank)
            events.append(Line(text, "ERROR", self._rank))
            inside = _RANK_INSIDE.search(text) if self._rank is None else None
            self._fail(known.kind, text, events, rank=int(inside.group(1)) if inside else self._rank)
            return True
        if text.startswith("Root Cause (first observed failure)"):
            self._root_cause = {}
        elif "closing signal SIGTERM" in text:  # torchrun stops the other ranks after one failed
            events.append(Line(text, "", self._rank))
            events.append(Phase("stopping the other processes"))
            return True
        return False

    def _traceback_end(self, text: str, level: str, events: list[Event]) -> bool:
        """The exception line that closes this rank's traceback (True: handled)."""
        if not self._tracebacks or text.startswith(" ") or level or self._rank not in self._tracebacks:
            return False
        exc = _EXC.match(text)
        if not exc:
            return False
        self._tracebacks.discard(self._rank)
        events.append(Line(text, "ERROR", self._rank))
        self._exception(exc.group(1), text, events)
        return True

    # One handler per message kind, tried in order by prefix (after the line itself was emitted).

    def _epoch(self, text: str, level: str, events: list[Event]) -> None:
        match = _EPOCH.match(text)
        if match:
            events.append(Epoch(int(match.group(1)), int(match.group(2))))

    def _checkpoint_saved(self, text: str, level: str, events: list[Event]) -> None:
        events.append(CheckpointSaved(text[len("saving checkpoint: "):].strip()))

    def _state_saved(self, text: str, level: str, events: list[Event]) -> None:
        match = _STATE.match(text)
        if match:
            events.append(StateSaved(match.group(1), int(match.group(2)), int(match.group(3))))

    def _model_saved(self, text: str, level: str, events: list[Event]) -> None:
        events.append(ModelSaved())

    def _training_started(self, text: str, level: str, events: list[Event]) -> None:
        self._totals = {}
        events.append(Phase("training"))

    def _sample_started(self, text: str, level: str, events: list[Event]) -> None:
        match = _SAMPLE.match(text)
        events.append(SampleStarted(int(match.group(1)) if match else -1))
        events.append(Phase("sampling"))

    def _resumed(self, text: str, level: str, events: list[Event]) -> None:
        match = _LOADSTATE.match(text)
        if match:
            events.append(Resumed(match.group(1), int(match.group(2)), int(match.group(3))))

    def _steps_overridden(self, text: str, level: str, events: list[Event]) -> None:
        match = _OVERRIDE.match(text)
        if match:
            events.append(Totals(None, None, None, "", None, int(match.group(1))))

    def _traceback_started(self, text: str, level: str, events: list[Event]) -> None:
        self._tracebacks.add(self._rank)

    def _torchrun_root(self, text: str, events: list[Event]) -> bool:
        """Inside torchrun's "Root Cause" block: `rank : 1 (local_rank: 1)`, `exitcode : -9 (pid: …)`."""
        root = self._root_cause
        assert root is not None
        if text.startswith("=") or text.startswith("Failures:"):
            self._root_cause = None
            return False
        match = _ROOT_FIELD.match(text)
        if not match:
            return False
        root[match.group(1)] = int(match.group(2))
        events.append(Line(text))
        if "rank" in root and "exitcode" in root:
            rank, code = root["rank"], root["exitcode"]
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self._root_cause = None
            self._fail("rank_failed", f"rank {rank} failed first: it {how}", events, code=code, rank=rank)
        return True

    def _fail(self, kind: str, text: str, events: list[Event], *, code: int | None = None,
              rank: int | None = None) -> None:
        """A Failure, once per (kind, rank): every rank repeats the same error; the watchdog prints it twice."""
        if (kind, rank) in self._failed:
            return
        self._failed.add((kind, rank))
        events.append(Failure(kind, text, code, rank))

    def _other(self, text: str, level: str, events: list[Event]) -> None:
        if text.startswith("No data found"):
            self._fail("no_data", text, events, rank=self._rank)
        elif text.startswith("Invalid user config"):
            self._fail("dataset_config", text, events, rank=self._rank)
        elif not level:
            exc = _EXC.match(text)
            if exc:
                self._exception(exc.group(1), text, events)

    def _exception(self, name: str, text: str, events: list[Event]) -> None:
        rank = self._rank
        if "CUDA out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text or "CUDA error: out of memory" in text:
            self._fail("oom", text, events, rank=rank)
        elif name.endswith(("CalledProcessError", "ChildFailedError")):
            match = _CALLED.search(text)
            code = None
            if match:
                code = int(match.group(1)) if match.group(1) else -int(match.group(2))
            self._fail("launcher", text, events, code=code, rank=rank)
        elif name == "FileNotFoundError" or name.endswith("SafetensorError"):
            self._fail("missing_model", text, events, rank=rank)
        elif name.startswith("voluptuous"):
            self._fail("dataset_config", text, events, rank=rank)
        elif name == "ValueError" and "Tried to find" in text:
            self._fail("resume_missing", text, events, rank=rank)
        elif name == "KeyboardInterrupt":
            self._fail("interrupted", text, events, rank=rank)
        else:
            self._fail("exception", text, events, rank=rank)


_MESSAGE_HANDLERS: tuple[tuple[str | tuple[str, ...], Callable[[LogParser, str, str, list[Event]], None]], ...] = (
    ("epoch ", LogParser._epoch),
    ("saving checkpoint: ", LogParser._checkpoint_saved),
    ("save train state to ", LogParser._state_saved),
    ("model saved.", LogParser._model_saved),
    ("running training", LogParser._training_started),
    ("generating sample images", LogParser._sample_started),
    ("load train state from", LogParser._resumed),
    ("override steps", LogParser._steps_overridden),
    ("Traceback", LogParser._traceback_started),
    (("No data found", "Invalid user config"), LogParser._other),
)


def parse_bytes(data: bytes, chunk: int = 1 << 16) -> list[Event]:
    """All events of a whole log (tests, the full-log view, the headless summary)."""
    parser = LogParser()
    events: list[Event] = []
    for start in range(0, len(data), chunk):
        events += parser.feed(data[start : start + chunk])
    return events + parser.finish()


# ------------------------------------------------------------------ state for the dashboard


class LossHistory:
    """avr_loss over absolute steps, downsampled: at most `limit` points, the stride doubles when full."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self.stride = 1
        self.points: list[tuple[int, float]] = []
        self._last_step = -1

    def add(self, step: int, loss: float) -> None:
        if step == self._last_step and self.points:
            self.points[-1] = (step, loss)  # set_postfix redraw of the same step: keep the newest value
            return
        self._last_step = step
        if step % self.stride:
            return
        self.points.append((step, loss))
        if len(self.points) >= self.limit:
            self.stride *= 2
            self.points = [p for p in self.points if p[0] % self.stride == 0]

    def values(self, count: int | None = None) -> list[float]:
        return downsample([loss for _, loss in self.points], count)


def downsample(values: list[float], count: int | None) -> list[float]:
    """At most `count` values: the mean of each bin (nan where a bin holds none that is finite)."""
    if count is None or len(values) <= count:
        return values
    size = len(values) / count  # mean of each bin
    return [_finite_mean(values[int(i * size) : max(int(i * size) + 1, int((i + 1) * size))]) for i in range(count)]


def _ends_round(event: Event) -> bool:
    """An event after which a sampling round is over: the trainer saves, trains on or starts another phase."""
    kind = type(event)
    if kind is Bar:
        return event.desc == "steps"  # type: ignore[union-attr]
    if kind is Phase:
        return event.name != "sampling"  # type: ignore[union-attr]
    return kind.__name__ in _ROUND_ENDS


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


class PhaseProgress(NamedTuple):
    """What the trainer is doing now, for a person: a label, its own count and rate, and its own time left."""

    label: str  # "caching text encoder outputs", "sampling prompt 1/2", "training", …
    done: int | None
    total: int | None
    rate: float | None  # units per second, once the phase's bar has one
    unit: str  # what is counted: "images", "batches", "steps"
    elapsed_s: float | None
    left_s: float | None


# what a phase's tqdm bar counts (sd-scripts prints these bars without a description)
_PHASE_UNITS = {"caching latents": "images", "caching text encoder outputs": "batches", "sampling": "steps",
                "reading the dataset": "images", "encoding sample prompts": "prompts", "training": "steps",
                "validating": "steps"}
# train_network.py's bar for the validation at an epoch's end: `epoch validation steps: 100%|…| 8/8 [00:02<00:00,
# 3.95it/s, val_epoch_avg_loss=0.412, timestep=800]` (its recorder keeps one value per validation step and timestep,
# so at n == total the average is that epoch's: the `loss/validation/epoch_average` it logs to TensorBoard)
VALIDATION_BAR = "epoch validation steps"
_VAL_KEY = "val_epoch_avg_loss="


def validation_loss(postfix: str) -> float | None:
    """`val_epoch_avg_loss` from a validation bar's postfix (None when it has none)."""
    at = postfix.find(_VAL_KEY)
    if at < 0:
        return None
    end = postfix.find(",", at)
    try:
        return float(postfix[at + len(_VAL_KEY) : end if end >= 0 else len(postfix)])
    except ValueError:
        return None
_TQDM_SETTLES = 10  # training bars after an epoch end until tqdm's smoothed rate (0.3 per update) has forgotten it
_ROUND_ENDS = ("CheckpointSaved", "StateSaved", "ModelSaved", "Epoch")


class _Timing:
    """What the run itself says about time beyond its training steps: how long one sampling round (all prompts) and
    one save (an epoch's LoRA and state) take, learned from the bars' elapsed times (never the wall clock, so a log
    read late gives the same numbers). A sampling round is timed by its own bars; a save by the gap it leaves in the
    training bar's elapsed time beyond the steps' own time and the sampling in that gap."""

    def __init__(self) -> None:
        self.rounds: list[float] = []  # seconds of each finished sampling round
        self.saves: list[float] = []  # seconds of each epoch-end save measured
        self.clean_s = 0.0  # training time over gaps with nothing but steps in them
        self.clean_n = 0
        self.in_round = False
        self.round_done_s = 0.0  # finished prompts of the round in progress
        self.prompt_elapsed_s = 0.0  # the prompt bar in progress
        self.prompt_n = -1
        self.prompts_seen = 0
        self.prompt_bar: Bar | None = None
        self.gap_rounds_s = 0.0  # sampling since the last training bar
        self.gap_has_end = False  # a save or a sampling round since the last training bar
        self.last_steps: Bar | None = None
        self.end_at: int | None = None  # the training bar's count just after the last epoch end

    def start_round(self) -> None:
        self.in_round, self.round_done_s, self.prompt_elapsed_s = True, 0.0, 0.0
        self.prompt_n, self.prompts_seen, self.prompt_bar = -1, 0, None

    def sample_bar(self, bar: Bar) -> None:
        if self.prompt_n < 0 or bar.n < self.prompt_n:  # a new prompt's bar starts at 0
            self.round_done_s += self.prompt_elapsed_s if self.prompt_n >= 0 else 0.0
            self.prompts_seen += 1
        self.prompt_n, self.prompt_elapsed_s, self.prompt_bar = bar.n, bar.elapsed_s, bar

    def end_round(self) -> None:
        if not self.in_round:
            return
        self.in_round = False
        if self.prompt_n < 0:  # no bar drawn: nothing measured
            return
        seconds = self.round_done_s + self.prompt_elapsed_s
        self.rounds.append(seconds)
        self.gap_rounds_s += seconds
        self.gap_has_end = True

    def steps_bar(self, bar: Bar) -> None:
        self.end_round()
        last = self.last_steps
        if last is None or bar.n <= last.n:
            if last is None or bar.n < last.n:  # the first bar (or a new count): no gap to measure yet
                self.last_steps, self.gap_has_end, self.gap_rounds_s = bar, False, 0.0
            return
        gap, count = bar.elapsed_s - last.elapsed_s, bar.n - last.n
        if self.gap_has_end:
            per = self.step_s(last.rate)
            if per is not None:
                saving = gap - count * per - self.gap_rounds_s
                if saving > 0:
                    self.saves.append(saving)
            self.end_at = bar.n
        elif gap >= 0:
            self.clean_s += gap
            self.clean_n += count
        self.gap_has_end, self.gap_rounds_s, self.last_steps = False, 0.0, bar

    def step_s(self, rate: float | None) -> float | None:
        """Seconds per training step: tqdm's rate, except for the few steps after an epoch end, whose time tqdm's
        smoothed rate still carries (a 1:40 sampling made 7 s steps look like 37 s ones): then the steps' own time
        measured over the gaps without an epoch end."""
        clean = self.clean_s / self.clean_n if self.clean_n >= 4 and self.clean_s > 0 else None
        last = self.last_steps
        fresh_end = self.end_at is not None and last is not None and last.n - self.end_at < _TQDM_SETTLES
        if clean is not None and (fresh_end or not rate):
            return clean
        return 1.0 / rate if rate else clean

    @property
    def sampling_s(self) -> float | None:
        return sum(self.rounds) / len(self.rounds) if self.rounds else None

    @property
    def saving_s(self) -> float | None:
        return sum(self.saves) / len(self.saves) if self.saves else None

    def round_left_s(self, prompts: int | None) -> float | None:
        """Time left in the sampling round in progress (learned from earlier rounds, else from its own bars)."""
        done = self.round_done_s + self.prompt_elapsed_s
        if self.sampling_s is not None:
            return max(0.0, self.sampling_s - done)
        bar = self.prompt_bar
        if bar is None or not bar.rate:
            return None
        per_prompt = bar.total / bar.rate
        rest = max(0, (prompts or self.prompts_seen) - self.prompts_seen) * per_prompt
        return rest + max(0.0, (bar.total - bar.n) / bar.rate)


_TRAINING_PHASES = frozenset((
    "starting", "preparing", "saving", "sampling", "caching latents", "caching text encoder outputs", "loading models",
    "reading the dataset", "encoding sample prompts", "validating",
))


@dataclass
class TrainState:
    """What is known about one run, from its log (and from the run record: `base_step`, `base_epoch`)."""

    base_step: int = 0  # absolute step at which this run (a resume) started
    base_epoch: int = 0
    tail_lines: int = 400
    step: int = 0  # absolute
    total_steps: int | None = None
    epoch: int = 0
    epochs: int | None = None
    steps_per_epoch: int | None = None
    rate: float | None = None  # it/s
    elapsed_s: float = 0.0
    loss: float | None = None
    phase: str = "starting"
    phase_bar: Bar | None = None  # a non-training bar (caching, sampling)
    checkpoints: list[str] = field(default_factory=list)
    states: list[StateSaved] = field(default_factory=list)
    samples: int = 0
    model_saved: bool = False
    failures: list[Failure] = field(default_factory=list)
    resumed_from: Resumed | None = None
    nan_since: int | None = None
    last_bar: Bar | None = None
    lines: deque[Line] = field(default_factory=deque)
    events_seen: int = 0
    line_count: int = 0  # display lines ever appended (the tail keeps the last `tail_lines`)
    processes: int = 1  # trainer processes (several GPUs): every rank prints the same warnings
    repeats_hidden: int = 0  # warnings not shown again because another rank already printed them
    # from the run's command (the follower sets them): what comes at epoch ends, for the ETA
    sample_every: int | None = None  # --sample_every_n_epochs (None: no sampling)
    save_every: int | None = None  # --save_every_n_epochs (the last epoch is always saved)
    sample_prompts: int | None = None  # prompts per sampling round
    sampled_epoch: int = 0  # the last epoch whose end was sampled
    saved_epoch: int = 0  # the last epoch whose LoRA was saved
    # per epoch (absolute): the training loss at its last step (avr_loss, sd-scripts' `loss/epoch_average`) and the
    # validation loss at the end of its validation (`val_epoch_avg_loss`); kept in the log index
    train_by_epoch: dict[int, float] = field(default_factory=dict)
    val_by_epoch: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lines = deque(maxlen=self.tail_lines)
        self.losses = LossHistory()
        self._warning_copies: dict[str, int] = {}
        self.timing = _Timing()
        self._bar_label = ""
        if self.base_step:
            self.step = self.base_step
            # the epoch in progress: the resumed run's first epoch is the one after those the state finished
            self.epoch = self.base_epoch + 1
            self.sampled_epoch = self.saved_epoch = self.base_epoch

    @property
    def eta_s(self) -> float | None:
        """The run's time left: its steps, plus the sampling rounds and saves still to come (each as long as the run's
        own were), plus what is left of a sampling round in progress."""
        if self.total_steps is None:
            return None
        per = self.timing.step_s(self.rate)
        if per is None:
            return None
        return max(0.0, (self.total_steps - self.step) * per) + self.epoch_ends_left_s()

    def epoch_ends_left_s(self) -> float:
        timing, epochs = self.timing, self.epochs
        seconds = 0.0
        if timing.in_round:
            seconds += timing.round_left_s(self.sample_prompts) or 0.0
        if not epochs:
            return seconds
        now = max(1, self.epoch)
        if self.sample_every and timing.sampling_s is not None:
            rounds = sum(1 for e in range(max(now, self.sampled_epoch + 1), epochs + 1) if e % self.sample_every == 0)
            seconds += rounds * timing.sampling_s
        if timing.saving_s is not None:
            every = self.save_every or epochs
            saves = sum(1 for e in range(max(now, self.saved_epoch + 1), epochs + 1) if e % every == 0 or e == epochs)
            seconds += saves * timing.saving_s
        return seconds

    @property
    def phase_progress(self) -> PhaseProgress:
        """The phase with its own count, rate and time left (a phase without a bar: its label alone)."""
        phase, bar, timing = self.phase, self.phase_bar, self.timing
        if phase == "training" or (phase == "starting" and self.last_bar is not None and self.last_bar.desc == "steps"):
            per = timing.step_s(self.rate)
            left = max(0.0, (self.total_steps - self.step) * per) if self.total_steps and per else None
            return PhaseProgress("training", self.step, self.total_steps, self.rate, "steps", None, left)
        if phase == "sampling":
            prompts = self.sample_prompts
            which = f" {max(1, timing.prompts_seen)}/{prompts}" if prompts else (
                f" {timing.prompts_seen}" if timing.prompts_seen else "")
            label = f"sampling prompt{which}"
            if bar is None:
                return PhaseProgress(label, None, None, None, "steps", None, timing.round_left_s(prompts))
            return PhaseProgress(label, bar.n, bar.total, bar.rate, "steps", bar.elapsed_s,
                                 timing.round_left_s(prompts))
        if bar is None:
            return PhaseProgress(phase, None, None, None, "", None, None)
        return PhaseProgress(phase, bar.n, bar.total, bar.rate, _PHASE_UNITS.get(phase, "items"), bar.elapsed_s,
                             bar.remaining_s)

    def forget_timing_gap(self) -> None:
        """The log's middle was skipped: the next training bar's gap from the last one says nothing."""
        self.timing.last_steps = None
        self.timing.gap_has_end, self.timing.gap_rounds_s = False, 0.0

    @property
    def fraction(self) -> float | None:
        if not self.total_steps:
            return None
        return max(0.0, min(1.0, self.step / self.total_steps))

    def apply(self, events: list[Event]) -> None:
        # `type(event) is` rather than isinstance: exact classes, and the type checker narrows on it
        for event in events:
            self.events_seen += 1
            if self.timing.in_round and _ends_round(event):
                self.timing.end_round()
            if type(event) is Line:
                if self.processes > 1 and event.level == "WARNING" and self._repeated(event.text):
                    continue
                self.lines.append(event)
                self.line_count += 1
            elif type(event) is Bar:
                self._bar(event)
            elif type(event) is Epoch:
                self.epoch, self.epochs = event.n, event.total
                self.phase = "training"
            elif type(event) is Totals:
                if event.total_steps is not None:
                    self.total_steps = event.total_steps
                if event.epochs is not None:
                    self.epochs = event.epochs
                if event.batches_per_epoch is not None:
                    self.steps_per_epoch = event.batches_per_epoch
            elif type(event) is Phase:
                if event.name != self.phase:
                    self.phase_bar = None  # the last phase's bar: the new phase has none yet
                self.phase = event.name
            elif type(event) is CheckpointSaved:
                self.checkpoints.append(event.path)
                self.phase = "saving"
                self.saved_epoch = max(self.saved_epoch, self.epoch)
                self.timing.gap_has_end = True
            elif type(event) is StateSaved:
                self.states.append(event)
            elif type(event) is SampleStarted:
                self.samples += 1
                self.timing.start_round()
                if event.step:  # not the baseline before training
                    self.sampled_epoch = max(self.sampled_epoch, self.epoch)
            elif type(event) is Resumed:
                self.resumed_from = event
            elif type(event) is ModelSaved:
                self.model_saved = True
                self.phase = "finished"
            elif type(event) is Failure:
                self.failures.append(event)

    def _repeated(self, text: str) -> bool:
        """True for the 2nd..Nth copy of a warning when N processes run (shown once, counted in repeats_hidden)."""
        copies = self._warning_copies
        if len(copies) > 4096:
            copies.clear()
        seen = copies.get(text, 0)
        copies[text] = seen + 1
        if seen % self.processes:
            self.repeats_hidden += 1
            return True
        return False

    @property
    def failed_ranks(self) -> list[int]:
        """Ranks that reported a failure (torchrun's root cause first), for "which process failed"."""
        root = [f.rank for f in self.failures if f.kind == "rank_failed" and f.rank is not None]
        others = sorted({f.rank for f in self.failures if f.rank is not None} - set(root))
        return root + others

    @property
    def bar_line(self) -> str:
        """The newest bar as one short line (what the terminal's '\r' line shows now), labelled with its phase when
        sd-scripts gave it no description; the training bar counts absolute steps, as the header does (a resumed
        run's sd-scripts restarts its own count)."""
        bar = self.last_bar
        if bar is None:
            return ""
        if bar.desc == "steps":
            total = self.total_steps if self.total_steps is not None else bar.total
            return f"steps: {self.step}/{total} {bar.postfix}".rstrip()
        return f"{self._bar_label}: {bar.n}/{bar.total} {bar.postfix}".rstrip()

    def _bar(self, bar: Bar) -> None:
        self.last_bar = bar
        if bar.desc != "steps":
            if bar.desc == VALIDATION_BAR:
                self._validation_bar(bar)
            self.phase_bar = bar
            if self.phase == "sampling" and self.timing.in_round:
                self.timing.sample_bar(bar)
            self._bar_label = bar.desc or self.phase_progress.label  # the phase it was drawn in
            return
        self.phase_bar = None
        self.timing.steps_bar(bar)
        if self.phase != "training" and self.phase in _TRAINING_PHASES:
            self.phase = "training"
        if self.total_steps is None:
            self.total_steps = bar.total
        step = self.step = self.base_step + bar.n
        if bar.rate is not None:
            self.rate = bar.rate
        self.elapsed_s = bar.elapsed_s
        loss = bar.loss
        if loss is not None:
            self.loss = loss
            self.losses.add(step, loss)
            if loss != loss:  # nan
                if self.nan_since is None:
                    self.nan_since = step
            elif self.nan_since is not None:
                self.nan_since = None
        if self.steps_per_epoch and self.epochs and bar.n:
            # keep the epoch consistent with the absolute step even if sd-scripts' epoch line was lost
            self.epoch = max(self.epoch, min(self.epochs, (self.step - 1) // self.steps_per_epoch + 1))
        if loss is not None and bar.n and self.epoch:
            self.train_by_epoch[self.epoch] = loss  # the newest step's: at the epoch's end, its average

    def _validation_bar(self, bar: Bar) -> None:
        """The validation at an epoch's end: its loss once the bar is full (a validation cut short says nothing)."""
        if self.phase in _TRAINING_PHASES or self.phase == "training":
            self.phase = "validating"
        value = validation_loss(bar.postfix)
        if value is not None and bar.total and bar.n >= bar.total and self.epoch:
            self.val_by_epoch[self.epoch] = value
