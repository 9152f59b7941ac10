"""Train screen: dashboard snapshots fed deterministically, and live runs of the stand-in trainer in the wizard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lorawizard.core.gpu.nvml import GpuInfo
from lorawizard.core.launch import runs
from lorawizard.core.session.document import Session
from lorawizard.core.train.diagnosis import Diagnosis
from lorawizard.core.train.logparse import TrainState, parse_bytes
from lorawizard.core.train.step import plan_run, start_run
from lorawizard.tui.app import LoraWizardApp
from lorawizard.tui.screens.confirm import ConfirmScreen
from lorawizard.tui.widgets.loss_chart import braille_plot
from lorawizard.tui.widgets.train_panels import BarLine, TrainHeader, TrainView
from tests.support.sessions import save
from tests.support.standin import make_train_project
from tests.support.waiting import pilot_until

GPU = GpuInfo(0, "GPU-5a1c", "NVIDIA GeForce RTX 4090", 24_000_000_000, 21_400_000_000, 2_600_000_000,
              utilization_pct=98, temperature_c=71, power_w=341.0)


def fixture_log(steps: int = 120, per_epoch: int = 40, epochs: int = 16) -> bytes:
    """A run in sd-scripts' formats, 3 epochs in, with a falling loss (our own text, not a captured log)."""
    out = [
        "running training / 学習開始\n",
        f"  num batches per epoch / 1epochのバッチ数: {per_epoch}\n",
        f"  num epochs / epoch数: {epochs}\n",
        "  batch size per device / バッチサイズ: 2, 1\n",
        f"  total optimization steps / 学習ステップ数: {per_epoch * epochs}\n",
        f"\rsteps:   0%|          | 0/{per_epoch * epochs} [00:00<?, ?it/s]\n",
    ]
    for step in range(1, steps + 1):
        if step % per_epoch == 1:
            out.append(f"\nepoch {step // per_epoch + 1}/{epochs}\n\n")
        loss = 0.25 + 0.2 * 0.97**step + 0.02 * ((step * 7) % 5) / 5
        out.append(f"\rsteps:   {step * 100 // 640}%|▏         | {step}/{per_epoch * epochs} [00:{step // 2:02d}<05:12, "
                   f" 1.92it/s, avr_loss={loss:.3g}]")
        if step % per_epoch == 0 and step < steps:
            out.append(f"\nsaving checkpoint: /home/me/loras/mychar/runs/20261125-101500/mychar-{step // per_epoch:06d}.safetensors\n")
    return "".join(out).encode()


def dashboard_view(project: Path, *, diagnosis: Diagnosis | None = None, sample: bool = True) -> TrainView:
    state = TrainState()
    events = parse_bytes(fixture_log())
    state.apply(events)
    image = None
    if sample:
        from PIL import Image

        image = project / "runs" / "20261125-101500" / "sample" / "mychar_e000003_00_20261125102011_42.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.new("RGB", (64, 64))
        picture.putdata([(x * 4, y * 4, 160) for y in range(64) for x in range(64)])
        picture.save(image)
    return TrainView(
        name="mychar", run_id="20261125-101500", status="running" if diagnosis is None else "failed",
        phase=state.phase, epoch=state.epoch, epochs=state.epochs, step=state.step, total_steps=state.total_steps,
        rate=state.rate, elapsed_s=583, eta_s=state.eta_s, loss=state.loss, losses=state.losses.values(400),
        bar_line=state.bar_line, new_lines=list(state.lines)[-12:], reset_lines=True,
        checkpoints=[("mychar-000001", 1, 38_200_000), ("mychar-000002", 2, 38_200_000)], states=2,
        newest_state="mychar-000002-state", sample=image, gpu=GPU, cpu_pct=104.0, rss=14_200_000_000, procs=3,
        diagnosis=diagnosis, log_path="runs/20261125-101500/train.log",
    )


@pytest.fixture
def home_project(home_project: Path) -> Path:
    """conftest's project under HOME, its name written into session.toml."""
    session = Session.open_project(home_project)
    session.set("name", "mychar")
    save(session)
    return home_project


def _feeder(view: TrainView):
    async def run_before(pilot) -> None:  # noqa: ANN001
        await pilot.pause()
        pilot.app.screen.apply_view(view)
        await pilot.pause()
        await pilot.pause(0.2)

    return run_before


def test_snapshot_dashboard_80x24(snap_compare, home_project: Path) -> None:
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    assert snap_compare(app, terminal_size=(80, 24), run_before=_feeder(dashboard_view(home_project)))


def test_snapshot_dashboard_120x40(snap_compare, home_project: Path) -> None:
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    assert snap_compare(app, terminal_size=(120, 40), run_before=_feeder(dashboard_view(home_project)))


