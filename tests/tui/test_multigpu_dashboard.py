"""Several GPUs in the Train step: the dry run says the steps sd-scripts will count (shared by the processes), and
the dashboard's GPU panel shows every GPU of the run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from lorawizard.core.launch import multigpu
from lorawizard.headless import replay
from lorawizard.tui.widgets.train_panels import ResourcePanel, TrainView
from tests.support.fake_nvml import RTX_3060_12, RTX_3090_24, install, two_cards_no_p2p
from tests.support.sessions import save
from tests.unit.test_command import make_buckets, make_session


def test_dry_run_says_steps_per_epoch_shared_by_the_processes(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(multigpu.CPU_PROCESSES_ENV, raising=False)
    install(monkeypatch, two_cards_no_p2p())
    session = make_session(project, gpu__uuids=[RTX_3090_24.uuid, RTX_3060_12.uuid], dataset__num_repeats=1,
                           train__max_train_epochs=3, paths__python=str(project / "py" / "bin" / "python"))
    make_buckets(session, "1024x1024")
    for i in range(2, 5):  # 4 images at batch 2 → 2 batches; shared by 2 processes → 1 step per epoch
        (session.paths.dataset / "1024x1024" / f"{i:04d}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    session.set_batch_size("1024x1024", 2)
    (project / "py" / "bin").mkdir(parents=True)
    (project / "py" / "bin" / "python").write_text("")
    (project / "sd-scripts").mkdir()
    save(session)
    out = io.StringIO()
    code = replay(session.path, ["train"], dry_run=True, out=out, err=io.StringIO(), tty=False)
    text = out.getvalue()
    assert code == 0, text
    assert "2 processes (data-parallel, one per GPU) on GPU 0 NVIDIA GeForce RTX 3090, GPU 1 NVIDIA GeForce RTX 3060" in text
    assert "expected: 1 steps per epoch × 3 epochs = 3 steps (2 processes share each epoch's batches: " \
           "2 steps per epoch on one)" in text
    assert "NCCL_P2P_DISABLE=1" in text and "peer-to-peer: NVML says GPU 0 and GPU 1 cannot" in text


class PanelApp(App):
    def compose(self) -> ComposeResult:
        yield ResourcePanel()


async def test_gpu_panel_shows_every_gpu() -> None:
    app = PanelApp()
    async with app.run_test(size=(60, 10)):
        panel = app.query_one(ResourcePanel)
        panel.show(TrainView(gpu=RTX_3090_24, gpus=[RTX_3090_24, RTX_3060_12], procs=5, cpu_pct=50, rss=10**9))
        text = str(panel.render())
        assert panel.border_title == "2 GPUs"
        assert "0 RTX 3090" in text and "1 RTX 3060" in text and "CPU 50%" in text
        panel.show(TrainView(gpu=RTX_3090_24))
        assert panel.border_title.startswith("GPU 0")
