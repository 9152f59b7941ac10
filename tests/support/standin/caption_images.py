"""Stand-in captioner (tests only — never a model): speaks trainer_side/caption_images.py's JSON-lines protocol.

Reads the same job file, decodes each image with Pillow (an undecodable one is skipped like the real one does) and
"captions" it with canned text that needs cleaning. Steered by environment variables:
  STANDIN_CAPTION_FATAL="kind:reason"   print a fatal line and exit 3 (no torch, transformers too old, ...)
  STANDIN_CAPTION_CRASH=1               die with a traceback on stderr, no protocol line (a broken venv)
  STANDIN_CAPTION_OOM_ABOVE=n           a batch larger than n "runs out of memory" (halved, like the real one)
  STANDIN_CAPTION_BATCH=n               the batch size chosen at start (default 4)
  STANDIN_CAPTION_DELAY=s               seconds per image (cancel tests)
  STANDIN_CAPTION_PIDFILE=path          write this process' pid there
Image names decide the answer: "empty" → an empty caption, "endless" → a looping answer cut by the token limit.
"""

import json
import os
import sys
import time

MARKER = "LORAWIZARD-CAPTION "


def emit(event, **values):
    values["event"] = event
    sys.stdout.write(MARKER + json.dumps(values) + "\n")
    sys.stdout.flush()


def answer(name):
    if "empty" in name:
        return "", False
    if "endless" in name:
        return "A cat sits on a mat. " * 30 + "A cat sits on", True
    return ("The image shows a **%s** standing in a garden.\n\n- Soft light from the left.\n"
            "Soft light from the left.\nShot with a wide lens." % name.split(".")[0], False)


def main():
    with open(sys.argv[sys.argv.index("--job") + 1], encoding="utf-8") as job_file:
        job = json.load(job_file)
    if os.environ.get("STANDIN_CAPTION_PIDFILE"):
        with open(os.environ["STANDIN_CAPTION_PIDFILE"], "w") as handle:
            handle.write(str(os.getpid()))
    print("some library chatter on stdout")
    if os.environ.get("STANDIN_CAPTION_CRASH"):
        raise ModuleNotFoundError("No module named 'torch'")
    fatal = os.environ.get("STANDIN_CAPTION_FATAL")
    if fatal:
        kind, _, reason = fatal.partition(":")
        emit("fatal", kind=kind, reason=reason)
        return 3
    from PIL import Image

    emit("loading", model=job["model"], device=job["device"])
    batch = int(os.environ.get("STANDIN_CAPTION_BATCH", "4"))
    limit = int(os.environ.get("STANDIN_CAPTION_OOM_ABOVE", "0"))
    delay = float(os.environ.get("STANDIN_CAPTION_DELAY", "0"))
    emit("ready", device="cuda" if job["device"] == "gpu" else "cpu", batch=batch, load_seconds=0.01,
         transformers="4.54.1", torch="stand-in")
    started = time.monotonic()
    items = list(job["images"])
    done = 0
    while items:
        if limit and batch > limit:
            batch = max(1, batch // 2)
            emit("oom", batch=batch)
            continue
        chunk, items = items[:batch], items[batch:]
        for item in chunk:
            time.sleep(delay)
            try:
                with Image.open(item["path"]) as image:
                    image.load()
            except Exception as exc:  # noqa: BLE001
                emit("skip", file=item["file"], reason="cannot decode the image: %s" % type(exc).__name__)
                continue
            text, truncated = answer(os.path.basename(item["file"]))
            if not text:
                emit("skip", file=item["file"], reason="the model returned an empty caption")
                continue
            emit("caption", file=item["file"], caption=text, seconds=0.01, tokens=20, truncated=truncated)
        done += len(chunk)
        elapsed = max(time.monotonic() - started, 1e-6)
        emit("progress", done=done, total=len(job["images"]), images_per_s=round(done / elapsed, 3),
             batch=batch)
    emit("done", done=done, seconds=round(time.monotonic() - started, 3),
         images_per_s=round(done / max(time.monotonic() - started, 1e-6), 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
