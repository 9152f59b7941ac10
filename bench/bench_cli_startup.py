"""How long `lorawizard --help` takes, against the bare interpreter and against importing Textual; and how long
the wizard takes to draw its first frame in a real pty (80×24, answering DA1 as tmux does), per `--images` mode.

Goals: --help ≤ 0.15 s; first frame ≤ 0.45 s with `--images auto` as with `halfcell`, also in a terminal that
never answers (the terminal is asked in one round trip after the first frame, not before it); and the first frame
within 1.1× of a minimal Textual app's (Header, one Label, Footer: the cost of importing Textual and drawing at all)
in every image mode, as medians of N starts at 120×40. Prints wall times measured in this one run, and the ratios.

The first frame is the step bar (the wizard draws it alone first: skeleton_first); the full screen is the opening
step's body (the Environment screen's intro line). Both are printed: drawing the bar first costs the full screen a
second screen's work, and that cost is measured here too, against the wizard started without the skeleton.

Measured as installed: with bytecode caches (pip writes them; PYTHONDONTWRITEBYTECODE=1 in a dev shell would make
every start compile ~45 modules, ~60 ms more). The floor is a bare Textual app with the same widget types as the
Environment screen (step bar text, fields, a select, a progress bar, a log, a footer), in the same pty.
Usage: PYTHONPATH=. python bench/bench_cli_startup.py [N] [--over-minimal]
"""

from __future__ import annotations

import os
import statistics
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


BARE_TEXTUAL = """
from textual.app import App
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Input, Label, Log, ProgressBar, Select, Static


class Floor(App):
    BINDINGS = [(k, "bell", k) for k in "qrtfce"]

    def compose(self):
        yield Static("Environment  Models  Dataset  Captions  GPU  Train")
        with VerticalScroll():
            yield Static("intro " * 20)
            for name in ("sd-scripts", "python"):
                with Horizontal():
                    yield Label(name)
                    yield Input(placeholder="path")
            with Horizontal():
                yield Label("torch")
                yield Select([("a", 1), ("b", 2)])
            yield Static("findings")
        yield ProgressBar()
        yield Log()
        yield Footer()


Floor().run()
"""


MINIMAL_TEXTUAL = """
from textual.app import App
from textual.widgets import Footer, Header, Label


class Minimal(App):
    def compose(self):
        yield Header()
        yield Label("Environment  Models  Dataset  Captions  GPU  Train")
        yield Footer()


Minimal().run()
"""


NO_SKELETON = """
import sys
from lorawizard import cli
from lorawizard.tui import app

wizard_init = app.LoraWizardApp.__init__


def without_skeleton(self, session, **options):
    wizard_init(self, session, **{**options, "skeleton_first": False})


app.LoraWizardApp.__init__ = without_skeleton  # the CLI asks for the skeleton; this run draws the screen at once
sys.exit(cli.main())
"""

BODY_MARKER = b"Finds sd-scripts"  # the Environment screen's intro line


