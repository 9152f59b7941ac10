"""FLUX.1 Krea [dev]: FLUX.1-dev's architecture with other weights (Black Forest Labs and Krea), gated, under the
FLUX.1 [dev] Non-Commercial License. sd-scripts trains it as FLUX.1-dev (the file has the guidance embedder).

Its header is FLUX.1-dev's: same keys, shapes and dtypes, so a found file cannot be told from FLUX.1-dev by header
alone (core.models.identify says "FLUX.1-dev or Krea [dev]"); a file under the catalog's name or hash is known.
Only the 16-bit file is offered: the fp8 files published for it (ComfyUI's `*_fp8_scaled`) carry per-tensor scales
that sd-scripts' loader ignores; `--fp8_base` casts the 16-bit file to fp8 at load instead.
"""

from __future__ import annotations

from lorawizard.core.profile.family import Licence, ModelFile, ModelRole, Preset, SampleDefaults
from lorawizard.core.profile.flux1_dev import FLUX1_DEV

_BFL = "black-forest-labs/FLUX.1-Krea-dev"
_TEXT_ENCODERS = "comfyanonymous/flux_text_encoders"

PRESETS = (
    Preset(
        "flux1-krea-dev-bf16",
        "FLUX.1 Krea [dev] bf16 (official, gated)",
        (
            ModelFile("flux", _BFL, "flux1-krea-dev.safetensors", gated=True),
            ModelFile("ae", _BFL, "ae.safetensors", gated=True),
            ModelFile("clip_l", _TEXT_ENCODERS, "clip_l.safetensors"),
            ModelFile("t5xxl", _TEXT_ENCODERS, "t5xxl_fp16.safetensors"),
        ),
        33.0,
        "16bit",
    ),
)

FLUX1_KREA_DEV = FLUX1_DEV._replace(
    name="flux1-krea-dev",
    title="FLUX.1 Krea [dev]",
    card_title="FLUX.1 Krea [dev]",
    hub_repo=_BFL,
    roles=(ModelRole("flux", "FLUX.1 Krea [dev]", ("unet", "diffusion_models", "checkpoints")), *FLUX1_DEV.roles[1:]),
    presets=PRESETS,
    # The model card's example: guidance 4.5 (FLUX.1-dev's 3.5 looks flat on Krea); 28 steps, Diffusers' default.
    samples=SampleDefaults(steps=28, guidance=4.5),
    licence=Licence(
        name="flux-1-dev-non-commercial-license",
        title="FLUX.1 [dev] Non-Commercial License",
        link=f"https://huggingface.co/{_BFL}/blob/main/LICENSE.md",
    ),
    note=("The same architecture as FLUX.1-dev with other weights: a file found on disk is told from FLUX.1-dev only "
          "by its name or hash, not its header."),
)
