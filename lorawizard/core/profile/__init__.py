"""Model-family profiles: one place per base model for its facts (files and roles, trainer backend and its fixed
options, text encoders' token budgets, sample defaults, VRAM presets, licence). Steps ask `family_for(session)`.

FLUX.1-dev (the default), FLUX.1 Krea [dev], FLUX.1 schnell and Chroma, each one entry in `FAMILIES`; another (or
another trainer for one, such as kohya's musubi-tuner) is one more: the steps read the profile, they do not branch on it.
A session names its family in `[models] family`; without it, the family owning its `models.preset`, else FLUX.1-dev.
"""

from __future__ import annotations

from typing import Any, Protocol

from lorawizard.core.profile.chroma import CHROMA
from lorawizard.core.profile.family import (
    FileKind,
    Licence,
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
from lorawizard.core.profile.flux1_dev import FLUX1_DEV
from lorawizard.core.profile.flux1_krea_dev import FLUX1_KREA_DEV
from lorawizard.core.profile.flux1_schnell import FLUX1_SCHNELL

__all__ = [
    "CHROMA", "DEFAULT_FAMILY", "FAMILIES", "FLUX1_DEV", "FLUX1_KREA_DEV", "FLUX1_SCHNELL", "FileKind", "Licence",
    "ModelFamily", "ModelFile", "ModelRole", "Preset", "SampleDefaults", "TextEncoder", "Tokenizer", "TrainerBackend", "TransformerSignature", "TransformerSize",
    "VramPreset", "all_preset_names", "all_role_names", "family_for", "family_setting_keys",
]

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (FLUX1_DEV, FLUX1_KREA_DEV, FLUX1_SCHNELL, CHROMA)}
DEFAULT_FAMILY = FLUX1_DEV


class Settings(Protocol):
    """What family_for reads of a session (core.session sits above this layer, so it is not imported)."""

    def get(self, key: str) -> Any: ...


def family_for(source: Settings | str | None = None) -> ModelFamily:
    """The family a session trains (its `models.family`; unset, the one owning its `models.preset`), or the one a
    family or preset name names; the default family otherwise."""
    if source is None or isinstance(source, str):
        name = source
    else:
        family = source.get("models.family")
        if family in FAMILIES:
            return FAMILIES[family]
        name = source.get("models.preset")
    if name in FAMILIES:
        return FAMILIES[name]
    return next((f for f in FAMILIES.values() if any(p.name == name for p in f.presets)), DEFAULT_FAMILY)


def family_setting_keys() -> frozenset[str]:
    """Session keys whose default is the session's family's (ModelFamily.setting_defaults)."""
    return frozenset(DEFAULT_FAMILY.setting_defaults())


def all_role_names() -> tuple[str, ...]:
    """Every family's model roles, each once (the session schema's `models.<role>` keys)."""
    return tuple(dict.fromkeys(role for family in FAMILIES.values() for role in family.role_names))


def all_preset_names() -> tuple[str, ...]:
    """Every family's presets, the default family's default first (the session schema's `models.preset` choices)."""
    names = [DEFAULT_FAMILY.default_preset.name] + [p.name for f in FAMILIES.values() for p in f.presets]
    return tuple(dict.fromkeys(names))