def first_frame(images: str, runs: int, answer_da1: bool = True, argv: list[str] | None = None,
                body: bool = False, script: Path | None = None, size: tuple[int, int] = (80, 24),
                median: bool = False) -> float:
    """Seconds from exec to the step bar on screen (`body`: to the step's body), best of `runs` (`median`: their
    median) in a fresh project (the Environment screen)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.pty_terminal import PtyTerminal

    times: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, TERM="xterm-256color", HOME=folder, LORAWIZARD_IMAGES=images)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode caches are written once, then used
        for _ in range(runs):
            wizard = [sys.executable, *([str(script)] if script else ["-m", "lorawizard"]), folder, "--images", images]
            term = PtyTerminal.start(argv or wizard, env=env, cwd=folder, answer_da1=answer_da1, size=size)
            try:
                times.append(term.wait_for(BODY_MARKER if body else b"Train"))
            finally:
                term.close()
    return statistics.median(times) if median else min(times)


def main() -> None:
    args = sys.argv[1:]
    runs = int(next((a for a in args if a.isdigit()), 7))
    if "--over-minimal" in args:  # only the ratio to the minimal app
        over_minimal(runs)
        return
    python = sys.executable
    bare = best_of([python, "-c", "pass"], runs)
    help_ = best_of([python, "-m", "lorawizard", "--help"], runs)
    naive = best_of([python, "-c", "import textual.app, lorawizard.cli"], runs)
    print(f"bare interpreter        {bare * 1000:7.1f} ms")
    print(f"lorawizard --help       {help_ * 1000:7.1f} ms   (goal ≤ 150 ms: {'met' if help_ <= 0.15 else 'NOT met'})")
    print(f"naive (imports Textual) {naive * 1000:7.1f} ms")
    print(f"--help over bare: {help_ / bare:.2f}x   naive over --help: {naive / help_:.2f}x")
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parents[1] / "lorawizard"), quiet=1)
    with tempfile.TemporaryDirectory() as folder:
        floor_app = Path(folder) / "floor.py"
        floor_app.write_text(BARE_TEXTUAL)
        floor = first_frame("halfcell", runs, argv=[python, str(floor_app)])
    auto = first_frame("auto", runs)
    halfcell = first_frame("halfcell", runs)
    silent = first_frame("auto", runs, answer_da1=False)
    full = first_frame("auto", runs, body=True)
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "no_skeleton.py"
        plain.write_text(NO_SKELETON)
        full_plain = first_frame("auto", runs, body=True, script=plain)
    for label, seconds in (("auto", auto), ("halfcell", halfcell), ("auto, silent terminal", silent)):
        verdict = "met" if seconds <= 0.45 else "NOT met"
        print(f"first frame, {label:22s} {seconds * 1000:7.1f} ms   (goal ≤ 450 ms: {verdict})")
    print(f"first frame, bare Textual, same widgets {floor * 1000:7.1f} ms   (the floor)")
    print(f"full screen (the step's body), auto   {full * 1000:7.1f} ms")
    print(f"full screen without the skeleton      {full_plain * 1000:7.1f} ms   (then it is the first frame too)")
    print(f"auto over halfcell: {auto / halfcell:.2f}x   silent over halfcell: {silent / halfcell:.2f}x   "
          f"halfcell over the bare-Textual floor: {halfcell / floor:.2f}x")
    print(f"first frame over the full screen without the skeleton: {auto / full_plain:.2f}x   "
          f"full screen, skeleton over none: {full / full_plain:.2f}x")
    over_minimal(runs)


def over_minimal(runs: int) -> None:
    """The first frame against a minimal Textual app's, medians at 120×40: lorawizard adds nothing on top of
    Textual's own start (goal ≤ 1.1× in every image mode). The starts are interleaved (one of each per round), so
    a machine that slows down during the run slows all of them alike instead of skewing the ratios."""
    python, size = sys.executable, (120, 40)
    modes = (("auto", "auto", True), ("halfcell", "halfcell", True), ("auto, silent terminal", "auto", False))
    times: dict[str, list[float]] = {"minimal": [], **{label: [] for label, _, _ in modes}}
    with tempfile.TemporaryDirectory() as folder:
        minimal_app = Path(folder) / "minimal.py"
        minimal_app.write_text(MINIMAL_TEXTUAL)
        for _ in range(runs):
            times["minimal"].append(first_frame("halfcell", 1, argv=[python, str(minimal_app)], size=size))
            for label, images, answer in modes:
                times[label].append(first_frame(images, 1, answer_da1=answer, size=size))
    minimal = statistics.median(times["minimal"])
    print(f"first frame, minimal Textual app (Header, Label, Footer), 120×40, median of {runs}: "
          f"{minimal * 1000:7.1f} ms")
    for label, _, _ in modes:
        seconds = statistics.median(times[label])
        ratio = seconds / minimal
        print(f"first frame, {label:22s} 120×40 median {seconds * 1000:7.1f} ms   {ratio:.2f}x the minimal app "
              f"(goal ≤ 1.10x: {'met' if ratio <= 1.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
