"""core.command: the training command, accelerate config and dataset config, checked against sd-scripts' parser."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest
import tomlkit

from lorawizard.core.launch import command as cmd
from lorawizard.core.launch.command import CommandError
from lorawizard.core.session.document import Session, SessionError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "reference"
WEIRD = "we ird $HOME `x` ; 'q' \"d\" & | > <"  # characters a shell would interpret


def make_session(project: Path, **values: object) -> Session:
    session = Session.new(project / "session.toml", name="mylora")
    session.set("paths.sd_scripts", str(project / "sd-scripts"))
    for key, value in values.items():
        session.set(key.replace("__", "."), value)
    return session


def make_buckets(session: Session, *buckets: str) -> None:
    for bucket in buckets:
        folder = session.paths.dataset / bucket
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (folder / "0001.txt").write_text("tok, a thing\n")


def real_like_parser() -> argparse.ArgumentParser:
    """An argparse parser with sd-scripts' options, types, nargs and choices (from the option list)."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    types = {"int": int, "float": float, "str": str, "Path": Path}
    for spec in cmd.sd_scripts_options().values():
        if spec.is_flag:
            parser.add_argument(f"--{spec.name}", action="store_true")
            continue
        base = spec.base_type
        kwargs: dict = {"type": types.get(base, str)}
        if spec.is_list:
            kwargs["nargs"] = "*"
        choices = [c for c in spec.choices if c != "None"]
        if choices and base in ("str", "int"):
            kwargs["choices"] = [kwargs["type"](c) for c in choices]
        parser.add_argument(f"--{spec.name}", **kwargs)
    return parser


def script_options(command: cmd.TrainCommand) -> list[str]:
    index = next(i for i, w in enumerate(command.argv) if w.endswith("flux_train_network.py"))
    return command.argv[index + 1 :]


# ---------------------------------------------------------------- option list and schema


def test_option_list_is_complete() -> None:
    options = cmd.sd_scripts_options()
    assert len(options) == 215
    assert options["network_args"].is_list and options["save_state"].is_flag
    assert options["mixed_precision"].choices == ("no", "fp16", "bf16")


def test_dataset_schema_levels() -> None:
    schema = cmd.dataset_schema()
    assert schema["image_dir"].levels == {"subset"}
    assert schema["batch_size"].levels == {"general", "datasets"}
    assert "subset" in schema["num_repeats"].levels
    assert schema["network_multiplier"].type == "float"


@pytest.mark.extra
def test_packaged_copies_match_the_reference() -> None:
    if not SHARED.is_dir():
        pytest.skip("../shared/reference is not here")
    data = Path(cmd.__file__).parents[1] / "data"  # core/data
    for name in ("sd-scripts-options.tsv", "sd-scripts-dataset-config-schema.tsv"):
        assert (data / name).read_bytes() == (SHARED / name).read_bytes(), name


# ---------------------------------------------------------------- the command


def test_command_shape_and_every_option_exists(project: Path) -> None:
    session = make_session(project, gpu__uuid="GPU-1234abcd-0000-1111-2222-333344445555")
    command = cmd.build_train_command(
        session, dataset_config=project / "r/ds.toml", accelerate_config=project / "r/acc.yaml", output_dir=project / "r",
        logging_dir=project / "r/logs",
    )
    python = str(project / "sd-scripts" / ".venv" / "bin" / "python")
    assert command.argv[:10] == [
        python, "-m", "accelerate.commands.launch", "--config_file", str(project / "r/acc.yaml"),
        "--num_cpu_threads_per_process", "1", "--mixed_precision", "bf16", str(project / "sd-scripts/flux_train_network.py"),
    ]
    assert command.cwd == project / "sd-scripts"
    assert command.env == {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "GPU-1234abcd-0000-1111-2222-333344445555"}
    words = script_options(command)
    known = cmd.sd_scripts_options()
    names = [w[2:] for w in words if w.startswith("--")]
    assert all(name in known for name in names), [n for n in names if n not in known]
    assert len(names) == len(set(names))
    args = real_like_parser().parse_args(words)
    assert args.mixed_precision == "bf16" and args.save_precision == "bf16"
    assert args.save_state and args.fp8_base and args.highvram and args.network_train_unet_only
    assert args.cache_text_encoder_outputs and args.cache_text_encoder_outputs_to_disk and args.cache_latents_to_disk
    assert args.network_module == "networks.lora_flux" and args.network_dim == 4
    assert args.learning_rate == pytest.approx(1e-4) and args.optimizer_type == "adamw8bit"
    assert args.max_train_epochs == 16 and args.save_every_n_epochs == 4 and args.seed == 42
    assert args.timestep_sampling == "shift" and args.discrete_flow_shift == pytest.approx(3.1582)
    assert args.model_prediction_type == "raw" and args.guidance_scale == 1.0
    assert args.max_data_loader_n_workers == 2 and args.persistent_data_loader_workers and args.sdpa
    assert args.tokenizer_cache_dir == str(project / "models" / "tokenizers")
    assert args.pretrained_model_name_or_path == str(project / "models" / "flux1-dev-fp8.safetensors")
    assert args.t5xxl.endswith("t5xxl_fp8_e4m3fn.safetensors")
    assert args.output_dir == str(project / "r") and args.logging_dir == str(project / "r/logs")
    assert args.output_name == "mylora" and args.dataset_config == project / "r/ds.toml"
    assert args.resume is None and args.gradient_checkpointing


