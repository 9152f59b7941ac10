"""core.profile: a base model's facts live in its family profile, and the steps read them from there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lorawizard.core import profile
from lorawizard.core.gpu import presets as vram_presets
from lorawizard.core.launch import command as cmd
from lorawizard.core.profile import FLUX1_DEV, ModelFamily, VramPreset, family_for
from lorawizard.core.session.document import FIELDS, Session

LORAWIZARD = Path(profile.__file__).resolve().parents[2]


def make_session(project: Path) -> Session:
    session = Session.new(project / "session.toml", name="mylora")
    session.set("paths.sd_scripts", str(project / "sd-scripts"))
    return session


def use_family(monkeypatch: pytest.MonkeyPatch, family: ModelFamily) -> None:
    """Make `family` the only (and default) one: it keeps FLUX.1-dev's presets, so every session trains it."""
    monkeypatch.setattr(profile, "FAMILIES", {family.name: family})
    monkeypatch.setattr(profile, "DEFAULT_FAMILY", family)


def other_backend_family() -> ModelFamily:
    backend = FLUX1_DEV.backend._replace(script="other_train_network.py",
        network_module="networks.lora_other",
        role_options=(("ae", "ae"), ("flux", "pretrained_model_name_or_path")),  # no CLIP-L, no T5 options
        fixed_options={"discrete_flow_shift": 2.5, "timestep_sampling": "sigmoid"},
    )
    return FLUX1_DEV._replace(name="other", backend=backend)


def option_value(argv: list[str], name: str) -> str:
    return argv[argv.index(f"--{name}") + 1]


# ---------------------------------------------------------------- the registry


def test_family_for_a_session_a_family_or_a_preset(project: Path) -> None:
    session = make_session(project)
    assert family_for(session) is FLUX1_DEV
    assert family_for(FLUX1_DEV.name) is FLUX1_DEV
    assert family_for(FLUX1_DEV.presets[-1].name) is FLUX1_DEV
    assert family_for(None) is profile.DEFAULT_FAMILY


