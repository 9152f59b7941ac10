"""A very large session.toml (issue #11 item 7): load time, peak memory and lines printed, naive vs ours, in one run.

    python bench/bench_big_session.py [--images 20000,100000,423729] [--unknown-every 1] [--naive-max N] [--keep DIR]

Each session has `--images` `[[dataset.images]]` entries (file, bucket, caption, a crop in every tenth; about 120
bytes each, so 423,729 is the ~50 MB file of the issue, above the supported maximum, and 100,000 is ~12 MB), three of them for photos that exist and the rest for files that are not in
the source folder; every `--unknown-every`-th entry carries an unknown key `x`. Each measurement runs in a fresh
child process (peak RSS is the child's own VmHWM; ru_maxrss would count the parent's pages at fork):

naive:  what replay did before: tomlkit.parse of the whole file (the round-trip document the wizard edits) and one
        note per entry (an unknown key, a file not in the source folder); the note count is what it printed. The old
        code also scanned the whole file for the line of each note (quadratic: 20,000 entries took over 10 minutes);
        naive scans for the first 200 only, so it is a lower bound. Skip it above `--naive-max` entries (tomlkit
        takes minutes and gigabytes there).
ours:   `lorawizard --replay session.toml --steps dataset --dry-run` (headless.replay in the child), the lines it prints.
load:   `Session.load(read_only=True)` alone (what replay, `lorawizard status` and `stop` pay).

Prints what it measured; asserts nothing about time (machines differ).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAPTIONS = ("a woman in a red raincoat on a pier", "a man on a bicycle at dusk", "close-up portrait, smiling")


def make_project(root: Path, images: int, unknown_every: int) -> Path:
    from PIL import Image

    project = root / "project"
    photos = project / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    real = []
    for n in range(3):
        name = f"real_{n}.jpg"
        Image.effect_noise((1024, 1024), 30 + 10 * n).convert("RGB").save(photos / name, quality=80)
        real.append(name)
    parts = ['version = 1\nname = "big"\n\n[paths]\n\n[models]\n\n[dataset]\nsource = "photos"\ntrigger = "ohwx"\n\n']
    for n in range(images):
        file = real[n] if n < len(real) else f"IMG_{n:07d}.jpg"
        crop = "crop = [0, 504, 3024, 3528]\n" if n % 10 == 0 else ""
        entry = (f'[[dataset.images]]\nfile = "{file}"\nbucket = "1024x1024"\n{crop}'
                 f'caption = "{CAPTIONS[n % len(CAPTIONS)]}"\n')
        if unknown_every and n % unknown_every == 0:
            entry += "x = 1\n"
        parts.append(entry + "\n")
    parts.append("[gpu]\n\n[train]\n")
    path = project / "session.toml"
    path.write_text("".join(parts), encoding="utf-8")
    return path


NAIVE = r"""
import json, resource, sys, time
def peak_mb():  # this process's own high-water mark: ru_maxrss would include the parent's pages at fork
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sys.path.insert(0, sys.argv[2])
import tomlkit
from lorawizard.core.session.document import find_line
started = time.perf_counter()
text = open(sys.argv[1], encoding="utf-8").read()
doc = tomlkit.parse(text)
notes = []
known = {"file", "bucket", "crop", "caption", "skip", "caption_auto"}
for index, entry in enumerate(doc["dataset"]["images"]):
    for key in entry:
        if key not in known:
            if len(notes) < 200:  # the old code scanned the whole file per note; 200 are timed, the rest extrapolated
                notes.append(f"{sys.argv[1]}:{find_line(text, 'dataset.images', key, index)}: unknown key")
            else:
                notes.append(None)
    notes.append(f"note: session.toml has an entry for {entry['file']}, which is not in the source folder")
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "rss_mb": peak_mb(),
                  "lines": len(notes)}))
"""

LOAD = r"""
import json, resource, sys, time
def peak_mb():  # this process's own high-water mark: ru_maxrss would include the parent's pages at fork
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sys.path.insert(0, sys.argv[2])
from lorawizard.core.session.document import Session, SessionError
started = time.perf_counter()
try:
    session = Session.load(sys.argv[1], read_only=True)
    lines, images = len(session.warnings), len(session.images())
except SessionError as exc:  # above the supported size
    lines, images = 1, 0
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "rss_mb": peak_mb(),
                  "lines": lines, "images": images}))
"""

REPLAY = r"""
import io, json, resource, sys, time
def peak_mb():  # this process's own high-water mark: ru_maxrss would include the parent's pages at fork
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from lorawizard.headless import replay
out, err = io.StringIO(), io.StringIO()
started = time.perf_counter()
code = replay(Path(sys.argv[1]), ["dataset"], dry_run=True, out=out, err=err, tty=False)
elapsed = time.perf_counter() - started
text = out.getvalue() + err.getvalue()
print(json.dumps({"seconds": elapsed, "rss_mb": peak_mb(),
                  "lines": text.count("\n"), "code": code, "head": text.splitlines()[:12]}))