def test_session_values_reach_the_command(project: Path) -> None:
    session = make_session(project, train__network_dim=16, train__learning_rate=5e-5, train__max_train_epochs=3,
                           train__optimizer_type="adafactor", train__seed=7, paths__python=str(project / "py/bin/python"))
    command = cmd.build_train_command(session, dataset_config="d.toml", accelerate_config="a.yaml", output_dir="out")
    args = real_like_parser().parse_args(script_options(command))
    assert (args.network_dim, args.max_train_epochs, args.optimizer_type, args.seed) == (16, 3, "adafactor", 7)
    assert args.learning_rate == pytest.approx(5e-5)
    assert command.argv[0] == str(project / "py/bin/python")
    assert Path(args.output_dir).is_absolute() and args.logging_dir is None


def test_no_sd_scripts_is_a_clear_error(project: Path) -> None:
    session = Session.new(project / "session.toml")
    with pytest.raises(CommandError, match="paths.sd_scripts is not set"):
        cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")


def test_shell_metacharacters_in_paths_stay_one_word(project: Path) -> None:
    weird = project / WEIRD
    session = make_session(weird.parent, paths__sd_scripts=str(weird / "sd scripts"), gpu__uuid="GPU-1")
    command = cmd.build_train_command(session, dataset_config=weird / "d.toml", accelerate_config=weird / "a.yaml",
                                      output_dir=weird / "out")
    assert str(weird / "sd scripts" / "flux_train_network.py") in command.argv
    for multiline in (False, True):
        text = command.shell_text(multiline=multiline)
        words = shlex.split(text.replace("\\\n", " "))
        assert words[:3] == ["cd", str(weird / "sd scripts"), "&&"]
        assert words[3:5] == ["CUDA_VISIBLE_DEVICES=GPU-1", "PYTHONUNBUFFERED=1"]
        assert words[5:] == command.argv


def test_shell_text_multiline_puts_one_option_per_line(project: Path) -> None:
    session = make_session(project, train__extra_args=["--network_args", "a=1", "b=2"])
    command = cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    lines = command.shell_text(multiline=True).splitlines()
    assert lines[0].endswith("flux_train_network.py \\")
    assert "  --network_args a=1 b=2 \\" in lines
    assert all(line.startswith("  --") for line in lines[1:])


def test_full_env_adds_ours_to_the_inherited(project: Path) -> None:
    session = make_session(project, gpu__uuid="GPU-9")
    command = cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    env = command.full_env({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "GPU-9", "PYTHONUNBUFFERED": "1"}


def test_overrides_set_flags_values_and_drop(project: Path) -> None:
    session = make_session(project)
    command = cmd.build_train_command(
        session, dataset_config="d", accelerate_config="a", output_dir="o", resume=project / "o/mylora-state",
        overrides={"max_train_steps": 2, "max_train_epochs": None, "save_every_n_epochs": None, "highvram": None,
                   "console_log_simple": True, "save_state": None},
    )
    args = real_like_parser().parse_args(script_options(command))
    assert args.max_train_steps == 2 and args.max_train_epochs is None and args.save_every_n_epochs is None
    assert not args.highvram and args.console_log_simple and not args.save_state
    assert args.resume == str(project / "o/mylora-state")
    with pytest.raises(CommandError, match="not an option"):
        cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o",
                                overrides={"max_steps": 2})
    with pytest.raises(CommandError, match="expects an integer"):
        cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o",
                                overrides={"max_train_steps": "two"})


