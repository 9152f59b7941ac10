"""The typed section views (core/session/sections.py): one attribute per schema field, of the field's type, reading
exactly what `Session.get` reads; a disagreement with the schema fails here, and mypy sees each attribute's type."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorawizard.core.session.document import SCHEMA, Field, Session
from lorawizard.core.session.sections import (
    VIEWS,
    CaptionsSection,
    DatasetSection,
    GpuSection,
    ModelsSection,
    PathsSection,
    PublishSection,
    SamplesSection,
    Section,
    SectionViews,
    Setting,
    ToolsSection,
    TrainSection,
    declared_settings,
    schema_problems,
)
from tests.support.mypy_snippets import flagged_notes

# How code reaches each view from a session (the path the typed reads take).
REACH: dict[type, Callable[[Session], Any]] = {
    SectionViews: lambda s: s,
    PathsSection: lambda s: s.path_settings,
    ModelsSection: lambda s: s.models,
    DatasetSection: lambda s: s.dataset,
    GpuSection: lambda s: s.gpu,
    TrainSection: lambda s: s.train,
    SamplesSection: lambda s: s.train.samples,
    CaptionsSection: lambda s: s.captions,
    PublishSection: lambda s: s.publish,
    ToolsSection: lambda s: s.tools,
}

# A valid value other than the default for every field: set through `Session.set`, then read back typed.
CHANGED: dict[str, Any] = {
    "version": 1, "name": "other-lora",
    "paths.sd_scripts": "~/sd", "paths.python": "py/bin/python", "paths.models": "m", "paths.tokenizers": "t",
    "paths.dataset": "d", "paths.runs": "r", "paths.ld_library_path": ["/run/opengl-driver/lib"],
    "models.family": "flux1-dev", "models.preset": "flux1-dev-bf16", "models.flux": "f.safetensors", "models.ae": "ae.safetensors",
    "models.clip_l": "clip.safetensors", "models.t5xxl": "t5.safetensors",
    "dataset.source": "photos", "dataset.max_side": 512, "dataset.trigger": "ohwx", "dataset.num_repeats": 3,
    "dataset.captionless": True,
    "gpu.uuid": "GPU-1", "gpu.uuids": ["GPU-1", "GPU-2"], "gpu.machines": ["a:1", "b:1"], "gpu.main_process_port": 29501,
    "gpu.same_network": False, "gpu.vram_preset": "24gb", "gpu.parallel_runs": True,
    "gpu.fit": "fastest", "gpu.fit_swap": 8, "gpu.fit_fp8": True, "gpu.fit_checkpointing": False,
    "gpu.fit_optimizer": "AdamW8bit", "gpu.price_per_hour": 0.8, "gpu.hosted_price_per_1000_steps": 2.0,
    "train.network_dim": 8, "train.learning_rate": 2e-4, "train.max_train_epochs": 7, "train.save_every_n_epochs": 2,
    "train.optimizer_type": "prodigy", "train.seed": 7, "train.extra_args": ["--max_grad_norm", "1.0"],
    "train.mixed_precision": "no", "train.base_precision": "16bit",
    "train.validation_split": 0.1, "train.validation_every_n_epochs": 2, "train.keep_epoch": 4, "train.on_finish": ["notify-send", "done"],
    "train.state_minutes": 5,
    "train.samples.prompts": ["a cat"], "train.samples.every_n_epochs": 2, "train.samples.width": 512,
    "train.samples.height": 768, "train.samples.steps": 10, "train.samples.guidance": 4.0, "train.samples.seed": 1,
    "train.samples.at_first": False, "train.samples.cfg_scale": 3.0, "train.samples.negative_prompt": "blurry",
    "captions.kind": "style", "captions.model": "qwen2.5-vl-7b", "captions.instruction": "Describe it.",
    "captions.max_tokens": 100, "captions.auto": True, "captions.device": "cpu",
    "publish.repo": "me/lora", "publish.private": False, "publish.tags": ["x"], "publish.existing": True,
    "tools.lora": "loras/a.safetensors", "tools.rank": 8, "tools.resize_method": "sv_fro", "tools.resize_param": 0.8,
    "tools.convert_to": "ai-toolkit", "tools.merge": ["a.safetensors;0.5"], "tools.check": False,
    "tools.check_prompt": "a dog", "tools.check_seed": 7, "tools.check_steps": 4, "tools.check_size": 256,
    "tools.device": "cpu",
}

HAND_EDITED = """\
# edited by hand
version = 1
name = "mychar"   # output name