"""


WIZARD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
import tomlkit
from lorawizard.core.common.fsutil import atomic_write_text
from lorawizard.core.session.document import Session
from lorawizard.core.session.store import SessionStore
from lorawizard.core.captions.captionset import toml_string
path, mode, out = Path(sys.argv[1]), sys.argv[3], {}
count = int(sys.argv[4])
def clock(name, work):
    started = time.perf_counter()
    result = work()
    out[name] = time.perf_counter() - started
    return result
if mode == "naive":  # what the wizard did before: one tomlkit document of the whole file, dumped whole per save
    text = path.read_text(encoding="utf-8")
    doc = clock("open", lambda: tomlkit.parse(text))
    def decide():
        doc["train"]["seed"] = 7
    clock("decide_ui", decide)  # a key that finds a write in flight waits for it too: the next line
    clock("decide_save", lambda: atomic_write_text(path, tomlkit.dumps(doc)))
    def captions():
        for n, table in enumerate(doc["dataset"]["images"]):
            table["caption"] = toml_string(f"caption number {n}")
        atomic_write_text(path, tomlkit.dumps(doc))
    clock("captions", captions)
    def record():
        new = tomlkit.document()
        new.add("version", 1)
        images = tomlkit.aot()
        new.add("dataset", tomlkit.table())
        new["dataset"]["images"] = images
        images = new["dataset"]["images"]
        for n in range(count):
            entry = tomlkit.table()
            entry["file"] = f"IMG_{n:07d}.jpg"
            entry["bucket"] = "1024x1024"
            entry["crop"] = [0, 504, 3024, 3528]
            images.append(entry)
        atomic_write_text(path.with_name("new.toml"), tomlkit.dumps(new))
    clock("record", record)
else:
    session = clock("open", lambda: Session.load(path))
    store = SessionStore(session, delay=3600)
    clock("decide_ui", lambda: store.decide("train.seed", 7))
    clock("decide_save", store.flush)
    files = list(session.images())
    def captions():
        store.apply(lambda s: s.update_images((f, {"caption": toml_string(f"caption number {n}")})
                                              for n, f in enumerate(files)))
        store.flush()
    clock("captions", captions)
    def record():
        new = SessionStore(Session.new(path.with_name("new.toml")), delay=3600)
        for n in range(count):
            values = {"bucket": "1024x1024", "crop": [0, 504, 3024, 3528]}
            new.apply(lambda s, f=f"IMG_{n:07d}.jpg", v=values: s.update_image(f, **v))
        new.flush()
    clock("record", record)
print(json.dumps(out))
"""


def child(script: str, session: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, str(session), str(ROOT), *extra], capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="20000,100000,423729", help="entry counts, comma-separated (one session each)")
    parser.add_argument("--unknown-every", type=int, default=1, help="an unknown key in every Nth entry (0: none)")
    parser.add_argument("--naive-max", type=int, default=10**9, help="skip the naive measurement above this many entries")
    parser.add_argument("--keep", type=Path, help="build the projects here and keep them")
    parser.add_argument("--wizard", action="store_true",
                        help="measure the wizard instead: open, one decide (key + save), captions save, the dataset "
                             "step's record path; naive = one tomlkit document of the whole file, as before")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bigsession-"))
    if args.wizard:
        wizard(root, [int(n) for n in args.images.split(",")], args.naive_max)
        return
    for images in (int(n) for n in args.images.split(",")):
        started = time.perf_counter()
        session = make_project(root / f"n{images}", images, args.unknown_every)
        size_mb = session.stat().st_size / 1e6
        print(f"session: {images:,} image entries, {size_mb:.1f} MB (written in {time.perf_counter() - started:.1f} s)")
        results = {}
        if images <= args.naive_max:
            results["naive"] = child(NAIVE, session)
        results["load"] = child(LOAD, session)
        results["ours"] = child(REPLAY, session)
        for name, r in results.items():
            print(f"  {name:6s} {r['seconds']:8.1f} s  peak RSS {r['rss_mb']:7.0f} MB  lines {r['lines']:,}")
        if "naive" in results:
            naive, ours = results["naive"], results["ours"]
            print(f"  ratio naive/ours: time {naive['seconds'] / ours['seconds']:.1f}x, "
                  f"peak RSS {naive['rss_mb'] / ours['rss_mb']:.1f}x, lines {naive['lines'] / max(ours['lines'], 1):,.0f}x")
        print("  replay output:")
        for line in results["ours"].get("head", []):
            print("    " + line[:200])


def wizard(root: Path, counts: list[int], naive_max: int) -> None:
    names = {"open": "open (load + validate)", "decide_ui": "decide() on the UI thread",
             "decide_save": "its save (off the UI thread)",
             "captions": "captions save (all)", "record": "record path (new project)"}
    for images in counts:
        session = make_project(root / f"w{images}", images, 0)
        print(f"wizard, {images:,} image entries, {session.stat().st_size / 1e6:.1f} MB; load {_load()}")
        backup = session.read_bytes()
        results = {}
        for mode in ("naive", "ours"):
            if mode == "naive" and images > naive_max:
                continue
            session.write_bytes(backup)
            results[mode] = child(WIZARD, session, mode, str(images))
        for key, label in names.items():
            row = "  ".join(f"{mode} {r[key]:8.3f} s" for mode, r in results.items())
            ratio = (f"  ratio {results['naive'][key] / max(results['ours'][key], 1e-6):,.0f}x"
                     if "naive" in results else "")
            print(f"  {label:28s} {row}{ratio}")
        print(f"  (load after: {_load()})")


def _load() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


if __name__ == "__main__":
    main()
