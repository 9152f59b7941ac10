"""How long `lorawizard --help` takes, against the bare interpreter and against importing Textual; and how long
the wizard takes to draw its first frame in a real pty (80×24, answering DA1 as tmux does), per `--images` mode.

Goals: --help ≤ 0.15 s; first frame ≤ 0.45 s with `--images auto` as with `halfcell`, also in a terminal that
never answers (the terminal is asked in one round trip after the first frame, not before it). Prints best-of-N wall times measured in this one run, and the ratios.
Usage: PYTHONPATH=. python bench/bench_cli_startup.py [N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def best_of(argv: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def first_frame(images: str, runs: int, answer_da1: bool = True) -> float:
    """Seconds from exec to the step bar on screen, best of `runs` (a fresh project: the Environment screen)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.pty_terminal import PtyTerminal

    best = float("inf")
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, TERM="xterm-256color", HOME=folder, LORAWIZARD_IMAGES=images)
        for _ in range(runs):
            term = PtyTerminal.start([sys.executable, "-m", "lorawizard", folder, "--images", images],
                                     env=env, cwd=folder, answer_da1=answer_da1)
            try:
                best = min(best, term.wait_for(b"Train"))
            finally:
                term.close()
    return best


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    python = sys.executable
    bare = best_of([python, "-c", "pass"], runs)
    help_ = best_of([python, "-m", "lorawizard", "--help"], runs)
    naive = best_of([python, "-c", "import textual.app, lorawizard.cli"], runs)
    print(f"bare interpreter        {bare * 1000:7.1f} ms")
    print(f"lorawizard --help       {help_ * 1000:7.1f} ms   (goal ≤ 150 ms: {'met' if help_ <= 0.15 else 'NOT met'})")
    print(f"naive (imports Textual) {naive * 1000:7.1f} ms")
    print(f"--help over bare: {help_ / bare:.2f}x   naive over --help: {naive / help_:.2f}x")
    auto = first_frame("auto", runs)
    halfcell = first_frame("halfcell", runs)
    silent = first_frame("auto", runs, answer_da1=False)
    for label, seconds in (("auto", auto), ("halfcell", halfcell), ("auto, silent terminal", silent)):
        verdict = "met" if seconds <= 0.45 else "NOT met"
        print(f"first frame, {label:22s} {seconds * 1000:7.1f} ms   (goal ≤ 450 ms: {verdict})")
    print(f"auto over halfcell: {auto / halfcell:.2f}x   silent over halfcell: {silent / halfcell:.2f}x")


if __name__ == "__main__":
    main()
