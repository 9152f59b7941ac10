"""The trainer's LoRA tools as argv lists (never a shell), run in the trainer's Python from its checkout.

The scripts and their options are the family's (`ModelFamily.lora_tools`, read from sd-scripts' argparse):
`resize_lora.py --model --save_to --new_rank [--dynamic_method --dynamic_param] --verbose [--device cuda]`,
`convert_flux_lora.py --src --dst --src_path --dst_path`, `flux_merge_lora.py --models … --ratios … --save_to
[--concat]` or `--flux_model BASE --models L --ratios 1 --save_to --save_precision <the base's> --mem_eff_load_save`,
and the inference script (`--ckpt_path --clip_l --t5xxl --ae --lora_weights "path;1" --prompt --seed --steps
--width --height --output_dir`), wrapped by trainer_side/run_offline_tokenizers.py so its tokenizers come from the
project's tokenizer folder, as training's do.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from lorawizard.core.contract import StepFailed
from lorawizard.core.profile import ModelFamily, family_for
from lorawizard.core.profile.family import LoraTools
from lorawizard.core.session.document import Session

OFFLINE_WRAPPER = Path(__file__).resolve().parents[2] / "trainer_side" / "run_offline_tokenizers.py"
RESIZE_METHODS = ("fixed", "sv_fro", "sv_cumulative", "sv_ratio")
DEFAULT_PARAM = {"sv_fro": 0.9, "sv_cumulative": 0.9, "sv_ratio": 10.0}
# safetensors' dtype → flux_merge_lora.py's --save_precision word (a merged base is saved as the base was)
SAVE_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "float32", "fp8 e4m3fn": "fp8_e4m3fn", "fp8 e5m2": "fp8_e5m2"}


@dataclass(frozen=True)
class Trainer:
    python: Path
    sd_scripts: Path
    env: dict[str, str] = field(default_factory=dict)  # added to the inherited environment


@dataclass(frozen=True)
class ToolCommand:
    argv: list[str]
    env: dict[str, str]  # what we add to the inherited environment
    cwd: Path
    output: Path  # what the tool writes (a temp name; renamed by the runner on success)
    what: str  # "resize", "convert", "merge", "merge into base", "check"

    def shell_text(self, *, multiline: bool = False) -> str:
        """Copyable: `cd … && VAR=… python …`; `multiline` breaks before each option with ` \\` continuations
        (still valid to paste), as the training command's dry run prints it."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()) if k != "PYTHONUNBUFFERED")
        first = next((i for i, word in enumerate(self.argv) if word.startswith("--")), len(self.argv))
        if not multiline or first == len(self.argv):
            return " ".join(p for p in (f"cd {shlex.quote(str(self.cwd))} &&", env, shlex.join(self.argv)) if p)
        lines = [" ".join(p for p in (f"cd {shlex.quote(str(self.cwd))} &&", env, shlex.join(self.argv[:first])) if p)]
        current: list[str] = []
        for word in self.argv[first:]:
            if word.startswith("--") and current:
                lines.append("  " + shlex.join(current))
                current = []
            current.append(word)
        lines.append("  " + shlex.join(current))
        return " \\\n".join(lines)


def tools_of(family: ModelFamily) -> LoraTools:
    if family.lora_tools is None:
        raise StepFailed(f"{family.title}: the trainer has no LoRA tools lorawizard knows for this model")
    return family.lora_tools


def trainer(session: Session) -> Trainer:
    """The trainer's Python and checkout, as training uses them; StepFailed (one line) when either is missing."""
    from lorawizard.core.environment.checkout import find_sd_scripts
    from lorawizard.core.environment.trainer_python import find_python
    from lorawizard.core.launch.command import library_path_env

    sd_scripts = find_sd_scripts(session)
    if sd_scripts is None or not sd_scripts.is_dir():
        raise StepFailed("sd-scripts was not found (paths.sd_scripts): run the Environment step")
    python = find_python(session, sd_scripts)
    if python is None or not python.exists():
        raise StepFailed("the trainer's Python was not found (paths.python / sd-scripts' venv): run the Environment step")
    inherited = os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(sd_scripts), inherited) if p), "PYTHONUNBUFFERED": "1",
           **library_path_env(session)}
    return Trainer(python, sd_scripts, env)


def script_path(runner: Trainer, relative: str) -> Path:
    path = runner.sd_scripts / relative
    if not path.is_file():
        raise StepFailed(f"{relative} is not in {runner.sd_scripts}: an sd-scripts checkout too old for this tool "
                         "(update it on the Environment screen)")
    return path


def _device_args(device: str) -> list[str]:
    return ["--device", "cuda"] if device == "gpu" else []


