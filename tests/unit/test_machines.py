"""Past one machine: `[gpu] machines` → --dry-run writes one accelerate config per machine and prints each command."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from lorawizard.core.launch import machines, multigpu
from lorawizard.core.launch.multigpu import SelectionError
from lorawizard.headless import replay
from tests.support.sessions import save
from tests.unit.test_command import make_buckets, make_session


def ready_session(project: Path, **values: object):  # noqa: ANN201
    session = make_session(project, paths__python=str(project / "py" / "bin" / "python"), **values)
    make_buckets(session, "1024x1024")
    (project / "py" / "bin").mkdir(parents=True)
    (project / "py" / "bin" / "python").write_text("")
    (project / "sd-scripts").mkdir()
    save(session)
    return session


def test_dry_run_writes_one_config_per_machine_and_prints_each_command(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(multigpu.CPU_PROCESSES_ENV, raising=False)
    session = ready_session(project, gpu__machines=["10.0.0.1:2", "node-b.lan:2"], gpu__main_process_port=29555)
    out = io.StringIO()
    assert replay(session.path, ["train"], dry_run=True, out=out, err=io.StringIO(), tty=False) == 0, out.getvalue()
    text = out.getvalue()
    run_dir = project / "runs" / "machines"
    for rank, host in enumerate(("10.0.0.1", "node-b.lan")):
        config = yaml.safe_load((run_dir / f"accelerate-machine{rank}.yaml").read_text())
        assert config["distributed_type"] == "MULTI_GPU" and config["num_processes"] == 4
        assert (config["num_machines"], config["machine_rank"]) == (2, rank)
        assert (config["main_process_ip"], config["main_process_port"]) == ("10.0.0.1", 29555)
        assert config["same_network"] is True and config["gpu_ids"] == "all"
        assert f"machine {rank} ({host}" in text
        assert f"--config_file {run_dir / f'accelerate-machine{rank}.yaml'}" in text
    assert "2 machines × 2 GPUs = 4 processes; main machine 10.0.0.1:29555" in text
    assert f"  {project / 'sd-scripts'}" in text and f"  {project / 'dataset'}" in text  # identical paths
    assert text.count("NCCL_P2P_DISABLE=1") == 2 and text.count("--ddp_timeout 60") == 2


def test_a_real_run_is_not_started_on_other_machines(project: Path) -> None:
    session = ready_session(project, gpu__machines=["10.0.0.1:1", "10.0.0.2:1"])
    err = io.StringIO()
    assert replay(session.path, ["train"], out=io.StringIO(), err=err, tty=False) == 1
    assert "does not start trainers on other machines" in err.getvalue()


@pytest.mark.parametrize(("entries", "message"), [
    (["10.0.0.1"], 'should be "host:gpus"'),
    (["10.0.0.1:2", "bad host:2"], 'should be "host:gpus"'),
    (["10.0.0.1:2"], "at least two machines"),
    (["10.0.0.1:2", "10.0.0.1:2"], "listed twice"),
    (["10.0.0.1:2", "10.0.0.2:1"], "same number of GPUs"),
])
def test_bad_machine_lists_are_one_line(project: Path, entries: list[str], message: str) -> None:
    with pytest.raises(SelectionError, match=message):
        machines.plan_machines(make_session(project, gpu__machines=entries))
