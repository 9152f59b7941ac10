"""Extra (not in the default suite): sd-scripts' real LoRA tools on tiny LoRAs made by the real CPU trainer (issue 28):
resize to a lower rank, convert to ai-toolkit's layout and back (keys equal; each module's update equal; a second
round trip tensor for tensor), merge two with weights (the update is Σ wᵢ·LoRAᵢ), and each result loaded by the real
`flux_minimal_inference.py`, its sample beside the original's.

Needs a ready ../shared/e2e setup and `LORAWIZARD_E2E=<dir>` (see tests/e2e/test_command_e2e.py). The two LoRAs come
from `LORAWIZARD_E2E_LORAS=<dir>` (sd-scripts' `tiny-000001.safetensors` and `tiny.safetensors` of a 2-epoch run
saving every epoch), else from a real 2-epoch run made here (~3 min). Each check draws a 64×64 image in 2 steps
(~1 min on 2 cores: T5-XXL is loaded each time). It holds /tmp/lorawizard-real-trainer.lock while the real tools run.
    LORAWIZARD_E2E=/work/e2e python -m pytest -m extra tests/e2e/test_loratools_e2e.py -s
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext
from lorawizard.core.loratools import naming
from lorawizard.core.loratools.header import inspect
from lorawizard.core.loratools.step import run_convert, run_merge, run_merge_base, run_resize
from lorawizard.core.session.document import Session
from tests.e2e.test_command_e2e import E2E, e2e_session, needs_e2e
from tests.support.sessions import save

pytestmark = pytest.mark.extra

LOCK = Path("/tmp/lorawizard-real-trainer.lock")

# Each module's update (alpha/rank · up @ down) of two files, compared in the trainer's Python; and tensor equality.
COMPARE = r"""
import json, sys, torch
from safetensors.torch import load_file
mode, a_path, b_path = sys.argv[1], sys.argv[2], sys.argv[3]
weights = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
def deltas(sd):
    out = {}
    for key in sd:
        if key.endswith(".lora_down.weight"):
            m = key[: -len(".lora_down.weight")]
            down, up = sd[key].float(), sd[m + ".lora_up.weight"].float()
            alpha = float(sd[m + ".alpha"]) if m + ".alpha" in sd else down.shape[0]
            out[m] = (alpha / down.shape[0]) * (up @ down)
    return out
if mode == "tensors":
    a, b = load_file(a_path), load_file(b_path)
    same = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    print("RESULT " + json.dumps({"keys_equal": sorted(a) == sorted(b), "tensors_equal": same}))
elif mode == "deltas":
    a = deltas(load_file(a_path))
    if weights:  # b_path is "p1,p2": the weighted sum of their updates
        parts = [deltas(load_file(p)) for p in b_path.split(",")]
        b = {m: sum(w * d[m] for w, d in zip(weights, parts)) for m in parts[0]}
    else:
        b = deltas(load_file(b_path))
    worst = max(((a[m] - b[m]).abs().max() / (b[m].abs().max() + 1e-12)).item() for m in b)
    print("RESULT " + json.dumps({"modules_equal": sorted(a) == sorted(b), "worst_relative": worst}))
