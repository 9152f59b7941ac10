"""A resumed chain of two real-log runs for tests (issue 24 item 7): the real trainer's train.log and resume.log
(tests/support/real_logs) in two run folders, the second resumed from the first's state."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lorawizard.core.launch.runs import RunRecord

REAL = Path(__file__).parent / "real_logs"


def _ended(run_dir: Path, log: bytes, **fields) -> RunRecord:
    run_dir.mkdir(parents=True)
    record = RunRecord(run_id=run_dir.name, dir=run_dir, argv=["python"], env={}, cwd=str(run_dir),
                       output_name="tiny", **fields)
    record.save()
    (run_dir / "exit.json").write_text(json.dumps({"returncode": 0, "ended": time.time()}))
    (run_dir / "train.log").write_bytes(log)
    return record


def make_chain(runs_dir: Path) -> tuple[RunRecord, RunRecord]:
    """The real trainer's logs: a run of 2 epochs × 2 steps (LoRAs after epochs 1 and 2, its state at epoch 2), then
    that run resumed from its state to a 3rd epoch (sd-scripts' bar counts 0..2 of 6 there)."""
    first = _ended(runs_dir / "20261125-164738", (REAL / "train.log").read_bytes())
    state = first.dir / "tiny-state"
    state.mkdir()
    (state / "train_state.json").write_text(json.dumps({"current_epoch": 2, "current_step": 4}))
    (first.dir / "tiny-000001.safetensors").write_bytes(b"x" * 100)
    time.sleep(0.01)
    (first.dir / "tiny.safetensors").write_bytes(b"x" * 100)
    time.sleep(0.01)
    second = _ended(runs_dir / "20261125-165050", (REAL / "resume.log").read_bytes(), base_step=4, base_epoch=2,
                    resumed_from=str(state))
    (second.dir / "tiny.safetensors").write_bytes(b"x" * 100)
    return first, second
