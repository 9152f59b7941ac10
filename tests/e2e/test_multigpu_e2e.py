"""Extra (not in the default suite): the distributed path with the real sd-scripts on the CPU.

Test mode `LORAWIZARD_CPU_PROCESSES=2`: lorawizard writes a MULTI_GPU accelerate config with 2 processes and sets
`ACCELERATE_USE_CPU=true`, so accelerate's multi-GPU launcher (torchrun + gloo) starts two trainer processes on the
CPU — the code path multi-GPU users run. `../shared/e2e/ddp_shim` goes on PYTHONPATH (its docstring: accelerate's CPU
branch wraps the frozen FLUX model in DDP and torch refuses; its GPU branch skips frozen modules). Driven by
`--replay --steps train`. Two processes must run, sharded (steps per epoch halve: 4 images at batch 2 → 1 step per
epoch instead of 2), and one LoRA is saved. Each process holds T5-XXL (~22 GB in fp32, ~11 in bf16) until its
text-encoder outputs are cached, so RAM + swap must hold two copies:

    flock /tmp/e2e.lock env LORAWIZARD_E2E=/work/e2e python -m pytest -m extra tests/e2e/test_multigpu_e2e.py -s

On a CPU without native bf16 the e2e runs use fp32 (tests/e2e/test_command_e2e.py:e2e_precision), which needs more
memory than two processes have on a 24 GiB box: measured 2026-12-03 on an AVX2-only 2-core EPYC with the fp32 T5-XXL
copy (tests/support/e2e_tools/t5_to_fp32.py), each rank still held ~11.3 GiB of anonymous memory once its models were loaded
(the hoped-for sharing of the mmap'd file did not happen), and the kernel killed rank 1 while both cached text-encoder
outputs; lorawizard's diagnosis named it ("own copy of the models in RAM: use fewer GPUs … or add RAM/swap"). With
bf16 (AVX-512 machines) the memory is halved. Needs ~45 GiB of RAM + swap with fp32.

Passed 2026-12-03 on that 24 GiB box with 36 GiB of swap added (`fallocate` + `mkswap` + `swapon` on a file) and the
caches of an earlier run (LORAWIZARD_E2E_CACHES): 1 passed in 1433 s. Peak: each rank ~11 GiB resident + ~11 GiB
swapped while T5 encoded the sample prompts; T5 was freed after caching (swap back to ~0), then one step of 28.8 s,
sampling, and the LoRA saved by rank 0 only.

Without caches each process encodes the latents and T5 outputs itself: on a loaded 2-core box (load ~13) that ran
at ~520 s per 128px latent and the run was stopped before training; give it caches (LORAWIZARD_E2E_CACHES) or time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_command_e2e import E2E, e2e_precision, e2e_session, needs_e2e
from tests.e2e.test_train_e2e import _reuse_caches

pytestmark = pytest.mark.extra
# ../shared/e2e/ddp_shim from the checkout (a worktree may sit deeper: the nearest one up the tree)
_FOUND = [p / "shared" / "e2e" / "ddp_shim" for p in Path(__file__).resolve().parents]
SHIM = Path(os.environ.get("LORAWIZARD_DDP_SHIM") or next((p for p in _FOUND if p.is_dir()), _FOUND[1]))


@needs_e2e
@pytest.mark.skipif(not (SHIM / "sitecustomize.py").is_file(), reason="needs ../shared/e2e/ddp_shim")
def test_two_cpu_processes_train_sharded_and_save_one_lora(project: Path) -> None:
    session = e2e_session(project, train__max_train_epochs=1)
    if e2e_precision() == "no":
        t5 = E2E / "models" / "t5xxl-random_fp32.safetensors"
        if not t5.is_file():
            pytest.skip(f"fp32 runs need {t5}: python tests/support/e2e_tools/t5_to_fp32.py (see this module's docstring)")
    _reuse_caches(project)  # LORAWIZARD_E2E_CACHES: latent/TE caches of an earlier run skip minutes of encoding
    env = dict(os.environ)
    env["LORAWIZARD_CPU_PROCESSES"] = "2"
    env["PYTHONPATH"] = os.pathsep.join([str(SHIM), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "lorawizard", "--replay", str(session.path), "--steps", "train"],
                          env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    logs = sorted((project / "runs").glob("*/train.log"))
    assert len(logs) == 1, done.stdout + done.stderr
    log = logs[0].read_bytes().decode("utf-8", "replace")
    print(f"2 CPU processes: rc={done.returncode} in {seconds:.0f} s\n{done.stdout[-1500:]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:] + log[-4000:]
    assert "2 processes (data-parallel" in done.stdout
    assert log.count("accelerator device:") == 2  # two trainer processes ran
    batches = re.findall(r"num batches per epoch / .*?: (\d+)", log)
    assert batches == ["1"]  # 2 batches of 2 images, shared by 2 processes (printed once, by rank 0)
    loras = sorted(p.name for p in logs[0].parent.glob("*.safetensors"))
    assert loras == ["tiny.safetensors"]
    config = (logs[0].parent / "accelerate.yaml").read_text()
    assert "distributed_type: MULTI_GPU" in config and "num_processes: 2" in config