"""


def _compare(*args: str) -> dict:
    python = E2E / "venv" / "bin" / "python"
    out = subprocess.run([str(python), "-c", COMPARE, *args], capture_output=True, text=True, timeout=300, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def real_lock() -> Iterator[None]:
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _tiny_loras(project: Path, session: Session) -> tuple[Path, Path]:
    """(epoch 1, epoch 2) LoRAs of a real 2-epoch run, in the project's loras/ as the gallery's k keeps them."""
    given = os.environ.get("LORAWIZARD_E2E_LORAS")
    loras = project / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    if given and (Path(given) / "tiny.safetensors").is_file():
        first, last = loras / "tiny-e1.safetensors", loras / "tiny-e2.safetensors"
        shutil.copyfile(Path(given) / "tiny-000001.safetensors", first)
        shutil.copyfile(Path(given) / "tiny.safetensors", last)
        return first, last
    from lorawizard.core.train.keep import keep_epoch
    from lorawizard.core.train.step import RunFollower, plan_run, start_run

    record = start_run(session, plan_run(session))
    follower = RunFollower(record)
    deadline = time.monotonic() + 900
    while record.is_alive():
        follower.poll()
        assert time.monotonic() < deadline, list(follower.state.lines)[-20:]
        time.sleep(1)
    return keep_epoch(session, 1, record).lora, keep_epoch(session, 2, record).lora


@pytest.fixture(scope="module")
def tool_session(tmp_path_factory: pytest.TempPathFactory, real_lock: None) -> tuple[Session, Path, Path]:
    project = tmp_path_factory.mktemp("loratools") / "project"
    session = e2e_session(project, train__samples__prompts=[], tools__check_steps=2, tools__check_size=64,
                          tools__check_prompt="tinytok, a red circle", tools__device="cpu")
    first, last = _tiny_loras(project, session)
    return Session.load(session.path, read_only=True), first, last


def _set(session: Session, **values: object) -> Session:
    writable = Session.load(session.path)
    for key, value in values.items():
        writable.set(key.replace("__", "."), value)
    save(writable)
    return Session.load(session.path, read_only=True)


def _checked(target: Path) -> dict:
    check = naming.read_json_object(naming.sidecar_of(target))["check"]
    assert check["loaded"] and not check["blank"] and Path(check["image"]).is_file(), check
    return check


@needs_e2e
def test_resize_to_a_lower_rank_loads(tool_session: tuple[Session, Path, Path]) -> None:
    session, _first, last = tool_session
    before = inspect(last)
    assert (before.layout, before.rank, before.modules) == ("sd-scripts", 4, 13)
    session = _set(session, tools__lora=str(last), tools__rank=2)
    started = time.monotonic()
    result = run_resize(StepContext(session=session))
    print(f"resize + check: {time.monotonic() - started:.0f} s: {result.summary}")
    target = last.with_name("tiny-e2-r2.safetensors")
    after = inspect(target)
    assert result.ok and (after.rank, after.modules, after.layout) == (2, 13, "sd-scripts")
    assert after.size < before.size
    report = naming.read_json_object(naming.sidecar_of(target))["report"]
    assert report["modules"] == 13 and 0 < report["fro_retained_mean"] <= 1  # resize_lora.py's own figures
    check = _checked(target)
    name = Path(check["original_image"]).name  # named by a key of the file: loras/checks/<stem>-<key>.png
    assert name.startswith("tiny-e2-") and name.endswith(".png") and len(name) == len("tiny-e2-") + 10 + 4


@needs_e2e
def test_convert_and_back_keys_and_tensors_equal(tool_session: tuple[Session, Path, Path]) -> None:
    session, _first, last = tool_session
    session = _set(session, tools__lora=str(last), tools__convert_to="other")
    assert run_convert(StepContext(session=session)).ok
    ait = last.with_name("tiny-e2-aitoolkit.safetensors")
    assert inspect(ait).layout == "ai-toolkit"
    assert "loaded through its sd-scripts conversion" in _checked(ait)["line"]
    kept = shutil.copyfile(ait, ait.parent.parent / "first-conversion.safetensors")  # the next round writes this name
    session = _set(session, tools__lora=str(ait), tools__check=False)
    assert run_convert(StepContext(session=session)).ok
    back = last.with_name("tiny-e2-sdscripts.safetensors")
    assert inspect(back).layout == "sd-scripts"
    # sd-scripts → ai-toolkit → sd-scripts: the same keys; a fused QKV comes back as 3 blocks of the rank (its update
    # is the same, its matrices are not), so the updates are compared
    keys = _compare("tensors", str(last), str(back))
    assert keys["keys_equal"], keys
    deltas = _compare("deltas", str(back), str(last))
    assert deltas["modules_equal"] and deltas["worst_relative"] < 1e-2, deltas
    # and once more: ai-toolkit → sd-scripts → ai-toolkit gives every tensor back exactly
    session = _set(session, tools__lora=str(back), tools__convert_to="ai-toolkit")
    again = run_convert(StepContext(session=session))
    assert again.ok
    second = Path(again.data["file"])
    assert second == ait
    assert _compare("tensors", str(kept), str(second)) == {"keys_equal": True, "tensors_equal": True}


@needs_e2e
def test_merge_two_with_weights_applies_each(tool_session: tuple[Session, Path, Path]) -> None:
    session, first, last = tool_session
    session = _set(session, tools__merge=[f"{first};0.7", f"{last};0.3"], tools__check=True)
    result = run_merge(StepContext(session=session))
    assert result.ok, result.summary
    target = Path(result.data["file"])
    assert target.name == "tiny-e1-w0.7+tiny-e2-w0.3.safetensors" and inspect(target).rank == 8
    deltas = _compare("deltas", str(target), f"{first},{last}", json.dumps([0.7, 0.3]))
    assert deltas["modules_equal"] and deltas["worst_relative"] < 2e-2, deltas
    _checked(target)


@needs_e2e
def test_merge_into_the_base_model_loads(tool_session: tuple[Session, Path, Path]) -> None:
    session, _first, last = tool_session
    session = _set(session, tools__lora=str(last), tools__check=True)
    result = run_merge_base(StepContext(session=session))
    assert result.ok, result.summary
    merged = Path(result.data["file"])
    base = E2E / "models" / "flux1-dev-tiny-1d1s.safetensors"
    assert merged.parent.name == "merged" and merged.name == "tiny-e2+flux1-dev-tiny-1d1s.safetensors"
    assert abs(merged.stat().st_size - base.stat().st_size) < 1_000_000  # saved in the base's bf16, not fp32
    check = naming.read_json_object(naming.sidecar_of(merged))["check"]
    assert Path(check["image"]).is_file() and not check["blank"]
    # the base with the LoRA merged in draws what the base with the LoRA applied draws
    assert check["difference"] is not None and check["difference"] < 0.02, check
