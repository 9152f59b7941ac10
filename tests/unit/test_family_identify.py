"""Which family a transformer file is, from synthetic safetensors headers (real key names and shapes, no weights):
FLUX.1-dev vs schnell vs Krea [dev] vs Chroma, fp8 vs 16-bit, and the files sd-scripts cannot read (issue 27 item 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.models.finder import search_by_header
from lorawizard.core.models.identify import identify, role_problem
from lorawizard.core.profile import CHROMA, FLUX1_DEV, FLUX1_KREA_DEV, FLUX1_SCHNELL
from tests.support.model_files import write_safetensors

H = 3072  # FLUX.1's and Chroma's hidden size


def blocks(dtype: str) -> dict[str, tuple[str, list[int]]]:
    """What every FLUX.1-style transformer has: double and single blocks, the image and text inputs."""
    return {
        "double_blocks.0.img_attn.qkv.weight": (dtype, [3 * H, H]),
        "double_blocks.0.img_attn.proj.bias": ("BF16", [H]),
        "single_blocks.0.linear1.weight": (dtype, [3 * H + 4 * H, H]),
        "img_in.weight": (dtype, [H, 64]),
        "txt_in.weight": (dtype, [H, 4096]),
    }


def flux_dev(dtype: str = "BF16") -> dict[str, tuple[str, list[int]]]:  # and Krea [dev]: the same tensors
    return {**blocks(dtype), "guidance_in.in_layer.bias": ("BF16", [H]), "guidance_in.in_layer.weight": (dtype, [H, 256]),
            "vector_in.in_layer.weight": (dtype, [H, 768]), "double_blocks.0.img_mod.lin.weight": (dtype, [6 * H, H])}


def flux_schnell(dtype: str = "BF16") -> dict[str, tuple[str, list[int]]]:  # no guidance embedder
    return {**blocks(dtype), "vector_in.in_layer.weight": (dtype, [H, 768]), "vector_in.in_layer.bias": ("BF16", [H]),
            "double_blocks.0.img_mod.lin.weight": (dtype, [6 * H, H])}


def chroma(dtype: str = "BF16") -> dict[str, tuple[str, list[int]]]:  # no modulation, guidance or CLIP-L vector input
    return {**blocks(dtype), "distilled_guidance_layer.in_proj.weight": (dtype, [5120, 64]),
            "distilled_guidance_layer.in_proj.bias": ("BF16", [5120]),
            "distilled_guidance_layer.layers.0.in_layer.weight": (dtype, [5120, 5120])}


def prefixed(tensors: dict[str, tuple[str, list[int]]]) -> dict[str, tuple[str, list[int]]]:
    return {f"model.diffusion_model.{name}": spec for name, spec in tensors.items()}


@pytest.mark.parametrize(("make", "families", "words"), [
    (flux_dev, "flux1-dev|flux1-krea-dev", "FLUX.1-dev or FLUX.1 Krea [dev] (one architecture: a header cannot tell which)"),
    (flux_schnell, "flux1-schnell", "FLUX.1 schnell"),
    (chroma, "chroma", "Chroma"),
])
@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3"])
def test_a_transformer_says_its_family_and_precision(tmp_path: Path, make, families: str, words: str, dtype: str) -> None:
    for tensors in (make(dtype), prefixed(make(dtype))):  # ComfyUI's checkpoints prefix the names; sd-scripts strips it
        identity = identify(write_safetensors(tmp_path / "t.safetensors", tensors), FLUX1_DEV)
        assert (identity.kind, identity.families) == ("flux", families)
        assert identity.title == f"a {words} transformer"
        assert identity.dtype == ("fp8 e4m3fn" if dtype == "F8_E4M3" else "bf16")


def test_a_diffusers_transformer_is_told_by_its_own_names(tmp_path: Path) -> None:
    diffusers = {"transformer_blocks.0.attn.add_k_proj.bias": ("BF16", [H]),
                 "time_text_embed.guidance_embedder.linear_1.bias": ("BF16", [H])}
    identity = identify(write_safetensors(tmp_path / "d.safetensors", diffusers), FLUX1_DEV)
    assert identity.families == "flux1-dev|flux1-krea-dev"
    without = {"transformer_blocks.0.attn.add_k_proj.bias": ("BF16", [H]),
               "time_text_embed.text_embedder.linear_1.bias": ("BF16", [H])}
    assert identify(write_safetensors(tmp_path / "s.safetensors", without), FLUX1_DEV).families == "flux1-schnell"


def test_a_file_of_another_family_is_refused_in_one_line(tmp_path: Path) -> None:
    schnell = write_safetensors(tmp_path / "flux1-schnell.safetensors", flux_schnell())
    identity = identify(schnell, CHROMA)
    line = role_problem(schnell, "flux", identity, CHROMA)
    assert line == ("flux1-schnell.safetensors is a FLUX.1 schnell transformer (bf16), not Chroma's: choose a Chroma "
                    'file, or set models.family = "flux1-schnell"')
    assert role_problem(schnell, "flux", identity, FLUX1_SCHNELL) is None
    chroma_file = write_safetensors(tmp_path / "Chroma1-HD.safetensors", chroma())
    assert "not FLUX.1-dev's" in (role_problem(chroma_file, "flux", identify(chroma_file, FLUX1_DEV), FLUX1_DEV) or "")


def test_krea_cannot_be_told_from_dev_by_header_so_either_is_accepted(tmp_path: Path) -> None:
    """The honest limit: Krea [dev] is FLUX.1-dev's architecture with other weights. A dev-shaped file is taken for
    either family (unverified, as every file matched by header); a file under the catalog's name or hash is known."""
    dev = write_safetensors(tmp_path / "some.safetensors", flux_dev())
    for family in (FLUX1_DEV, FLUX1_KREA_DEV):
        assert role_problem(dev, "flux", identify(dev, family), family) is None
    assert role_problem(dev, "flux", identify(dev, FLUX1_SCHNELL), FLUX1_SCHNELL) is not None


