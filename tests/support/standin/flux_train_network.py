"""Stand-in for kohya-ss sd-scripts' `flux_train_network.py` (a test double, never the real trainer).

Accepts sd-scripts' command line (the options that matter; unknown ones are ignored), reads the dataset config
TOML, and prints sd-scripts' real console formats: rich-wrapped log records on stderr (80 columns, or $COLUMNS),
`print` lines on stdout, tqdm `\\r` bars on stderr. Writes epoch checkpoints, `-state` folders with
`train_state.json`, sample PNGs, the final `<name>.safetensors`, and ends with `model saved.`.

Behaviour is steered by environment variables (see tests/support/standin/README.md):
STANDIN_STEP_SECONDS, STANDIN_LOAD_SECONDS, STANDIN_VRAM_BUDGET, STANDIN_PEAK_FILE, STANDIN_BYTES_PER_PIXEL,
STANDIN_NAN_AT_STEP, STANDIN_KILL_AT_STEP, STANDIN_HANG_AT_STEP, STANDIN_FAIL, STANDIN_IGNORE_SIGINT,
STANDIN_IGNORE_SIGTERM, STANDIN_CHECK_MODELS, STANDIN_CKPT_BYTES, STANDIN_ARGS_FILE, STANDIN_FAIL_OUTPUT,
STANDIN_MODEL (+ STANDIN_VRAM_BYTES, STANDIN_VRAM_BY_DEVICE, STANDIN_SLOWER_BY_DEVICE and standin_model.py's
parameters).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
import tomllib
import unicodedata
from datetime import datetime
from pathlib import Path

ENV = os.environ
STEP_SECONDS = float(ENV.get("STANDIN_STEP_SECONDS", "0.02"))
STARTED_AT = time.time()
LOAD_SECONDS = float(ENV.get("STANDIN_LOAD_SECONDS", "0"))
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


# ------------------------------------------------------------------ console formats


def _cells(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _fold(word: str, width: int) -> list[str]:
    pieces, current = [], ""
    for char in word:
        if _cells(current) + _cells(char) > width:
            pieces.append(current)
            current = ""
        current += char
    return pieces + ([current] if current else [])


def _wrap(message: str, width: int) -> list[str]:
    """rich's word wrap: words that don't fit go to the next line, longer-than-width words are folded."""
    out: list[str] = []
    for paragraph in message.split("\n"):
        indent = paragraph[: len(paragraph) - len(paragraph.lstrip(" "))]
        words = paragraph.split()
        line = indent
        if not words:
            out.append("")
            continue
        for word in words:
            candidate = word if line.strip() == "" and line == indent else " " + word
            if line == indent:
                candidate = word
            if _cells(line) + _cells(candidate) <= width:
                line += candidate
                continue
            if line.strip():
                out.append(line)
            if _cells(word) > width:
                *full, line = _fold(word, width)
                out.extend(full)
            else:
                line = word
        out.append(line)
    return out


class Console:
    def __init__(self, simple: bool) -> None:
        self.simple = simple
        self.width = max(60, int(ENV.get("COLUMNS", "80") or 80))
        self._last_time = ""

    def log(self, level: str, message: str, source: str) -> None:
        if self.simple:
            sys.stdout.write(message + "\n")
            sys.stdout.flush()
            return
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        shown = stamp if stamp != self._last_time else " " * len(stamp)
        self._last_time = stamp
        width = self.width - 29 - 1 - len(source)
        lines = _wrap(message, width) or [""]
        out = []
        for index, piece in enumerate(lines):
            pad = " " * max(0, width - _cells(piece))
            if index == 0:
                out.append(f"{shown} {level:<8} {piece}{pad} {source}")
            else:
                out.append(" " * 29 + piece + pad + " " * (1 + len(source)))
        sys.stderr.write("\n".join(out) + "\n")
        sys.stderr.flush()

    def info(self, message: str, source: str = "train_network.py:1") -> None:
        self.log("INFO", message, source)

    def warning(self, message: str, source: str = "train_network.py:1") -> None:
        self.log("WARNING", message, source)

    def error(self, message: str, source: str = "train_network.py:1") -> None:
        self.log("ERROR", message, source)


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _fmt_float(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3g}"


class Bar:
    """tqdm's layout into a pipe: `\\rdesc:  40%|████      | 2/5 [00:00<00:00,  6.63it/s, avr_loss=1.12]`."""

    def __init__(self, total: int, desc: str = "", position: int = 0) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.position = position  # tqdm's second bar (validation under the steps bar): "\n", the line, "\x1b[A"
        self.start = time.monotonic()
        self.postfix = ""
        self.draw()

    def draw(self) -> None:
        elapsed = time.monotonic() - self.start
        percent = round(100 * self.n / self.total) if self.total else 0
        filled = 10 * self.n / self.total if self.total else 0
        full = int(filled)
        partial = " ▏▎▍▌▋▊▉"[int((filled - full) * 8)] if full < 10 else ""
        body = ("█" * full + (partial if partial.strip() else (" " if full < 10 else "")))[:10].ljust(10)
        if self.n == 0:
            stats = f"[00:00<?, ?it/s{', ' + self.postfix if self.postfix else ''}]"
        else:
            rate = self.n / max(elapsed, 1e-9)
            remaining = (self.total - self.n) / rate
            rate_text = f"{rate:5.2f}it/s" if rate >= 1 else f"{1 / rate:5.2f}s/it"
            post = f", {self.postfix}" if self.postfix else ""
            stats = f"[{_fmt_time(elapsed)}<{_fmt_time(remaining)}, {rate_text}{post}]"
        prefix = f"{self.desc}: " if self.desc else ""
        down, up = "\n" * self.position, "\x1b[A" * self.position
        sys.stderr.write(f"{down}\r{prefix}{percent:3d}%|{body}| {self.n}/{self.total} {stats}{up}")
        sys.stderr.flush()

    def update(self) -> None:
        self.n += 1
        self.draw()

    def set_postfix(self, **values: float | int) -> None:
        self.postfix = ", ".join(f"{k}={_fmt_float(v)}" for k, v in values.items())
        self.draw()

    def close(self) -> None:
        self.draw()
        sys.stderr.write("\n")
        sys.stderr.flush()


