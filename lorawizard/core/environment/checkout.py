"""The sd-scripts checkout: where it is (the session's path, then common places), its git branch, commit and release
tag, whether it trains FLUX and whether it is new enough for the session's model family; the `git clone` command of
the one-key fix, which checks out a release tag (PINNED_TAG), not a moving branch."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lorawizard.core.common.fsutil import display_path
from lorawizard.core.launch.command import TRAIN_SCRIPT
from lorawizard.core.profile import ModelFamily
from lorawizard.core.session.document import Session

SD_SCRIPTS_URL = "https://github.com/kohya-ss/sd-scripts.git"
# The release the clone fix checks out: the newest tag in the snapshot of kohya-ss/sd-scripts read for issue 27
# (2026-02-13; main and sd3 identical since v0.10.0). It has every family's needs: FLUX.1 dev/schnell (and Krea,
# dev-shaped), Chroma (--model_type chroma, library/chroma_models.py, since v0.10.0) and the sample prompts' CFG
# (`scale`, `--l`, apart from the embedded `guidance_scale`, `--g`: PR #2157, in v0.10.0).
PINNED_TAG = "v0.10.1"
BRANCHES = (PINNED_TAG, "main", "sd3")  # the tag first; the branches move (identical trees since v0.10.0)
DEFAULT_BRANCH = PINNED_TAG

# Where people keep sd-scripts (the session's path always comes first).
COMMON_PLACES = (
    "~/sd-scripts",
    "~/kohya-ss/sd-scripts",
    "~/kohya/sd-scripts",
    "~/kohya_ss/sd-scripts",
    "~/src/sd-scripts",
    "~/git/sd-scripts",
    "~/code/sd-scripts",
    "/opt/sd-scripts",
    "/workspace/sd-scripts",
)


@dataclass


class Checkout:
    path: Path
    problem: str | None = None  # why it is not a usable checkout
    has_flux: bool = False
    looks_like_sd_scripts: bool = False
    branch: str | None = None
    commit: str | None = None
    date: str | None = None
    subject: str | None = None
    remote: str | None = None
    is_git: bool = False
    tag: str | None = None  # the release tag at the commit (exact), else the nearest one before it ("v0.10.1+")

    def describe(self) -> str:
        parts = []
        if self.tag:
            parts.append(f"release {self.tag}")
        if self.branch and not (self.branch == "(detached)" and self.tag):
            parts.append(f"branch {self.branch}")
        if self.commit:
            parts.append(f"commit {self.commit[:8]}" + (f" ({self.date})" if self.date else ""))
        return ", ".join(parts)


def inspect_checkout(path: Path) -> Checkout:
    info = Checkout(path)
    if not path.exists():
        info.problem = f"{display_path(path)} does not exist"
        return info
    if not path.is_dir():
        info.problem = f"{display_path(path)} is a file, not a folder"
        return info
    info.has_flux = (path / TRAIN_SCRIPT).is_file()
    info.looks_like_sd_scripts = info.has_flux or (
        (path / "train_network.py").is_file() and (path / "library").is_dir()
    )
    if not info.looks_like_sd_scripts:
        info.problem = f"{display_path(path)} is not a kohya-ss/sd-scripts checkout (no {TRAIN_SCRIPT}, no train_network.py)"
    _read_git(info)
    return info


def _git_dir(path: Path) -> Path | None:
    dot_git = path / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # worktree or submodule: "gitdir: <path>"
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            target = Path(text.removeprefix("gitdir:").strip())
            target = target if target.is_absolute() else path / target
            return target if target.is_dir() else None
    return None


def _read_git(info: Checkout) -> None:
    """Branch, commit, date and origin — read from the files, with `git` for the date when it is installed."""
    git_dir = _git_dir(info.path)
    if git_dir is None:
        return
    info.is_git = True
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return
    if head.startswith("ref:"):
        ref = head.removeprefix("ref:").strip()
        info.branch = ref.removeprefix("refs/heads/")
        info.commit = _resolve_ref(git_dir, ref)
    elif re.fullmatch(r"[0-9a-f]{40,64}", head):
        info.branch = "(detached)"
        info.commit = head
    config = _common_dir(git_dir) / "config"
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
        match = re.search(r'\[remote "origin"\][^\[]*?url\s*=\s*(\S+)', text)
        info.remote = match.group(1) if match else None
    except OSError:
        pass
    git = shutil.which("git")
    if git and info.commit:
        try:
            out = subprocess.run(
                [git, "-c", "safe.directory=*", "-C", str(info.path), "log", "-1", "--format=%cs%x00%s", info.commit, "--"],
                capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
            )
            if out.returncode == 0 and "\0" in out.stdout:
                info.date, info.subject = out.stdout.strip().split("\0", 1)
            out = subprocess.run(
                [git, "-c", "safe.directory=*", "-C", str(info.path), "describe", "--tags", "--match", "v*", info.commit],
                capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
            )
            if out.returncode == 0 and out.stdout.strip():  # "v0.10.1", or "v0.10.1-5-g48d368f" after it
                described = out.stdout.strip()
                info.tag = described if "-g" not in described else described.split("-", 1)[0] + "+"
        except (OSError, subprocess.SubprocessError):
            pass


def family_problem(checkout: Checkout, family: ModelFamily) -> str | None:
    """Why this checkout cannot train `family` (one line), or None: the family's marker file is missing (Chroma:
    library/chroma_models.py, added with --model_type chroma in v0.10.0). Read from the files, so a checkout without
    git or tags is judged the same."""
    marker = family.trainer_marker
    if not marker or (checkout.path / marker).is_file():
        return None
    at = f" ({checkout.describe()})" if checkout.describe() else ""
    return (f"{display_path(checkout.path)}{at} is older than {family.title} needs: sd-scripts "
            f"{family.min_trainer_version} or later (no {marker})")


def _common_dir(git_dir: Path) -> Path:
    common = git_dir / "commondir"
    if common.is_file():
        target = Path(common.read_text(encoding="utf-8").strip())
        return target if target.is_absolute() else (git_dir / target).resolve()
    return git_dir


def _resolve_ref(git_dir: Path, ref: str) -> str | None:
    for base in (git_dir, _common_dir(git_dir)):
        loose = base / ref
        if loose.is_file():
            return loose.read_text(encoding="utf-8").strip() or None
    packed = _common_dir(git_dir) / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    return None


def find_sd_scripts(session: Session) -> Path | None:
    """The session's path; else the first common place holding sd-scripts with FLUX (then any sd-scripts)."""
    configured = session.paths.sd_scripts
    if configured is not None:
        return configured
    places = [Path(p).expanduser() for p in COMMON_PLACES]
    places[1:1] = [session.project_dir / "sd-scripts", session.project_dir.parent / "sd-scripts"]
    seen = []
    for place in places:
        if place.is_dir() and (place / TRAIN_SCRIPT).is_file():
            return place
        seen.append(place)
    return next((p for p in seen if p.is_dir() and (p / "train_network.py").is_file()), None)


def default_clone_target(session: Session) -> Path:
    return session.paths.sd_scripts or Path("~/sd-scripts").expanduser()


def clone_argv(target: Path, branch: str = DEFAULT_BRANCH, url: str = SD_SCRIPTS_URL) -> list[str]:
    return ["git", "clone", "--progress", "--branch", branch, "--", url, str(target)]
