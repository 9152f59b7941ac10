"""Extra (not in the default suite): the real sd-scripts trainer, end to end through the train step's run machinery —
start detached, stop mid-epoch, resume from the newest state, finish — and the dashboard's step, epoch and loss
match the log.

Needs a ready ../shared/e2e setup and `LORAWIZARD_E2E=<dir>` (see tests/e2e/test_command_e2e.py). On 2 CPU cores with
the tiny random models it takes a few minutes:
    LORAWIZARD_E2E=/work/e2e python -m pytest -m extra tests/e2e/test_train_e2e.py -s
`LORAWIZARD_E2E_CACHES=<dir>` with the `*_flux.npz`/`*_flux_te.npz` caches of an earlier run skips re-encoding.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from lorawizard.core.launch import runs
from lorawizard.core.train.step import RunFollower, plan_run, start_run
from tests.e2e.test_command_e2e import e2e_session, needs_e2e

pytestmark = pytest.mark.extra


def _reuse_caches(project: Path) -> None:
    """Copy latent/TE caches of an earlier run (`LORAWIZARD_E2E_CACHES`, files named like ours: 0001_flux_te.npz)
    beside the images: saves minutes of T5 encoding on a CPU. sd-scripts checks their validity itself."""
    folder = os.environ.get("LORAWIZARD_E2E_CACHES")
    if folder and Path(folder).is_dir():
        for cache in Path(folder).glob("*.npz"):
            shutil.copyfile(cache, project / "dataset" / "128x128" / cache.name)


def _follow(follower: RunFollower, until, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not until():
        follower.poll()
        assert time.monotonic() < deadline, follower.state.lines and list(follower.state.lines)[-20:]
        time.sleep(0.5)


@needs_e2e
def test_real_trainer_start_stop_resume_finish(project: Path) -> None:
    # no samples: this is about stop and resume; 3 prompts × 20 steps an epoch add ~5 min a run on 2 CPU cores
    session = e2e_session(project, train__max_train_epochs=3, train__samples__prompts=[])
    _reuse_caches(project)
    started = time.monotonic()

    # 1. start detached; stop it during epoch 2 (after epoch 1's checkpoint and state)
    first = start_run(session, plan_run(session))
    follower = RunFollower(first)
    _follow(follower, lambda: follower.state.epoch >= 2 and follower.state.step >= 3, timeout=900)
    assert follower.state.states and follower.state.states[-1].epoch == 1
    how = runs.stop(first, int_timeout=60)
    follower.finish()
    print(f"first run stopped with {how} at step {follower.state.step} after {time.monotonic() - started:.0f} s")
    assert how == "SIGINT" and runs.RunRecord.load(first.dir).status() == "stopped"
    assert not follower.state.model_saved and follower.diagnosis(alive=False) is None

    # 2. resume from the newest state (epoch 1, step 2) and finish
    state = runs.newest_state(session.paths.runs)
    assert (state.epoch, state.step) == (1, 2)
    plan = plan_run(session, resume=True)
    second = start_run(session, plan)
    resumed = RunFollower(second)
    _follow(resumed, lambda: not second.is_alive(), timeout=900)
    resumed.finish()
    text = second.log_path.read_bytes().decode("utf-8", "replace")
    print(f"resumed run: {runs.RunRecord.load(second.dir).status()} after {time.monotonic() - started:.0f} s total")
    assert runs.RunRecord.load(second.dir).status() == "finished", text[-3000:]

    # 3. the dashboard's numbers match the log: sd-scripts' bar says 4/6 after a resume at step 2; we say 6/6
    bars = re.findall(r"steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[[^\]]*avr_loss=([0-9.e+-]+|nan)\]", text)
    epochs = re.findall(r"^epoch (\d+)/(\d+)$", text, re.M)
    own_step, own_total, last_loss = int(bars[-1][0]), int(bars[-1][1]), float(bars[-1][2])
    s = resumed.state
    assert (own_step, own_total) == (4, 6)
    assert (s.step, s.total_steps) == (plan.base_step + own_step, 6) == (6, 6)
    assert (s.epoch, s.epochs) == (int(epochs[-1][0]), int(epochs[-1][1])) == (3, 3)
    assert s.loss == pytest.approx(last_loss) and s.model_saved
    assert (second.dir / "tiny.safetensors").is_file()

    # 4. the wizard opened afterwards shows that run, with the same numbers
    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.widgets.train_panels import TrainHeader

    async def look() -> tuple:
        app = LoraWizardApp(session, start_step="train")
        async with app.run_test(size=(120, 40)) as pilot:
            header = app.screen.query_one(TrainHeader)
            for _ in range(100):
                await pilot.pause(0.1)
                view = getattr(header, "view", None)
                if view is not None and view.status == "finished":
                    break
            return view.status, view.step, view.total_steps, view.epoch, view.loss

    assert asyncio.run(look()) == ("finished", 6, 6, 3, pytest.approx(last_loss))
