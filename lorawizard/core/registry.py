"""The one step registry: every step's name, titles, run function, screen, options type and start-up guess.

Everything else is derived from `STEPS`: the order, the CLI's `--steps` choices, the number keys and the step
bar (tui/app.py, tui/widgets/step_bar.py), the screens (tui/screens). Adding a step is one entry here, its
package in core/ with `run_step(ctx)`, and its screen. Run functions, screens and options types are named by
"module:attribute" and imported lazily, so the first frame and `--replay --steps dataset` pay only for what
they use (tests/unit/test_registry.py checks that every name resolves).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TypedDict, cast

if TYPE_CHECKING:  # nothing but the standard library at run time: `--help` and the first frame read this table
    # (the step modules are imported lazily at run time, by load_step; mypy sees their options here)
    from typing import TypeAlias

    from lorawizard.core.captions.step import CaptionsOptions
    from lorawizard.core.contract import StepContext, StepResult, StepState
    from lorawizard.core.dataset.step import DatasetOptions
    from lorawizard.core.environment.step import EnvOptions
    from lorawizard.core.models.rows import ModelsOptions
    from lorawizard.core.probe.shared import ProbeOptions
    from lorawizard.core.session.document import Session
    from lorawizard.core.step_states import Guess
    from lorawizard.core.train.step import TrainOptions

    # What `StepContext.options` holds: the running step's own TypedDict (publish reads none). Whoever builds options
    # builds one of these, so a misspelt key or a wrong value type is a mypy error, not a silently ignored option.
    StepOptions: TypeAlias = (
        EnvOptions | ModelsOptions | DatasetOptions | CaptionsOptions | ProbeOptions | TrainOptions
    )


class StepSpec(NamedTuple):
    name: str  # in session.toml's vocabulary and `--steps`
    title: str  # headings, help, the step bar when wide
    short_title: str  # the step bar at 80 columns
    run: str  # "module:function", the step's run_step
    screen: str | None  # "module:Class" of its wizard screen; None: no screen of its own (publish is key p on Train)
    options: str | None  # "module:TypedDict" it reads from ctx.options (OptionsByStep must agree: a test checks)
    guess: str | None  # "module:function" (a step_states.Guess): its state at start-up from the project on disk
    wizard: bool = True  # one of the numbered wizard steps; False: runs only when asked (`--steps publish`)


STEPS: tuple[StepSpec, ...] = (
    StepSpec("env", "Environment", "Env", "lorawizard.core.environment.step:run_step",
             "lorawizard.tui.screens.environment:EnvironmentScreen",
             "lorawizard.core.environment.step:EnvOptions", "lorawizard.core.step_states:guess_env"),
    StepSpec("models", "Models", "Models", "lorawizard.core.models.step:run_step",
             "lorawizard.tui.screens.models:ModelsScreen",
             "lorawizard.core.models.rows:ModelsOptions", "lorawizard.core.step_states:guess_models"),
    StepSpec("dataset", "Dataset", "Dataset", "lorawizard.core.dataset.step:run_step",
             "lorawizard.tui.screens.dataset:DatasetScreen",
             "lorawizard.core.dataset.step:DatasetOptions", "lorawizard.core.step_states:guess_dataset"),
    StepSpec("captions", "Captions", "Captions", "lorawizard.core.captions.step:run_step",
             "lorawizard.tui.screens.captions:CaptionsScreen",
             "lorawizard.core.captions.step:CaptionsOptions", "lorawizard.core.step_states:guess_captions"),
    StepSpec("probe", "GPU & batch size", "GPU", "lorawizard.core.probe.step:run_step",
             "lorawizard.tui.screens.gpu:GpuScreen",
             "lorawizard.core.probe.shared:ProbeOptions", "lorawizard.core.step_states:guess_probe"),
    StepSpec("train", "Train", "Train", "lorawizard.core.train.queue:run_step",
             "lorawizard.tui.screens.train:TrainScreen",
             "lorawizard.core.train.step:TrainOptions", "lorawizard.core.step_states:guess_train"),
    StepSpec("resize", "Resize the LoRA", "Resize", "lorawizard.core.loratools.step:run_resize", None, None, None,
             wizard=False),
    StepSpec("convert", "Convert the LoRA's layout", "Convert", "lorawizard.core.loratools.step:run_convert", None,
             None, None, wizard=False),
    StepSpec("merge", "Merge LoRAs", "Merge", "lorawizard.core.loratools.step:run_merge", None, None, None,
             wizard=False),
    StepSpec("merge_base", "Merge the LoRA into the base model", "Merge base",
             "lorawizard.core.loratools.step:run_merge_base", None, None, None, wizard=False),
    StepSpec("check", "Check the LoRA loads", "Check", "lorawizard.core.loratools.step:run_check", None, None, None,
             wizard=False),
    StepSpec("publish", "Publish", "Publish", "lorawizard.core.publish.step:run_step", None, None, None,
             wizard=False),
)

STEP_BY_NAME: dict[str, StepSpec] = {spec.name: spec for spec in STEPS}
STEP_ORDER: tuple[str, ...] = tuple(spec.name for spec in STEPS if spec.wizard)  # the wizard's numbered steps
# Steps after the wizard's that only run when asked (`--steps publish`, or a full replay with `[publish] repo` set).
EXTRA_STEPS: tuple[str, ...] = tuple(spec.name for spec in STEPS if not spec.wizard)
REPLAY_STEPS: tuple[str, ...] = STEP_ORDER + EXTRA_STEPS
STEP_TITLES: dict[str, str] = {spec.name: spec.title for spec in STEPS}
SHORT_TITLES: dict[str, str] = {spec.name: spec.short_title for spec in STEPS}
SCREENS: dict[str, str] = {spec.name: spec.screen for spec in STEPS if spec.screen}
# name → "module:function"; a table of its own so tests can point a step at a stand-in
STEP_FUNCTIONS: dict[str, str] = {spec.name: spec.run for spec in STEPS}


class OptionsByStep(TypedDict, total=False):
    """Options for several steps at once, each under its step's name (replay's flags, the wizard's test doubles)."""

    env: EnvOptions
    models: ModelsOptions
    dataset: DatasetOptions
    captions: CaptionsOptions
    probe: ProbeOptions
    train: TrainOptions


