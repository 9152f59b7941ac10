"""FLUX.1-dev, trained with kohya-ss/sd-scripts' flux_train_network.py: every fact lorawizard knows about it.

Model file sizes and sha256 are deliberately *not* written here: they come from the hub's metadata at first
contact and are then recorded under `.lorawizard/models.json`, so later checks work offline (core.models).
"""

from __future__ import annotations

from types import MappingProxyType

from lorawizard.core.profile.family import (
    FileKind,
    Licence,
    LoraLayout,
    LoraTools,
    ModelFamily,
    ModelFile,
    ModelRole,
    Preset,
    SampleDefaults,
    TextEncoder,
    Tokenizer,
    TrainerBackend,
    TransformerSignature,
    TransformerSize,
    VramPreset,
)

_BFL = "black-forest-labs/FLUX.1-dev"
_CAMENDURU = "camenduru/FLUX.1-dev"
_TEXT_ENCODERS = "comfyanonymous/flux_text_encoders"

ROLES = (
    ModelRole("flux", "FLUX.1-dev", ("unet", "diffusion_models", "checkpoints")),
    ModelRole("ae", "autoencoder (AE)", ("vae",)),
    ModelRole("clip_l", "CLIP-L", ("clip", "text_encoders")),
    ModelRole("t5xxl", "T5-XXL", ("clip", "text_encoders")),
)

PRESETS = (
    Preset(
        "flux1-dev-fp8",
        "FLUX.1-dev fp8 (default, ungated)",
        (
            ModelFile("flux", "Kijai/flux-fp8", "flux1-dev-fp8.safetensors"),
            ModelFile("ae", _CAMENDURU, "ae.safetensors"),
            ModelFile("clip_l", _CAMENDURU, "clip_l.safetensors"),
            ModelFile("t5xxl", _CAMENDURU, "t5xxl_fp8_e4m3fn.safetensors"),
        ),
        17.0,
    ),
    Preset(
        "flux1-dev-bf16",
        "FLUX.1-dev bf16 (official, gated)",
        (
            ModelFile("flux", _BFL, "flux1-dev.safetensors", gated=True),
            ModelFile("ae", _BFL, "ae.safetensors", gated=True),
            ModelFile("clip_l", _TEXT_ENCODERS, "clip_l.safetensors"),
            ModelFile("t5xxl", _TEXT_ENCODERS, "t5xxl_fp16.safetensors"),
        ),
        33.0,
        "16bit",
    ),
)

CLIP_TOKENIZER = Tokenizer(
    "openai/clip-vit-large-patch14",
    ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"),
    ("tokenizer.json",),
)
T5_TOKENIZER = Tokenizer(
    "google/t5-v1_1-xxl",
    ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"),
    ("tokenizer.json",),
)
TEXT_ENCODERS = (
    # CLIP-L's position embeddings: the text encoder silently drops the rest (75 tokens of text + 2 special).
    TextEncoder("clip_l", "CLIP", 77, CLIP_TOKENIZER),
    # sd-scripts' t5xxl_max_token_length for FLUX.1-dev (flux_train_network.py: 512 unless the file is schnell).
    TextEncoder("t5xxl", "T5", 512, T5_TOKENIZER),
)

SD_SCRIPTS = TrainerBackend(
    name="kohya-ss/sd-scripts",
    script="flux_train_network.py",
    network_module="networks.lora_flux",
    role_options=(("flux", "pretrained_model_name_or_path"), ("clip_l", "clip_l"), ("t5xxl", "t5xxl"), ("ae", "ae")),
    # The community's FLUX.1-dev LoRA recipe (sd-scripts' docs): shifted timesteps with FLUX's resolution shift
    # 3.1582, the raw prediction, and guidance 1.0 while training (the distilled guidance is for sampling).
    fixed_options=MappingProxyType({
        "timestep_sampling": "shift",
        "discrete_flow_shift": 3.1582,
        "model_prediction_type": "raw",
        "guidance_scale": 1.0,
    }),
    card_tag="kohya-sd-scripts",
    text_encoder_cache_suffix="_flux_te.npz",
    latent_cache_suffix="_flux.npz",
)

