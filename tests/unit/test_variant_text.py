""""same, but: network_dim 16" → a Variant (core/session/variants.variant_from_text), checked by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.session.document import FIELDS, Session, SessionError
from lorawizard.core.session.variants import Variant, default_name, variant_from_text

KINDS = {key: spec.kind for key, spec in FIELDS.items()}


def parse(text: str, taken: tuple[str, ...] = ()) -> Variant:
    return variant_from_text(text, kinds=KINDS, taken=taken, base_name="mychar")


@pytest.mark.parametrize(("text", "expected"), [
    ("network_dim 16", Variant("dim16", {"train.network_dim": 16})),
    ("same, but: network_dim 16", Variant("dim16", {"train.network_dim": 16})),
    ("Same but network_dim=16, learning_rate 2e-4",
     Variant("dim16-lr0p0002", {"train.network_dim": 16, "train.learning_rate": 0.0002})),
    ("hi: network_dim 32, num_repeats 5", Variant("hi", {"train.network_dim": 32, "dataset.num_repeats": 5})),
    ("network_dim: 8", Variant("dim8", {"train.network_dim": 8})),
    ("learning_rate: 1e-3, network_dim 2", Variant("lr0p001-dim2", {"train.learning_rate": 0.001,
                                                                      "train.network_dim": 2})),
    ("a 16-bit base", Variant("16bit", {"train.base_precision": "16bit"})),
    ("base_precision 16bit", Variant("16bit", {"train.base_precision": "16bit"})),
    ("optimizer_type prodigyopt.Prodigy", Variant("prodigyoptpProdigy", {"train.optimizer_type": "prodigyopt.Prodigy"})),
    ("extra_args --foo 1", Variant("extra_args--foo1", {"train.extra_args": ["--foo", "1"]})),
])
def test_typed_text_becomes_a_variant(text: str, expected: Variant) -> None:
    assert parse(text) == expected


def test_a_default_name_is_unique_among_the_variants() -> None:
    assert parse("network_dim 16", taken=("dim16", "DIM16-2")).name == "dim16-3"
    assert default_name({"train.seed": 7}) == "seed7"


def test_no_key_value_shape_is_one_line() -> None:
    for text in ("", "same, but:", "  ,  ", "dim16:"):
        with pytest.raises(ValueError, match="what differs"):
            parse(text)
    with pytest.raises(ValueError, match="`network_dim` needs a value"):
        parse("network_dim")


def test_a_bad_key_or_value_is_said_by_the_session(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml", name="mychar")
    bad_key = parse("netwrk_dim 16")
    assert bad_key.changes == {"netwrk_dim": "16"}
    with pytest.raises(SessionError, match="`netwrk_dim` is not a \\[train\\] key; did you mean `network_dim`"):
        session.set_variants([bad_key])
    bad_value = parse("network_dim sixteen")
    assert bad_value.changes == {"train.network_dim": "sixteen"}
    with pytest.raises(SessionError, match="network_dim: expected an integer"):
        session.set_variants([bad_value])
    with pytest.raises(SessionError, match="reserved"):
        session.set_variants([parse("base: network_dim 8")])
    session.set_variants([parse("network_dim 16"), parse("a 16-bit base")])
    assert [v.name for v in session.variants()] == ["dim16", "16bit"]