def test_vram_presets_change_the_command(project: Path) -> None:
    session = make_session(project, gpu__vram_preset="12gb")
    args = real_like_parser().parse_args(script_options(
        cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")))
    assert args.blocks_to_swap == 16 and not args.highvram and args.fp8_base and args.optimizer_type == "adamw8bit"
    with pytest.raises(CommandError, match="unknown preset 'huge'"):
        cmd.build_train_command(make_session(project, gpu__vram_preset="huge"), dataset_config="d",
                                accelerate_config="a", output_dir="o")


def test_explicit_optimizer_beats_the_preset(project: Path) -> None:
    session = make_session(project, gpu__vram_preset="12gb", train__optimizer_type="adafactor")
    command = cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    assert command.options["optimizer_type"] == "adafactor"


# ---------------------------------------------------------------- extra_args


def test_extra_args_are_checked_and_passed(project: Path) -> None:
    extra = ["--noise_offset", "0.05", "--flip_aug", "--network_args", "train_blocks=single", "x=1",
             "--lr_warmup_steps=10%", "--logit_mean", "-1.5", "--max_data_loader_n_workers", "4"]
    session = make_session(project, train__extra_args=extra)
    command = cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    words = script_options(command)
    args = real_like_parser().parse_args(words)
    assert args.noise_offset == 0.05 and args.flip_aug and args.network_args == ["train_blocks=single", "x=1"]
    assert args.lr_warmup_steps == "10%" and args.logit_mean == -1.5 and args.max_data_loader_n_workers == 4
    assert words.count("--max_data_loader_n_workers") == 1  # replaced, not repeated


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--nois_offset", "0.1"], "unknown sd-scripts option --nois_offset (did you mean --noise_offset?)"),
        (["--noise_off", "0.1"], "unknown sd-scripts option --noise_off"),  # argparse would accept the prefix; we don't
        (["0.1"], "'0.1' is not an option"),
        (["-n", "3"], "'-n' is not an option (options start with --)"),
        (["--flip_aug", "yes"], "--flip_aug is a switch and takes no value"),
        (["--flip_aug=1"], "--flip_aug is a switch and takes no value"),
        (["--noise_offset"], "--noise_offset needs a value"),
        (["--noise_offset", "--flip_aug"], "--noise_offset needs a value"),
        (["--network_alpha", "one"], "--network_alpha expects a number, got 'one'"),
        (["--max_grad_norm", "nan"], "--max_grad_norm expects a finite number"),
        (["--gradient_accumulation_steps", "2.5"], "expects an integer"),
        (["--loss_type", "l3"], "--loss_type must be one of l1, l2, huber, smooth_l1"),
        (["--lr_warmup_steps", "ten"], "--lr_warmup_steps expects a step count"),
        (["--output_dir", "/tmp/x"], "--output_dir is set by lorawizard; change it through paths.runs"),
        (["--learning_rate", "1"], "change it through train.learning_rate"),
        (["--huggingface_token", "hf_x"], "--huggingface_token is set by lorawizard"),
        (["--flip_aug", "--flip_aug"], "--flip_aug is given twice"),
        (["--noise_offset", "0.1", "0.2"], "'0.2' is not an option"),
        (["--shuffle_caption"], "--cache_text_encoder_outputs and --shuffle_caption"),
        (["--blocks_to_swap", "4", "--cpu_offload_checkpointing"], "--blocks_to_swap and --cpu_offload_checkpointing"),
    ],
)
def test_malformed_extra_args_are_rejected_in_one_line(project: Path, extra: list[str], message: str) -> None:
    session = make_session(project, train__extra_args=extra)
    with pytest.raises(CommandError) as info:
        cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_no_loader_workers_drops_our_persistent_workers(project: Path) -> None:
    """Found by the real trainer: torch refuses persistent workers with 0 workers (ValueError at the data loader)."""
    session = make_session(project, train__extra_args=["--max_data_loader_n_workers", "0"])
    command = cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    assert "--persistent_data_loader_workers" not in command.argv
    session = make_session(project, train__extra_args=["--max_data_loader_n_workers", "0", "--persistent_data_loader_workers"])
    with pytest.raises(CommandError, match="persistent workers need --max_data_loader_n_workers above 0"):
        cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")