[paths]
sd_scripts = "~/sd-scripts"

[models]
flux = "~/unet/flux.safetensors"

[dataset]
source = "photos"
max_side = 2048
trigger = "ohwx"  # a comment

[gpu]
uuids = ["GPU-a", "GPU-b"]
main_process_port = 30000

[gpu.batch_size]
1024x1024 = 2

[train]
learning_rate = 1e-4     # spelt like this on purpose
max_train_epochs = 20
extra_args = []

[train.samples]
guidance = 4             # an integer in a float field: read as 4.0
width = 640

[captions]
auto = true

[publish]
repo = "me/mychar"
"""


def typed(session: Session, view: type, setting: Setting[Any]) -> Any:
    return getattr(REACH[view](session), setting.attribute)


def declared_type(setting: Setting[Any]) -> Any:
    return typing.get_args(setting.__orig_class__)[0]  # type: ignore[attr-defined]  # set by Setting[T](...)


def runtime_classes(annotation: Any) -> tuple[type, ...]:
    """`int | None` → (int, NoneType); `list[str]` → (list,): what isinstance can check."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return tuple(typing.get_origin(member) or member for member in members)


def assert_typed_reads_match_get(session: Session) -> None:
    for view, _attribute, setting in declared_settings():
        value = typed(session, view, setting)
        assert value == session.get(setting.key), setting.key
        assert isinstance(value, runtime_classes(declared_type(setting))), (setting.key, value)
        if isinstance(value, list):
            assert all(isinstance(item, str) for item in value), setting.key


# ---------------------------------------------------------------- the views agree with the schema


def test_every_schema_field_has_one_typed_attribute_of_its_type() -> None:
    assert schema_problems(SCHEMA) == []