# ------------------------------------------------------------------ helpers


def traceback_exit(lines: list[str], final: str, code: int = 1) -> None:
    sys.stderr.write("Traceback (most recent call last):\n")
    sys.stderr.write(f'  File "{Path(__file__).resolve()}", line 547, in <module>\n    trainer.train(args)\n')
    for line in lines:
        sys.stderr.write(line + "\n")
    sys.stderr.write(final + "\n")
    sys.stderr.flush()
    raise SystemExit(code)


def oom_exit() -> None:
    traceback_exit(
        [
            '  File "/sd-scripts/train_network.py", line 1453, in train',
            "    accelerator.backward(loss)",
        ],
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 MiB. GPU 0 has a total capacity of "
        "23.64 GiB of which 11.56 MiB is free. Including non-PyTorch memory, this process has 23.62 GiB memory in "
        "use. Of the allocated memory 22.80 GiB is allocated by PyTorch, and 386.31 MiB is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
    )


def write_sparse(path: Path, size: int, metadata: dict[str, str] | None = None) -> None:
    """A complete safetensors file of `size` bytes (sparse): the 8-byte header length, the JSON header (with
    sd-scripts' `__metadata__` when given, all values strings) and one U8 tensor that fills the rest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    data = size
    for _ in range(3):  # the header's length depends on the tensor's size written in it: settle both
        header["lora_unet_standin.lora_down.weight"] = {"dtype": "U8", "shape": [data], "data_offsets": [0, data]}
        text = json.dumps(header).encode()
        data = max(0, size - 8 - len(text))
    with open(path, "wb") as handle:
        handle.write(len(text).to_bytes(8, "little") + text)
        handle.truncate(8 + len(text) + data)


def lora_metadata(args: argparse.Namespace, name: str, epoch: int, step: int) -> dict[str, str]:
    """What sd-scripts' train_network.py writes into a saved LoRA's metadata (a few of its keys; strings)."""
    return {"ss_output_name": name, "ss_epoch": str(epoch), "ss_steps": str(step),
            "ss_num_epochs": str(args.max_train_epochs or ""), "ss_network_module": "networks.lora_flux",
            "ss_network_dim": str(args.network_dim or 4), "ss_training_started_at": str(STARTED_AT),
            "ss_base_model_version": "flux1"}


VALIDATION_TIMESTEPS = (200, 400, 600, 800)  # train_network.py: np.linspace(0, 1000, 6, dtype=int)[1:-1]


def validation_target(epoch: int) -> float:
    """The validation loss of an epoch: `STANDIN_VAL_CURVE` ("0.45,0.43,…", one per epoch from 1; the last repeats),
    else a U-shape with its minimum at epoch 5 (0.35 + 0.004 × (epoch − 5)²)."""
    curve = [float(v) for v in ENV.get("STANDIN_VAL_CURVE", "").split(",") if v.strip()]
    if curve:
        return curve[min(epoch, len(curve)) - 1]
    return 0.35 + 0.004 * (epoch - 5) ** 2


def validate(datasets: list[dict], epoch: int) -> None:
    """train_network.py's epoch validation: a second tqdm bar (position 1) `epoch validation steps` with the postfix
    `val_epoch_avg_loss=…, timestep=…`; its steps average to `validation_target(epoch)` exactly."""
    batches = sum(math.ceil(d["val_images"] / d["batch_size"]) for d in datasets if d["val_images"])
    total = batches * len(VALIDATION_TIMESTEPS)
    target = validation_target(epoch)
    bar = Bar(total, "epoch validation steps", position=1)
    seen: list[float] = []
    for index in range(total):
        time.sleep(STEP_SECONDS / 4)
        seen.append(target + (0.01 if index % 2 == 0 else -0.01) * (0 if total % 2 and index == total - 1 else 1))
        bar.update()
        bar.set_postfix(val_epoch_avg_loss=sum(seen) / len(seen), timestep=VALIDATION_TIMESTEPS[index % 4])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flux_train_network.py")
    add = parser.add_argument
    for name in ("pretrained_model_name_or_path", "ae", "clip_l", "t5xxl", "dataset_config", "output_dir",
                 "output_name", "resume", "logging_dir", "sample_prompts", "network_module", "optimizer_type",
                 "mixed_precision", "save_model_as", "tokenizer_cache_dir", "lr_scheduler"):
        add(f"--{name}", default=None)
    for name in ("max_train_epochs", "save_every_n_epochs", "save_every_n_steps", "blocks_to_swap",
                 "sample_every_n_epochs", "sample_every_n_steps", "network_dim", "initial_step", "initial_epoch",
                 "gradient_accumulation_steps", "save_last_n_steps", "save_last_n_steps_state",
                 "save_last_n_epochs_state", "validate_every_n_epochs", "validation_seed"):
        add(f"--{name}", type=int, default=None)
    add("--validation_split", type=float, default=0.0)
    add("--max_train_steps", type=int, default=1600)
    add("--seed", type=int, default=None)
    add("--learning_rate", type=float, default=1e-4)
    add("--network_alpha", type=float, default=1.0)
    for name in ("save_state", "save_state_on_train_end", "sample_at_first", "console_log_simple",
                 "cache_latents_to_disk", "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk",
                 "gradient_checkpointing", "fp8_base", "network_train_unet_only", "sdpa", "skip_until_initial_step"):
        add(f"--{name}", action="store_true")
    args, _unknown = parser.parse_known_args(argv)
    return args


def load_dataset(console: Console, path: str) -> list[dict]:
    """[{batch_size, width, height, images, repeats}] per dataset (one bucket each in lorawizard's configs)."""
    console.info(f"Loading dataset config from {path}", "train_network.py:519")
    try:
        config = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        traceback_exit([], f"toml.decoder.TomlDecodeError: {exc}")
    if ENV.get("STANDIN_FAIL") == "bad_config" or not isinstance(config.get("datasets"), list):
        console.error("Invalid user config / ユーザ設定の形式が正しくないようです", "config_util.py:374")
        traceback_exit([], "voluptuous.error.MultipleInvalid: extra keys not allowed @ data['datasets'][0]['bogus']")
    general = config.get("general", {})
    datasets = []
    for dataset in config["datasets"]:
        split = float(dataset.get("validation_split", general.get("validation_split", 0.0)))
        resolution = dataset.get("resolution", general.get("resolution", 1024))
        width, height = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        batch = int(dataset.get("batch_size", general.get("batch_size", 1)))
        images = repeats = val_images = 0
        for subset in dataset.get("subsets", []):
            folder = Path(subset.get("image_dir", ""))
            count = len([p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTS]) if folder.is_dir() else 0
            sub_repeats = int(subset.get("num_repeats", dataset.get("num_repeats", general.get("num_repeats", 1))))
            held = round(count * split) if split > 0 else 0  # train_util.split_train_val
            count = math.ceil(count * (1 - split)) if split > 0 else count
            console.info(f"found directory {folder} contains {count} image files", "train_util.py:2059")
            images += count * sub_repeats
            val_images += held * sub_repeats
            repeats = max(repeats, sub_repeats)
        datasets.append({"batch_size": batch, "width": int(width), "height": int(height), "images": images,
                         "val_images": val_images})
    console.info(f"{sum(d['images'] for d in datasets)} train images with repeats.", "train_util.py:2158")
    console.warning("no regularization images / 正則化画像が見つかりませんでした", "train_util.py:2167")
    return datasets


# ------------------------------------------------------------------ the run


def main(argv: list[str]) -> int:
    if ENV.get("STANDIN_IGNORE_SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if ENV.get("STANDIN_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    args = parse_args(argv)
    if ENV.get("STANDIN_ARGS_FILE"):
        Path(ENV["STANDIN_ARGS_FILE"]).write_text(json.dumps({"argv": argv, "env": {
            k: ENV.get(k) for k in ("CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", "OMP_NUM_THREADS",
                                   "ACCELERATE_MIXED_PRECISION", "LORAWIZARD_RUN_ID", "HF_TOKEN",
                                   "HUGGING_FACE_HUB_TOKEN")}}))
    console = Console(args.console_log_simple)
    sys.stderr.write("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. "
                     "Please make sure you already `pip install kernels` and the kernels >= 0.11.1\n")
    if args.cache_latents_to_disk:
        Console(False).warning("cache_latents_to_disk is enabled, so cache_latents is also enabled / "
                               "cache_latents_to_diskが有効になっているため、cache_latentsも有効になります",
                               "train_util.py:4426")
    console.info("Checking the state dict: Diffusers or BFL, dev or schnell", "flux_utils.py:44")
    model = args.pretrained_model_name_or_path
    if ENV.get("STANDIN_FAIL") == "missing_model" or (
        ENV.get("STANDIN_CHECK_MODELS") and model and not Path(model).exists()
    ):
        traceback_exit(
            ['  File "/sd-scripts/library/flux_utils.py", line 44, in analyze_checkpoint_state',
             "    with safe_open(ckpt_path, framework=\"pt\") as f:"],
            f'FileNotFoundError: No such file or directory: "{model or "/models/flux1-dev.safetensors"}"',
        )
    if not args.dataset_config:
        traceback_exit([], "AssertionError: dataset_config is required for the stand-in trainer")
    datasets = load_dataset(console, args.dataset_config)
    for index, d in enumerate(datasets):
        console.info(f"bucket {index}: resolution ({d['width']}, {d['height']}), count: {d['images']}",
                     "train_util.py:1066")
    steps_per_epoch = sum(math.ceil(d["images"] / d["batch_size"]) for d in datasets if d["images"])
    failing = ENV.get("STANDIN_FAIL_OUTPUT")  # fail one run of a queue: the one with this output name
    if steps_per_epoch == 0 or ENV.get("STANDIN_FAIL") == "no_data" or (failing and args.output_name == failing):
        console.error("No data found. Please verify arguments (train_data_dir must be the parent of folders with "
                      "images) / 画像がありません。引数指定を確認してください", "train_network.py:576")
        return 0
    console.info("preparing accelerator", "train_network.py:593")
    out(f"accelerator device: {'cuda:0' if ENV.get('CUDA_VISIBLE_DEVICES') else 'cpu'}")
    console.info(f"Loading state dict from {model}", "flux_utils.py:124")
    if args.blocks_to_swap:
        console.info(f"enable block swap: blocks_to_swap={args.blocks_to_swap}", "flux_train_network.py:132")
    time.sleep(LOAD_SECONDS)
    console.info("Loaded Flux: <All keys matched successfully>", "flux_utils.py:143")
    console.info("caching latents...", "train_util.py:1170")
    images = sum(d["images"] for d in datasets)
    cache = Bar(max(1, min(images, 8)))
    for _ in range(cache.total):
        cache.update()
    cache.close()
    out("import network module: networks.lora_flux")
    console.info(f"create LoRA network. base dim (rank): {args.network_dim or 4}, alpha: {args.network_alpha}",
                 "lora_flux.py:778")
    out("prepare optimizer, data loader etc.")
    if args.max_train_epochs:
        args.max_train_steps = args.max_train_epochs * steps_per_epoch
        out(f"override steps. steps for {args.max_train_epochs} epochs is / 指定エポックまでのステップ数: "
            f"{args.max_train_steps}")
    num_epochs = math.ceil(args.max_train_steps / steps_per_epoch)

    # peak memory and OOM, from the largest batch × bucket area
    pixels = max(d["batch_size"] * d["width"] * d["height"] for d in datasets if d["images"])
    if ENV.get("STANDIN_PEAK_FILE"):
        per_pixel = int(ENV.get("STANDIN_BYTES_PER_PIXEL", "16384"))
        Path(ENV["STANDIN_PEAK_FILE"]).write_text(json.dumps({"peak_pixels": pixels, "peak_bytes": pixels * per_pixel}))
    over_budget = ENV.get("STANDIN_VRAM_BUDGET") and pixels > int(ENV["STANDIN_VRAM_BUDGET"])
    step_seconds = STEP_SECONDS
    if ENV.get("STANDIN_MODEL"):  # memory and speed per setting (standin_model.py): swap, fp8 base, batch, bucket
        import standin_model

        used = [d for d in datasets if d["images"]]
        setting = {"checkpointing": bool(args.gradient_checkpointing),
                   "state32": standin_model.state_32bit(args.optimizer_type)}
        peak = max(standin_model.peak_bytes(args.blocks_to_swap or 0, args.fp8_base, d["batch_size"], d["width"],
                                            d["height"], **setting) for d in used)
        step_seconds = max(standin_model.step_seconds(args.blocks_to_swap or 0, args.fp8_base, d["batch_size"],
                                                      d["width"], d["height"], **setting) for d in used)
        device = ENV.get("CUDA_VISIBLE_DEVICES", "")  # several cards: each its own free memory and pace
        free = json.loads(ENV.get("STANDIN_VRAM_BY_DEVICE") or "{}").get(device, ENV.get("STANDIN_VRAM_BYTES"))
        step_seconds *= float(json.loads(ENV.get("STANDIN_SLOWER_BY_DEVICE") or "{}").get(device, 1.0))
        if ENV.get("STANDIN_PEAK_FILE"):
            Path(ENV["STANDIN_PEAK_FILE"]).write_text(json.dumps({"peak_pixels": pixels, "peak_bytes": peak,
                                                                   "device": device}))
        over_budget = bool(free) and peak > int(free)

    output_dir = Path(args.output_dir or ".")
    output_dir.mkdir(parents=True, exist_ok=True)
    name = args.output_name or "last"
    start_epoch = 0
    if args.resume:
        console.info(f"resume training from local state: {args.resume}", "train_util.py:4777")
        state_dir = Path(args.resume)
        if not state_dir.is_dir():
            traceback_exit([], f"ValueError: Tried to find {args.resume} but folder does not exist")
        console.info(f"Loading states from {args.resume}", "accelerator.py:3390")
        state = json.loads((state_dir / "train_state.json").read_text())
        console.info(f"load train state from {state_dir / 'train_state.json'}: {state}", "train_network.py:969")
        console.info("All model weights loaded successfully", "checkpointing.py:232")
        start_epoch = int(state["current_step"]) // steps_per_epoch
        if args.initial_step is not None:  # sd-scripts: initial_step wins over the state's step
            console.warning("steps from the state is ignored because initial_step is specified / "
                            "initial_stepが指定されているため、stateからのステップ数は無視されます", "train_network.py:1236")
            start_epoch = args.initial_step // steps_per_epoch
    skip = 0
    if args.initial_step and args.skip_until_initial_step:  # sd-scripts: the step restarts at the remainder
        console.info(f"skipping {args.initial_step} steps / {args.initial_step}ステップをスキップします", "train_network.py:1265")
        start_epoch = args.initial_step // steps_per_epoch
        skip = args.initial_step % steps_per_epoch
    if args.logging_dir:
        tb = Path(args.logging_dir) / datetime.now().strftime("%Y%m%d%H%M%S") / "network_train"
        tb.mkdir(parents=True, exist_ok=True)
        (tb / "events.out.tfevents.standin").write_bytes(b"")

    batch_sizes = ", ".join(str(d["batch_size"]) for d in datasets)
    out("running training / 学習開始")
    out(f"  num train images * repeats / 学習画像の数×繰り返し回数: {images}")
    val_images = sum(d["val_images"] for d in datasets)
    out(f"  num validation images * repeats / 学習画像の数×繰り返し回数: {val_images}")
    out("  num reg images / 正則化画像の数: 0")
    out(f"  num batches per epoch / 1epochのバッチ数: {steps_per_epoch}")
    out(f"  num epochs / epoch数: {num_epochs}")
    out(f"  batch size per device / バッチサイズ: {batch_sizes}")
    out("  gradient accumulation steps / 勾配を合計するステップ数 = 1")
    out(f"  total optimization steps / 学習ステップ数: {args.max_train_steps}")
    sys.stderr.write("fatal: not a git repository (or any of the parent directories): .git\n")
    console.info("unet dtype: torch.bfloat16, device: cuda:0", "train_network.py:1347")

    ckpt_bytes = int(ENV.get("STANDIN_CKPT_BYTES", "3154356"))
    rng = random.Random(args.seed or 0)
    nan_at = int(ENV.get("STANDIN_NAN_AT_STEP", "0") or 0)
    kill_at = int(ENV.get("STANDIN_KILL_AT_STEP", "0") or 0)
    hang_at = int(ENV.get("STANDIN_HANG_AT_STEP", "0") or 0)

    def save_state(folder: Path, epoch: int, step: int, what: str) -> None:
        if what.startswith("saving state"):
            console.info("", "train_util.py:5941")
            console.info(what, "train_util.py:5942")
        else:
            console.info(what, "train_util.py:5990")
        console.info(f"Saving current state to {folder}", "accelerator.py:3241")
        folder.mkdir(parents=True, exist_ok=True)
        console.info(f"save train state to {folder / 'train_state.json'} at epoch {epoch} step {step}",
                     "train_network.py:946")
        (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
        write_sparse(folder / "model.safetensors", ckpt_bytes)
        write_sparse(folder / "optimizer.bin", 2 * ckpt_bytes)
        console.info(f"Model weights saved in {folder / 'model.safetensors'}", "checkpointing.py:108")

    def save_sample(epoch: int, step: int) -> None:
        console.info("", "flux_train_utils.py:60")
        console.info(f"generating sample images at step / サンプル画像生成 ステップ: {step}", "flux_train_utils.py:61")
        folder = output_dir / "sample"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            prompts = json.loads(Path(args.sample_prompts).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            prompts = [{"prompt": "standin"}]
        for index, entry in enumerate(prompts):
            entry = entry if isinstance(entry, dict) else {"prompt": str(entry)}
            console.info(f"prompt: {entry.get('prompt')}", "flux_train_utils.py:183")
            seed = entry.get("seed")
            stamp = datetime.now().strftime("%Y%m%d%H%M%S")
            path = folder / f"{name}_e{epoch:06d}_{index:02d}_{stamp}{'_' + str(seed) if seed is not None else ''}.png"
            try:
                from PIL import Image

                image = Image.new("RGB", (64, 64), ((40 * epoch) % 256, (90 * index) % 256, 200))
                image.save(path)
            except ImportError:
                path.write_bytes(b"")

    if args.sample_prompts and args.sample_at_first:
        save_sample(start_epoch, 0)

    def prune(pattern: str, number: int) -> None:
        if number > 0:
            for path in (output_dir / pattern.format(number),):
                if path.is_dir():
                    console.info(f"removing old state: {path}", "train_util.py:5960")
                    for child in path.iterdir():
                        child.unlink()
                    path.rmdir()
                elif path.exists():
                    out(f"removing old checkpoint: {path}")
                    path.unlink()

    bar = Bar(args.max_train_steps - skip, "steps")
    global_step = skip
    losses: list[float] = []
    for epoch in range(start_epoch, num_epochs):
        out(f"\nepoch {epoch + 1}/{num_epochs}\n")
        console.info(f"epoch is incremented. current_epoch: {epoch}, epoch: {epoch + 1}", "train_util.py:784")
        for _ in range(steps_per_epoch - (skip if epoch == start_epoch else 0)):
            if over_budget:
                oom_exit()
            time.sleep(step_seconds)
            absolute = start_epoch * steps_per_epoch + global_step + 1
            if kill_at and bar.n + 1 >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if hang_at and bar.n + 1 >= hang_at:
                while True:
                    time.sleep(3600)
            global_step += 1
            loss = 0.3 + 1.2 * math.exp(-absolute / 40) + rng.uniform(-0.05, 0.05)
            if nan_at and global_step >= nan_at:
                loss = float("nan")
            losses.append(loss)
            bar.update()
            window = losses[-steps_per_epoch:]
            bar.set_postfix(avr_loss=sum(window) / len(window))
            if args.save_every_n_steps and global_step % args.save_every_n_steps == 0:
                ckpt = output_dir / f"{name}-step{global_step:08d}.safetensors"
                out(f"\nsaving checkpoint: {ckpt}")
                write_sparse(ckpt, ckpt_bytes, lora_metadata(args, name, epoch + 1, global_step))
                every = args.save_every_n_steps
                if args.save_last_n_steps:
                    number = global_step - args.save_last_n_steps - 1
                    prune(name + "-step{:08d}.safetensors", number - number % every)
                if args.save_state:
                    save_state(output_dir / f"{name}-step{global_step:08d}-state", epoch + 1, global_step,
                               f"saving state at step {global_step}")
                    keep = args.save_last_n_steps_state or args.save_last_n_steps
                    if keep:
                        number = global_step - keep - 1
                        prune(name + "-step{:08d}-state", number - number % every)
            if global_step >= args.max_train_steps:
                break
        done_epoch = epoch + 1
        every = args.validate_every_n_epochs
        if val_images and (every is None or done_epoch % every == 0):
            validate(datasets, done_epoch)
        if args.save_every_n_epochs and done_epoch % args.save_every_n_epochs == 0 and done_epoch < num_epochs:
            ckpt = output_dir / f"{name}-{done_epoch:06d}.safetensors"
            out(f"\nsaving checkpoint: {ckpt}")
            write_sparse(ckpt, ckpt_bytes, lora_metadata(args, name, done_epoch, global_step))
            if args.save_state:
                save_state(output_dir / f"{name}-{done_epoch:06d}-state", done_epoch, global_step,
                           f"saving state at epoch {done_epoch}")
                if args.save_last_n_epochs_state:
                    prune(name + "-{:06d}-state", done_epoch - args.save_every_n_epochs * args.save_last_n_epochs_state)
        if args.sample_prompts and args.sample_every_n_epochs and done_epoch % args.sample_every_n_epochs == 0:
            save_sample(done_epoch, global_step)
        if global_step >= args.max_train_steps:
            break
    if args.save_state or args.save_state_on_train_end:
        save_state(output_dir / f"{name}-state", num_epochs, global_step, "saving last state.")
    final = output_dir / f"{name}.safetensors"
    out(f"\nsaving checkpoint: {final}")
    write_sparse(final, ckpt_bytes, lora_metadata(args, name, num_epochs, global_step))
    console.info("model saved.", "train_network.py:1729")
    bar.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        sys.exit(1)
