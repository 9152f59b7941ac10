"""The LoRA tools (issue 28): header reading, file naming, the tools' argv, the runner (temp name, crash, cancel,
progress) and the steps end to end with stand-ins for sd-scripts' scripts (tests/support/standin/lora_tools.py)."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

from lorawizard.core.common.progress import Progress
from lorawizard.core.contract import Cancelled, StepContext, StepFailed
from lorawizard.core.loratools import commands, naming
from lorawizard.core.loratools.header import LoraError, family_problem, inspect
from lorawizard.core.loratools.runner import run_tool, temp_name
from lorawizard.core.loratools.step import (
    disk_problem,
    parse_merge,
    resize_plan,
    resize_report,
    run_check,
    run_convert,
    run_merge,
    run_merge_base,
    run_resize,
    weight_warnings,
)
from lorawizard.core.profile import FLUX1_DEV
from lorawizard.core.session.document import Session
from tests.support.model_files import write_model, write_safetensors
from tests.support.sessions import save
from tests.support.standin import make_fake_sd_scripts
from tests.support.standin.lora_tools import install_lora_tools

pytestmark = pytest.mark.unit


def sd_lora(path: Path, rank: int = 4, *, te: bool = False, dtype: str = "BF16", metadata: dict | None = None) -> Path:
    """A FLUX LoRA in sd-scripts' layout: 1 double + 1 single block, as the tiny e2e model gives."""
    tensors: dict[str, tuple[str, list[int]]] = {}
    for module, out_dim, in_dim in (("lora_unet_double_blocks_0_img_attn_qkv", 9216, 3072),
                                    ("lora_unet_double_blocks_0_img_attn_proj", 3072, 3072),
                                    ("lora_unet_single_blocks_0_linear1", 21504, 3072),
                                    ("lora_unet_single_blocks_0_linear2", 3072, 15360)):
        tensors[f"{module}.lora_down.weight"] = (dtype, [rank, in_dim])
        tensors[f"{module}.lora_up.weight"] = (dtype, [out_dim, rank])
        tensors[f"{module}.alpha"] = (dtype, [])
    if te:
        tensors["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = (dtype, [rank, 768])
        tensors["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = (dtype, [3072, rank])
    return write_safetensors(path, tensors, metadata=metadata or {"ss_network_dim": str(rank)})


def ait_lora(path: Path, rank: int = 4) -> Path:
    tensors = {}
    for part in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"):
        tensors[f"transformer.transformer_blocks.0.{part}.lora_A.weight"] = ("BF16", [rank, 3072])
        tensors[f"transformer.transformer_blocks.0.{part}.lora_B.weight"] = ("BF16", [3072, rank])
    return write_safetensors(path, tensors)


# ------------------------------------------------------------------ header


def test_sd_scripts_layout_rank_modules_and_family(tmp_path: Path) -> None:
    info = inspect(sd_lora(tmp_path / "a.safetensors", 16, te=True), FLUX1_DEV)
    assert (info.layout, info.family, info.rank, info.modules, info.dtype) == ("sd-scripts", "flux1-dev", 16, 5, "bf16")
    assert info.text_encoder_modules == 1 and info.uniform and info.rank_text() == "rank 16"
    assert family_problem(info, FLUX1_DEV) is None
    assert "FLUX.1-dev LoRA, sd-scripts layout, rank 16, 5 modules, bf16" in info.line()


def test_ai_toolkit_layout_is_told_from_its_keys(tmp_path: Path) -> None:
    info = inspect(ait_lora(tmp_path / "b.safetensors", 8), FLUX1_DEV)
    assert (info.layout, info.family, info.rank, info.modules) == ("ai-toolkit", "flux1-dev", 8, 4)


def test_dynamic_ranks_are_shown_as_a_range(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "d.safetensors", {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": ("F32", [3, 3072]),
        "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": ("F32", [11, 3072]),
    })
    info = inspect(path)
    assert not info.uniform and info.rank == 11 and info.rank_text() == "ranks 3–11 (dynamic)"


def test_not_a_lora_and_not_a_safetensors_file_are_refused_in_one_line(tmp_path: Path) -> None:
    flux = write_model(tmp_path / "flux.safetensors", "flux")
    with pytest.raises(LoraError, match=r"flux.safetensors is not a LoRA: none of its 5 tensors"):
        inspect(flux)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(LoraError, match="junk.safetensors has a header length") as caught:
        inspect(junk)
    assert "\n" not in str(caught.value)
    cut = sd_lora(tmp_path / "cut.safetensors")
    os.truncate(cut, cut.stat().st_size - 10)
    with pytest.raises(LoraError, match="incomplete download"):
        inspect(cut)
    with pytest.raises(LoraError, match="does not exist"):
        inspect(tmp_path / "missing.safetensors")


def test_a_lora_of_another_model_is_named_as_such(tmp_path: Path) -> None:
    sdxl = write_safetensors(tmp_path / "sdxl.safetensors", {
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": ("F16", [32, 640]),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": ("F16", [640, 32]),
    }, metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    info = inspect(sdxl, FLUX1_DEV)
    assert info.family is None and info.rank == 32
    problem = family_problem(info, FLUX1_DEV)
    assert problem is not None and "another model (its metadata says stable-diffusion-xl-v1-base/lora)" in problem
    assert "not FLUX.1-dev" in problem


# ------------------------------------------------------------------ naming


def test_names_of_the_results() -> None:
    assert naming.resized_stem("mychar-e8", 4) == "mychar-e8-r4"
    assert naming.resized_stem("mychar-e8-r16", 4) == "mychar-e8-r4"  # not mychar-e8-r16-r4
    assert naming.resized_stem("mychar-e8", 11, "sv_fro", 0.9) == "mychar-e8-r11-fro0.9"
    assert naming.resized_stem("mychar-e8-r11-fro0.9", 4) == "mychar-e8-r4"
    suffixes = ("sdscripts", "aitoolkit")
    assert naming.converted_stem("mychar-e8", "aitoolkit", suffixes) == "mychar-e8-aitoolkit"
    assert naming.converted_stem("mychar-e8-aitoolkit", "sdscripts", suffixes) == "mychar-e8-sdscripts"
    assert naming.merged_stem("n", [("a", 1.0), ("b", 1.0)]) == "a+b"
    assert naming.merged_stem("n", [("a", 0.7), ("b", 0.3)]) == "a-w0.7+b-w0.3"
    long = naming.merged_stem("n", [("x" * 80, 1.0), ("y" * 80, 1.0)])
    assert long.startswith("n-merge-") and len(long) == len("n-merge-") + 8


def test_a_persons_file_is_never_replaced_ours_is(tmp_path: Path) -> None:
    mine = tmp_path / "a-r4.safetensors"
    mine.write_bytes(b"a person's own file")
    assert naming.free_target(tmp_path, "a-r4") == tmp_path / "a-r4-2.safetensors"
    ours = tmp_path / "b-r4.safetensors"
    ours.write_bytes(b"x")
    naming.write_sidecar(ours, {"tool": "resize"})
    assert naming.free_target(tmp_path, "b-r4") == ours


def test_ours_from_another_source_of_the_same_name_is_kept(tmp_path: Path) -> None:
    """Two different `mychar-e8` LoRAs (from two folders) resized to one rank: the second gets its own name instead
    of replacing the first one's result; the same source is made again in its place."""
    first, second = tmp_path / "run1" / "mychar-e8.safetensors", tmp_path / "run2" / "mychar-e8.safetensors"
    made = tmp_path / "mychar-e8-r4.safetensors"
    made.write_bytes(b"x")
    naming.write_sidecar(made, {"tool": "resize", "source": str(first)})
    assert naming.free_target(tmp_path, "mychar-e8-r4", first) == made
    assert naming.free_target(tmp_path, "mychar-e8-r4", second) == tmp_path / "mychar-e8-r4-2.safetensors"


# ------------------------------------------------------------------ argv


def test_argv_of_each_tool(tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    install_lora_tools(sd)
    runner = commands.Trainer(Path("/venv/bin/python"), sd, {"PYTHONPATH": str(sd)})
    tools = FLUX1_DEV.lora_tools
    assert tools is not None
    src, out = Path("/p/a.safetensors"), Path("/p/.a-r4.part.safetensors")
    argv = commands.resize_command(runner, tools, src, out, 4, device="gpu").argv
    assert argv == ["/venv/bin/python", str(sd / "networks/resize_lora.py"), "--model", str(src), "--save_to", str(out),
                    "--new_rank", "4", "--verbose", "--device", "cuda"]
    kept = commands.resize_command(runner, tools, src, out, 4, save_precision="bf16").argv
    assert kept[-2:] == ["--save_precision", "bf16"]  # the source's precision (the tool saves float32 without it)
    assert "--save_precision" not in commands.resize_command(runner, tools, src, out, 4, save_precision="fp32").argv
    dynamic = commands.resize_command(runner, tools, src, out, 16, method="sv_fro", param=None).argv
    assert dynamic[-4:] == ["--dynamic_method", "sv_fro", "--dynamic_param", "0.9"]
    convert = commands.convert_command(runner, tools, src, out, "sd-scripts", "ai-toolkit").argv
    assert convert[2:] == ["--src", "sd-scripts", "--dst", "ai-toolkit", "--src_path", str(src), "--dst_path", str(out)]
    merge = commands.merge_command(runner, tools, [src, Path("/p/b.safetensors")], [1.0, 2.0], out).argv
    assert merge[2:] == ["--models", str(src), "/p/b.safetensors", "--ratios", "1", "2", "--save_to", str(out), "--concat"]
    base = commands.merge_base_command(runner, tools, Path("/m/flux.safetensors"), src, out, save_precision="bf16").argv
    assert base[2:4] == ["--flux_model", "/m/flux.safetensors"] and base[-2:] == ["--save_precision", "bf16"]
    assert "--mem_eff_load_save" in base
    models = {"flux": Path("/m/f"), "clip_l": Path("/m/c"), "t5xxl": Path("/m/t"), "ae": Path("/m/a")}
    infer = commands.inference_command(runner, tools, models, loras=[src], out_dir=Path("/o"), prompt="ohwx, a photo",
                                       seed=42, steps=20, size=512, tokenizers=Path("/tok")).argv
    assert infer[1].endswith("trainer_side/run_offline_tokenizers.py") and infer[2:4] == ["/tok", str(sd / "flux_minimal_inference.py")]
    assert infer[4:12] == ["--ckpt_path", "/m/f", "--clip_l", "/m/c", "--t5xxl", "/m/t", "--ae", "/m/a"]
    assert ["--lora_weights", f"{src};1"] == infer[infer.index("--lora_weights"):infer.index("--lora_weights") + 2]
    assert "--prompt=ohwx, a photo" in infer and infer[infer.index("--seed") + 1] == "42"


def test_a_missing_tool_is_one_line(tmp_path: Path) -> None:
    runner = commands.Trainer(Path("/venv/bin/python"), tmp_path, {})
    assert FLUX1_DEV.lora_tools is not None
    with pytest.raises(StepFailed, match="networks/resize_lora.py is not in"):
        commands.resize_command(runner, FLUX1_DEV.lora_tools, Path("a"), Path("b"), 4)


def _concat_merge(loras: list[tuple[list[list[float]], list[list[float]], float]], ratios: list[float]) -> list[list[float]]:
    """flux_merge_lora.py's --concat arithmetic, written out for small matrices: per LoRA (up, down, alpha), scale
    sqrt(alpha/alpha0)*ratio on down and its absolute value on up; concatenated; alpha0 over the summed rank."""
    alpha0 = loras[0][2]
    ups, downs = [], []
    for (up, down, alpha), ratio in zip(loras, ratios, strict=True):
        scale = (alpha / alpha0) ** 0.5 * ratio
        ups.append([[v * abs(scale) for v in row] for row in up])
        downs.extend([[v * scale for v in row] for row in down])
    up_cat = [[v for u in ups for v in u[i]] for i in range(len(ups[0]))]
    rank = len(downs)
    return [[alpha0 / rank * sum(up_cat[i][k] * downs[k][j] for k in range(rank)) for j in range(len(downs[0]))]
            for i in range(len(up_cat))]


def _delta(up: list[list[float]], down: list[list[float]], alpha: float) -> list[list[float]]:
    rank = len(down)
    return [[alpha / rank * sum(up[i][k] * down[k][j] for k in range(rank)) for j in range(len(down[0]))]
            for i in range(len(up))]


def test_concat_ratios_make_the_merge_apply_each_lora_with_its_weight() -> None:
    a = ([[1.0, 2.0], [0.5, -1.0]], [[0.3, 0.1], [0.2, -0.4]], 1.0)  # rank 2, alpha 1
    b = ([[2.0], [-1.0]], [[0.5, 0.25]], 4.0)  # rank 1, alpha 4
    weights = [0.7, -0.5]
    ratios = commands.concat_ratios(weights, [2, 1])
    merged = _concat_merge([a, b], ratios)
    da, db = _delta(*a), _delta(*b)
    expected = [[weights[0] * da[i][j] + weights[1] * db[i][j] for j in range(2)] for i in range(2)]
    flat = [v for row in expected for v in row]
    assert [v for row in merged for v in row] == pytest.approx(flat)
    naive = _concat_merge([a, b], weights)  # the weights passed as they are: not what a person asked for
    assert [v for row in naive for v in row] != pytest.approx(flat)


# ------------------------------------------------------------------ plans and warnings


def _session(tmp_path: Path, **values: object) -> Session:
    import tempfile

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    session = Session.new(folder / "session.toml", name="mychar")
    for key, value in values.items():
        session.set(key.replace("__", "."), value)
    save(session)
    return session


def test_resize_refuses_a_rank_not_below_the_loras(tmp_path: Path) -> None:
    info = inspect(sd_lora(tmp_path / "a.safetensors", 8))
    assert resize_plan(_session(tmp_path), info) == (4, "fixed", None)  # half by default
    with pytest.raises(StepFailed, match=r"rank 8 is not below a.safetensors's own rank 8: resizing only lowers"):
        resize_plan(_session(tmp_path, tools__rank=8), info)
    with pytest.raises(StepFailed, match="rank 32 is not below"):
        resize_plan(_session(tmp_path, tools__rank=32, tools__resize_method="sv_fro"), info)
    assert resize_plan(_session(tmp_path, tools__resize_method="sv_fro"), info) == (8, "sv_fro", 0.9)
    with pytest.raises(StepFailed, match="sv_fro keeps a share of the weights, 0 to 1"):
        resize_plan(_session(tmp_path, tools__resize_method="sv_fro", tools__resize_param=1.5), info)
    with pytest.raises(StepFailed, match="above 1"):
        resize_plan(_session(tmp_path, tools__resize_method="sv_ratio", tools__resize_param=0.5), info)


def test_weights_that_do_not_sum_sensibly_are_warned_not_refused() -> None:
    assert weight_warnings([0.5, 0.5]) == [] and weight_warnings([1.0, 1.0]) == []
    assert "sum to 3" in weight_warnings([1.5, 1.5])[0]
    assert "sum to 0" in weight_warnings([1.0, -1.0])[0]
    assert any("negative weight subtracts" in w for w in weight_warnings([1.0, -0.5]))
    assert any("weight of 0" in w for w in weight_warnings([1.0, 0.0]))


def test_merge_entries_are_parsed_and_checked(tmp_path: Path) -> None:
    session = _session(tmp_path, tools__merge=["loras/a.safetensors;0.7", "/x/b.safetensors"])
    assert parse_merge(session) == [(session.project_dir / "loras/a.safetensors", 0.7), (Path("/x/b.safetensors"), 1.0)]
    with pytest.raises(StepFailed, match="not a number"):
        parse_merge(_session(tmp_path, tools__merge=["a;x", "b"]))
    with pytest.raises(StepFailed, match="two or more LoRAs"):
        parse_merge(_session(tmp_path, tools__merge=["a"]))


def test_the_disk_check_refuses_before_starting(tmp_path: Path) -> None:
    assert disk_problem(tmp_path / "merged", 1) is None
    problem = disk_problem(tmp_path / "merged", 1 << 60)
    assert problem is not None and problem.startswith("not enough disk for the merged model: it needs about")


def test_resize_report_reads_the_tools_retention_figures() -> None:
    lines = ["lora_unet_x | sum(S) retained: 90.0%, fro retained: 96.0%, max(S) ratio: 5.0, dynamic | dim: 7, alpha: 7",
             "lora_unet_y | sum(S) retained: 91.0%, fro retained: 98.5%, max(S) ratio: 4.0",
             "Average Frobenius norm retention: 97.25% | std: 0.012"]
    report = resize_report(lines)
    assert report["fro_retained_mean"] == pytest.approx(0.9725) and report["fro_retained_min"] == pytest.approx(0.96)
    assert report["dynamic_ranks"] == [7] and report["fro_retained_std"] == pytest.approx(0.012)


# ------------------------------------------------------------------ the runner


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "tool.py"
    path.write_text("import sys, time, os\n" + body)
    return [os.sys.executable, str(path)]  # type: ignore[attr-defined]


def test_runner_renames_a_complete_output_and_reports_progress_with_eta(tmp_path: Path) -> None:
    final = tmp_path / "out.safetensors"
    temp = temp_name(final)
    argv = _script(tmp_path, f"""
for i in range(6):
    sys.stderr.write(f"\\rmerging: {{i*20:3d}}%|##   | {{i}}/5 [00:00<00:01, 5.0it/s]"); sys.stderr.flush(); time.sleep(0.15)
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'support' / 'standin')!r})
import lora_tools; lora_tools.write({str(temp)!r}, {{"a.lora_down.weight": ("F32", [2, 2])}})
""")
    events: list[Progress] = []
    command = commands.ToolCommand(argv, {}, tmp_path, temp, "merge")
    run = run_tool(command, log=tmp_path / "log" / "t.log", step="merge", final=final, progress=events.append)
    assert run.returncode == 0 and final.is_file() and not temp.exists()
    assert events and events[-1].done == 5 and events[-1].total == 5 and "merging" in events[-1].task
    assert any(e.eta_s is not None for e in events)
    assert "merging:" in (tmp_path / "log" / "t.log").read_text()


def test_a_crash_half_way_leaves_no_file_under_the_final_name(tmp_path: Path) -> None:
    final = tmp_path / "out.safetensors"
    temp = temp_name(final)
    argv = _script(tmp_path, f"""
open({str(temp)!r}, "wb").write(b"\\x10" + b"\\0" * 7 + b"{{}}")
sys.stderr.write("Traceback (most recent call last):\\nRuntimeError: out of memory\\n"); sys.exit(1)
""")
    run = run_tool(commands.ToolCommand(argv, {}, tmp_path, temp, "resize"), log=tmp_path / "t.log", step="resize",
                   final=final)
    assert run.returncode == 1 and run.error_line() == "RuntimeError: out of memory"
    assert not final.exists() and not temp.exists()
    # exit 0 without a complete file is a failure too
    argv = _script(tmp_path, f"open({str(temp)!r}, 'wb').write(b'cut')\n")
    run = run_tool(commands.ToolCommand(argv, {}, tmp_path, temp, "resize"), log=tmp_path / "t.log", step="resize",
                   final=final)
    assert run.returncode == 1 and not final.exists() and not temp.exists()


def test_cancel_ends_the_tools_process_group_and_removes_the_temp_file(tmp_path: Path) -> None:
    final = tmp_path / "out.safetensors"
    temp = temp_name(final)
    pid_file = tmp_path / "child.pid"
    argv = _script(tmp_path, f"""
import subprocess
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open({str(pid_file)!r}, "w").write(str(child.pid))
open({str(temp)!r}, "wb").write(b"partial")
time.sleep(60)
""")
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    with pytest.raises(Cancelled):
        run_tool(commands.ToolCommand(argv, {}, tmp_path, temp, "merge"), log=tmp_path / "t.log", step="merge",
                 final=final, cancel=cancel)
    assert not temp.exists() and not final.exists()
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the tool's child outlived the cancel")


# ------------------------------------------------------------------ the steps, with stand-in tools


@pytest.fixture
def tool_project(tmp_path: Path) -> Session:
    sd, python = make_fake_sd_scripts(tmp_path)
    install_lora_tools(sd)
    project = tmp_path / "project"
    session = Session.new(project / "session.toml", name="mychar")
    session.set("paths.sd_scripts", str(sd))
    session.set("paths.python", str(python))
    session.set("tools.device", "cpu")
    session.set("tools.check_steps", 2)
    session.set("tools.check_size", 64)
    models = project / "models"
    for role in ("flux", "ae", "clip_l", "t5xxl"):
        write_model(models / f"{role}.safetensors", role)
        session.set(f"models.{role}", str(models / f"{role}.safetensors"))
    sd_lora(project / "loras" / "mychar-e8.safetensors", 8)
    save(session)
    return session


def _ctx(session: Session) -> StepContext:
    return StepContext(session=Session.load(session.path, read_only=True))


def test_resize_step_writes_the_named_file_a_sidecar_and_a_check_beside_the_original(tool_project: Session) -> None:
    result = run_resize(_ctx(tool_project))
    loras = tool_project.project_dir / "loras"
    target = loras / "mychar-e8-r4.safetensors"
    assert result.ok, result.summary
    assert inspect(target).rank == 4
    assert result.summary.startswith("mychar-e8-r4.safetensors: rank 4 from rank 8, ")
    assert "keeps 97.0% of the weights' Frobenius norm on average (std 0.008), the lowest module 96.0%" in result.summary
    sidecar = naming.read_json_object(naming.sidecar_of(target))
    assert sidecar["tool"] == "resize" and sidecar["source"].endswith("mychar-e8.safetensors")
    assert sidecar["check"]["loaded"] and Path(sidecar["check"]["image"]).is_file()
    assert re.fullmatch(r"mychar-e8-[0-9a-f]{10}\.png", Path(sidecar["check"]["original_image"]).name)
    assert sidecar["check"]["difference"] > 0  # the stand-in draws another shade for another rank
    assert not list(loras.glob(".*part*"))
    from lorawizard.core.loratools.results import status_lines

    lines = status_lines(Session.load(tool_project.path, read_only=True))
    assert lines[0] == "LoRA tools: 1 file" and "resize · mychar-e8-r4.safetensors" in lines[1]


def test_a_second_check_reuses_the_originals_sample(tool_project: Session) -> None:
    run_resize(_ctx(tool_project))
    checks = tool_project.project_dir / "loras" / "checks"
    [original] = checks.glob("mychar-e8-??????????.png")
    before = original.stat().st_mtime_ns
    save_rank = Session.load(tool_project.path)
    save_rank.set("tools.rank", 2)
    save(save_rank)
    result = run_resize(_ctx(tool_project))
    assert result.ok and result.data["check"]["original_image"] == str(original)
    assert original.stat().st_mtime_ns == before and list(checks.glob("mychar-e8-??????????.png")) == [original]
    assert len(list(checks.glob("mychar-e8-r2-*.png"))) == 1


def test_a_crashing_tool_fails_the_step_in_one_line_with_nothing_written(tool_project: Session,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_TOOL_CRASH", "1")
    with pytest.raises(StepFailed, match=r"resize_lora.py failed \(exit 1\): RuntimeError: stand-in crash; nothing was "
                                         r"written under the final name") as caught:
        run_resize(_ctx(tool_project))
    assert "\n" not in str(caught.value)
    assert [p.name for p in (tool_project.project_dir / "loras").iterdir()] == ["mychar-e8.safetensors"]


def test_convert_and_check_through_the_trainers_layout(tool_project: Session) -> None:
    result = run_convert(_ctx(tool_project))
    target = tool_project.project_dir / "loras" / "mychar-e8-aitoolkit.safetensors"
    assert result.ok, result.summary
    assert inspect(target).layout == "ai-toolkit"
    assert result.summary.startswith("mychar-e8-aitoolkit.safetensors: ai-toolkit / diffusers (transformer.…lora_A) "
                                     "layout, from mychar-e8.safetensors (sd-scripts / ComfyUI (lora_unet_…)); rank 8")
    check = naming.read_json_object(naming.sidecar_of(target))["check"]
    assert check["loaded"] and "loaded through its sd-scripts conversion" in check["line"]
    session = Session.load(tool_project.path)
    session.set("tools.lora", str(target))
    save(session)
    with pytest.raises(StepFailed, match="already in ai-toolkit layout"):
        session.set("tools.convert_to", "ai-toolkit")
        save(session)
        run_convert(_ctx(tool_project))


def test_merge_two_with_weights(tool_project: Session) -> None:
    loras = tool_project.project_dir / "loras"
    sd_lora(loras / "style-e4.safetensors", 4)
    session = Session.load(tool_project.path)
    session.set("tools.merge", ["loras/mychar-e8.safetensors;0.7", "loras/style-e4.safetensors;0.3"])
    save(session)
    result = run_merge(_ctx(tool_project))
    target = loras / "mychar-e8-w0.7+style-e4-w0.3.safetensors"
    assert result.ok, result.summary
    assert inspect(target).rank == 12  # the ranks added
    sidecar = naming.read_json_object(naming.sidecar_of(target))
    assert sidecar["ratios"] == pytest.approx(commands.concat_ratios([0.7, 0.3], [8, 4]))


def test_merge_refuses_another_layout_and_warns_about_weights(tool_project: Session) -> None:
    loras = tool_project.project_dir / "loras"
    ait_lora(loras / "other.safetensors")
    session = Session.load(tool_project.path)
    session.set("tools.merge", ["loras/mychar-e8.safetensors", "loras/other.safetensors"])
    save(session)
    with pytest.raises(StepFailed, match="other.safetensors is in ai-toolkit layout: the merge tool adds sd-scripts"):
        run_merge(_ctx(tool_project))
    sd_lora(loras / "b.safetensors", 8)
    session.set("tools.merge", ["loras/mychar-e8.safetensors;2", "loras/b.safetensors;1.5"])
    session.set("tools.check", False)
    save(session)
    result = run_merge(_ctx(tool_project))
    assert result.ok and any("sum to 3.5" in d for d in result.details)


def test_merge_into_the_base_checks_the_disk_first(tool_project: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.core.loratools import step

    monkeypatch.setattr(step, "MERGE_BASE_SPARE", 1 << 62)
    with pytest.raises(StepFailed, match="not enough disk for the merged model"):
        run_merge_base(_ctx(tool_project))
    assert not (tool_project.project_dir / "merged").exists()
    monkeypatch.setattr(step, "MERGE_BASE_SPARE", 0)
    result = run_merge_base(_ctx(tool_project))
    assert result.ok, result.summary
    merged = tool_project.project_dir / "merged" / "mychar-e8+flux.safetensors"
    assert merged.is_file() and "bf16" in result.summary
    assert naming.read_json_object(naming.sidecar_of(merged))["check"]["loaded"]


def test_check_step_refuses_a_lora_that_does_not_load(tool_project: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_TOOL_KEYS", "mismatch")
    with pytest.raises(StepFailed, match=r"mychar-e8.safetensors does not load with flux_minimal_inference.py: "
                                         r"RuntimeError: Error\(s\) in loading state_dict"):
        run_check(_ctx(tool_project))


def test_the_tools_refuse_bad_inputs_in_one_line(tool_project: Session) -> None:
    session = Session.load(tool_project.path)
    flux = tool_project.project_dir / "models" / "flux.safetensors"
    session.set("tools.lora", str(flux))
    save(session)
    with pytest.raises(StepFailed, match="flux.safetensors is not a LoRA"):
        run_resize(_ctx(tool_project))
    other = write_safetensors(tool_project.project_dir / "sdxl.safetensors", {
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": ("F16", [32, 640])})
    session.set("tools.lora", str(other))
    save(session)
    with pytest.raises(StepFailed, match="a LoRA for another model"):
        run_convert(_ctx(tool_project))


def test_no_lora_kept_yet(tmp_path: Path) -> None:
    session = _session(tmp_path)
    with pytest.raises(StepFailed, match=r"no LoRA to work on: keep one in the Samples gallery \(k\)"):
        run_resize(StepContext(session=session))


# ------------------------------------------------------------------ headless: --steps and --status


def test_replay_steps_resize_then_status_lists_the_result(tool_project: Session) -> None:
    import io

    from lorawizard import runctl
    from lorawizard.core.registry import parse_steps
    from lorawizard.headless import replay

    assert parse_steps("check,resize,merge_base,convert,merge") == ["resize", "convert", "merge", "merge_base", "check"]
    out, err = io.StringIO(), io.StringIO()
    code = replay(tool_project.path, parse_steps("resize"), out=out, err=err, tty=False)
    text = out.getvalue()
    assert code == 0, err.getvalue() + text
    assert "== Resize the LoRA (resize) ==" in text
    assert "resize: loading Model 0/12 (0%)" in text and "resize: loading Model 12/12 (100%)" in text  # its bar
    assert "resize: ok - mychar-e8-r4.safetensors: rank 4 from rank 8" in text
    assert re.search(r"\n  check: loads \(all keys matched\); sample loras/checks/mychar-e8-r4-[0-9a-f]{10}\.png, ", text)
    status = io.StringIO()
    runctl.status(tool_project.project_dir, status)
    lines = status.getvalue().splitlines()
    assert lines[0].startswith("no run · ")
    assert lines[1] == "LoRA tools: 1 file"
    assert lines[2].startswith("  resize · mychar-e8-r4.safetensors ") and "from mychar-e8.safetensors" in lines[2]
    assert "loads (all keys matched)" in lines[2]


def test_what_a_person_types_for_a_resize() -> None:
    from lorawizard.core.loratools.step import parse_resize

    assert parse_resize("4") == ({"tools.resize_method": "fixed", "tools.rank": 4, "tools.resize_param": None}, None)
    assert parse_resize("fro 0.9")[0] == {"tools.resize_method": "sv_fro", "tools.resize_param": 0.9, "tools.rank": None}
    assert parse_resize("ratio 10 16")[0]["tools.rank"] == 16
    for bad in ("", "4.5", "zip 3", "fro", "fro x"):
        settings, problem = parse_resize(bad)
        assert settings == {} and problem and "\n" not in problem


def test_a_result_that_does_not_load_is_said_and_kept_as_ours(tool_project: Session,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_TOOL_KEYS", "mismatch")
    with pytest.raises(StepFailed, match=r"mychar-e8-r4.safetensors was written, but mychar-e8-r4.safetensors does "
                                         r"not load with flux_minimal_inference.py"):
        run_resize(_ctx(tool_project))
    target = tool_project.project_dir / "loras" / "mychar-e8-r4.safetensors"
    assert naming.is_ours(target)
    assert naming.read_json_object(naming.sidecar_of(target))["check"]["loaded"] is False
    from lorawizard.core.loratools.results import made

    assert made(Session.load(tool_project.path, read_only=True))[0].short().endswith("· does not load")


def test_only_the_loras_own_load_line_says_it_loaded(tool_project: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_TOOL_KEYS", "silent")  # an image, the base's "All keys matched", no LoRA line
    result = run_check(_ctx(tool_project))
    assert result.data["check"]["loaded"] is False and result.summary.startswith("mychar-e8.safetensors: drew an image")


def test_rich_log_lines_become_phases() -> None:
    from lorawizard.core.loratools.runner import message_of

    assert message_of("                    INFO     Loading t5xxl from /m/t5.safetensors...     "
                      "flux_minimal_inference.py:464") == "Loading t5xxl from /m/t5.safetensors..."
    assert message_of("2026-12-07 14:36:00 INFO     Generating image...    flux_minimal_inference.py:327") == \
        "Generating image..."
    assert message_of("Average Frobenius norm retention: 94.14% | std: 0.078").startswith("Average")


def test_chroma_is_drawn_as_chroma_without_clip_l(tmp_path: Path) -> None:
    from lorawizard.core.profile import FAMILIES

    chroma = FAMILIES["chroma"]
    assert chroma.lora_tools is not None
    sd = tmp_path / "sd"
    install_lora_tools(sd)
    runner = commands.Trainer(Path("/venv/bin/python"), sd, {})
    models = {"flux": Path("/m/chroma"), "t5xxl": Path("/m/t"), "ae": Path("/m/a")}  # Chroma has no clip_l role
    argv = commands.inference_command(runner, chroma.lora_tools, models, loras=[], out_dir=Path("/o"), prompt="p",
                                      seed=1, steps=2, size=64, tokenizers=None).argv
    assert "--clip_l" not in argv and argv[argv.index("--model_type") + 1] == "chroma" and "--apply_t5_attn_mask" in argv


# ------------------------------------------------------------------ --dry-run


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_dry_run_of_every_tool_prints_its_argv_file_and_disk_and_changes_nothing(tool_project: Session) -> None:
    import io
    import shlex

    from lorawizard.core.registry import parse_steps
    from lorawizard.headless import replay

    loras = tool_project.project_dir / "loras"
    sd_lora(loras / "style-e4.safetensors", 4)
    session = Session.load(tool_project.path)
    session.set("tools.merge", ["loras/mychar-e8.safetensors;0.7", "loras/style-e4.safetensors;0.3"])
    save(session)
    before = _tree(tool_project.project_dir)
    out, err = io.StringIO(), io.StringIO()
    code = replay(tool_project.path, parse_steps("resize,convert,merge,merge_base,check"), dry_run=True, out=out,
                  err=err, tty=False)
    text = out.getvalue()
    assert code == 0, err.getvalue() + text
    assert _tree(tool_project.project_dir) == before  # no file, no folder, no log, no check sample
    python, sd = shlex.quote(str(session.path_settings.python)), tool_project.resolve(session.paths.sd_scripts)
    # each tool's argv, one option a line as the training command's dry run prints it
    assert f"resize mychar-e8.safetensors (rank 8) to rank 4: would run\ncd {sd} && " in text
    assert f"{python} {sd}/networks/resize_lora.py \\\n  --model {loras}/mychar-e8.safetensors \\\n" in text
    assert "  --new_rank 4 \\\n  --verbose \\\n  --save_precision bf16\n" in text  # kept as the source (bf16)
    assert "  --src sd-scripts \\\n  --dst ai-toolkit \\\n" in text
    assert (f"  --models {loras}/mychar-e8.safetensors {loras}/style-e4.safetensors \\\n  --ratios 1.0247 0.948683 "
            "\\\n") in text
    assert "  --mem_eff_load_save \\\n  --save_precision bf16\n" in text
    # the file each would write, and the disk check
    for name in ("loras/mychar-e8-r4.safetensors", "loras/mychar-e8-aitoolkit.safetensors",
                 "loras/mychar-e8-w0.7+style-e4-w0.3.safetensors", "merged/mychar-e8+flux.safetensors"):
        assert f"would write {name} with its sidecar " in text
        assert f"ok - dry run: would write {name}; nothing written" in text
    size = (loras / "mychar-e8.safetensors").stat().st_size
    from lorawizard.core.common.progress import format_bytes

    assert f"disk: about {format_bytes(size * 4 // 8)} needed in loras/, " in text  # bf16 kept, half the rank
    assert "disk: about " in text and " needed in merged/, " in text
    # what the check would run: the result (an ai-toolkit one through its conversion back) and the original
    assert "check: would draw the result mychar-e8-aitoolkit.safetensors with flux_minimal_inference.py" in text
    assert "first converted to sd-scripts layout in that temp folder" in text
    assert f"  --lora_weights '{loras}/mychar-e8-r4.safetensors;1' \\\n" in text
    assert "check: would draw the merged model mychar-e8+flux.safetensors" in text
    assert f"  --ckpt_path {tool_project.project_dir}/merged/mychar-e8+flux.safetensors \\\n" in text
    assert "check: ok - dry run: would check loras/mychar-e8.safetensors; nothing written" in text
    assert "  warning: " not in text  # 0.7 + 0.3: nothing to warn about


def test_the_dry_runs_argv_is_the_one_the_tool_runs(tool_project: Session) -> None:
    import shlex

    logged: list[str] = []
    planned = run_resize(StepContext(session=Session.load(tool_project.path, read_only=True), dry_run=True))
    assert planned.ok and planned.data["file"].endswith("loras/mychar-e8-r4.safetensors")
    ctx = StepContext(session=Session.load(tool_project.path, read_only=True), log=logged.append)
    assert run_resize(ctx).ok
    assert any(line.endswith(shlex.join(planned.data["argv"])) for line in logged)  # same temp name: same thread


def test_dry_run_says_the_disk_refusal_and_a_check_that_cannot_run(tool_project: Session,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.core.loratools import step

    monkeypatch.setattr(step, "MERGE_BASE_SPARE", 1 << 62)
    logged: list[str] = []
    ctx = StepContext(session=Session.load(tool_project.path, read_only=True), dry_run=True, log=logged.append)
    with pytest.raises(StepFailed, match=r"dry run: it would be refused: not enough disk for the merged model"):
        run_merge_base(ctx)
    assert any("--flux_model" in line for line in logged)  # the command is printed all the same
    monkeypatch.setattr(step, "MERGE_BASE_SPARE", 0)
    (tool_project.project_dir / "models" / "t5xxl.safetensors").unlink()
    with pytest.raises(StepFailed, match=r"dry run: mychar-e8-r4.safetensors would be written, but its check cannot "
                                         r"run: the check needs the base model's files"):
        run_resize(StepContext(session=Session.load(tool_project.path, read_only=True), dry_run=True))
    assert not (tool_project.project_dir / "merged").exists()


def test_a_lora_tool_is_refused_before_it_starts_when_the_disk_is_short(tool_project: Session,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda _path: usage(1 << 40, 1 << 40, 1000))
    with pytest.raises(StepFailed, match=r"not enough disk for mychar-e8-r4.safetensors: it needs about .* and "
                                         r"1.0 KB is free"):
        run_resize(_ctx(tool_project))
    assert [p.name for p in (tool_project.project_dir / "loras").iterdir()] == ["mychar-e8.safetensors"]


def test_a_dry_run_of_a_dynamic_resize_says_its_name_follows_the_tool(tool_project: Session) -> None:
    session = Session.load(tool_project.path)
    session.set("tools.resize_method", "sv_fro")
    save(session)
    logged: list[str] = []
    result = run_resize(StepContext(session=Session.load(tool_project.path, read_only=True), dry_run=True,
                                    log=logged.append))
    assert result.summary == "dry run: would write loras/mychar-e8-r8-fro0.9.safetensors; nothing written"
    assert any("renamed after the largest rank the tool keeps (-r<rank>-fro0.9)" in line for line in logged)
    assert any("--dynamic_method sv_fro \\\n  --dynamic_param 0.9" in line for line in logged)


# ------------------------------------------------------------------ the check's samples


def test_originals_of_one_stem_in_two_folders_keep_their_own_samples(tool_project: Session) -> None:
    """loras/mychar-e8 and elsewhere/mychar-e8 are two LoRAs: each result's side-by-side shows its own original."""
    from lorawizard.core.loratools.check import compare

    other = sd_lora(tool_project.project_dir / "elsewhere" / "mychar-e8.safetensors", 16)  # another shade
    results = []
    for source in ("loras/mychar-e8.safetensors", str(other)):
        session = Session.load(tool_project.path)
        session.set("tools.lora", source)
        save(session)
        result = run_resize(_ctx(tool_project))
        assert result.ok, result.summary
        results.append(result.data["check"])
    first, second = results
    assert first["original_image"] != second["original_image"]
    assert Path(first["original_image"]).is_file() and Path(second["original_image"]).is_file()
    # the first result's pair still shows its own original: the difference it recorded is what the images say now
    difference, _blank = compare(Path(first["image"]), Path(first["original_image"]))
    assert difference == pytest.approx(first["difference"])
    assert compare(Path(first["original_image"]), Path(second["original_image"]))[0] > 0
    # and a later check of the first original reuses its own sample, not the other's
    session = Session.load(tool_project.path)
    session.set("tools.lora", "loras/mychar-e8-r4.safetensors")
    save(session)
    again = run_check(_ctx(tool_project)).data["check"]
    assert again["original_image"] == first["original_image"]
    assert again["difference"] == pytest.approx(first["difference"])


def test_a_sample_drawn_under_the_stem_alone_is_drawn_again(tool_project: Session) -> None:
    """checks.json from before the keys named `mychar-e8.png`, which another folder's mychar-e8 may have overwritten."""
    from lorawizard.core.common.fsutil import atomic_write_json, read_json_object

    assert run_check(_ctx(tool_project)).ok
    checks = tool_project.project_dir / "loras" / "checks"
    index = read_json_object(checks / "checks.json")
    [(key, entry)] = index.items()
    (checks / entry["image"]).rename(checks / "mychar-e8.png")
    atomic_write_json(checks / "checks.json", {key: {**entry, "image": "mychar-e8.png"}})
    again = run_check(_ctx(tool_project)).data["check"]
    assert Path(again["image"]).name == entry["image"] and Path(again["image"]).is_file()


def test_a_weight_is_a_finite_number_where_it_is_read(tmp_path: Path) -> None:
    from lorawizard.core.loratools.step import merge_entry, merge_weights, parse_weight

    assert parse_weight(" 0.7 ") == 0.7 and parse_weight("-1") == -1.0
    for bad in ("x", "", "nan", "inf", "-inf"):
        with pytest.raises(ValueError) as caught:
            parse_weight(bad)
        assert "is not a weight" in str(caught.value)
    with pytest.raises(StepFailed, match="not a number"):  # nan parsed as a float before, and merged into garbage
        parse_merge(_session(tmp_path, tools__merge=["a;nan", "b;0.5"]))
    session = _session(tmp_path, tools__merge=["loras/a.safetensors;0.7", "/x/b.safetensors", "c;x"])
    assert merge_weights(session) == {session.project_dir / "loras/a.safetensors": 0.7, Path("/x/b.safetensors"): 1.0}
    assert merge_entry(session.project_dir, session.project_dir / "loras" / "a.safetensors", 1 / 3) == \
        "loras/a.safetensors;0.3333333333"
    assert merge_entry(session.project_dir, Path("/x/b.safetensors"), 0.3) == "/x/b.safetensors;0.3"
