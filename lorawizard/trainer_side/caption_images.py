"""Runs INSIDE the trainer's Python (sd-scripts' venv), started by lorawizard as a subprocess by path:

    <trainer python> caption_images.py --job JOB.json

Drafts one caption per image with a local vision-language model (transformers), loaded once. The job file (written
by lorawizard.core.captions.autocaption) names the model folder, the images, the instruction and the limits. Output: one
line per event on stdout, `LORAWIZARD-CAPTION {json}`:

    {"event": "loading", "model": ..., "device": ...}
    {"event": "ready", "device": "cuda"|"cpu", "batch": n, "load_seconds": s, "transformers": v, "torch": v}
    {"event": "caption", "file": key, "caption": raw text, "seconds": s, "tokens": n, "truncated": bool}
    {"event": "skip", "file": key, "reason": one line}            (an image that fails to decode, an empty answer)
    {"event": "oom", "batch": smaller batch size}                 (CUDA out of memory: the batch is retried)
    {"event": "progress", "done": n, "total": n, "images_per_s": r}
    {"event": "done", "done": n, "seconds": s, "images_per_s": r}
    {"event": "fatal", "kind": ..., "reason": one line}           (then exit 3)

Cancel: lorawizard kills the process group; whatever was printed is kept. The GPU is freed when the process ends.
Standalone (no lorawizard imports, Python 3.8 syntax): the trainer's Python does not have lorawizard installed.
"""

import json
import os
import sys
import threading
import time
import warnings

MARKER = "LORAWIZARD-CAPTION "
EXIT_FATAL = 3
RESERVE_BYTES = 1536 << 20  # kept free beside the model: CUDA context, allocator slack
PER_IMAGE_BYTES = 768 << 20  # activations + KV cache of one image at max_pixels with ~200 new tokens (measured order)
MAX_BATCH = 16


