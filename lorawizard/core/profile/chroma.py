"""Chroma (lodestones), trained with sd-scripts' flux_train_network.py `--model_type chroma` (sd-scripts v0.10.0 and
later; docs/flux_train_network.md §4 "Training Chroma Models", §6.1, §6.2, §7.1): 8.9 B parameters, FLUX.1-schnell's
blocks without their modulation layers (one `distilled_guidance_layer` instead), no CLIP-L, FLUX.1's AE and T5-XXL,
Apache-2.0.

What sd-scripts asks of it: `--model_type chroma`; `--apply_t5_attn_mask` (asserted); `--guidance_scale 0.0` (Chroma
is not guidance-distilled); `--timestep_sampling sigmoid` with `--model_prediction_type raw` (recommended); no
`--clip_l` (a dummy CLIP-L is built); no `--cpu_offload_checkpointing`. Its samples need a real CFG and a negative
prompt: since sd-scripts PR #2157 (2025-07-30, in v0.10.0) `scale` (`--l`) is the CFG scale and `guidance_scale`
(`--g`) the embedded guidance, 0 for Chroma. The trainer still loads CLIP-L's tokenizer (strategy_flux), so the
tokenizers are FLUX.1's two.

Only 16-bit transformer files are offered: the fp8 files published for Chroma (`*-fp8-scaled`, `*-fp8mixed`) carry
scales or ComfyUI's quantisation metadata that sd-scripts' loader ignores; `--fp8_base` casts the 16-bit file at load.
"""

from __future__ import annotations

from types import MappingProxyType

from lorawizard.core.profile.family import (
    Licence,
    ModelFile,
    ModelRole,
    Preset,
    SampleDefaults,
    TextEncoder,
    TransformerSignature,
    TransformerSize,
    VramPreset,
)
from lorawizard.core.profile.flux1_dev import (
    CHROMA_KEYS,
    CLIP_TOKENIZER,
    FILE_KINDS,
    FLUX1_DEV,
    LORA_TOOLS,
    MAX_BLOCKS_TO_SWAP,
    T5_TOKENIZER,
)

_HD = "lodestones/Chroma1-HD"
_BASE = "lodestones/Chroma1-Base"
_AE = "black-forest-labs/FLUX.1-schnell"  # FLUX.1's AE, from its Apache-2.0, ungated repository
_TEXT_ENCODERS = "comfyanonymous/flux_text_encoders"

ROLES = (
    ModelRole("flux", "Chroma", ("unet", "diffusion_models", "checkpoints")),
    ModelRole("ae", "autoencoder (AE)", ("vae",)),
    ModelRole("t5xxl", "T5-XXL", ("clip", "text_encoders")),
)

PRESETS = (
    Preset(
        "chroma1-hd-bf16",
        "Chroma1-HD bf16 (1024 px, for LoRAs)",
        (
            ModelFile("flux", _HD, "Chroma1-HD.safetensors"),
            ModelFile("ae", _AE, "ae.safetensors"),
            ModelFile("t5xxl", _TEXT_ENCODERS, "t5xxl_fp16.safetensors"),
        ),
        28.0,
        "16bit",
        _HD,
    ),
    Preset(
        "chroma1-base-bf16",
        "Chroma1-Base bf16 (512 px base)",
        (
            ModelFile("flux", _BASE, "Chroma1-Base.safetensors"),
            ModelFile("ae", _AE, "ae.safetensors"),
            ModelFile("t5xxl", _TEXT_ENCODERS, "t5xxl_fp16.safetensors"),
        ),
        28.0,
        "16bit",
        _BASE,
    ),
)

SD_SCRIPTS = FLUX1_DEV.backend._replace(
    role_options=(("flux", "pretrained_model_name_or_path"), ("t5xxl", "t5xxl"), ("ae", "ae")),  # no --clip_l
    fixed_options=MappingProxyType({
        "model_type": "chroma",
        "apply_t5_attn_mask": True,
        "timestep_sampling": "sigmoid",
        "model_prediction_type": "raw",
        "guidance_scale": 0.0,
    }),
)