def test_every_view_is_reached_from_a_session(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml")
    assert set(REACH) == set(VIEWS)
    for view in VIEWS:
        assert isinstance(REACH[view](session), view)


def _replace(key: str, **changes: Any) -> tuple[Field, ...]:
    return tuple(f._replace(**changes) if f.key == key else f for f in SCHEMA)


@pytest.mark.parametrize("schema, expected", [
    pytest.param(tuple(f for f in SCHEMA if f.key != "train.network_dim"),
                 "TrainSection.network_dim: `train.network_dim` is no field of the schema", id="attribute-without-field"),
    pytest.param((*SCHEMA, Field("train.new_option", "int", 1)),
                 "train.new_option: no typed attribute", id="field-without-attribute"),
    pytest.param(_replace("train.learning_rate", kind="int"),
                 "TrainSection.learning_rate: typed <class 'float'>, but the schema's int field", id="kind-changed"),
    pytest.param(_replace("dataset.trigger", default=None),
                 "DatasetSection.trigger: typed <class 'str'>, but the schema's str field", id="default-now-none"),
    pytest.param(_replace("gpu.uuid", default="GPU-0"),
                 "GpuSection.uuid: typed str | None, but the schema's str field", id="default-no-longer-none"),
    pytest.param(_replace("train.samples.guidance", default=3),
                 "train.samples.guidance: its default 3 is not a float", id="default-of-another-kind"),
])
def test_the_schema_check_fails_on_a_modified_schema(schema: tuple[Field, ...], expected: str) -> None:
    problems = schema_problems(schema)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_the_schema_check_fails_on_a_misdeclared_view() -> None:
    class Planted(Section):
        table = "train"
        epochs = Setting[int]("train.max_train_epochs")  # named unlike its key, and a second attribute for it
        seed = Setting("train.seed")  # type: ignore[var-annotated]  # no type
        keep_epoch = Setting[int]("train.keep_epoch")  # the field may be unset: int | None

    problems = schema_problems(SCHEMA, (*VIEWS, Planted))
    assert set(problems) == {
        "Planted.epochs: reads `train.max_train_epochs`; it belongs in the view of [train] as `max_train_epochs`",
        "Planted.epochs: `train.max_train_epochs` has an attribute already (TrainSection.max_train_epochs)",
        "Planted.seed: declare it as Setting[<type>]('train.seed')",
        "Planted.seed: `train.seed` has an attribute already (TrainSection.seed)",
        "Planted.keep_epoch: typed <class 'int'>, but the schema's int field `train.keep_epoch` reads as int | None",
        "Planted.keep_epoch: `train.keep_epoch` has an attribute already (TrainSection.keep_epoch)",
    }


# ---------------------------------------------------------------- the views read what `get` reads


def test_defaults_read_as_get_reads_them(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml", name="mine")
    assert_typed_reads_match_get(session)
    assert session.train.max_train_epochs == 16
    assert session.train.samples.prompts is None
    assert session.gpu.uuids == []


def test_set_values_read_as_get_reads_them(tmp_path: Path) -> None:
    assert set(CHANGED) == {f.key for f in SCHEMA}, "CHANGED needs a value for every schema field"
    session = Session.new(tmp_path / "session.toml")
    train = session.train  # a view, not a copy: it sees what is set after it was taken
    for key, value in CHANGED.items():
        session.set(key, value)
    assert_typed_reads_match_get(session)
    for view, _attribute, setting in declared_settings():
        assert typed(session, view, setting) == CHANGED[setting.key]
    assert train.max_train_epochs == 7


@pytest.mark.parametrize("read_only", [False, True], ids=["wizard", "replay"])
def test_a_hand_edited_file_reads_as_get_reads_it(tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "session.toml"
    path.write_text(HAND_EDITED)
    session = Session.load(path, read_only=read_only)
    assert_typed_reads_match_get(session)
    assert session.train.samples.guidance == 4.0 and isinstance(session.train.samples.guidance, float)
    assert session.train.learning_rate == 1e-4
    assert session.gpu.main_process_port == 30000
    assert session.models.flux == "~/unet/flux.safetensors"
    assert session.path_settings.sd_scripts == "~/sd-scripts"
    assert session.paths.sd_scripts == Path("~/sd-scripts").expanduser()


def test_a_view_cannot_be_written(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml")
    with pytest.raises(AttributeError, match="read-only"):
        session.train.max_train_epochs = 3  # type: ignore[assignment]
    with pytest.raises(AttributeError, match="read-only"):
        session.name = "x"  # type: ignore[assignment]
    assert session.train.max_train_epochs == 16 and not session.is_set("train.max_train_epochs")


# ---------------------------------------------------------------- mypy sees the types

SNIPPET = '''
from lorawizard.core.session.document import Session


def read(session: Session) -> None:
    epochs: int = session.train.max_train_epochs  # fine
    rate: float = session.train.learning_rate  # fine
    source: str | None = session.dataset.source  # fine
    prompts: list[str] | None = session.train.samples.prompts  # fine
    name: str = session.name  # fine
    text: str = session.train.max_train_epochs  # BAD 1: an int
    uuid: str = session.gpu.uuid  # BAD 2: may be None
    session.train.max_train_epoch  # BAD 3: no such attribute
    session.train.max_train_epochs = 3  # BAD 4: read-only
'''


def test_mypy_sees_each_attributes_type(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    flagged, output = flagged_notes(SNIPPET, tmp_path)
    assert flagged == {"BAD 1: an int", "BAD 2: may be None", "BAD 3: no such attribute", "BAD 4: read-only"}, \
        output