def options_for(by_step: OptionsByStep, name: str) -> StepOptions:
    """The options `by_step` holds for step `name` (a fresh dict, empty when none)."""
    options = by_step.get(name)
    return cast("StepOptions", dict(options) if isinstance(options, dict) else {})


def resolve(reference: str) -> object:
    """The object a "module:attribute" reference names (imports the module)."""
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def load_step(name: str) -> Callable[[StepContext], StepResult]:
    return cast("Callable[[StepContext], StepResult]", resolve(STEP_FUNCTIONS[name]))


def parse_steps(text: str | None) -> list[str]:
    """`"dataset,captions"` → ["dataset", "captions"] in the canonical order; ValueError names a bad one.

    None (no `--steps`) means the six wizard steps; replay adds publish itself when `[publish] repo` is set.
    """
    if text is None:
        return list(STEP_ORDER)
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    if not wanted:  # `--steps ""` must not mean "all six, training included"
        raise ValueError(f"no step named (steps: {', '.join(REPLAY_STEPS)})")
    unknown = [part for part in wanted if part not in REPLAY_STEPS]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r} (steps: {', '.join(REPLAY_STEPS)})")
    return [step for step in REPLAY_STEPS if step in wanted]


def session_step_states(session: Session) -> dict[str, StepState]:
    """Every step's guess from the project on disk (no I/O beyond stat and the manifest): the step bar at start-up."""
    from lorawizard.core.step_states import OnDisk

    disk = OnDisk(session)
    states: dict[str, StepState] = {}
    for spec in STEPS:
        guess = cast("Guess", resolve(spec.guess)) if spec.guess is not None else None
        state = guess(disk) if guess is not None else None
        if state is not None:
            states[spec.name] = state
    return states
