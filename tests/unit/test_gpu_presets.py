"""core.vram_presets: the docs' tiers, choice from memory, step-down, the project's vram_presets.toml, estimates."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.gpu.presets import (
    BUILTIN_PRESETS,
    PresetError,
    estimate_batch,
    estimate_bytes,
    estimate_text,
    load_presets,
    preset_for_memory,
    preset_named,
    session_preset,
    step_down,
)
from lorawizard.core.launch.command import preset_overrides
from lorawizard.core.session.document import Session

GIB = 1024**3


def test_tiers_follow_the_docs() -> None:
    by_name = {p.name: p for p in BUILTIN_PRESETS}
    assert by_name["24gb"].batch_size == 2 and by_name["24gb"].options["optimizer_type"] == "adamw8bit"
    assert [by_name[n].blocks_to_swap for n in ("24gb", "16gb", "12gb", "10gb", "8gb")] == [0, 8, 16, 22, 28]
    assert all(p.options["fp8_base"] for p in BUILTIN_PRESETS)
    assert by_name["10gb"].fp8_t5 and by_name["8gb"].fp8_t5 and not by_name["12gb"].fp8_t5
    assert by_name["24gb"].title() == "24 GB: fp8 base, AdamW 8-bit, batch 2"
    assert by_name["24gb"].title("AdamW") == "24 GB: fp8 base, AdamW (yours), batch 2"  # the person's wins


@pytest.mark.parametrize(
    ("total", "name"),
    [(24 * GIB, "24gb"), (int(23.6 * GIB), "24gb"), (48 * GIB, "24gb"), (16 * GIB, "16gb"), (12 * GIB, "12gb"),
     (11 * GIB, "10gb"), (10 * GIB, "10gb"), (8 * GIB, "8gb"), (6 * GIB, "max-swap")],
)
def test_preset_from_total_memory(total: int, name: str) -> None:
    assert preset_for_memory(total).name == name


def test_step_down_swaps_more_each_time() -> None:
    chain, preset = [], preset_named("24gb")
    while preset is not None:
        chain.append(preset.name)
        preset = step_down(preset)
    assert chain == ["24gb", "16gb", "12gb", "10gb", "8gb", "max-swap"]


def test_estimate_grows_with_batch_and_area_and_says_so() -> None:
    p = preset_named("24gb")
    assert estimate_bytes(p, 1024, 1024, 2) > estimate_bytes(p, 1024, 1024, 1) > estimate_bytes(p, 512, 512, 1)
    assert estimate_bytes(preset_named("8gb"), 1024, 1024, 1) < estimate_bytes(p, 1024, 1024, 1)
    assert estimate_text(p, 1024, 1024, 2).endswith("(estimate)")
    # the docs' table: each tier fits batch 1 at 1024×1024, 24 GB fits batch 2
    for preset in BUILTIN_PRESETS[:5]:
        total = int(preset.min_gb * GIB)
        assert estimate_batch(preset, 1024, 1024, total) >= preset.batch_size, preset.name


def test_project_file_edits_and_adds_presets(project: Path) -> None:
    (project / "vram_presets.toml").write_text(
        '[presets.20gb]\nmin_gb = 20\nbatch_size = 1\noptions = { fp8_base = true, blocks_to_swap = 4 }\n'
        '[presets.16gb]\nmin_gb = 16\nbatch_size = 2\noptions = { fp8_base = true, blocks_to_swap = 10 }\n'
    )
    session = Session.new(project / "session.toml")
    presets = load_presets(session)
    assert [p.name for p in presets][:3] == ["24gb", "20gb", "16gb"]
    assert preset_named("16gb", presets).blocks_to_swap == 10
    assert preset_for_memory(21 * GIB, presets).name == "20gb"
    session.set("gpu.vram_preset", "20gb")
    assert session_preset(session).name == "20gb"


def test_bad_project_file_is_one_line(project: Path) -> None:
    (project / "vram_presets.toml").write_text("[presets.x]\nmin_gb = 8\noptions = { blocks_to_swap = 99 }\n")
    with pytest.raises(PresetError, match=r"presets\.x\.options\.blocks_to_swap: expected an integer from 0 to 35"):
        load_presets(Session.new(project / "session.toml"))


def test_step_down_overrides_respect_the_user(project: Path) -> None:
    session = Session.new(project / "session.toml")
    session.set("gpu.vram_preset", "24gb")
    session.set("train.optimizer_type", "adafactor")
    session.set("train.extra_args", ["--fp8_base"])
    overrides = preset_overrides(session, preset_named("16gb"))
    assert overrides == {"blocks_to_swap": 8, "highvram": None}


def test_the_estimate_is_the_sessions_familys_transformer(project: Path) -> None:
    """Issue 27: Chroma's 8.9 B parameters (smaller blocks), not FLUX.1-dev's 11.9 B, for a Chroma session; each of
    Chroma's own tiers then fits its batch at 1024×1024 on its card by the estimate too."""
    from lorawizard.core.profile import CHROMA, FLUX1_DEV

    dev, chroma = Session.new(project / "session.toml"), Session.new(project / "chroma.toml")
    chroma.set("models.family", "chroma")
    p = preset_named("24gb")  # fp8 base, no block swap
    assert estimate_bytes(p, 1024, 1024, 1, dev) == estimate_bytes(p, 1024, 1024, 1)  # the default family
    weights_gap = (FLUX1_DEV.transformer.params - CHROMA.transformer.params) * 1  # fp8: a byte per parameter
    assert estimate_bytes(p, 1024, 1024, 1, dev) - estimate_bytes(p, 1024, 1024, 1, chroma) == int(weights_gap)
    swap = preset_named("12gb")  # FLUX.1's 16 blocks swapped: Chroma's smaller blocks move less off the GPU
    assert estimate_bytes(swap, 1024, 1024, 1, chroma) < estimate_bytes(swap, 1024, 1024, 1, dev)
    assert estimate_text(p, 1024, 1024, 1, chroma) != estimate_text(p, 1024, 1024, 1, dev)
    for preset in load_presets(chroma)[:5]:
        assert estimate_batch(preset, 1024, 1024, int(preset.min_gb * GIB), session=chroma) >= preset.batch_size