def test_snapshot_oom_diagnosis_120x40(snap_compare, home_project: Path) -> None:
    problem = Diagnosis("oom", "CUDA ran out of GPU memory (batch sizes 2, 1)",
                        "lower the batch size or choose a smaller VRAM preset: run the probe (step 5) to find what fits")
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    view = dashboard_view(home_project, diagnosis=problem, sample=False)
    assert snap_compare(app, terminal_size=(120, 40), run_before=_feeder(view))


def test_braille_plot_spans_the_width_and_skips_nan() -> None:
    rows, low, high = braille_plot([3.0, 2.0, float("nan"), 1.0], 10, 2)
    assert (low, high) == (1.0, 3.0) and len(rows) == 2 and all(len(r) == 10 for r in rows)
    assert rows[0][0] != "⠀" and rows[1][-1] != "⠀"  # first point top-left, last bottom-right
    assert braille_plot([float("nan")], 10, 2) is None


async def test_start_from_the_wizard_and_watch_it_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.05")
    session = make_train_project(tmp_path, epochs=3)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+g")
        header = app.screen.query_one(TrainHeader)
        await pilot_until(pilot, lambda: getattr(header, "view", None) is not None and header.view.status == "finished")
        view = header.view
        assert (view.step, view.total_steps, view.epoch, view.epochs) == (6, 6, 3, 3)
        assert [c[0] for c in view.checkpoints] == ["tiny-000001", "tiny-000002", "tiny"]
        assert view.losses and view.diagnosis is None
        await pilot.press("l")  # the full log, '\r' redraws collapsed
        from textual.widgets import Log

        from lorawizard.tui.screens.train import FullLogScreen

        await pilot_until(pilot, lambda: isinstance(app.screen, FullLogScreen) and app.screen.query_one(Log).line_count > 20)
        lines = app.screen.query_one(Log).lines
        assert "model saved." in lines and not any("\r" in line for line in lines)
        await pilot.press("escape")


async def test_reattach_to_a_live_run_and_stop_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, epochs=20)
    record = start_run(session, plan_run(session))  # started by an earlier wizard
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        header = app.screen.query_one(TrainHeader)
        await pilot_until(pilot, lambda: getattr(header, "view", None) is not None and header.view.step >= 1)
        assert header.view.status == "running" and header.view.run_id == record.run_id and header.view.procs >= 3
        await pilot.press("s")
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("enter")
        await pilot_until(pilot, lambda: header.view.status == "stopped")

        def stopped_lines() -> list[str]:
            return [str(n.message) for n in app._notifications if "stopped" in str(n.message)]

        await pilot_until(pilot, lambda: any("(SIGINT)" in line for line in stopped_lines()))
        await pilot.pause(0.5)
        # QA: two toasts said it (the stop's own line and the dashboard's "run … stopped", with a bell)
        assert len(stopped_lines()) == 1, stopped_lines()
    assert not record.is_alive() and runs.RunRecord.load(record.dir).status() == "stopped"


async def test_stop_asks_first_and_says_which_steps_it_loses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, epochs=60)  # 2 steps an epoch, a state saved every epoch
    record = start_run(session, plan_run(session))
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        header = app.screen.query_one(TrainHeader)
        await pilot_until(pilot, lambda: runs.newest_state_step(record) is not None
                     and getattr(header, "view", None) is not None and header.view.step >= 3)
        for cancel in ("n", "escape"):
            await pilot.press("s")
            await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            question = app.screen.question
            match = re.fullmatch(r"Stop the run at step (\d+)/120\? It resumes from the state saved at step (\d+) "
                                 r"\((\d+) steps? lost\)\.", question)
            assert match, question
            step, saved, lost = map(int, match.groups())
            assert saved % 2 == 0 and lost == step - saved and 0 <= lost <= 4, question  # a state every 2 steps
            seen = header.view.step
            await pilot.press(cancel)
            # nothing was stopped: the question is gone and the run goes on two more steps (a SIGINT ends it at once)
            await pilot_until(pilot, lambda seen=seen: not isinstance(app.screen, ConfirmScreen)
                              and header.view.step >= seen + 2)
            assert record.is_alive() and record.reload().stop_requested is None, cancel
        assert header.view.status == "running"
        await pilot.press("s")
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await pilot_until(pilot, lambda: header.view.status == "stopped")
    assert not record.is_alive() and runs.RunRecord.load(record.dir).status() == "stopped"


async def test_leaving_the_wizard_leaves_the_run_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, epochs=20)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+g")
        await pilot_until(pilot, lambda: runs.live_run(session.paths.runs) is not None)
    live = runs.live_run(session.paths.runs)
    assert live is not None and live.is_alive()
    assert runs.stop(live, int_timeout=5) == "SIGINT"


