"""core.multigpu + core.command: several GPUs → accelerate MULTI_GPU config, env and command (fake NVML, no GPU)."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from lorawizard.core.launch import command as cmd
from lorawizard.core.launch import multigpu
from lorawizard.core.launch.command import CommandError
from lorawizard.core.launch.multigpu import SelectionError
from lorawizard.core.session.document import SessionError
from tests.support.fake_nvml import RTX_2080_TI, RTX_3060_12, RTX_3090_24, FakeNvml, install, two_cards_no_p2p
from tests.unit.test_command import make_buckets, make_session, real_like_parser, script_options

BOTH = [RTX_3060_12.uuid, RTX_3090_24.uuid]  # chosen small card first: the launch still puts the 24 GB card at rank 0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    monkeypatch.delenv(multigpu.CPU_PROCESSES_ENV, raising=False)
    return install(monkeypatch, two_cards_no_p2p())


def test_two_different_cards_without_p2p_give_config_env_and_command(project: Path, fake: FakeNvml) -> None:
    session = make_session(project, gpu__uuids=BOTH)
    make_buckets(session, "1024x1024")
    run_dir = project / "runs" / "r1"
    prepared = cmd.prepare_run(session, run_dir)
    config = yaml.safe_load(prepared.accelerate_config.read_text())
    assert config["distributed_type"] == "MULTI_GPU" and config["num_processes"] == 2
    assert config["num_machines"] == 1 and config["machine_rank"] == 0
    assert config["gpu_ids"] == f"{RTX_3090_24.uuid},{RTX_3060_12.uuid}"  # largest first: rank 0 saves and samples
    port = config["main_process_port"]
    assert isinstance(port, int) and 1024 <= port <= 65535
    env = prepared.command.env
    assert env["CUDA_VISIBLE_DEVICES"] == f"{RTX_3090_24.uuid},{RTX_3060_12.uuid}"
    assert env["NCCL_P2P_DISABLE"] == "1"
    text = prepared.command.shell_text()
    assert "NCCL_P2P_DISABLE=1" in text and f"CUDA_VISIBLE_DEVICES={RTX_3090_24.uuid},{RTX_3060_12.uuid}" in text
    args = real_like_parser().parse_args(script_options(prepared.command))
    assert args.ddp_timeout == multigpu.DDP_TIMEOUT_MIN
    assert any("peer-to-peer" in note and "NCCL_P2P_DISABLE=1" in note for note in prepared.launch.notes)


def test_p2p_supported_leaves_nccl_alone(project: Path, fake: FakeNvml) -> None:
    fake.p2p = True
    launch = multigpu.plan_launch(make_session(project, gpu__uuids=BOTH))
    assert "NCCL_P2P_DISABLE" not in launch.env and not launch.p2p_disabled
    fake.p2p = {frozenset(BOTH): None}  # NVML cannot tell → be safe
    assert multigpu.plan_launch(make_session(project, gpu__uuids=BOTH)).env["NCCL_P2P_DISABLE"] == "1"


def test_one_gpu_stays_exactly_as_before(project: Path, fake: FakeNvml) -> None:
    session = make_session(project, gpu__uuid=RTX_3060_12.uuid)
    text = cmd.accelerate_config_text(session)
    assert "distributed_type: 'NO'" in text and "num_processes: 1" in text
    assert f"gpu_ids: '{RTX_3060_12.uuid}'" in text and "main_process_port" not in text
    make_buckets(session, "1024x1024")
    command = cmd.prepare_run(session, project / "runs" / "r").command
    assert command.env == {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": RTX_3060_12.uuid}
    assert "--ddp_timeout" not in command.argv
    # `uuids` with one GPU is the same as `uuid`
    same = make_session(project, gpu__uuids=[RTX_3060_12.uuid])
    assert cmd.accelerate_config_text(same) == text


def test_uuids_win_over_the_single_uuid_which_is_still_read(project: Path, fake: FakeNvml) -> None:
    assert multigpu.chosen_uuids(make_session(project, gpu__uuid="GPU-1")) == ["GPU-1"]
    assert multigpu.chosen_uuids(make_session(project, gpu__uuid="GPU-1", gpu__uuids=BOTH)) == BOTH
    assert multigpu.chosen_uuids(make_session(project)) == []


def test_same_gpu_twice_is_refused(project: Path, fake: FakeNvml) -> None:
    session = make_session(project, gpu__uuids=[RTX_3090_24.uuid, RTX_3090_24.uuid])
    with pytest.raises(SelectionError, match="listed twice"):
        multigpu.plan_launch(session)
    make_buckets(session, "1024x1024")
    with pytest.raises(CommandError, match="listed twice"):  # the train step shows it as one line
        cmd.prepare_run(session, project / "runs" / "x")
    assert not (project / "runs").exists()


def test_a_gpu_that_is_gone_is_named(project: Path, fake: FakeNvml) -> None:
    session = make_session(project, gpu__uuids=[RTX_3090_24.uuid, "GPU-gone-0000"])
    with pytest.raises(SelectionError) as info:
        multigpu.plan_launch(session)
    message = str(info.value)
    assert "GPU-gone-0000 is not visible" in message and RTX_3060_12.uuid in message and "\n" not in message


def test_bad_uuid_text_is_refused(project: Path, fake: FakeNvml) -> None:
    with pytest.raises(SessionError, match="gpu.uuids: expected a list of NVML GPU UUIDs"):  # where it is set or read
        make_session(project, gpu__uuids=["GPU-1", "x; rm -rf /"])
    session = make_session(project)
    session._doc["gpu"]["uuids"] = ["GPU-1", "x; rm -rf /"]  # and where it is used, should one get past
    with pytest.raises(SelectionError, match="does not look like"):
        multigpu.plan_launch(session)


def test_mixed_architectures_are_refused(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNvml([RTX_3090_24, RTX_2080_TI], p2p=False))
    with pytest.raises(SelectionError, match=r"mixed architectures: GPU 2 .*sm_75.*bf16"):
        multigpu.plan_launch(make_session(project, gpu__uuids=[RTX_3090_24.uuid, RTX_2080_TI.uuid]))


def test_a_busy_gpu_is_said(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busy = FakeNvml([RTX_3090_24, RTX_3060_12], p2p=True, processes={RTX_3060_12.uuid: {4242: 6 * 10**9}})
    install(monkeypatch, busy)
    launch = multigpu.plan_launch(make_session(project, gpu__uuids=BOTH))
    assert any("GPU 1" in note and "pid 4242" in note and "6.0 GB" in note for note in launch.notes)


def test_a_fixed_port_in_use_is_refused(project: Path, fake: FakeNvml) -> None:
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        session = make_session(project, gpu__uuids=BOTH, gpu__main_process_port=port)
        with pytest.raises(SelectionError, match=f"port {port} is in use"):
            multigpu.plan_launch(session)
    free = multigpu.free_port()
    launch = multigpu.plan_launch(make_session(project, gpu__uuids=BOTH, gpu__main_process_port=free))
    assert launch.port == free


def test_the_picked_port_is_free() -> None:
    port = multigpu.free_port()
    assert not multigpu.port_in_use(port)


def test_cpu_test_mode(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(multigpu.CPU_PROCESSES_ENV, "2")
    session = make_session(project, gpu__uuid="GPU-ignored")
    make_buckets(session, "128x128")
    prepared = cmd.prepare_run(session, project / "runs" / "cpu")
    config = yaml.safe_load(prepared.accelerate_config.read_text())
    assert (config["distributed_type"], config["num_processes"], config["gpu_ids"]) == ("MULTI_GPU", 2, "all")
    assert prepared.command.env["ACCELERATE_USE_CPU"] == "true"
    assert "CUDA_VISIBLE_DEVICES" not in prepared.command.env
    monkeypatch.setenv(multigpu.CPU_PROCESSES_ENV, "two")
    with pytest.raises(SelectionError, match="expected a number"):
        multigpu.plan_launch(session)


def test_probe_trials_stay_on_one_gpu(project: Path, fake: FakeNvml) -> None:
    session = make_session(project, gpu__uuids=BOTH)
    launch = cmd.plan_launch(session, uuids=[RTX_3060_12.uuid])
    assert not launch.distributed and launch.env == {"CUDA_VISIBLE_DEVICES": RTX_3060_12.uuid}
    assert "distributed_type: 'NO'" in cmd.accelerate_config_text(session, launch)


def test_order_is_stable_whatever_the_choice_order(project: Path, fake: FakeNvml) -> None:
    twin = replace(RTX_3090_24, index=5, uuid="GPU-3090ffff-twin")
    fake.gpus.append(twin)
    one = multigpu.plan_launch(make_session(project, gpu__uuids=[twin.uuid, RTX_3060_12.uuid, RTX_3090_24.uuid]))
    two = multigpu.plan_launch(make_session(project, gpu__uuids=[RTX_3090_24.uuid, twin.uuid, RTX_3060_12.uuid]))
    assert one.uuids == two.uuids == [RTX_3090_24.uuid, twin.uuid, RTX_3060_12.uuid]


def test_real_adapter_reads_p2p_and_compute_capability() -> None:
    """PynvmlAdapter against a stand-in pynvml: P2P status per pair, `NVML_P2P_CAPS_INDEX_READ = 0,` (a tuple)."""
    import types

    from lorawizard.core.gpu.nvml import PynvmlAdapter

    class NVMLError(Exception):
        pass

    calls = []

    def p2p(a, b, index):  # noqa: ANN001, ANN202
        calls.append(index)
        return 0 if {a, b} == {"h0", "h1"} else 2  # OK / GPU_NOT_SUPPORTED

    module = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda uuid: {"GPU-a": "h0", "GPU-b": "h1", "GPU-c": "h2"}[uuid],
        nvmlDeviceGetP2PStatus=p2p, NVML_P2P_CAPS_INDEX_READ=(0,), NVML_P2P_STATUS_OK=0,
        nvmlDeviceGetCudaComputeCapability=lambda handle: (8, 6),
    )
    adapter = PynvmlAdapter(module)
    assert adapter.p2p_ok("GPU-a", "GPU-b") is True
    assert adapter.p2p_ok("GPU-a", "GPU-c") is False
    assert calls == [0, 0]
    from lorawizard.core.gpu.nvml import _capability

    assert _capability(module, "h0") == (8, 6)
