"""Past one machine: `[gpu] machines = ["192.168.1.10:2", "192.168.1.11:2"]` (host:GPUs, the main machine first).

lorawizard does not log in anywhere: `--replay … --steps train --dry-run` writes one accelerate config per machine
(`accelerate-machine<N>.yaml`: `num_machines`, `machine_rank`, `main_process_ip`, `main_process_port`,
`same_network`, `num_processes` = every machine's processes together) and prints the exact command to start on each,
with the paths that must be the same on every machine. accelerate (torchrun) does the rest: every machine connects to
the main one's port, and only the main process saves the LoRA (into the run folder on the main machine).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lorawizard.core.launch.multigpu import DEFAULT_PORT, Launch, SelectionError
from lorawizard.core.session.document import Session

MAX_MACHINES = 64  # accelerate's config per machine and a command each: a sane bound for a dry run to print
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


@dataclass(frozen=True)
class Machine:
    rank: int  # machine_rank: 0 is the main machine
    count: int  # num_machines
    host: str
    gpus: int  # processes on this machine (one per GPU)
    main_ip: str
    port: int
    gpu_ids: str = "all"  # the first `gpus` GPUs each machine's CUDA sees

    @property
    def total_processes(self) -> int:
        return self.gpus * self.count


def parse_machines(session: Session) -> list[tuple[str, int]]:
    """[(host, gpus)] from `gpu.machines`; [] when unset. SelectionError (one line) for a bad entry."""
    entries = session.gpu.machines
    if len(entries) > MAX_MACHINES:
        raise SelectionError(f"gpu.machines: {len(entries):,} machines; lorawizard plans at most {MAX_MACHINES}")
    machines = []
    for entry in entries:
        host, _, gpus = entry.rpartition(":")
        if not host or not _HOST.match(host) or not gpus.isdigit() or not 1 <= int(gpus) <= 16:
            raise SelectionError(f'gpu.machines: {entry!r} should be "host:gpus", e.g. "192.168.1.10:2"')
        machines.append((host, int(gpus)))
    if len(machines) == 1:
        raise SelectionError("gpu.machines: list at least two machines (one machine needs no entry here)")
    if len({host for host, _ in machines}) < len(machines):
        raise SelectionError("gpu.machines: a machine is listed twice")
    if len({gpus for _, gpus in machines}) > 1:
        raise SelectionError("gpu.machines: every machine must train on the same number of GPUs "
                             "(accelerate starts num_processes / num_machines on each)")
    uuids = session.gpu.uuids
    if machines and uuids and len(uuids) != machines[0][1]:
        raise SelectionError(f"gpu.uuids lists {len(uuids)} GPUs but gpu.machines trains on {machines[0][1]} per machine: "
                             "make them agree (each machine uses its first GPUs; remove gpu.uuids with machines)")
    return machines


def plan_machines(session: Session) -> list[Machine]:
    machines = parse_machines(session)
    port = session.gpu.main_process_port
    port = DEFAULT_PORT if port is None else port  # 0 is a value to refuse, not "unset"
    if not 1024 <= port <= 65535:
        raise SelectionError(f"gpu.main_process_port: expected a TCP port from 1024 to 65535, got {port}")
    main = machines[0][0] if machines else ""
    return [Machine(rank, len(machines), host, gpus, main, port) for rank, (host, gpus) in enumerate(machines)]


def machine_launch(machine: Machine) -> Launch:
    """The launch for one machine: its GPUs are not visible from here, so peer-to-peer is assumed missing."""
    return Launch(processes=machine.total_processes, env={"NCCL_P2P_DISABLE": "1"}, port=machine.port,
                  p2p_disabled=True)


def write_machine_runs(session: Session, run_dir: Path) -> list[tuple[Machine, Path, Any]]:
    """One accelerate config per machine in `run_dir` and its command: [(machine, config, TrainCommand)]."""
    from lorawizard.core.common.fsutil import atomic_write_text
    from lorawizard.core.launch import command as builder

    try:
        machines = plan_machines(session)
    except SelectionError as exc:
        raise builder.CommandError(str(exc)) from None
    run_dir = Path(run_dir).absolute()
    dataset_config = builder.write_dataset_config(session, run_dir / builder.DATASET_CONFIG_NAME)
    result = []
    launch = machine_launch(machines[0])  # every machine's launch is the same (processes, port): one command built,
    first_config = run_dir / "accelerate-machine0.yaml"  # the others differ only in their config file's name
    command = builder.build_train_command(
        session, dataset_config=dataset_config, accelerate_config=first_config, output_dir=run_dir,
        logging_dir=run_dir / "logs", launch=launch,
    )
    for machine in machines:
        config = run_dir / f"accelerate-machine{machine.rank}.yaml"
        argv = [str(config) if word == str(first_config) else word for word in command.argv]
        atomic_write_text(config, builder.accelerate_config_text(session, launch, machine=machine))
        result.append((machine, config, replace(command, argv=argv)))
    return result


def shared_paths(session: Session, command: Any) -> list[str]:
    """Folders and files every machine must have at the same path (the command and the dataset config name them)."""
    options = command.options
    paths = [str(command.cwd), command.argv[0], str(Path(session.paths.dataset).absolute())]
    for name in ("pretrained_model_name_or_path", "clip_l", "t5xxl", "ae", "tokenizer_cache_dir", "dataset_config",
                 "output_dir"):
        if options.get(name):
            paths.append(str(options[name]))
    return paths


def dry_run_lines(session: Session, run_dir: Path) -> list[str]:
    """What `--dry-run` prints for a multi-machine session: per machine its config and exact command."""
    runs = write_machine_runs(session, run_dir)
    first = runs[0][0]
    lines = [f"{first.count} machines × {first.gpus} GPUs = {first.total_processes} processes; main machine "
             f"{first.main_ip}:{first.port} (open that port between the machines; same_network = "
             f"{str(session.gpu.same_network).lower()})",
             "the same paths on every machine (same sd-scripts commit, trainer venv, driver generation):"]
    lines += [f"  {path}" for path in shared_paths(session, runs[0][2])]
    lines.append("copy the dataset folder and these config files to every machine; the LoRA is saved on the main one")
    for machine, config, command in runs:
        lines.append(f"machine {machine.rank} ({machine.host}{', main' if machine.rank == 0 else ''}): {config.name}")
        lines.append(command.shell_text())
    return lines