# Low-VRAM presets from sd-scripts' docs (docs/flux_train_network.md §6.1, all with `--fp8_base`), ordered from the
# most memory to the least. Each lower one swaps more blocks (slower, less VRAM, more host RAM).
# 16 GB: the docs say "batch size 1 and use --blocks_to_swap" without a number; 8 is our choice (the lightest).
# "max-swap" is not in the docs: 35 blocks is the most FLUX.1 allows; only reached by the probe's step-down.
MAX_BLOCKS_TO_SWAP = 35  # sd-scripts asserts ≤ 17 double + 36 single blocks swapped
VRAM_PRESETS = (
    VramPreset("24gb", 24, 2, {"fp8_base": True, "optimizer_type": "adamw8bit"},
               "24 GB: basic settings work fine (batch size 2)"),
    VramPreset("16gb", 16, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 8},
               "16 GB: batch size 1 and use --blocks_to_swap"),
    VramPreset("12gb", 12, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 16},
               "12 GB: --blocks_to_swap 16 and 8bit AdamW"),
    VramPreset("10gb", 10, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 22},
               "10 GB: --blocks_to_swap 22, fp8 T5XXL recommended", fp8_t5=True),
    VramPreset("8gb", 8, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": 28},
               "8 GB: --blocks_to_swap 28, fp8 T5XXL recommended", fp8_t5=True),
    VramPreset("max-swap", 0, 1, {"fp8_base": True, "optimizer_type": "adamw8bit", "blocks_to_swap": MAX_BLOCKS_TO_SWAP},
               "not in the docs: the most block swapping FLUX.1 allows (35); slow, needs much host RAM",
               fp8_t5=True, from_docs=False),
)

# How a FLUX.1-dev-shaped transformer is told from schnell's and Chroma's (sd-scripts' flux_utils.analyze_checkpoint_state:
# schnell is the file without the guidance embedder; chroma_models.Chroma replaces the modulation, guidance and pooled
# CLIP-L vector inputs with one `distilled_guidance_layer`). BFL's names and Diffusers' (converted by the trainer).
GUIDANCE_KEYS = ("guidance_in.in_layer.bias", "guidance_in.in_layer.weight",
                 "time_text_embed.guidance_embedder.linear_1.bias", "time_text_embed.guidance_embedder.linear_1.weight")
VECTOR_KEYS = ("vector_in.in_layer.bias", "vector_in.in_layer.weight",
               "time_text_embed.text_embedder.linear_1.bias", "time_text_embed.text_embedder.linear_1.weight")
CHROMA_KEYS = ("distilled_guidance_layer.in_proj.bias", "distilled_guidance_layer.in_proj.weight")
DEV_SIGNATURE = TransformerSignature(has_any=GUIDANCE_KEYS, lacks=CHROMA_KEYS)

# What each file is, from its safetensors header (sd-scripts.md §10: library/flux_utils.py). LoRA first: a FLUX LoRA
# names the transformer's layers too. sd-scripts strips `model.diffusion_model.` from the transformer's keys and
# converts Diffusers' names; the text encoders and the AE are loaded by their exact names, at fixed widths.
FILE_KINDS = (
    FileKind("lora", "a LoRA (network weights, not a base model file)", "LoRA",
             key_parts=("lora_down.", "lora_up.", "lora_A.", "lora_B.", "lora_unet_", "lora_te")),
    FileKind("flux", "a FLUX.1 transformer", "FLUX transformer",
             keys=("double_blocks.0.img_attn.qkv.weight", "transformer_blocks.0.attn.add_k_proj.bias"),
             prefixes=("", "model.diffusion_model."),
             shapes=(("double_blocks.0.img_attn.qkv.weight", 1, 3072, "hidden size"),
                     ("transformer_blocks.0.attn.add_k_proj.bias", 0, 3072, "hidden size"))),
    FileKind("ae", "a FLUX autoencoder", "AE", keys=("decoder.conv_in.weight", "encoder.conv_in.weight"),
             shapes=(("decoder.conv_in.weight", 1, 16, "latent channels"),
                     ("encoder.conv_out.weight", 0, 32, "latent channels × 2"))),
    FileKind("clip_l", "a CLIP-L text encoder", "CLIP-L",
             keys=("text_model.encoder.layers.0.self_attn.q_proj.weight",),
             shapes=(("text_model.encoder.layers.0.self_attn.q_proj.weight", 0, 768, "hidden size"),)),
    FileKind("t5xxl", "a T5-XXL text encoder", "T5-XXL",
             keys=("encoder.block.0.layer.0.SelfAttention.q.weight",),
             shapes=(("encoder.block.0.layer.0.SelfAttention.q.weight", 1, 4096, "d_model"),)),
)