async def test_gpu_panel_reads_the_runs_gpu_through_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.tui.widgets.train_panels import ResourcePanel
    from tests.support.fake_nvml import RTX_4090, install, one_gpu

    install(monkeypatch, one_gpu())
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, epochs=20)
    session.set("gpu.uuid", RTX_4090.uuid)
    save(session)
    record = start_run(session, plan_run(session))
    assert record.gpu_uuid == RTX_4090.uuid
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        header = app.screen.query_one(TrainHeader)
        await pilot_until(pilot, lambda: getattr(header, "view", None) is not None and header.view.gpu is not None)
        panel = app.screen.query_one(ResourcePanel)
        assert panel.border_title == "GPU 0 · RTX 4090" and "mem" in str(panel.render())
    assert runs.stop(record, int_timeout=5) == "SIGINT"


async def test_the_wizard_opens_on_the_dashboard_when_a_run_is_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, epochs=20)
    record = start_run(session, plan_run(session))
    app = LoraWizardApp(session)  # no start step: the app picks one
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.current_mode == "train"
    assert runs.stop(record, int_timeout=5) == "SIGINT"
    app = LoraWizardApp(session)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.current_mode != "train"  # nothing running: the first open step as before


def test_header_never_says_epoch_0() -> None:
    """sd-scripts draws its steps bar before it prints "epoch 1/N": the header shows the step, not an epoch 0."""
    from lorawizard.core.train.dashboard import TrainView
    from lorawizard.tui.widgets.train_panels import TrainHeader

    header = TrainHeader()
    header.view = TrainView(name="x", run_id="r1", status="running", epoch=0, epochs=2, step=0, total_steps=8)
    assert "epoch" not in header.render().plain and "step 0/8" in header.render().plain
    header.view = TrainView(name="x", run_id="r1", status="running", epoch=1, epochs=2, step=1, total_steps=8)
    assert "epoch 1/2" in header.render().plain


