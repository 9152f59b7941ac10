"""session.toml: round-trips byte for byte, keeps comments through edits, and explains every bad value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorawizard.core.session.document import NAME_RE, SCHEMA, Session, SessionError, find_line
from tests.support.sessions import save

EXAMPLE = """\
# my character LoRA
version = 1
name = "mychar"   # output name

[paths]
sd_scripts = "~/sd-scripts"
dataset = "dataset"  # relative to this file

[dataset]
source = "photos"
max_side = 1024
trigger = "ohwx"

# per-image decisions
[[dataset.images]]
file = "IMG_0001.jpg"
bucket = "1024x1024"
crop = [0, 500, 3024, 3524]
caption = "a woman in a red raincoat"

[[dataset.images]]
file = "thumb.jpg"
skip = true

[gpu.batch_size]
1024x1024 = 2

[train]
learning_rate = 1e-4   # keep this spelling
extra_args = ["--max_grad_norm", "1.0"]
"""


def write(tmp_path: Path, text: str, name: str = "session.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_example_loads_with_defaults_and_resolved_paths(tmp_path: Path) -> None:
    session = Session.load(write(tmp_path, EXAMPLE))
    assert session.get("name") == "mychar"
    assert session.get("train.network_dim") == 4  # default
    assert session.get("train.learning_rate") == pytest.approx(1e-4)
    assert session.get("train.extra_args") == ["--max_grad_norm", "1.0"]
    assert session.batch_sizes() == {"1024x1024": 2}
    assert session.images()["thumb.jpg"]["skip"] is True
    paths = session.paths
    assert paths.sd_scripts == Path(os.environ["HOME"]) / "sd-scripts"
    assert paths.python == paths.sd_scripts / ".venv" / "bin" / "python"
    assert paths.dataset == tmp_path / "dataset"
    assert paths.tokenizers == tmp_path / "models" / "tokenizers"
    assert session.warnings == []


def test_unchanged_save_is_byte_identical(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    before = path.stat().st_mtime_ns
    session = Session.load(path)
    assert save(session) is False  # nothing changed, nothing written
    assert path.read_text() == EXAMPLE and path.stat().st_mtime_ns == before


def test_edits_keep_comments_order_and_untouched_spelling(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    session = Session.load(path)
    session.set("train.network_dim", 16)
    session.set("train.learning_rate", 1e-4)  # same value: the user's spelling stays
    session.update_image("IMG_0001.jpg", caption="a woman, overcast light")
    session.update_image("new.png", bucket="512x1024")
    session.set_batch_size("1024x512", 4)
    assert save(session) is True
    text = path.read_text()
    for kept in ("# my character LoRA", "# output name", "# relative to this file", "# per-image decisions",
                 "learning_rate = 1e-4   # keep this spelling"):
        assert kept in text
    again = Session.load(path)
    assert again.get("train.network_dim") == 16
    assert again.images()["IMG_0001.jpg"]["caption"] == "a woman, overcast light"
    assert again.images()["new.png"] == {"file": "new.png", "bucket": "512x1024"}
    assert again.batch_sizes() == {"1024x1024": 2, "1024x512": 4}
    assert text.index("[paths]") < text.index("[dataset]") < text.index("[train]")


def test_new_session_is_written_only_on_first_save(tmp_path: Path) -> None:
    session = Session.open_project(tmp_path)
    assert not (tmp_path / "session.toml").exists()
    session.set("dataset.trigger", "ohwx")
    save(session)
    loaded = Session.load(tmp_path / "session.toml")
    assert loaded.get("version") == 1 and loaded.get("dataset.trigger") == "ohwx"
    assert loaded.get("name") == tmp_path.name


def test_read_only_session_refuses_to_save(tmp_path: Path) -> None:
    session = Session.load(write(tmp_path, EXAMPLE), read_only=True)
    session.set("train.seed", 7)
    with pytest.raises(SessionError, match="read-only"):
        save(session)
    assert "seed" not in (tmp_path / "session.toml").read_text()


def test_tokens_are_never_written(tmp_path: Path) -> None:
    session = Session.load(write(tmp_path, EXAMPLE))
    with pytest.raises(SessionError, match="token"):
        session.set("train.extra_args", ["--hf_token", "hf_" + "a" * 34])
    with pytest.raises(SessionError, match="token"):
        session.update_image("x.png", caption="hf_" + "b" * 34)


@pytest.mark.parametrize("text", ["hf_" + "a" * 20, "x hf_" + "a" * 20, "hf_hf_" + "a" * 20, "xhf_" + "a" * 20,
                                  "x_hf_" + "a" * 20, "hf_" + "a" * 19, "é" + "hf_" + "a" * 20, "hf_", "", "a\nhf_" + "b" * 30])
def test_the_quick_secret_scan_finds_what_the_regex_finds(text: str) -> None:
    """save() scans the whole file (4 MB with 20,000 captions) with str.find before the regex: same answers."""
    from lorawizard.core.session.document import _SECRET_RE, _has_secret

    big = "caption = 'hf_ is not a token'\n" * 1000 + text
    assert _has_secret(text) == bool(_SECRET_RE.search(text))
    assert _has_secret(big) == bool(_SECRET_RE.search(big))


def test_unknown_keys_are_kept_and_warned(tmp_path: Path) -> None:
    text = EXAMPLE.replace("[train]\n", "[train]\nwarmup = 3\n") + "\n[extras]\nfoo = 1\n"
    path = write(tmp_path, text)
    session = Session.load(path)
    assert any("train.warmup" in w and ":" in w for w in session.warnings)
    assert any("extras" in w for w in session.warnings)
    session.set("train.seed", 1)
    save(session)
    assert "warmup = 3" in path.read_text() and "foo = 1" in path.read_text()


BAD_VALUES = [
    ('[train]\nnetwork_dim = "four"\n', r":3: train\.network_dim: expected an integer, got \"four\""),
    ("[train]\nnetwork_dim = 0\n", r":3: train\.network_dim: expected a value from 1 to 4096"),
    ("[train]\nlearning_rate = -1.0\n", r":3: train\.learning_rate: expected a positive number"),
    ("[train]\nlearning_rate = true\n", r"train\.learning_rate: expected a number"),
    ('[train]\nextra_args = "--foo"\n', r"train\.extra_args: expected a list of strings"),
    ("[dataset]\nmax_side = 1000\n", r":3: dataset\.max_side: expected a power of two"),
    ("[dataset]\nnum_repeats = 1.5\n", r"dataset\.num_repeats: expected an integer"),
    ('[models]\npreset = "sdxl"\n', r"models\.preset: expected one of \"flux1-dev-fp8\""),
    ("[paths]\ndataset = 3\n", r"paths\.dataset: expected a path"),
    ('[gpu.batch_size]\n"1024x1024" = 0\n', r":3: gpu\.batch_size\.1024x1024: expected a positive integer"),
    ('[gpu.batch_size]\nbig = 2\n', r"expected a bucket name"),
    ('[[dataset.images]]\nfile = "a.jpg"\nbucket = "square"\n', r":4: dataset\.images\[0\]\.bucket: expected a bucket"),
    ('[[dataset.images]]\nfile = "a.jpg"\ncrop = [5, 0, 1, 9]\n', r":4: dataset\.images\[0\]\.crop"),
    ('[[dataset.images]]\nbucket = "1024x1024"\n', r"dataset\.images\[0\]: missing `file`"),
    ('[[dataset.images]]\nfile = "a.jpg"\n[[dataset.images]]\nfile = "b.jpg"\nskip = "yes"\n',
     r":6: dataset\.images\[1\]\.skip: expected true or false"),
]


@pytest.mark.parametrize(("body", "message"), BAD_VALUES)
def test_bad_values_name_line_key_and_expectation(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, "version = 1\n" + body)
    with pytest.raises(SessionError, match=message) as info:
        Session.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 1\n[train\nx = 1\n", r":2:\d+: TOML syntax error"),
        ('version = 1\nname = "unterminated\n', r":2:\d+: TOML syntax error"),
        ("version = 2\n", r":1: version: expected version 1"),
        ('name = "x"\n', r"missing `version = 1`"),
        (b"\xff\xfe version".decode("latin-1"), r"not UTF-8|syntax error"),
    ],
)
def test_unusable_files_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "session.toml"
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    with pytest.raises(SessionError, match=message) as info:
        Session.load(path)
    assert "\n" not in str(info.value)


def test_missing_and_folder_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="no such session file"):
        Session.load(tmp_path / "nope.toml")
    with pytest.raises(SessionError, match="is a folder"):
        Session.load(tmp_path)
    locked = write(tmp_path, "version = 1\n", "locked.toml")
    locked.chmod(0)
    try:
        if os.geteuid() != 0:  # root reads anything
            with pytest.raises(SessionError, match="cannot read"):
                Session.load(locked)
    finally:
        locked.chmod(0o644)


def test_set_rejects_bad_values_and_changes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    session = Session.load(path)
    with pytest.raises(SessionError, match="train.network_dim: expected an integer"):
        session.set("train.network_dim", "four")
    with pytest.raises(SessionError, match="unknown setting"):
        session.set("train.nope", 1)
    with pytest.raises(SessionError, match="crop"):
        session.update_image("IMG_0001.jpg", crop=[1, 2, 3])
    assert save(session) is False and path.read_text() == EXAMPLE


def test_find_line_handles_tables_and_arrays() -> None:
    assert find_line(EXAMPLE, "train", "learning_rate") == 29
    assert find_line(EXAMPLE, "dataset.images", "skip", 1) == 23
    assert find_line(EXAMPLE, "dataset.images", "file", 0) == 16
    assert find_line(EXAMPLE, "train", "missing") is None


def test_save_keeps_file_mode(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    path.chmod(0o600)
    session = Session.load(path)
    session.set("train.seed", 3)
    save(session)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- property tests

_SIMPLE = [f for f in SCHEMA if f.kind in ("int", "str", "bool", "float", "path") and f.key != "version"
           and f.key.count(".") <= 1]  # nested tables (train.samples) are covered by test_samples


def _value_for(field):
    if field.choices:
        return st.sampled_from(field.choices)
    if field.key == "dataset.max_side":
        return st.sampled_from([256, 512, 1024, 2048])
    if field.key == "captions.max_tokens":
        return st.integers(min_value=16, max_value=480)
    if field.key == "name":
        return st.from_regex(NAME_RE, fullmatch=True).filter(lambda v: not v.startswith("hf_"))
    if field.key in ("train.optimizer_type", "gpu.fit_optimizer"):
        return st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,19}", fullmatch=True)
    if field.key == "publish.repo":
        return st.from_regex(r"[a-z][a-z0-9]{0,10}/[a-z][a-z0-9_]{0,10}", fullmatch=True)
    if field.key == "gpu.uuid":
        return st.from_regex(r"GPU-[0-9a-f-]{1,20}", fullmatch=True)
    if field.key == "tools.check_size":
        return st.integers(min_value=64, max_value=4096)
    if field.key == "tools.check_steps":
        return st.integers(min_value=1, max_value=1000)
    if field.key == "train.validation_split":
        return st.floats(min_value=1e-3, max_value=0.5, allow_nan=False)
    if field.kind == "int":
        return st.integers(min_value=1, max_value=4096)
    if field.kind == "float":
        return st.floats(min_value=1e-7, max_value=1.0, allow_nan=False)
    if field.kind == "bool":
        return st.booleans()
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), max_size=20)
    # `~name/…` is another user's home: refused when read wherever a path may be given (paths, and text that may be
    # one, such as captions.model — its own tests), not a value for this round trip
    return text.filter(lambda v: not v.startswith("~"))


@st.composite
def sessions(draw):
    """A generated session.toml text with comments, and the values in it."""
    chosen = draw(st.lists(st.sampled_from(_SIMPLE), unique_by=lambda f: f.key, max_size=8))
    values = {f.key: draw(_value_for(f)) for f in chosen}
    doc = tomlkit.document()
    doc.add(tomlkit.comment(draw(st.text("abc xyz#", max_size=15)) or "header"))
    doc.add("version", 1)
    for key, value in values.items():
        if "." not in key:
            doc.add(key, value)
    for key, value in values.items():
        if "." in key:
            table, leaf = key.split(".")
            if table not in doc:
                doc.add(table, tomlkit.table())
                doc[table].add(tomlkit.comment(f"about {table}"))
            item = tomlkit.item(value)
            item.comment(f"note on {leaf}")
            doc[table].add(leaf, item)
    return tomlkit.dumps(doc), values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sessions())
def test_property_round_trip_and_comments_survive(tmp_path_factory, generated) -> None:
    text, values = generated
    folder = tmp_path_factory.mktemp("prop")
    path = folder / "session.toml"
    path.write_text(text, encoding="utf-8")
    session = Session.load(path)
    assert session.to_text() == text  # load → save is byte-identical
    for key, value in values.items():
        got = session.get(key)
        assert got == pytest.approx(value) if isinstance(value, float) else got == value
    # change every value: comments stay, new values read back
    # split("\n"), not splitlines(): that also splits inside a value at U+0085 and others (a found example)
    comments = [line.split("#", 1)[1] for line in text.split("\n") if line.lstrip().startswith("#")]
    session.set("train.seed", 12345)
    session.set("dataset.trigger", "zzq")
    save(session)
    saved = path.read_text(encoding="utf-8")
    for comment in comments:
        assert comment in saved
    again = Session.load(path)
    assert again.get("train.seed") == 12345 and again.get("dataset.trigger") == "zzq"
    for key, value in values.items():
        if key not in ("train.seed", "dataset.trigger"):
            got = again.get(key)
            assert got == pytest.approx(value) if isinstance(value, float) else got == value


def test_documented_example_is_a_valid_session(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "session.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    session = Session.load(write(tmp_path, example))
    assert session.warnings == []
    assert session.batch_sizes() == {"1024x1024": 2, "1024x512": 4}
    assert session.to_text() == example


def test_display_path_uses_tilde_under_home(isolated_home: Path) -> None:
    from lorawizard.core.common.fsutil import display_path

    assert display_path(isolated_home) == "~"
    assert display_path(isolated_home / "loras" / "a b") == "~/loras/a b"
    assert display_path("/etc/hosts") == "/etc/hosts"


@pytest.mark.parametrize("repo", ["a/a_", "_a/b", "a-/b", "a/.b", "a/b--c", "user/name", "a/b.git", "name", "a/b/c",
                                  "a" * 96 + "/b", "a" * 97 + "/b", "ü/b", "a/-b", "a/b_-_c"])
def test_repo_ids_follow_huggingface_hubs_own_rule(repo: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from lorawizard.core.session.document import repo_id_problem

    try:
        validate_repo_id(repo)
        valid = True
    except HFValidationError:
        valid = False
    assert (repo_id_problem(repo) is None) == valid


def test_an_unknown_key_one_typo_from_a_known_one_is_named(tmp_path: Path) -> None:
    """QA: `max_train_epoch = 5` (no s) under [train] was "unknown key (kept, not used)" and training ran 16 epochs."""
    path = tmp_path / "session.toml"
    path.write_text("version = 1\n[train]\nmax_train_epoch = 5\nzzz = 1\n")
    warnings = Session.load(path).warnings
    assert warnings == [f"{path}:3: unknown key `train.max_train_epoch` (kept, not used; did you mean "
                        "`train.max_train_epochs`?)", f"{path}:4: unknown key `train.zzz` (kept, not used)"]
