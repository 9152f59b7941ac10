"""Every run of the project, to compare their samples: rows of prompts, columns of (run, epoch).

The base run's runs live in `<paths.runs>/<run-id>/` (output name `<name>`), a variant V's in
`<paths.runs>/variants/V/<run-id>/` (output name `<name>-V`), whether or not V is still in session.toml.
`project_runs(session)` turns them into run groups: one per run chain (a run and the runs it resumed from), labelled
`base` or `V` for the newest chain of each line and `base@<run-id>` for the earlier ones. `compare(groups)` lays
their samples out: one row per prompt (by its text, so runs whose prompt files differ are never shown as the same
prompt), one column per (run, epoch), epoch by epoch, so epoch 8 of `base` and of `fp16` stand side by side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorawizard.core.launch import runs
from lorawizard.core.session.document import Session
from lorawizard.core.train import samples

BASE = "base"  # the base run's label (core/session/variants.py: no variant may take it)
VARIANTS_DIR = "variants"  # <paths.runs>/variants/<name>/<run-id> (core/train/queue.py)


@dataclass(frozen=True)
class RunGroup:
    """One run chain of the project and its samples."""

    label: str  # "base", "fp16"; "base@20261125-101500" for an earlier chain of the same line
    variant: str | None  # None: the base run
    output_name: str
    records: tuple[Any, ...]  # runs.RunRecord, oldest first (the runs the newest resumed from, then it)
    gallery: samples.Gallery
    prompts: tuple[str, ...]  # the newest run's prompt file
    latest: bool = True  # the newest chain of its line (the queue's run); False: an earlier run

    @property
    def run_dirs(self) -> list[Path]:
        return [Path(r.dir) for r in self.records]

    @property
    def tip(self) -> Any:
        """The newest run of the chain (keep copies from its chain)."""
        return self.records[-1]

    @property
    def run_id(self) -> str:
        return str(self.tip.run_id) if self.records else ""

    @property
    def line(self) -> str:
        return self.variant or BASE

    @property
    def epochs(self) -> list[int]:
        """The epochs with samples (0: the baseline)."""
        return list(self.gallery.epochs)

    @property
    def planned_epochs(self) -> int | None:
        """The run's `--max_train_epochs` (its last epoch, when it finishes); None when unknown."""
        if not self.records:
            return None
        argv = [str(word) for word in self.tip.argv]
        if "--max_train_epochs" in argv[:-1]:
            value = argv[argv.index("--max_train_epochs") + 1]
            return int(value) if value.isdigit() else None
        return None


def group_from_dirs(label: str, run_dirs: Sequence[Path], output_name: str, prompts: Sequence[str], *,
                    variant: str | None = None, records: Sequence[Any] = ()) -> RunGroup:
    """A group from run folders as the Train screen knows them (no records needed)."""
    grid = samples.gallery(run_dirs, output_name, list(prompts))
    return RunGroup(label, variant, output_name, tuple(records), grid, tuple(prompts))


def _chains(records: list[Any]) -> list[list[Any]]:
    """Each chain (oldest first) ending at a run no other run resumed from; newest chain first."""
    from lorawizard.core.train.keep import run_chain

    chains = [run_chain(r) for r in records]
    parents = {p.run_id for chain in chains for p in chain[:-1]}
    tips = [chain for chain in chains if chain[-1].run_id not in parents]
    tips.sort(key=lambda c: (c[-1].started_ts, c[-1].run_id), reverse=True)
    return tips


def _line_groups(folder: Path, variant: str | None, fallback_name: str) -> list[RunGroup]:
    groups = []
    for index, chain in enumerate(_chains(runs.list_runs(folder))):
        tip = chain[-1]
        output = tip.output_name or fallback_name
        prompts = samples.read_prompts(tip.dir)
        line = variant or BASE
        label = line if index == 0 else f"{line}@{tip.run_id}"
        grid = samples.gallery([r.dir for r in chain], output, prompts)
        groups.append(RunGroup(label, variant, output, tuple(chain), grid, tuple(prompts), latest=index == 0))
    return groups