def test_family_for_finds_the_family_owning_the_sessions_preset(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = FLUX1_DEV._replace(name="other", presets=(FLUX1_DEV.presets[1]._replace(name="other-bf16"),))
    monkeypatch.setitem(profile.FAMILIES, other.name, other)
    assert family_for("other-bf16") is other
    assert family_for(FLUX1_DEV.presets[0].name) is FLUX1_DEV
    assert family_for("no-such-preset") is profile.DEFAULT_FAMILY
    assert profile.all_preset_names()[0] == FLUX1_DEV.default_preset.name
    assert "other-bf16" in profile.all_preset_names()


# ---------------------------------------------------------------- the command


def test_the_profile_drives_the_trainer_command(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_family(monkeypatch, other_backend_family())
    session = make_session(project)
    command = cmd.build_train_command(
        session, dataset_config=project / "r/ds.toml", accelerate_config=project / "r/acc.yaml", output_dir=project / "r",
    )
    argv = command.argv
    script = str(project / "sd-scripts" / "other_train_network.py")
    assert argv[9] == script and command.script == script
    assert option_value(argv, "network_module") == "networks.lora_other"
    assert option_value(argv, "discrete_flow_shift") == "2.5"
    assert option_value(argv, "timestep_sampling") == "sigmoid"
    assert "--model_prediction_type" not in argv and "--guidance_scale" not in argv  # FLUX.1-dev's, not this one's
    assert "--clip_l" not in argv and "--t5xxl" not in argv
    assert option_value(argv, "ae") == str(project / "models" / "ae.safetensors")
    assert option_value(argv, "pretrained_model_name_or_path") == str(project / "models" / "flux1-dev-fp8.safetensors")
    first_option_line = command.shell_text(multiline=True).splitlines()[1]
    assert first_option_line.strip().startswith("--ae ")  # the lines break after this family's script


def test_flux1_dev_command_reads_its_profile(project: Path) -> None:
    command = cmd.build_train_command(
        make_session(project), dataset_config=project / "r/ds.toml", accelerate_config=project / "r/acc.yaml",
        output_dir=project / "r",
    )
    backend = FLUX1_DEV.backend
    assert command.argv[9].endswith("/" + backend.script)
    assert command.options["network_module"] == backend.network_module
    assert {name: command.options[name] for name in backend.fixed_options} == dict(backend.fixed_options)
    assert [name for name in command.options if name in dict(backend.role_options).values()] == [
        option for _, option in backend.role_options]


# ---------------------------------------------------------------- schema, budgets, VRAM presets, card


def test_schema_model_roles_and_sample_defaults_are_flux1_devs() -> None:
    roles = [key.removeprefix("models.") for key in FIELDS
             if key.startswith("models.") and key not in ("models.preset", "models.family")]
    assert tuple(roles) == FLUX1_DEV.role_names  # every family's roles are FLUX.1-dev's or fewer
    assert FIELDS["models.preset"].choices == tuple(p.name for f in profile.FAMILIES.values() for p in f.presets)
    assert FIELDS["models.family"].choices == tuple(profile.FAMILIES)
    assert FIELDS["train.samples.steps"].default == FLUX1_DEV.samples.steps
    assert FIELDS["train.samples.guidance"].default == FLUX1_DEV.samples.guidance


VARIANT = """
import json
from lorawizard.core import profile
from lorawizard.core.profile import FLUX1_DEV, Licence, ModelFile, ModelRole, Preset, SampleDefaults, VramPreset

roles = (*FLUX1_DEV.roles, ModelRole("refiner", "Refiner", ("unet",)))
files = tuple(ModelFile(role.name, "someone/other", role.name + ".safetensors") for role in roles)
other = FLUX1_DEV._replace(name="other", hub_repo="someone/other", roles=roles, presets=(Preset("other-preset", "Other", files, 1.0),),
    text_encoders=tuple(e._replace(max_tokens=e.max_tokens * 2) for e in FLUX1_DEV.text_encoders),
    samples=SampleDefaults(steps=7, guidance=1.25), resolution=512,
    vram_presets=(VramPreset("big", 40, 3, {"fp8_base": True}),),
    licence=Licence("other-licence", "Other Licence", "https://example.com/licence"), card_tags=("other",),
)
profile.FAMILIES = {other.name: other}
profile.DEFAULT_FAMILY = other

from lorawizard.core.captions import tokens
from lorawizard.core.gpu import presets
from lorawizard.core.models import catalog
from lorawizard.core.publish import step as publish
from lorawizard.core.session.document import FIELDS

print(json.dumps({
    "model_fields": [key for key in FIELDS if key.startswith("models.")],
    "preset_choices": list(FIELDS["models.preset"].choices),
    "defaults": [FIELDS[k].default for k in ("train.samples.steps", "train.samples.guidance", "dataset.max_side")],
    "budgets": [tokens.CLIP_LIMIT, tokens.T5_LIMIT],
    "vram": [p.name for p in presets.load_presets()],
    "roles": list(catalog.ROLES),
    "card": [publish.BASE_MODEL, publish.LICENSE_NAME, publish.LICENSE_LINK, list(publish.DEFAULT_TAGS)],
}))
"""


def test_every_consumer_reads_the_default_family() -> None:
    """A fresh interpreter with another default family: schema, budgets, VRAM tiers, catalog and card all follow."""
    out = subprocess.run([sys.executable, "-c", VARIANT], capture_output=True, text=True, check=True, timeout=60)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["model_fields"] == ["models.family", "models.preset", "models.flux", "models.ae", "models.clip_l", "models.t5xxl",
                                    "models.refiner"]
    assert seen["preset_choices"] == ["other-preset"]
    assert seen["defaults"] == [7, 1.25, 512]
    assert seen["budgets"] == [77 * 2, 512 * 2]
    assert seen["vram"] == ["big"]
    assert seen["roles"] == ["flux", "ae", "clip_l", "t5xxl", "refiner"]
    assert seen["card"] == ["someone/other", "other-licence", "https://example.com/licence",
                            ["text-to-image", "other", "lora", "template:sd-lora", "kohya-sd-scripts", "lorawizard"]]


def test_a_sessions_vram_presets_are_its_familys(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiers = (VramPreset("huge", 80, 8, {"fp8_base": True}), VramPreset("tiny", 4, 1, {"blocks_to_swap": 30}))
    use_family(monkeypatch, FLUX1_DEV._replace(name="other", vram_presets=tiers))
    assert [p.name for p in vram_presets.load_presets(make_session(project))] == ["huge", "tiny"]


# ---------------------------------------------------------------- no FLUX.1-dev fact outside the profile

FLUX_LITERALS = ("3.1582", "lora_flux", "flux_train_network.py", "black-forest-labs")


def test_flux_literals_live_only_in_the_profile() -> None:
    """Python files only: core/data/*.tsv are sd-scripts' own parser and schema, captured verbatim (their source
    references name flux_train_network.py); trainer_side/ needs none of these."""
    profile_dir = LORAWIZARD / "core" / "profile"
    found = [f"{path.relative_to(LORAWIZARD)}: {literal}"
             for path in sorted(LORAWIZARD.rglob("*.py")) if profile_dir not in path.parents
             for literal in FLUX_LITERALS if literal in path.read_text(encoding="utf-8")]
    assert found == []
    profile_text = "".join(p.read_text(encoding="utf-8") for p in profile_dir.glob("*.py"))
    assert all(re.search(re.escape(literal), profile_text) for literal in FLUX_LITERALS)  # the scan looks at real text


def test_the_models_step_follows_the_sessions_family(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A family with two roles and one tokenizer: the models step looks for those, not FLUX.1-dev's four."""
    from lorawizard.core.contract import StepContext
    from lorawizard.core.models import step as models_step

    kept = {"flux", "ae"}
    two = FLUX1_DEV._replace(name="two-roles",
        roles=tuple(role for role in FLUX1_DEV.roles if role.name in kept),
        presets=tuple(p._replace(files=tuple(f for f in p.files if f.role in kept)) for p in FLUX1_DEV.presets),
        text_encoders=FLUX1_DEV.text_encoders[:1],
    )
    use_family(monkeypatch, two)
    session = make_session(project)
    seen: list[str] = []
    result = models_step.run_step(StepContext(session=session, options={
        "action": "find", "on_state": lambda row: seen.append(row.role)}))
    assert list(dict.fromkeys(seen)) == ["flux", "ae", "tokenizers", "captioner"]
    assert result.data["missing"] == ["flux", "ae"]
    assert result.summary.startswith("2 model file(s) missing")