async def test_start_asks_first_when_caption_files_are_older_than_the_captions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: the trigger changed after the caption files were written; Ctrl+G on Train trained on the old files, and the
    step bar still said Captions ✓. Now the start asks first, naming how many files and one of them."""
    import json

    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, images=2, epochs=20)
    records = [{"output": f"512x512/{i:04d}.png", "source": f"p{i}.jpg", "sha256": "0" * 64, "bucket": "512x512",
                "crop": [0, 0, 8, 8]} for i in range(2)]
    (session.paths.dataset / "lorawizard-manifest.json").write_text(json.dumps({"version": 1, "images": records}))
    session.update_image("p0.jpg", caption="tok, a thing")  # as the file says
    session.update_image("p1.jpg", caption="tok, a new thing")  # edited after the files were written
    save(session)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+g")
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        question = app.screen.question
        assert question.startswith("1 caption file differs from the caption in session.toml (e.g. p1.jpg)"), question
        await pilot.press("n")
        await pilot.pause(0.5)
        assert runs.list_runs(session.paths.runs) == []  # nothing started
        await pilot.press("ctrl+g")
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await pilot_until(pilot, lambda: runs.live_run(session.paths.runs) is not None)
    live = runs.live_run(session.paths.runs)
    assert live is not None and runs.stop(live, int_timeout=5) == "SIGINT"


async def test_header_says_the_phase_with_its_count_rate_and_time_left(home_project: Path) -> None:
    """Issue 24 item 6: ten minutes of text-encoder caching showed as `0%  ETA --:--` over an unlabelled `0/2`."""
    from lorawizard.core.train.logparse import LogParser

    state, parser = TrainState(), LogParser()
    data = (Path(__file__).parents[1] / "support" / "real_logs" / "train.log").read_bytes()
    state.apply(parser.feed(data[: data.index(b" 50%|", data.index(b"caching Text Encoder outputs..."))]))
    state.apply(parser.feed(b" 50%|\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88     | 1/2 [00:41<00:41, 41.21s/it]"))
    view = TrainView(name="mychar", run_id="20261125-164738", status="running", phase=state.phase,
                     progress=state.phase_progress, bar_line=state.bar_line, eta_s=state.eta_s)
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.screen.apply_view(view)
        await pilot.pause()
        header = app.screen.query_one(TrainHeader).render().plain
        assert "▸ caching text encoder outputs 1/2 · 41.2 s/batch · 0:41 in · 0:41 left" in header
        assert str(app.screen.query_one(BarLine).render()) == "caching text encoder outputs: 1/2"


async def test_a_resumed_runs_dashboard_shows_its_chain(tmp_path: Path, home_project: Path) -> None:
    """Issue 24 item 7: after r the dashboard started empty (`checkpoints (0)`, no loss, epoch 1/2, `6/12` under the
    chart while the header said `12/12`)."""
    from lorawizard.core.train.dashboard import views
    from lorawizard.tui.widgets.loss_chart import LossChart
    from lorawizard.tui.widgets.train_panels import CheckpointPanel
    from tests.support.run_chain import make_chain

    _, resumed = make_chain(tmp_path / "elsewhere" / "runs")  # not the project's: the screen follows no run of its own
    view = list(views(resumed, "tiny", wait=lambda _: True))[-1]
    app = LoraWizardApp(Session.open_project(home_project), start_step="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.screen.apply_view(view)
        await pilot.pause()
        header = app.screen.query_one(TrainHeader).render().plain
        assert "epoch 3/3" in header and "step 6/6" in header and "run 2 of its chain" in header
        assert app.screen.query_one(CheckpointPanel).border_title == "checkpoints (3)"
        assert app.screen.query_one(LossChart).values == [1.47, 1.5, 1.53, 1.52, 1.53, 1.52]
        assert str(app.screen.query_one(BarLine).render()).startswith("steps: 6/6")


async def test_start_says_it_removed_text_encoder_caches_of_another_t5_length(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27: FLUX.1-dev's 512-token caches, then schnell (256): sd-scripts would read them; the start removes
    them and the notice says so in one line."""
    from tests.support.te_caches import caches, project_with_caches

    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = project_with_caches(tmp_path, "flux1-schnell", tokens=512)
    session.set("train.max_train_epochs", 20)  # live long enough to be seen (2 steps end before a look on a fast box)
    save(session)
    app = LoraWizardApp(session, start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+g")
        await pilot_until(pilot, lambda: any("text-encoder caches" in str(n.message) for n in app._notifications))
        notice = next(str(n.message) for n in app._notifications if "text-encoder caches" in str(n.message))
        assert notice.startswith("3 text-encoder caches (*_flux_te.npz)") and "T5 512 → 256 tokens" in notice
        assert "\n" not in notice and caches(session) == []
        await pilot_until(pilot, lambda: runs.live_run(session.paths.runs) is not None)
    live = runs.live_run(session.paths.runs)
    assert live is not None and runs.stop(live, int_timeout=5) == "SIGINT"


async def test_start_warns_of_an_fp8_file_trained_as_16_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27: an fp8 transformer file with train.base_precision = "16bit" is upcast by sd-scripts (no quality gained,
    more memory): replay says it as a warning line, and so does the Train screen when ctrl+g starts the run."""
    from tests.support.model_files import KINDS, write_safetensors

    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, epochs=20)  # live long enough to be seen, then stopped
    fp8 = write_safetensors(tmp_path / "flux1-dev-fp8.safetensors",
                            {k: ("F8_E4M3", shape) for k, (_, shape) in KINDS["flux"].items()})
    session.set("models.flux", str(fp8))
    session.set("train.base_precision", "16bit")
    save(session)
    app = LoraWizardApp(Session.load(session.path), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+g")
        await pilot_until(pilot, lambda: any("holds fp8 weights" in str(n.message) for n in app._notifications))
        notice = next(n for n in app._notifications if "holds fp8 weights" in str(n.message))
        assert notice.severity == "warning" and str(notice.message).startswith("flux1-dev-fp8.safetensors holds fp8")
        await pilot_until(pilot, lambda: runs.live_run(session.paths.runs) is not None)
    live = runs.live_run(session.paths.runs)
    assert live is not None and runs.stop(live, int_timeout=5) == "SIGINT"


async def test_start_says_what_the_probes_fit_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26: a fit that trains without gradient checkpointing and with the 8-bit twin of the person's AdamW says
    so when ctrl+g starts the run (the command differs from the settings on screen), and the trainer gets it."""
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.2")
    session = make_train_project(tmp_path, epochs=20)
    for key, value in (("gpu.fit", "fastest"), ("train.optimizer_type", "AdamW"), ("gpu.fit_swap", 0),
                       ("gpu.fit_fp8", True), ("gpu.fit_checkpointing", False), ("gpu.fit_optimizer", "AdamW8bit")):
        session.set(key, value)
    save(session)
    app = LoraWizardApp(Session.load(session.path), start_step="train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+g")
        await pilot_until(pilot, lambda: any("probe's fit" in str(n.message) for n in app._notifications))
        notice = str(next(n.message for n in app._notifications if "probe's fit" in str(n.message)))
        assert notice == ("the probe's fit (gpu.fit = fastest) trains with: swap 0, fp8 base, no gradient "
                          "checkpointing, AdamW8bit in place of your AdamW (the same rule, 8-bit state)")
        await pilot_until(pilot, lambda: runs.live_run(session.paths.runs) is not None)
    live = runs.live_run(session.paths.runs)
    assert live is not None
    assert "--gradient_checkpointing" not in live.argv and "AdamW8bit" in live.argv, live.argv
    assert runs.stop(live, int_timeout=5) == "SIGINT"