@pytest.mark.parametrize(("extra", "dtype", "said"), [
    ({"scaled_fp8": ("F8_E4M3", [0])}, "F8_E4M3", "scaled fp8"),
    ({"double_blocks.0.img_attn.qkv.scale_weight": ("F32", [1])}, "F8_E4M3", "scaled fp8"),
    ({"double_blocks.0.img_attn.qkv.comfy_quant": ("F8_E4M3", [16])}, "F8_E4M3", "scaled fp8"),
    ({}, "F8_E5M2", "e5m2"),
])
def test_fp8_files_sd_scripts_cannot_read_are_refused(tmp_path: Path, extra: dict, dtype: str, said: str) -> None:
    path = write_safetensors(tmp_path / "chroma-fp8.safetensors", {**chroma(dtype), **extra})
    identity = identify(path, CHROMA)
    assert identity.kind == "other" and said in identity.problem
    line = role_problem(path, "flux", identity, CHROMA) or ""
    assert "\n" not in line and said in line and line.startswith("chroma-fp8.safetensors")


def test_the_header_search_keeps_only_the_sessions_familys_transformers(tmp_path: Path) -> None:
    folder = tmp_path / "ComfyUI" / "models" / "diffusion_models"
    write_safetensors(folder / "a.safetensors", flux_schnell("F8_E4M3"))
    write_safetensors(folder / "b.safetensors", chroma())
    home = tmp_path / "home"
    home.mkdir()
    for family, name in ((CHROMA, "b.safetensors"), (FLUX1_SCHNELL, "a.safetensors")):
        found = search_by_header(family, models_dir=tmp_path / "models", home=home, extra_folders=[tmp_path / "ComfyUI"])
        assert [c.path.name for c, _ in found.found["flux"]] == [name]
    assert "flux" not in search_by_header(FLUX1_DEV, models_dir=tmp_path / "models", home=home,
                                          extra_folders=[tmp_path / "ComfyUI"]).found
