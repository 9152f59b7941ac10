"""Issue 23: settings that disagree with each other, or with what the trainer accepts, and nobody said so."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lorawizard.core.launch import command as cmd
from lorawizard.core.launch import machines, multigpu
from lorawizard.core.launch.multigpu import SelectionError
from tests.support import fake_nvml
from tests.unit.test_command import make_session
from tests.unit.test_machines import ready_session


@pytest.fixture(autouse=True)
def _no_cpu_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(multigpu.CPU_PROCESSES_ENV, raising=False)


def test_port_zero_with_machines_is_refused_not_29500(project: Path) -> None:
    """D: `main_process_port = 0` with machines silently became 29500."""
    session = make_session(project, gpu__machines=["10.0.0.1:1", "10.0.0.2:1"], gpu__main_process_port=0)
    with pytest.raises(SelectionError, match="main_process_port: expected a TCP port from 1024 to 65535, got 0"):
        machines.plan_machines(session)


def test_uuids_that_disagree_with_the_machines_gpus_are_refused(project: Path) -> None:
    """D: 2 uuids with 2 machines of 1 GPU each went unreported."""
    session = make_session(project, gpu__machines=["10.0.0.1:1", "10.0.0.2:1"],
                           gpu__uuids=["GPU-aaaa-1", "GPU-bbbb-2"])
    with pytest.raises(SelectionError, match="gpu.uuids lists 2 GPUs but gpu.machines trains on 1 per machine"):
        machines.plan_machines(session)


def test_thousands_of_machines_are_capped(project: Path) -> None:
    """D: 3,000 machines took an 18 s dry run; more than MAX_MACHINES is one line, at once."""
    hosts = [f"node{i}:1" for i in range(3000)]
    session = make_session(project, gpu__machines=hosts)
    started = time.perf_counter()
    with pytest.raises(SelectionError, match="3,000 machines; lorawizard plans at most"):
        machines.plan_machines(session)
    assert time.perf_counter() - started < 1.0  # generous: it is a length check


def test_the_most_machines_build_one_command(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D: each machine built its own trainer command; now one is built and each machine's names its config."""
    hosts = [f"node{i}:1" for i in range(machines.MAX_MACHINES)]
    session = ready_session(project, gpu__machines=hosts)
    built = []
    real = cmd.build_train_command

    def counting(*args: object, **kwargs: object) -> cmd.TrainCommand:
        built.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cmd, "build_train_command", counting)
    runs = machines.write_machine_runs(session, project / "runs" / "machines")
    assert len(built) == 1 and len(runs) == machines.MAX_MACHINES
    for machine, config, command in runs:
        assert command.argv[command.argv.index("--config_file") + 1] == str(config)
        assert config.name == f"accelerate-machine{machine.rank}.yaml" and config.is_file()


def test_gpu_uuid_outside_gpu_uuids_is_said(project: Path) -> None:
    """D: `gpu.uuid` and `gpu.uuids` disagreeing: uuids wins, and now a line says so."""
    fake = fake_nvml.two_different_gpus()
    first, second = (gpu.uuid for gpu in fake.gpus)
    session = make_session(project, gpu__uuid="GPU-elsewhere-0", gpu__uuids=[first, second])
    launch = multigpu.plan_launch(session, nvml=fake)
    assert any("gpu.uuid (GPU-elsewhere-0) is not one of gpu.uuids" in note for note in launch.notes)
    agreeing = make_session(project, gpu__uuid=first, gpu__uuids=[first, second])
    assert not any("gpu.uuid" in note for note in multigpu.plan_launch(agreeing, nvml=fake).notes)


def test_a_leading_dash_is_never_a_uuid(project: Path) -> None:
    """A14: UUID_RE took "--foo" (a one-entry list passed it straight to CUDA_VISIBLE_DEVICES)."""
    assert not multigpu.UUID_RE.match("--foo")
    session = make_session(project)
    session._doc["gpu"]["uuids"] = ["--foo"]  # past the file's check (as an old session in memory)
    with pytest.raises(SelectionError, match="does not look like an NVML GPU UUID"):
        multigpu.plan_launch(session, check_gpus=False)


@pytest.mark.parametrize(("words", "key"), [
    (["--sample_prompts", "x.txt"], "train.samples.prompts"),
    (["--sample_every_n_epochs", "2"], "train.samples.every_n_epochs"),
    (["--huggingface_repo_id", "me/x"], "[publish] repo"),
    (["--save_state_to_huggingface"], "[publish] repo"),
])
def test_extra_args_that_lorawizard_overrides_or_that_slip_past_publish_are_refused(words: list[str], key: str) -> None:
    """D: `--sample_prompts X` was dropped silently; `--huggingface_repo_id` + `--save_state_to_huggingface`
    uploaded from the trainer, past [publish]."""
    with pytest.raises(cmd.CommandError, match="is set by lorawizard; change it through") as caught:
        cmd.parse_extra_args(words)
    assert key in str(caught.value)