def emit(event, **values):
    values["event"] = event
    sys.stdout.write(MARKER + json.dumps(values, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fatal(kind, reason):
    emit("fatal", kind=kind, reason=reason)
    sys.exit(EXIT_FATAL)


def _one_line(exc):
    text = ("%s: %s" % (type(exc).__name__, exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _version_tuple(text):
    parts = []
    for piece in str(text).split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def load_image(path, max_pixels):
    """Decode, orient (EXIF), convert to RGB and shrink to at most `max_pixels` pixels: the model never sees more."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.draft("RGB", (2048, 2048))
        picture = ImageOps.exif_transpose(image).convert("RGB")
    area = picture.width * picture.height
    if area > max_pixels:
        scale = (max_pixels / float(area)) ** 0.5
        size = (max(28, int(picture.width * scale)), max(28, int(picture.height * scale)))
        picture = picture.resize(size, Image.BICUBIC)
    return picture


class Prefetcher:
    """Decodes the next batch's images in a thread while the model works on the current one."""

    def __init__(self, items, max_pixels):
        self.items = items
        self.max_pixels = max_pixels
        self.results = {}
        self.lock = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for item in self.items:
            try:
                value = (load_image(item["path"], self.max_pixels), None)
            except Exception as exc:  # noqa: BLE001 - any decoder error becomes a skip line
                value = (None, "cannot decode the image: %s" % _one_line(exc))
            with self.lock:
                while len(self.results) >= 2 * MAX_BATCH:  # a bounded window: 5,000 decoded images do not fit
                    self.lock.wait(0.5)
                self.results[item["file"]] = value
                self.lock.notify_all()

    def get(self, key):
        with self.lock:
            while key not in self.results:
                self.lock.wait(0.5)
            value = self.results.pop(key)
            self.lock.notify_all()
            return value


def choose_device(torch, wanted):
    if wanted == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if wanted == "gpu":
        fatal("no_gpu", "no CUDA GPU is visible to torch %s: choose device = \"cpu\" (slow) or fix the driver"
              % torch.__version__)
    return "cpu"


def batch_for(torch, device, wanted):
    if wanted:
        return max(1, int(wanted))
    if device != "cuda":
        return 1
    try:
        free, _ = torch.cuda.mem_get_info()
    except Exception:  # noqa: BLE001
        return 1
    return max(1, min(MAX_BATCH, int((free - RESERVE_BYTES) // PER_IMAGE_BYTES)))


def load_model(job, device):
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        fatal("no_torch", "the trainer's Python cannot import torch (%s): install sd-scripts' requirements" % _one_line(exc))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformers
    except Exception as exc:  # noqa: BLE001
        fatal("no_transformers", "the trainer's Python cannot import transformers (%s)" % _one_line(exc))
    need = job.get("min_transformers")
    if need and _version_tuple(transformers.__version__) < _version_tuple(need):
        fatal("too_old", "transformers %s is too old for %s (needs %s or newer)"
              % (transformers.__version__, job.get("name") or "this model", need))
    folder = job["model"]
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        fatal("model", "%s has no readable config.json (%s)" % (folder, _one_line(exc)))
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None:
        fatal("too_old", "transformers %s cannot load %s (architecture %s is unknown to it): a newer transformers "
              "is needed, or choose another captioner" % (transformers.__version__, folder, architecture or "?"))
    device = choose_device(torch, device)
    emit("loading", model=folder, device=device, architecture=architecture)
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else (
        torch.float16 if device == "cuda" else torch.float32)
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            processor = transformers.AutoProcessor.from_pretrained(folder)
            model = model_class.from_pretrained(folder, torch_dtype=dtype, low_cpu_mem_usage=True)
            model.to(device)
            model.eval()
    except Exception as exc:  # noqa: BLE001 - a broken folder, a missing shard, OOM while loading
        if "out of memory" in str(exc).lower():
            fatal("oom", "the model does not fit in the GPU's free memory: close other programs or choose a smaller "
                  "captioner")
        fatal("model", "cannot load %s: %s" % (folder, _one_line(exc)))
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # decoder-only generation pads on the left
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    return torch, transformers, processor, model, device, time.monotonic() - started


def is_oom(exc):
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def generate(torch, processor, model, device, images, instruction, max_new_tokens):
    """One batch → [(text, new token count, truncated)]."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt] * len(images), images=images, padding=True, return_tensors="pt")
    inputs = inputs.to(device)
    tokenizer = getattr(processor, "tokenizer", processor)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                repetition_penalty=1.05, pad_token_id=tokenizer.pad_token_id)
    new = output[:, inputs["input_ids"].shape[1]:]
    stops = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            stops.add(value)
        elif isinstance(value, (list, tuple)):
            stops.update(v for v in value if isinstance(v, int))
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    result = []
    for row, text in zip(new.tolist(), texts):  # noqa: B905 - Python 3.8 syntax
        used = [t for t in row if t != tokenizer.pad_token_id]
        stopped = any(t in stops for t in row)
        result.append((text, len(used), not stopped and len(row) >= max_new_tokens))
    return result


def run(job):
    torch, transformers, processor, model, device, load_seconds = load_model(job, job.get("device") or "auto")
    items = job["images"]
    batch = batch_for(torch, device, job.get("batch_size"))
    emit("ready", device=device, batch=batch, load_seconds=round(load_seconds, 2),
         transformers=transformers.__version__, torch=str(torch.__version__))
    prefetch = Prefetcher(items, int(job.get("max_pixels") or 448 * 448))
    instruction = job["instruction"]
    max_new = int(job.get("max_new_tokens") or 160)
    started = time.monotonic()
    done = 0
    position = 0
    pending = []  # (item, image) decoded and waiting for a batch
    while position < len(items) or pending:
        while len(pending) < batch and position < len(items):
            item = items[position]
            position += 1
            image, problem = prefetch.get(item["file"])
            if image is None:
                emit("skip", file=item["file"], reason=problem)
                done += 1
                continue
            pending.append((item, image))
        if not pending:
            break
        chunk = pending[:batch]
        began = time.monotonic()
        try:
            answers = generate(torch, processor, model, device, [image for _, image in chunk], instruction, max_new)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                for item, _ in chunk:
                    emit("skip", file=item["file"], reason="the model failed on this image: %s" % _one_line(exc))
                del pending[:len(chunk)]
                done += len(chunk)
                continue
            if device == "cuda":
                torch.cuda.empty_cache()
            if batch == 1:
                fatal("oom", "out of GPU memory even for one image: close other programs on this GPU or choose a "
                      "smaller captioner")
            batch = max(1, batch // 2)
            emit("oom", batch=batch)
            continue
        seconds = (time.monotonic() - began) / len(chunk)
        for (item, _), (text, tokens, truncated) in zip(chunk, answers):  # noqa: B905 - Python 3.8 syntax
            if not text.strip():
                emit("skip", file=item["file"], reason="the model returned an empty caption")
            else:
                emit("caption", file=item["file"], caption=text, seconds=round(seconds, 3), tokens=tokens,
                     truncated=truncated)
        del pending[:len(chunk)]
        done += len(chunk)
        elapsed = time.monotonic() - started
        emit("progress", done=done, total=len(items), images_per_s=round(done / elapsed, 4) if elapsed else None)
    elapsed = time.monotonic() - started
    emit("done", done=done, seconds=round(elapsed, 2), images_per_s=round(done / elapsed, 4) if elapsed else None)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return 0


def main(argv):
    if "--job" not in argv or argv.index("--job") + 1 >= len(argv):
        fatal("usage", "usage: caption_images.py --job JOB.json")
    path = argv[argv.index("--job") + 1]
    try:
        with open(path, encoding="utf-8") as handle:
            job = json.load(handle)
    except (OSError, ValueError) as exc:
        fatal("usage", "cannot read the job file %s: %s" % (path, _one_line(exc)))
    return run(job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
