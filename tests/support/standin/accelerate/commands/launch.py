"""Stand-in for `accelerate launch` (single process, the real `simple_launcher`'s behaviour).

`python -m accelerate.commands.launch --config_file F [--num_cpu_threads_per_process N] [--mixed_precision M]
[--gpu_ids X] [--num_processes 1] ... SCRIPT ARGS...` spawns `sys.executable SCRIPT ARGS` in the *same* process
group (no signal forwarding, like the real one), with CUDA_VISIBLE_DEVICES from `--gpu_ids` or the config's
`gpu_ids`, OMP_NUM_THREADS and ACCELERATE_MIXED_PRECISION, waits, and on a non-zero child status raises
`subprocess.CalledProcessError` (so this process exits 1 with the real traceback text).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

_VALUE_OPTIONS = {
    "--config_file", "--num_cpu_threads_per_process", "--mixed_precision", "--gpu_ids", "--num_processes",
    "--num_machines", "--dynamo_backend", "--main_process_port", "--machine_rank",
}
_FLAG_OPTIONS = {"--cpu", "-q", "--quiet", "--multi_gpu"}


def _parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in _VALUE_OPTIONS:
            if not eq:
                i += 1
                if i >= len(argv):
                    sys.stderr.write(f"accelerate launch: error: argument {key}: expected one argument\n")
                    raise SystemExit(2)
                value = argv[i]
            opts[key.lstrip("-")] = value
        elif arg in _FLAG_OPTIONS:
            opts[arg.lstrip("-")] = "1"
        elif arg.startswith("-"):
            sys.stderr.write(f"accelerate launch: error: unrecognized arguments: {arg}\n")
            raise SystemExit(2)
        else:
            return opts, argv[i:]
        i += 1
    sys.stderr.write("accelerate launch: error: the following arguments are required: training_script\n")
    raise SystemExit(2)


def _config(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        sys.stderr.write(f"accelerate launch: error: cannot read config file {path}: {exc.strerror}\n")
        raise SystemExit(1) from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$", line)
        if match:
            value = re.sub(r"\s+#.*$", "", match.group(2))  # a YAML comment after the value
            values[match.group(1)] = value.strip("'\"")
    return values


def main(argv: list[str] | None = None) -> None:
    opts, rest = _parse(list(sys.argv[1:] if argv is None else argv))
    config = _config(opts["config_file"]) if "config_file" in opts else {}
    env = dict(os.environ)
    gpu_ids = opts.get("gpu_ids", config.get("gpu_ids", "all"))
    if gpu_ids and gpu_ids != "all":
        env["CUDA_VISIBLE_DEVICES"] = gpu_ids
    env["OMP_NUM_THREADS"] = opts.get("num_cpu_threads_per_process", "1")
    env["ACCELERATE_MIXED_PRECISION"] = opts.get("mixed_precision", config.get("mixed_precision", "no"))
    env["ACCELERATE_USE_CPU"] = "True" if opts.get("cpu") else "False"
    cmd = [sys.executable, *rest]
    process = subprocess.Popen(cmd, env=env)
    process.wait()
    if process.returncode != 0:
        if "q" in opts or "quiet" in opts:
            sys.exit(1)
        raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)


if __name__ == "__main__":
    main()
