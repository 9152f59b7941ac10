"""Extra (not in the default suite): the Results features against the real sd-scripts on the CPU (../shared/e2e).

1. Samples: `[train.samples]` with `at_first` and every epoch → sd-scripts writes its PNGs → the gallery (core and the
   Samples screen) shows the baseline and each epoch, one row per prompt.
2. Stop then resume from the shell: `--replay --steps train --detach`, `lorawizard DIR --stop` mid-run,
   `--replay --steps train --resume` → the stop loses at most the steps since the newest step save, and the resumed run
   finishes with the absolute step count right.

    flock /tmp/e2e.lock env LORAWIZARD_E2E=/work/e2e LORAWIZARD_E2E_CACHES=<dir> \
        python -m pytest -m extra tests/e2e/test_results_e2e.py -s        (~5-8 min on 2 idle cores)
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorawizard.core.launch import runs
from lorawizard.core.session.document import Session
from lorawizard.core.train.samples import gallery
from tests.e2e.test_command_e2e import e2e_session, needs_e2e
from tests.e2e.test_train_e2e import _reuse_caches
from tests.support.sessions import save

pytestmark = pytest.mark.extra
PROMPTS = ["tiny, a photo", "tiny on a beach"]


def lorawizard(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lorawizard", *args], capture_output=True, text=True, timeout=timeout)


@needs_e2e
def test_samples_at_first_and_every_epoch_fill_the_gallery(project: Path) -> None:
    session = e2e_session(project, train__max_train_epochs=2, train__samples__prompts=PROMPTS,
                          train__samples__every_n_epochs=1, train__samples__at_first=True,
                          train__samples__width=128, train__samples__height=128, train__samples__steps=4)
    _reuse_caches(project)
    started = time.monotonic()
    done = lorawizard("--replay", str(session.path), "--steps", "train")
    run_dir = runs.list_runs(session.paths.runs)[-1].dir
    log = (run_dir / "train.log").read_bytes().decode("utf-8", "replace")
    print(f"samples run: rc={done.returncode} in {time.monotonic() - started:.0f} s\n{done.stdout[-1500:]}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + log[-3000:]
    prompt_file = json.loads((run_dir / "sample_prompts.json").read_text())
    assert [entry["prompt"] for entry in prompt_file] == PROMPTS  # our JSON prompt file, read by sd-scripts

    grid = gallery([run_dir], "tiny", PROMPTS)
    assert grid.epochs == [0, 1, 2], sorted(p.name for p in (run_dir / "sample").iterdir())  # baseline + 2 epochs
    assert grid.rows == 2 and len(grid.cells) == 6  # every prompt at every epoch

    from lorawizard.tui.app import LoraWizardApp
    from lorawizard.tui.screens.samples import SamplesScreen

    async def look() -> tuple[list[int], int]:
        app = LoraWizardApp(Session.load(session.path), start_step="train")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.5)
            await pilot.press("g")
            screen = app.screen
            assert isinstance(screen, SamplesScreen)
            for _ in range(100):
                if screen.gallery.epochs == [0, 1, 2]:
                    break
                await pilot.pause(0.1)
            return screen.gallery.epochs, screen.gallery.rows

    assert asyncio.run(look()) == ([0, 1, 2], 2)


@needs_e2e
def test_stop_from_the_shell_then_resume_loses_at_most_one_step_save(project: Path) -> None:
    # 4 images at batch 1: 4 steps per epoch × 3 epochs = 12 steps. A state every 2 steps: the probe measured
    # 30 s/step and train.state_minutes = 1 → steps_for(30, 1) = 2.
    session = e2e_session(project, train__max_train_epochs=3, train__state_minutes=1, train__samples__prompts=[])
    session.set_batch_size("128x128", 1)
    save(session)
    _reuse_caches(project)
    probe = session.paths.state / "probe.json"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(json.dumps({"buckets": {"128x128": {"batch_size": 1, "s_per_step": 30.0}}}))
    every = 2

    started = time.monotonic()
    launched = lorawizard("--replay", str(session.path), "--steps", "train", "--detach", timeout=120)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    first = runs.list_runs(session.paths.runs)[-1]
    argv = json.loads((first.dir / "run.json").read_text())["argv"]
    assert argv[argv.index("--save_every_n_steps") + 1] == str(every) and "--sample_prompts" not in argv

    # wait until a step save exists and the run has gone past it, then stop it from the shell
    deadline = time.monotonic() + 1200
    while True:
        assert time.monotonic() < deadline, (first.dir / "train.log").read_text(errors="replace")[-3000:]
        assert first.status() == "running", (first.dir / "train.log").read_text(errors="replace")[-3000:]
        states = [s for s in runs.saved_states(session.paths.runs) if s.run_id == first.run_id]
        status = lorawizard(str(project), "--status", timeout=60)
        step = re.search(r"step (\d+)/(\d+)", status.stdout)
        if states and step and int(step.group(1)) >= states[-1].step + 1 and states[-1].step >= every:
            break
        time.sleep(1)
    stopped = lorawizard(str(project), "--stop", timeout=300)
    print(stopped.stdout, f"after {time.monotonic() - started:.0f} s", sep="\n")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    at_stop = int(re.search(r"at step (\d+)", stopped.stdout).group(1))
    newest = runs.newest_state(session.paths.runs)
    assert newest is not None and newest.step % every == 0
    assert 0 < at_stop - newest.step <= every  # a stop loses at most the steps since the newest step save
    lost = at_stop - newest.step
    assert f"loses {lost} step{'s' if lost != 1 else ''} " in stopped.stdout
    assert lorawizard(str(project), "--status", timeout=60).returncode == 1  # stopped

    resumed = lorawizard("--replay", str(session.path), "--steps", "train", "--resume")
    second = runs.list_runs(session.paths.runs)[-1]
    log = (second.dir / "train.log").read_text(errors="replace")
    print(resumed.stdout[-2000:], f"total {time.monotonic() - started:.0f} s", sep="\n")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:] + log[-3000:]
    assert second.run_id != first.run_id and second.base_step == newest.step  # resumed from the newest state
    final = lorawizard(str(project), "--status", timeout=60)
    assert final.returncode == 0 and "step 12/12" in final.stdout, final.stdout
    assert (second.dir / "tiny.safetensors").is_file()
