"""The `lorawizard` command. Keep imports here cheap: `--help` and `--replay` never load Textual."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NoReturn

from lorawizard import __version__
from lorawizard.core.profile import DEFAULT_FAMILY
from lorawizard.core.registry import EXTRA_STEPS, STEP_ORDER

IMAGE_RENDERERS = ("auto", "tgp", "sixel", "halfcell", "unicode")


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line (not argparse's usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        from lorawizard.core.common.text import one_line

        missing = re.fullmatch(r"argument (-[^\s:/]+)(?:/\S+)?: expected one argument", message)
        action = missing and next((a for a in self._actions if missing.group(1) in a.option_strings), None)
        if missing and action:  # `--replay --help`, `--replay` last: say what it takes
            what = action.metavar or ("one of " + ",".join(action.choices) if action.choices else "a value")
            message = f"{missing.group(1)} needs {what}"
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="lorawizard",
        description=f"Train a {DEFAULT_FAMILY.title} LoRA with kohya-ss sd-scripts: a keyboard-driven wizard, or a headless "
                    "replay.",
        epilog=(
            "exit codes: 0 success, 1 a step failed, 2 bad usage or invalid session file, 130 interrupted (143 SIGTERM, "
            "129 SIGHUP); --status/--follow: 0 finished ok, 1 failed or stopped, 3 running, 4 no run; --stop: 0 stopped, "
            "4 none running, 1 a process survived SIGKILL. "
            "Over SSH without COLORTERM, set TEXTUAL_COLOR_SYSTEM=truecolor for true colours."
        ),
    )
    parser.add_argument(
        "project", nargs="?", default=".", type=Path,
        help="project folder (default: .); a new one is created if its parent exists; its session.toml is opened, "
             "or created on the first decision",
    )
    parser.add_argument("--replay", metavar="SESSION.toml", type=Path, help="run the session's steps headless")
    parser.add_argument(
        "--steps", metavar="STEP[,STEP...]",
        help=f"with --replay: which steps, run in this order: {','.join(STEP_ORDER + EXTRA_STEPS)} (default: the six, plus "
             "publish when session.toml has [publish] repo)",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="with --replay: change nothing outside the project (no downloads, no trainer launch); print what would run",
    )
    parser.add_argument("--detach", action="store_true", help="with --replay: start training and leave it running")
    parser.add_argument("--resume", action="store_true", help="with --replay --steps train: resume from the newest state "
                        "(with variants: continue the stopped queue)")
    parser.add_argument("--variants", metavar="NAME[,NAME...]",
                        help="with --replay: which runs of the queue to train (base and [[train.variants]] names; "
                             "default: all)")
    control = parser.add_mutually_exclusive_group()
    control.add_argument("--status", action="store_true", help="one line about the project's newest run (exit 0/1/3/4)")
    control.add_argument("--follow", action="store_true", help="follow the live run and exit with its result")
    control.add_argument("--stop", action="store_true", help="stop the live run (SIGINT, SIGTERM, SIGKILL) and wait")
    parser.add_argument("--reprobe", action="store_true", help="with --replay: probe buckets that already have a batch size")
    parser.add_argument(
        "--images", choices=IMAGE_RENDERERS, default=None,
        help="how the wizard draws images (default: auto-detect; env LORAWIZARD_IMAGES)",
    )
    parser.add_argument("--version", action="version", version=f"lorawizard {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help/--version
        return int(exc.code or 0)
    try:  # `~nouser/…`: Path.expanduser raises RuntimeError; once here, so nothing later sees a `~`
        args.project = args.project.expanduser() if args.project is not None else None
        args.replay = args.replay.expanduser() if isinstance(args.replay, Path) else args.replay
    except RuntimeError:
        print(f"lorawizard: error: {args.replay or args.project}: no such user on this machine (the ~user part)",
              file=sys.stderr)
        return 2

    replay_only = [flag for flag, used in (("--steps", args.steps), ("--dry-run", args.dry_run),
                                            ("--detach", args.detach), ("--reprobe", args.reprobe),
                                            ("--resume", args.resume), ("--variants", args.variants)) if used]
    if args.replay is None and replay_only:
        print(f"lorawizard: error: {replay_only[0]} needs --replay SESSION.toml", file=sys.stderr)
        return 2

    control = next((name for name in ("status", "follow", "stop") if getattr(args, name)), None)
    if control is not None:
        if args.replay is not None:
            print(f"lorawizard: error: --{control} takes the project folder, not --replay", file=sys.stderr)
            return 2
        problem = _missing_project(args.project.expanduser())
        if problem:  # a typo: say so (exit 2) instead of "no run", and create nothing
            from lorawizard.core.common.text import one_line

            print(f"lorawizard: {one_line(problem)}", file=sys.stderr)
            return 2
        from lorawizard import runctl

        try:
            return getattr(runctl, control)(args.project)
        except SystemExit as exc:  # an invalid session.toml: said in one line, exit 2
            return int(exc.code or 0) if isinstance(exc.code, int) else 2
        except KeyboardInterrupt:  # Ctrl-C while --status reads a long log: one line, never a traceback
            print("lorawizard: interrupted", file=sys.stderr)
            return 130

    if args.replay is not None:
        return _replay(args)
    return _run_wizard(args.project, args.images)


def _replay(args: argparse.Namespace) -> int:
    from lorawizard.core.common.text import one_line
    from lorawizard.core.registry import parse_steps
    from lorawizard.headless import EXIT_INTERRUPTED, replay

    try:
        steps = parse_steps(args.steps)
    except ValueError as exc:
        print(f"lorawizard: error: --steps: {one_line(str(exc))}", file=sys.stderr)
        return 2
    only = [v.strip() for v in (args.variants or "").split(",") if v.strip()]
    try:
        return replay(args.replay, steps, dry_run=args.dry_run, all_steps=args.steps is None,
                      options={"probe": {"reprobe": args.reprobe},
                               "train": {"detach": args.detach, "resume": args.resume, "only": only}})
    except KeyboardInterrupt:
        print("lorawizard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _missing_project(project: Path) -> str | None:
    """One line when `project` is not a folder to work in (for commands that only read: they create nothing)."""
    from lorawizard.core.common.fsutil import display_path

    if project.is_dir():
        return None
    if project.exists():
        return f"{display_path(project)} is a file; give the project folder (its session.toml lives there)"
    return f"{display_path(project)}: no such folder; give the project folder (its session.toml lives there)"


def _make_project_folder(project: Path) -> str | None:
    """Create a missing project folder whose parent exists and say so; refuse (one line, nothing created) when the
    parent is missing too, which is a typo more often than a wish (`/hom/me/x`). None when the folder exists."""
    from lorawizard.core.common.fsutil import display_path

    if project.exists():
        problem = _missing_project(project)
        if problem:
            raise ValueError(problem)
        return None
    parent = project.absolute().parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist either"
        raise ValueError(f"{display_path(project)}: no such folder, and its parent {display_path(parent)} {what}; "
                         "nothing created (check the path)")
    project.mkdir()
    return f"created the project folder {display_path(project.absolute())}"


def _run_wizard(project: Path, images: str | None) -> int:
    project = project.expanduser()
    from lorawizard.core.common.text import one_line
    from lorawizard.core.session.document import Session, SessionError

    try:
        created = _make_project_folder(project)
    except ValueError as exc:
        print(f"lorawizard: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lorawizard: {project}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if created:
        print(f"lorawizard: {created}", file=sys.stderr)
    try:
        session = Session.open_project(project)
    except SessionError as exc:
        print(f"lorawizard: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lorawizard: {project}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    from lorawizard.tui.images import choose_renderer

    choose_renderer(images)  # asks the terminal (one round trip) before the app takes stdin over
    from lorawizard.tui.app import LoraWizardApp

    app = LoraWizardApp(session, skeleton_first=True)
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    raise SystemExit(main())