# No table in the docs for Chroma: FLUX.1's (§6.1) shifted to Chroma's smaller blocks. Each tier swaps the fewest
# blocks that leave no more of the transformer on the GPU than FLUX.1's tier does (fp8: 8.9 GB of weights, 227 M per
# double block and 113 M per single block, against FLUX.1's 11.9 GB, 340 M, 142 M): 16 GB needs no swapping,
# 12 GB 10 blocks, 10 GB 18, 8 GB 26. Not measured by the docs: from_docs=False, the probe measures.
VRAM_PRESETS = (
    VramPreset("24gb", 24, 2, {"fp8_base": True, "optimizer_type": "adamw8bit"},
               "24 GB: as FLUX.1's basic settings (batch size 2)", from_docs=False),
    VramPreset("16gb", 16, 1, {"fp8_base": True, "optimizer_type": "adamw8bit"},
               "16 GB: batch size 1; Chroma's fp8 weights fit without swapping", from_docs=False),
    VramPreset("12gb", 12, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 10},
               "12 GB: --blocks_to_swap 10 and 8bit AdamW (FLUX.1's 16 scaled to Chroma)", from_docs=False),
    VramPreset("10gb", 10, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 18},
               "10 GB: --blocks_to_swap 18, fp8 T5XXL recommended", fp8_t5=True, from_docs=False),
    VramPreset("8gb", 8, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 26},
               "8 GB: --blocks_to_swap 26, fp8 T5XXL recommended", fp8_t5=True, from_docs=False),
    VramPreset("max-swap", 0, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": MAX_BLOCKS_TO_SWAP},
               "the most block swapping Chroma allows (35, as FLUX.1: 19 double + 38 single blocks)",
               fp8_t5=True, from_docs=False),
)

# FLUX.1's LoRA tools (the same module names and layouts); its inference script draws Chroma with --model_type chroma
# and T5's attention mask, without CLIP-L (no clip_l role, so none is passed).
CHROMA_LORA_TOOLS = LORA_TOOLS._replace(
    inference_options=MappingProxyType({"dtype": "bfloat16", "model_type": "chroma", "apply_t5_attn_mask": True}),
)

CHROMA = FLUX1_DEV._replace(
    name="chroma",
    title="Chroma",
    card_title="Chroma",
    hub_repo=_HD,
    roles=ROLES,
    presets=PRESETS,
    text_encoders=(TextEncoder("t5xxl", "T5", 512, T5_TOKENIZER),),
    trainer_tokenizers=(CLIP_TOKENIZER, T5_TOKENIZER),
    backend=SD_SCRIPTS,
    # sd-scripts' docs (§4): a negative prompt, `--g 0` (no embedded guidance) and `--l 4.0` (CFG), 20 steps.
    samples=SampleDefaults(
        steps=20, guidance=0.0, cfg_scale=4.0,
        negative_prompt=("low quality, ugly, unfinished, out of focus, deformed, disfigure, blurry, smudged, "
                         "restricted palette, flat colors"),
    ),
    vram_presets=VRAM_PRESETS,
    # 8.9 B parameters (the model card); per block: FLUX.1's less its modulation Linear layers (3072 → 6×3072 per
    # stream of a double block, 3072 → 3×3072 of a single block).
    transformer=TransformerSize(params=8.9e9, double_block=227e6, single_block=113e6,
                                max_blocks_to_swap=MAX_BLOCKS_TO_SWAP),
    licence=Licence(name="apache-2.0", title="Apache License 2.0", link=f"https://huggingface.co/{_HD}"),
    licence_id="apache-2.0",
    card_tags=("chroma",),
    file_kinds=FILE_KINDS,
    unsupported_options=MappingProxyType({
        "cpu_offload_checkpointing": "Chroma does not support it (sd-scripts' docs §6.1); use gpu.vram_preset's "
                                     "block swapping instead",
    }),
    min_trainer_version="v0.10.0",
    trainer_marker="library/chroma_models.py",  # added with --model_type chroma and PR #2157's sample CFG
    signature=TransformerSignature(has_any=CHROMA_KEYS),
    lora_tools=CHROMA_LORA_TOOLS,
    note=("No CLIP-L; samples use a real CFG (4.0) with a negative prompt. sd-scripts v0.10.0 or later "
          "(--model_type chroma)."),
)