# sd-scripts' tools for a finished FLUX.1 LoRA (networks/resize_lora.py, networks/convert_flux_lora.py,
# networks/flux_merge_lora.py, flux_minimal_inference.py). convert_flux_lora.py's two layouts: sd-scripts' own
# (BFL module names, QKV fused, an alpha per module; ComfyUI and Forge read it) and ai-toolkit's (Diffusers' module
# names, Q/K/V split, lora_A/lora_B, no alpha; diffusers' load_lora_weights reads it). flux_minimal_inference.py loads
# only sd-scripts' layout (keys starting `lora`).
LORA_TOOLS = LoraTools(
    layouts=(
        LoraLayout("sd-scripts", "sd-scripts / ComfyUI (lora_unet_…)", ".lora_down.weight", ".lora_up.weight",
                   ("lora_unet_double_blocks_", "lora_unet_single_blocks_"), True, "sdscripts",
                   ("lora_te1_", "lora_te3_")),
        LoraLayout("ai-toolkit", "ai-toolkit / diffusers (transformer.…lora_A)", ".lora_A.weight", ".lora_B.weight",
                   ("transformer.transformer_blocks.", "transformer.single_transformer_blocks."), False, "aitoolkit"),
    ),
    architectures=("flux-1-dev/lora", "flux-1-schnell/lora"),
    resize_script="networks/resize_lora.py",
    convert_script="networks/convert_flux_lora.py",
    merge_script="networks/flux_merge_lora.py",
    merge_option="flux_model",
    merge_role="flux",
    inference_script="flux_minimal_inference.py",
    inference_roles=(("flux", "ckpt_path"), ("clip_l", "clip_l"), ("t5xxl", "t5xxl"), ("ae", "ae")),
    inference_options=MappingProxyType({"dtype": "bfloat16"}),
)

FLUX1_DEV = ModelFamily(
    name="flux1-dev",
    title="FLUX.1-dev",
    card_title="FLUX.1 [dev]",
    hub_repo=_BFL,
    roles=ROLES,
    model_suffixes=(".safetensors", ".sft"),  # the files sd-scripts' FLUX.1 loaders read
    presets=PRESETS,
    text_encoders=TEXT_ENCODERS,
    backend=SD_SCRIPTS,
    samples=SampleDefaults(steps=20, guidance=3.5),
    resolution=1024,
    vram_presets=VRAM_PRESETS,
    # 11.9 B parameters; 340 M per double block, 142 M per single block (sd-scripts.md §10).
    transformer=TransformerSize(params=11.9e9, double_block=340e6, single_block=142e6,
                                max_blocks_to_swap=MAX_BLOCKS_TO_SWAP),
    licence=Licence(
        name="flux-1-dev-non-commercial-license",
        title="FLUX.1 [dev] Non-Commercial License",
        link=f"https://huggingface.co/{_BFL}/blob/main/LICENSE.md",
    ),
    card_tags=("flux",),
    file_kinds=FILE_KINDS,
    lora_tools=LORA_TOOLS,
    signature=DEV_SIGNATURE,
)
