"""How long `lorawizard --help` takes, against the bare interpreter and against importing Textual.

Goal: --help ≤ 0.15 s. Prints best-of-N wall times measured in this one run, and the ratios.
Usage: python bench/bench_cli_startup.py [N]
"""

from __future__ import annotations

import subprocess
import sys
import time


def best_of(argv: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
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


if __name__ == "__main__":
    main()
