"""Typed, read-only views of session.toml, one per table: `session.train.max_train_epochs` is an `int` to mypy.

Each attribute is a `Setting[T]("table.key")`: reading it is `Session.get("table.key")` (the same validated value,
or the schema's default), typed `T`. The schema (`document.SCHEMA`) stays the one declaration of keys, kinds and
defaults; `schema_problems` checks these views against it (tests/unit/test_session_sections.py runs it), so a field
without an attribute, an attribute without a field or a type that disagrees with the field's kind fails a test.
Writes keep going through the store (`decide`/`record`) with the string key: assigning an attribute is an error.

This module imports nothing from the document (which builds `Session` on `SectionViews`): the checker is handed
the schema.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NoReturn, Protocol, TypeVar, cast, overload

T = TypeVar("T")


class Reads(Protocol):
    """What a view reads through: `Session.get` (validated value or the schema's default)."""

    def get(self, key: str) -> Any: ...


class Setting(Generic[T]):
    """One schema key as a typed, read-only attribute. Declare it as `Setting[int]("train.network_dim")`: the
    subscript is what mypy sees and what `schema_problems` compares with the field's kind."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __set_name__(self, owner: type, name: str) -> None:
        self.attribute = name

    @overload
    def __get__(self, instance: None, owner: type) -> Setting[T]: ...

    @overload
    def __get__(self, instance: Reads, owner: type) -> T: ...

    def __get__(self, instance: Reads | None, owner: type) -> T | Setting[T]:
        if instance is None:
            return self  # on the class: the declaration itself (its key)
        return cast(T, instance.get(self.key))

    def __set__(self, instance: object, value: NoReturn) -> NoReturn:
        raise AttributeError(f"{self.key} is read-only here; record a decision with its key instead")


class Section:
    """One table of session.toml, read live through the session (a view, not a copy)."""

    __slots__ = ("_session",)
    table: ClassVar[str]

    def __init__(self, session: Reads) -> None:
        self._session = session

    def get(self, key: str) -> Any:
        """The read every attribute makes: the session's own `get`."""
        return self._session.get(key)


class PathsSection(Section):
    """[paths] as written (strings, `~` and relative as in the file); `session.paths` resolves them."""

    __slots__ = ()
    table = "paths"
    sd_scripts = Setting[str | None]("paths.sd_scripts")
    python = Setting[str | None]("paths.python")
    models = Setting[str]("paths.models")
    tokenizers = Setting[str | None]("paths.tokenizers")
    dataset = Setting[str]("paths.dataset")
    runs = Setting[str]("paths.runs")
    ld_library_path = Setting[list[str]]("paths.ld_library_path")


class ModelsSection(Section):
    __slots__ = ()
    table = "models"
    family = Setting[str | None]("models.family")
    preset = Setting[str]("models.preset")
    flux = Setting[str | None]("models.flux")
    ae = Setting[str | None]("models.ae")
    clip_l = Setting[str | None]("models.clip_l")
    t5xxl = Setting[str | None]("models.t5xxl")


class DatasetSection(Section):
    __slots__ = ()
    table = "dataset"
    source = Setting[str | None]("dataset.source")
    max_side = Setting[int]("dataset.max_side")
    trigger = Setting[str]("dataset.trigger")
    num_repeats = Setting[int]("dataset.num_repeats")
    captionless = Setting[bool]("dataset.captionless")


class GpuSection(Section):
    """[gpu] without `batch_size` (a table of buckets: `session.batch_sizes()`)."""

    __slots__ = ()
    table = "gpu"
    uuid = Setting[str | None]("gpu.uuid")
    uuids = Setting[list[str]]("gpu.uuids")
    machines = Setting[list[str]]("gpu.machines")
    main_process_port = Setting[int | None]("gpu.main_process_port")
    same_network = Setting[bool]("gpu.same_network")
    vram_preset = Setting[str | None]("gpu.vram_preset")
    parallel_runs = Setting[bool]("gpu.parallel_runs")
    fit = Setting[str]("gpu.fit")
    fit_swap = Setting[int | None]("gpu.fit_swap")
    fit_fp8 = Setting[bool | None]("gpu.fit_fp8")
    fit_checkpointing = Setting[bool | None]("gpu.fit_checkpointing")
    fit_optimizer = Setting[str | None]("gpu.fit_optimizer")
    price_per_hour = Setting[float | None]("gpu.price_per_hour")
    hosted_price_per_1000_steps = Setting[float | None]("gpu.hosted_price_per_1000_steps")


class SamplesSection(Section):
    __slots__ = ()
    table = "train.samples"
    prompts = Setting[list[str] | None]("train.samples.prompts")
    every_n_epochs = Setting[int | None]("train.samples.every_n_epochs")
    width = Setting[int | None]("train.samples.width")
    height = Setting[int | None]("train.samples.height")
    steps = Setting[int]("train.samples.steps")
    guidance = Setting[float]("train.samples.guidance")
    cfg_scale = Setting[float]("train.samples.cfg_scale")
    negative_prompt = Setting[str]("train.samples.negative_prompt")
    seed = Setting[int]("train.samples.seed")
    at_first = Setting[bool]("train.samples.at_first")


class TrainSection(Section):
    __slots__ = ()
    table = "train"
    network_dim = Setting[int]("train.network_dim")
    learning_rate = Setting[float]("train.learning_rate")
    max_train_epochs = Setting[int]("train.max_train_epochs")
    save_every_n_epochs = Setting[int]("train.save_every_n_epochs")
    optimizer_type = Setting[str]("train.optimizer_type")
    seed = Setting[int]("train.seed")
    extra_args = Setting[list[str]]("train.extra_args")
    mixed_precision = Setting[str]("train.mixed_precision")
    base_precision = Setting[str]("train.base_precision")
    validation_split = Setting[float | None]("train.validation_split")
    validation_every_n_epochs = Setting[int]("train.validation_every_n_epochs")
    keep_epoch = Setting[int | None]("train.keep_epoch")
    on_finish = Setting[list[str]]("train.on_finish")
    state_minutes = Setting[int]("train.state_minutes")

    @property
    def samples(self) -> SamplesSection:
        return SamplesSection(self._session)


class CaptionsSection(Section):
    __slots__ = ()
    table = "captions"
    kind = Setting[str]("captions.kind")
    model = Setting[str]("captions.model")
    instruction = Setting[str | None]("captions.instruction")
    max_tokens = Setting[int]("captions.max_tokens")
    auto = Setting[bool]("captions.auto")
    device = Setting[str]("captions.device")


class PublishSection(Section):
    __slots__ = ()
    table = "publish"
    repo = Setting[str | None]("publish.repo")
    private = Setting[bool]("publish.private")
    tags = Setting[list[str]]("publish.tags")
    existing = Setting[bool]("publish.existing")


class ToolsSection(Section):
    __slots__ = ()
    table = "tools"
    lora = Setting[str | None]("tools.lora")
    rank = Setting[int | None]("tools.rank")
    resize_method = Setting[str]("tools.resize_method")
    resize_param = Setting[float | None]("tools.resize_param")
    convert_to = Setting[str]("tools.convert_to")
    merge = Setting[list[str]]("tools.merge")
    check = Setting[bool]("tools.check")
    check_prompt = Setting[str | None]("tools.check_prompt")
    check_seed = Setting[int]("tools.check_seed")
    check_steps = Setting[int]("tools.check_steps")
    check_size = Setting[int]("tools.check_size")
    device = Setting[str]("tools.device")


class SectionViews:
    """What `Session` offers besides `get`: the top-level keys and one view per table."""

    table: ClassVar[str] = ""
    version = Setting[int]("version")
    name = Setting[str]("name")

    if TYPE_CHECKING:
        def get(self, key: str) -> Any: ...

    @property
    def path_settings(self) -> PathsSection:  # `paths` is taken: the resolved ResolvedPaths
        return PathsSection(self)

    @property
    def models(self) -> ModelsSection:
        return ModelsSection(self)

    @property
    def dataset(self) -> DatasetSection:
        return DatasetSection(self)

    @property
    def gpu(self) -> GpuSection:
        return GpuSection(self)

    @property
    def train(self) -> TrainSection:
        return TrainSection(self)

    @property
    def captions(self) -> CaptionsSection:
        return CaptionsSection(self)

    @property
    def publish(self) -> PublishSection:
        return PublishSection(self)

    @property
    def tools(self) -> ToolsSection:
        return ToolsSection(self)


VIEWS: tuple[type[Section] | type[SectionViews], ...] = (
    SectionViews, PathsSection, ModelsSection, DatasetSection, GpuSection, TrainSection, SamplesSection,
    CaptionsSection, PublishSection, ToolsSection,
)

# ---------------------------------------------------------------- the check against the schema (tests, not start-up)

KIND_TYPES: dict[str, Any] = {"str": str, "path": str, "int": int, "float": float, "bool": bool, "str_list": list[str]}


class FieldSpec(Protocol):
    """What the check needs of a schema `Field`."""

    @property
    def key(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def default(self) -> Any: ...


def field_type(spec: FieldSpec) -> Any:
    """The Python type `Session.get(spec.key)` returns: the kind's type, or it and None when the default is None."""
    base = KIND_TYPES[spec.kind]
    return base | None if spec.default is None else base


def _members(annotation: Any) -> frozenset[Any]:
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    return frozenset(typing.get_args(annotation)) if union else frozenset({annotation})


def _fits(value: Any, kind: str) -> bool:
    if kind == "str_list":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, KIND_TYPES[kind])


def declared_settings(views: Iterable[type] = VIEWS) -> list[tuple[type, str, Setting[Any]]]:
    """(view, attribute, its Setting) for every typed attribute of `views`."""
    return [(view, name, value) for view in views for name, value in vars(view).items() if isinstance(value, Setting)]


def _setting_problems(where: str, table: str, attribute: str, setting: Setting[Any], spec: FieldSpec | None) -> list[str]:
    """What is wrong with one attribute: its place (table and name), its field, its type."""
    problems = []
    key_table, _, leaf = setting.key.rpartition(".")
    if (key_table, leaf) != (table, attribute):
        problems.append(f"{where}: reads `{setting.key}`; it belongs in the view of [{key_table}] as `{leaf}`")
    if spec is None:
        return [*problems, f"{where}: `{setting.key}` is no field of the schema"]
    declared = typing.get_args(getattr(setting, "__orig_class__", None))
    if not declared:
        problems.append(f"{where}: declare it as Setting[<type>]({setting.key!r})")
    elif _members(declared[0]) != _members(field_type(spec)):
        problems.append(f"{where}: typed {declared[0]}, but the schema's {spec.kind} field `{spec.key}` "
                        f"reads as {field_type(spec)}")
    return problems


def schema_problems(schema: Iterable[FieldSpec], views: Iterable[type] = VIEWS) -> list[str]:
    """Where the typed views and the schema disagree, one line each; [] when every field has exactly one attribute
    of its type, in the view of its table and named like its key."""
    fields = {spec.key: spec for spec in schema}
    problems = [f"{spec.key}: its default {spec.default!r} is not a {spec.kind}" for spec in fields.values()
                if spec.default is not None and not _fits(spec.default, spec.kind)]
    typed: dict[str, str] = {}  # key → the attribute that reads it
    for view, attribute, setting in declared_settings(views):
        where = f"{view.__name__}.{attribute}"
        problems += _setting_problems(where, getattr(view, "table", ""), attribute, setting, fields.get(setting.key))
        if setting.key in typed:
            problems.append(f"{where}: `{setting.key}` has an attribute already ({typed[setting.key]})")
        typed.setdefault(setting.key, where)
    problems += [f"{key}: no typed attribute (add a Setting to its table's view)" for key in fields if key not in typed]
    return problems
