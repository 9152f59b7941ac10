"""Model-family profiles: one place per base model for its facts (files and roles, trainer backend and its fixed
options, text encoders' token budgets, sample defaults, VRAM presets, licence). Steps ask `family_for(session)`.

FLUX.1-dev is the first and only family. Another (or another trainer for one, such as kohya's musubi-tuner) is
one more entry in `FAMILIES`: the steps read the profile, they do not branch on it.
"""

from __future__ import annotations

from typing import Any, Protocol

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
    TransformerSize,
    VramPreset,
)
from lorawizard.core.profile.flux1_dev import FLUX1_DEV

__all__ = [
    "DEFAULT_FAMILY", "FAMILIES", "FLUX1_DEV", "FileKind", "Licence", "ModelFamily", "ModelFile", "ModelRole", "Preset",
    "SampleDefaults", "TextEncoder", "Tokenizer", "TrainerBackend", "TransformerSize", "VramPreset", "all_preset_names",
    "all_role_names", "family_for",
]

FAMILIES: dict[str, ModelFamily] = {FLUX1_DEV.name: FLUX1_DEV}
DEFAULT_FAMILY = FLUX1_DEV


class Settings(Protocol):
    """What family_for reads of a session (core.session sits above this layer, so it is not imported)."""

    def get(self, key: str) -> Any: ...


def family_for(source: Settings | str | None = None) -> ModelFamily:
    """The family a session trains (the one owning its `models.preset`), or the one a family or preset name names;
    the default family otherwise."""
    name = source if source is None or isinstance(source, str) else source.get("models.preset")
    if name in FAMILIES:
        return FAMILIES[name]
    return next((f for f in FAMILIES.values() if any(p.name == name for p in f.presets)), DEFAULT_FAMILY)


def all_role_names() -> tuple[str, ...]:
    """Every family's model roles, each once (the session schema's `models.<role>` keys)."""
    return tuple(dict.fromkeys(role for family in FAMILIES.values() for role in family.role_names))


def all_preset_names() -> tuple[str, ...]:
    """Every family's presets, the default family's default first (the session schema's `models.preset` choices)."""
    names = [DEFAULT_FAMILY.default_preset.name] + [p.name for f in FAMILIES.values() for p in f.presets]
    return tuple(dict.fromkeys(names))