def variant_names(runs_dir: Path) -> list[str]:
    """The variants that have a runs folder (in session.toml or not)."""
    try:
        return sorted(p.name for p in (Path(runs_dir) / VARIANTS_DIR).iterdir() if p.is_dir())
    except OSError:
        return []


def project_runs(session: Session) -> list[RunGroup]:
    """Every run chain of the project: the newest of each line first (base, then the variants in the order their
    newest run started: the queue's order), then the earlier chains, newest first."""
    runs_dir = Path(session.paths.runs)
    name = session.name
    groups = _line_groups(runs_dir, None, name)
    for variant in variant_names(runs_dir):
        groups += _line_groups(runs_dir / VARIANTS_DIR / variant, variant, f"{name}-{variant}")
    latest = [g for g in groups if g.latest]
    base = [g for g in latest if g.variant is None]
    others = sorted((g for g in latest if g.variant is not None), key=lambda g: (g.tip.started_ts, g.label))
    earlier = sorted((g for g in groups if not g.latest), key=lambda g: (g.tip.started_ts, g.run_id), reverse=True)
    return base + others + earlier


def project_records(session: Session) -> list[Any]:
    """Every readable run of the project, the variants' too, oldest first."""
    runs_dir = Path(session.paths.runs)
    found = runs.list_runs(runs_dir)
    for variant in variant_names(runs_dir):
        found += runs.list_runs(runs_dir / VARIANTS_DIR / variant)
    found.sort(key=lambda r: (r.started_ts, r.run_id))
    return found


def group_of_record(groups: Iterable[RunGroup], record: Any) -> RunGroup | None:
    """The group whose chain holds `record` (by its folder)."""
    folder = Path(record.dir)
    return next((g for g in groups if folder in g.run_dirs), None)


# ------------------------------------------------------------------ the comparison grid


@dataclass
class Comparison:
    """Rows = prompts (by text), columns = (group label, epoch) epoch by epoch; a cell is the newest image."""

    groups: list[RunGroup] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # one per row ("prompt N" where a run has no prompt file)
    columns: list[tuple[str, int]] = field(default_factory=list)
    cells: dict[tuple[int, str, int], samples.SampleImage] = field(default_factory=dict)  # (row, label, epoch)

    @property
    def rows(self) -> int:
        return len(self.prompts)

    @property
    def epochs(self) -> list[int]:
        return sorted({epoch for _, epoch in self.columns})

    def image(self, row: int, label: str, epoch: int) -> samples.SampleImage | None:
        return self.cells.get((row, label, epoch))

    def group(self, label: str) -> RunGroup | None:
        return next((g for g in self.groups if g.label == label), None)


def _row_key(group: RunGroup, index: int) -> str:
    if index < len(group.prompts) and group.prompts[index].strip():
        return " ".join(group.prompts[index].split())
    return f"prompt {index + 1}"


def compare(groups: Sequence[RunGroup], *, epochs: Iterable[int] | None = None) -> Comparison:
    """The groups' samples side by side; `epochs` keeps only those epochs (e.g. `[8]`: epoch 8 across runs)."""
    wanted = None if epochs is None else set(epochs)
    result = Comparison(groups=list(groups))
    rows: dict[str, int] = {}
    for group in groups:
        count = max([len(group.prompts), group.gallery.rows] + [i + 1 for i, _ in group.gallery.cells])
        for index in range(count):
            rows.setdefault(_row_key(group, index), len(rows))
    result.prompts = list(rows)
    present: set[tuple[str, int]] = set()
    for group in groups:
        for (index, epoch), image in group.gallery.cells.items():
            if wanted is not None and epoch not in wanted:
                continue
            result.cells[(rows[_row_key(group, index)], group.label, epoch)] = image
            present.add((group.label, epoch))
    order = {g.label: i for i, g in enumerate(groups)}
    result.columns = sorted(present, key=lambda c: (c[1], order[c[0]]))
    return result