def test_caption_dropout_zero_is_not_a_conflict(project: Path) -> None:
    session = make_session(project, train__extra_args=["--caption_dropout_rate", "0", "--blocks_to_swap", "0",
                                                        "--cpu_offload_checkpointing"])
    argv = cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o").argv  # no error
    assert argv[argv.index("--caption_dropout_rate") + 1] == "0" and "--cache_text_encoder_outputs" in argv
    assert argv[argv.index("--blocks_to_swap") + 1] == "0" and "--cpu_offload_checkpointing" in argv


def test_fp32_runs_agree_everywhere_and_drop_fp8(project: Path) -> None:
    """train.mixed_precision = "no" (fp32: CPUs without native bf16 — the e2e harness — and debugging): the launcher,
    its config and the trainer all say `no`, and fp8_base (sd-scripts asserts it needs mixed precision) is dropped."""
    session = make_session(project, train__mixed_precision="no", gpu__vram_preset="12gb")
    command = cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    assert command.argv[7:9] == ["--mixed_precision", "no"]
    args = real_like_parser().parse_args(script_options(command))
    assert args.mixed_precision == "no" and args.save_precision == "bf16" and not args.fp8_base
    assert args.blocks_to_swap == 16  # the rest of the preset stays
    assert "mixed_precision: no" in cmd.accelerate_config_text(session)
    session.set("train.extra_args", ["--mixed_precision", "fp16"])
    with pytest.raises(CommandError, match="train.mixed_precision"):
        cmd.build_train_command(session, dataset_config="d", accelerate_config="a", output_dir="o")
    with pytest.raises(SessionError, match="bf16"):
        session.set("train.mixed_precision", "fp16")


# ---------------------------------------------------------------- accelerate config


def test_accelerate_config_pins_the_gpu_and_leaves_the_global_alone(project: Path, isolated_home: Path) -> None:
    session = make_session(project, gpu__uuid="GPU-abc-123")
    path = cmd.write_accelerate_config(session, project / "runs/r1/accelerate.yaml")
    text = path.read_text()
    assert "gpu_ids: 'GPU-abc-123'" in text
    for line in ("distributed_type: 'NO'", "num_processes: 1", "num_machines: 1", "mixed_precision: bf16",
                 "dynamo_backend: 'NO'", "use_cpu: false"):
        assert line in text
    assert not (isolated_home / ".cache" / "huggingface" / "accelerate").exists()
    assert "gpu_ids: all" in cmd.accelerate_config_text(make_session(project))
    with pytest.raises(CommandError, match="does not look like"):
        session = make_session(project)
        session.doc["gpu"]["uuid"] = "GPU-1'; rm -rf /"  # past the session's own check (edited by hand)
        cmd.accelerate_config_text(session)


def test_accelerate_config_is_yaml_that_accelerate_reads(project: Path) -> None:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(cmd.accelerate_config_text(make_session(project, gpu__uuid="GPU-a-b")))
    assert data["gpu_ids"] == "GPU-a-b" and data["distributed_type"] == "NO" and data["num_processes"] == 1
    assert data["dynamo_config"] == {"dynamo_backend": "NO"}


# ---------------------------------------------------------------- dataset config


def test_dataset_config_one_dataset_per_bucket(project: Path) -> None:
    session = make_session(project, gpu__vram_preset="24gb", dataset__num_repeats=3)
    session.set_batch_size("1024x1024", 3)
    make_buckets(session, "1024x1024", "512x1024", "1024x512")
    (session.paths.dataset / "256x256").mkdir()  # empty bucket folder: not in use
    (session.paths.dataset / "notes").mkdir()
    path = cmd.write_dataset_config(session, project / "runs/r1/dataset_config.toml")
    text = path.read_text()
    data = tomlkit.parse(text).unwrap()
    assert data["general"] == {"shuffle_caption": False, "caption_extension": ".txt", "keep_tokens": 1}
    got = [(d["resolution"], d["batch_size"], d["num_repeats"], d["subsets"][0]["image_dir"]) for d in data["datasets"]]
    root = project / "dataset"
    assert got == [
        ([1024, 1024], 3, 3, str(root / "1024x1024")),
        ([1024, 512], 2, 3, str(root / "1024x512")),
        ([512, 1024], 2, 3, str(root / "512x1024")),
    ]
    assert "# bucket 1024x512" in text and "absolute" in text  # commented for people
    cmd.check_dataset_config(data)


