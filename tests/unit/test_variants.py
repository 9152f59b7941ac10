"""[[train.variants]] in session.toml: parsed, checked (one line naming the entry), written back, applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawizard.core.session.document import Session, SessionError
from lorawizard.core.session.variants import Variant

HEAD = 'version = 1\nname = "demo"\n[train]\nnetwork_dim = 4\n'


def _load(tmp_path: Path, variants: str) -> Session:
    path = tmp_path / "session.toml"
    path.write_text(HEAD + variants)
    return Session.load(path)


def test_variants_are_read_in_order_with_their_keys(tmp_path: Path) -> None:
    session = _load(tmp_path, '[[train.variants]]\nname = "dim16"\nnetwork_dim = 16\n'
                              '[[train.variants]]\nname = "b16"\nbase_precision = "16bit"\nnum_repeats = 3\n')
    assert session.variants() == [
        Variant("dim16", {"train.network_dim": 16}),
        Variant("b16", {"train.base_precision": "16bit", "dataset.num_repeats": 3}),
    ]
    assert session.warnings == []
    assert session.variants()[1].describe() == "base_precision 16bit, num_repeats 3"


def test_a_variant_session_has_the_changes_and_leaves_the_base_alone(tmp_path: Path) -> None:
    session = _load(tmp_path, '[[train.variants]]\nname = "dim16"\nnetwork_dim = 16\nnum_repeats = 2\n')
    derived = session.with_changes(session.variants()[0].changes)
    assert (derived.train.network_dim, derived.dataset.num_repeats) == (16, 2)
    assert (session.train.network_dim, session.dataset.num_repeats) == (4, 10)
    assert derived.read_only
    with pytest.raises(SessionError, match="network_dim"):
        session.with_changes({"train.network_dim": 0})


@pytest.mark.parametrize(("entry", "reason"), [
    ('name = "x y"', "use letters, digits"),
    ('network_dim = 8', "needs a `name`"),
    ('name = "base"', "reserved"),
    ('name = "20261207-101010"', "reserved"),
    ('name = "a"\nnetwork_dimm = 8', "`network_dimm` is not a [train] key; did you mean `network_dim`?"),
    ('name = "a"\nprompts = ["x"]', "not a [train] key"),
    ('name = "a"\nnetwork_dim = 0', "network_dim: expected"),
    ('name = "a"\nbase_precision = "fp4"', "base_precision: expected"),
    ('name = "a"\n[[train.variants]]\nname = "A"', "used twice"),
    ('name = "' + "v" * 41 + '"', "at most 40"),
])
def test_a_bad_variant_is_one_line_with_its_place(tmp_path: Path, entry: str, reason: str) -> None:
    with pytest.raises(SessionError) as caught:
        _load(tmp_path, f"[[train.variants]]\n{entry}\n")
    message = str(caught.value)
    assert reason in message
    assert "\n" not in message
    assert "session.toml:" in message  # the line of the entry, for the person's editor


def test_a_variant_identical_to_the_base_is_a_warning(tmp_path: Path) -> None:
    session = _load(tmp_path, '[[train.variants]]\nname = "again"\nnetwork_dim = 4\n')
    assert any("'again' sets nothing the base run does not already have" in w for w in session.warnings)


def test_set_variants_writes_tables_that_read_back(tmp_path: Path) -> None:
    session = _load(tmp_path, '[train.samples]\nsteps = 10\n')
    session.set_variants([Variant("dim16", {"train.network_dim": 16}),
                          Variant("fast", {"train.learning_rate": 0.0004, "dataset.num_repeats": 2})])
    path = tmp_path / "again.toml"
    path.write_text(session.to_text())
    again = Session.load(path)
    assert again.variants() == session.variants()
    assert again.train.samples.steps == 10  # the table after them is intact
    with pytest.raises(SessionError, match="used twice"):
        session.set_variants([Variant("a", {}), Variant("a", {})])
    assert [v.name for v in session.variants()] == ["dim16", "fast"]  # a refused change changes nothing
    session.set_variants([])
    assert session.variants() == []