def resize_command(runner: Trainer, tools: LoraTools, source: Path, output: Path, rank: int, *,
                   method: str = "fixed", param: float | None = None, device: str = "cpu",
                   save_precision: str | None = None) -> ToolCommand:
    """`save_precision` (bf16/fp16, the source's): resize_lora.py saves float32 when given none, so a bf16 LoRA
    resized to half its rank came out about as large as it was."""
    argv = [str(runner.python), str(script_path(runner, tools.resize_script)), "--model", str(source),
            "--save_to", str(output), "--new_rank", str(rank), "--verbose"]
    if save_precision in ("bf16", "fp16"):
        argv += ["--save_precision", save_precision]
    if method != "fixed":
        argv += ["--dynamic_method", method, "--dynamic_param", f"{param if param is not None else DEFAULT_PARAM[method]:g}"]
    argv += _device_args(device)
    return ToolCommand(argv, runner.env, runner.sd_scripts, output, "resize")


def convert_command(runner: Trainer, tools: LoraTools, source: Path, output: Path, src: str, dst: str) -> ToolCommand:
    if tools.convert_script is None:
        raise StepFailed("the trainer has no conversion tool for this model's LoRAs")
    argv = [str(runner.python), str(script_path(runner, tools.convert_script)), "--src", src, "--dst", dst,
            "--src_path", str(source), "--dst_path", str(output)]
    return ToolCommand(argv, runner.env, runner.sd_scripts, output, "convert")


def merge_command(runner: Trainer, tools: LoraTools, sources: list[Path], ratios: list[float], output: Path,
                  ) -> ToolCommand:
    """LoRAs into one by concatenation (rank = the sum of their ranks): with the ratios of `concat_ratios` the
    result applies Σ wᵢ·LoRAᵢ exactly, without the cross terms an element-wise sum of the matrices brings."""
    argv = [str(runner.python), str(script_path(runner, tools.merge_script)), "--models", *map(str, sources),
            "--ratios", *(f"{r:.6g}" for r in ratios), "--save_to", str(output), "--concat"]
    return ToolCommand(argv, runner.env, runner.sd_scripts, output, "merge")


def merge_base_command(runner: Trainer, tools: LoraTools, base: Path, lora: Path, output: Path, *,
                       save_precision: str | None, device: str = "cpu") -> ToolCommand:
    argv = [str(runner.python), str(script_path(runner, tools.merge_script)), f"--{tools.merge_option}", str(base),
            "--models", str(lora), "--ratios", "1", "--save_to", str(output), "--mem_eff_load_save"]
    if save_precision:
        argv += ["--save_precision", save_precision]
    if device == "gpu":
        argv += ["--working_device", "cuda"]
    return ToolCommand(argv, runner.env, runner.sd_scripts, output, "merge into base")


def inference_command(runner: Trainer, tools: LoraTools, models: dict[str, Path], *, loras: list[Path],
                      out_dir: Path, prompt: str, seed: int, steps: int, size: int,
                      tokenizers: Path | None) -> ToolCommand:
    """One image from the base model (`models`: role → file; `ckpt_path` may be a merged base) with `loras` at 1."""
    script = script_path(runner, tools.inference_script)
    argv = [str(runner.python), str(OFFLINE_WRAPPER), str(tokenizers or ""), str(script)]
    for role, option in tools.inference_roles:
        if role in models:
            argv += [f"--{option}", str(models[role])]
    for option, value in tools.inference_options.items():
        argv += [f"--{option}"] if value is True else [f"--{option}", str(value)]
    if loras:
        argv += ["--lora_weights", *(f"{lora};1" for lora in loras)]
    argv += [f"--prompt={prompt}", "--seed", str(seed), "--steps", str(steps), "--width", str(size),  # a prompt may
             "--height", str(size), "--output_dir", str(out_dir)]  # begin with "-": one word, never an option
    return ToolCommand(argv, runner.env, runner.sd_scripts, out_dir, "check")


def concat_ratios(weights: list[float], ranks: list[int]) -> list[float]:
    """The `--ratios` that make a `--concat` merge apply Σ wᵢ·LoRAᵢ.

    flux_merge_lora.py scales LoRA i's down matrix by sqrt(αᵢ/α₀)·ratioᵢ and its up matrix by |that|, concatenates
    them (rank R = Σ rᵢ) and keeps the first LoRA's alpha α₀, so the merged update is Σ (αᵢ/R)·ratioᵢ·|ratioᵢ|·UᵢDᵢ;
    LoRA i alone applies (αᵢ/rᵢ)·UᵢDᵢ. Hence ratioᵢ·|ratioᵢ| = wᵢ·R/rᵢ. Exact when each LoRA has one rank for all its
    modules."""
    total = sum(ranks)
    out = []
    for weight, rank in zip(weights, ranks, strict=True):
        magnitude = (abs(weight) * total / rank) ** 0.5
        out.append(magnitude if weight >= 0 else -magnitude)
    return out


def family_tools(session: Session) -> tuple[ModelFamily, LoraTools]:
    family = family_for(session)
    return family, tools_of(family)