def test_dataset_config_arguments_win(project: Path) -> None:
    session = make_session(project)
    make_buckets(session, "512x512")
    data = cmd.dataset_config_data(session, buckets=["512x512", "256x512"], batch_sizes={"256x512": 4}, num_repeats=20)
    assert [(d["batch_size"], d["num_repeats"]) for d in data["datasets"]] == [(1, 20), (4, 20)]


def test_dataset_config_uses_the_manifest_when_there_is_one(project: Path) -> None:
    session = make_session(project)
    make_buckets(session, "512x512", "1024x512")
    manifest = session.paths.dataset / "lorawizard-manifest.json"
    record = {"output": "1024x512/0001.png", "source": "a.jpg", "sha256": "0", "bucket": "1024x512", "crop": [0, 0, 1, 1]}
    manifest.write_text(json.dumps({"version": 1, "images": [record]}))
    assert [d["subsets"][0]["image_dir"] for d in cmd.dataset_config_data(session)["datasets"]] == [
        str(session.paths.dataset / "1024x512")]
    manifest.write_text("{not json")  # unreadable: every bucket folder with PNGs
    assert len(cmd.dataset_config_data(session)["datasets"]) == 2


def test_no_prepared_images_is_a_clear_error(project: Path) -> None:
    session = make_session(project)
    with pytest.raises(CommandError, match="no prepared images .* run the dataset step first"):
        cmd.write_dataset_config(session, project / "d.toml")
    assert not (project / "d.toml").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"general": {"num_repeat": 1}}, "general.num_repeat is not allowed"),
        ({"general": {"is_reg": True}}, "general.is_reg is not allowed"),
        ({"general": {"keep_tokens": 1.0}}, "general.keep_tokens must be int"),
        ({"general": {"shuffle_caption": 0}}, "must be bool"),
        ({"general": {"network_multiplier": 1}}, "network_multiplier must be float"),
        ({"datasets": [{"validation_split": 0, "subsets": [{"image_dir": "/x"}]}]}, "validation_split must be float"),
        ({"datasets": [{"resolution": [1, 2, 3], "subsets": [{"image_dir": "/x"}]}]}, "resolution must be"),
        ({"datasets": [{"subsets": [{"image_dir": "/x", "batch_size": 2}]}]}, "subsets[0].batch_size is not allowed"),
        ({"datasets": [{"subsets": [{"num_repeats": 2}]}]}, "needs image_dir"),
        ({"datasets": [{"subsets": [{"image_dir": "rel/x"}]}]}, "image_dir must be absolute"),
        ({"datasets": [{"resolution": 512}]}, "has no subsets"),
        ({"foo": {}}, "[foo] is not allowed"),
    ],
)
def test_dataset_config_schema_check(data: dict, message: str) -> None:
    with pytest.raises(CommandError) as info:
        cmd.check_dataset_config(data)
    assert message in str(info.value)


# ---------------------------------------------------------------- prepare_run


def test_prepare_run_writes_both_files_and_returns_the_command(project: Path) -> None:
    session = make_session(project, gpu__uuid="GPU-7")
    make_buckets(session, "1024x1024")
    run_dir = project / "runs" / "20260101-000000"
    prepared = cmd.prepare_run(session, run_dir)
    command, files = prepared
    assert files == [run_dir / "dataset_config.toml", run_dir / "accelerate.yaml"]
    assert all(f.is_file() for f in files)
    args = real_like_parser().parse_args(script_options(command))
    assert args.dataset_config == run_dir / "dataset_config.toml" and args.output_dir == str(run_dir)
    assert args.logging_dir == str(run_dir / "logs")
    assert command.argv[4] == str(run_dir / "accelerate.yaml")


def test_prepare_run_writes_nothing_when_the_command_is_wrong(project: Path) -> None:
    session = make_session(project, train__extra_args=["--bogus"])
    make_buckets(session, "1024x1024")
    with pytest.raises(CommandError):
        cmd.prepare_run(session, project / "runs" / "x")
    assert not (project / "runs").exists()
