"""FLUX.1 [schnell], trained with sd-scripts' flux_train_network.py: FLUX.1-dev's architecture without the guidance
embedder, distilled to sample in 1-4 steps, Apache-2.0.

sd-scripts tells schnell from the file itself (library/flux_utils.analyze_checkpoint_state: no `guidance_in`), then
ignores `--guidance_scale` and caps T5-XXL at 256 tokens (flux_train_network.py's t5xxl_max_token_length).
Training a LoRA on the distilled schnell directly is supported by sd-scripts but not recommended by the community:
the LoRA pulls the model off its few-step distillation, so samples at 4 steps blur or break as training goes on
(ostris' ai-toolkit trains schnell only through its "training adapter", which sd-scripts does not have). The wizard
says so when the family is chosen, samples at 4 steps so the drift is visible from the first epoch, and leaves the
choice to the person.
"""

from __future__ import annotations

from lorawizard.core.profile.family import (
    Licence,
    ModelFile,
    ModelRole,
    Preset,
    SampleDefaults,
    TextEncoder,
    TransformerSignature,
)
from lorawizard.core.profile.flux1_dev import (
    CHROMA_KEYS,
    CLIP_TOKENIZER,
    FILE_KINDS,
    FLUX1_DEV,
    GUIDANCE_KEYS,
    T5_TOKENIZER,
    VECTOR_KEYS,
)

_BFL = "black-forest-labs/FLUX.1-schnell"
_TEXT_ENCODERS = "comfyanonymous/flux_text_encoders"

ROLES = (ModelRole("flux", "FLUX.1 schnell", ("unet", "diffusion_models", "checkpoints")), *FLUX1_DEV.roles[1:])

PRESETS = (
    Preset(
        "flux1-schnell-fp8",
        "FLUX.1 schnell fp8 (Kijai's e4m3fn file)",
        (
            ModelFile("flux", "Kijai/flux-fp8", "flux1-schnell-fp8.safetensors"),
            ModelFile("ae", _BFL, "ae.safetensors"),
            ModelFile("clip_l", _TEXT_ENCODERS, "clip_l.safetensors"),
            ModelFile("t5xxl", _TEXT_ENCODERS, "t5xxl_fp8_e4m3fn.safetensors"),
        ),
        17.0,
        "fp8",
    ),
    Preset(
        "flux1-schnell-bf16",
        "FLUX.1 schnell bf16 (official)",
        (
            ModelFile("flux", _BFL, "flux1-schnell.safetensors"),
            ModelFile("ae", _BFL, "ae.safetensors"),
            ModelFile("clip_l", _TEXT_ENCODERS, "clip_l.safetensors"),
            ModelFile("t5xxl", _TEXT_ENCODERS, "t5xxl_fp16.safetensors"),
        ),
        34.0,
        "16bit",
    ),
)

FLUX1_SCHNELL = FLUX1_DEV._replace(
    name="flux1-schnell",
    title="FLUX.1 schnell",
    card_title="FLUX.1 [schnell]",
    hub_repo=_BFL,
    roles=ROLES,
    presets=PRESETS,
    # sd-scripts: t5xxl_max_token_length 256 for schnell (512 for dev) when the option is not given.
    text_encoders=(TextEncoder("clip_l", "CLIP", 77, CLIP_TOKENIZER), TextEncoder("t5xxl", "T5", 256, T5_TOKENIZER)),
    # The guidance is ignored (no guidance embedder); 4 steps is what schnell is distilled for (Diffusers' docs:
    # guidance_scale 0, few steps, at most 256 T5 tokens).
    samples=SampleDefaults(steps=4, guidance=0.0),
    # The same transformer as FLUX.1-dev (sd-scripts' flux_models.configs["schnell"] differs only in guidance_embed),
    # so the docs' FLUX.1 table (dev or schnell, §6.1) holds as is: FLUX1_DEV's tiers and sizes.
    licence=Licence(name="apache-2.0", title="Apache License 2.0", link=f"https://huggingface.co/{_BFL}/blob/main/README.md"),
    licence_id="apache-2.0",
    file_kinds=FILE_KINDS,
    signature=TransformerSignature(has_any=VECTOR_KEYS, lacks=GUIDANCE_KEYS + CHROMA_KEYS),
    note=("schnell is distilled for 1-4 steps: a LoRA trained on it directly drifts off that distillation (samples "
          "blur as training goes on); the community trains on FLUX.1-dev or a de-distilled schnell instead. "
          "Samples use 4 steps so you see it early."),
)
