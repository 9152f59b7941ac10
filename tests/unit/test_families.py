"""The base-model families (issue 27): `[models] family`, and every step reading its profile — FLUX.1-dev sessions
unchanged byte for byte, Krea [dev], schnell and Chroma each with their own files, options, budgets, samples, card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorawizard.core import profile
from lorawizard.core.captions.tokens import estimate_counter
from lorawizard.core.launch import command as cmd
from lorawizard.core.profile import CHROMA, FAMILIES, FLUX1_DEV, FLUX1_KREA_DEV, FLUX1_SCHNELL, family_for
from lorawizard.core.session.document import FIELDS, Session, SessionError
from lorawizard.core.train import samples

GOLDEN = Path(__file__).parents[1] / "support" / "golden" / "flux1-dev-session.json"


def make_session(project: Path, family: str | None = None, **values: object) -> Session:
    session = Session.new(project / "session.toml", name="mylora")
    session.set("paths.sd_scripts", str(project / "sd-scripts"))
    if family is not None:
        session.set("models.family", family)
    for key, value in values.items():
        session.set(key.replace("__", "."), value)
    return session


def command(session: Session, **overrides: object) -> cmd.TrainCommand:
    run = session.project_dir / "run"
    run.mkdir(exist_ok=True)
    return cmd.build_train_command(session, dataset_config=run / "ds.toml", accelerate_config=run / "acc.yaml",
                                   output_dir=run, overrides=overrides or None)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(f"--{name}") + 1]


# ---------------------------------------------------------------- the session key


def test_the_family_key_defaults_to_flux1_dev_and_names_every_family(project: Path) -> None:
    assert family_for(make_session(project)) is FLUX1_DEV
    assert tuple(FAMILIES) == ("flux1-dev", "flux1-krea-dev", "flux1-schnell", "chroma")
    for name, family in FAMILIES.items():
        assert family_for(make_session(project, name)) is family


def test_an_unknown_family_is_refused_in_one_line_listing_the_families(project: Path) -> None:
    (project / "session.toml").write_text('version = 1\n[models]\nfamily = "sdxl"\n', encoding="utf-8")
    with pytest.raises(SessionError) as caught:
        Session.load(project / "session.toml")
    line = str(caught.value)
    assert "\n" not in line and "models.family" in line and ":3:" in line
    assert all(f'"{name}"' in line for name in FAMILIES)


def test_a_preset_without_a_family_key_names_its_family(project: Path) -> None:
    """An older session that chose a preset by name keeps it; the family follows it."""
    assert family_for(make_session(project, models__preset="chroma1-hd-bf16")) is CHROMA
    session = make_session(project, "chroma", models__preset="flux1-dev-fp8")  # the key wins; the preset is not Chroma's
    assert family_for(session) is CHROMA
    from lorawizard.core.models.files import preset_name, resolved_model_paths

    assert preset_name(session) == "chroma1-hd-bf16"
    assert sorted(resolved_model_paths(session)) == ["ae", "flux", "t5xxl"]


def test_defaults_follow_the_family_until_a_person_sets_them(project: Path) -> None:
    chroma, schnell = make_session(project, "chroma"), make_session(project, "flux1-schnell")
    assert (chroma.train.samples.steps, chroma.train.samples.guidance, chroma.train.samples.cfg_scale) == (20, 0.0, 4.0)
    assert "blurry" in chroma.train.samples.negative_prompt
    assert (schnell.train.samples.steps, schnell.train.samples.cfg_scale) == (4, 1.0)
    dev = make_session(project)
    assert (dev.train.samples.steps, dev.train.samples.guidance) == (FIELDS["train.samples.steps"].default, 3.5)
    chroma.set("train.samples.steps", 30)
    assert chroma.train.samples.steps == 30


def test_a_chroma_session_with_a_clip_l_file_warns_and_ignores_it(project: Path) -> None:
    (project / "session.toml").write_text(
        'version = 1\n[paths]\nsd_scripts = "sd"\n[models]\nfamily = "chroma"\nclip_l = "clip_l.safetensors"\n',
        encoding="utf-8")
    session = Session.load(project / "session.toml")
    assert any("models.clip_l" in w and "Chroma has no clip_l file; ignored" in w and ":6:" in w for w in session.warnings)
    assert "--clip_l" not in command(session).argv


# ---------------------------------------------------------------- the command


def test_flux1_dev_sessions_keep_their_command_dataset_config_and_prompts_byte_for_byte(project: Path) -> None:
    """A session without `[models] family`: what the wizard wrote before the families (the golden file was made by
    the commit before them, with the same session) is what it writes now."""
    session = make_session(project, dataset__trigger="ohwx", gpu__vram_preset="16gb",
                           train__extra_args=["--noise_offset", "0.05"])
    run = project / "run"
    run.mkdir()
    overrides = samples.sample_overrides(session, run)
    argv = command(session, **overrides).argv
    cmd.write_dataset_config(session, run / "ds.toml", buckets={"1024x1024": 3, "1024x512": 2})
    seen = {"argv": argv, "dataset_config": (run / "ds.toml").read_text(encoding="utf-8"),
            "prompts": (run / samples.PROMPT_FILE).read_text(encoding="utf-8")}
    golden = json.loads(GOLDEN.read_text(encoding="utf-8").replace("{project}", str(project)))
    assert seen == golden


def test_chromas_command_has_its_fixed_options_and_no_clip_l(project: Path) -> None:
    argv = command(make_session(project, "chroma")).argv
    assert "--clip_l" not in argv and "--discrete_flow_shift" not in argv
    assert option(argv, "model_type") == "chroma" and "--apply_t5_attn_mask" in argv
    assert option(argv, "guidance_scale") == "0.0" and option(argv, "timestep_sampling") == "sigmoid"
    assert option(argv, "model_prediction_type") == "raw"
    assert option(argv, "pretrained_model_name_or_path").endswith("/Chroma1-HD.safetensors")
    assert [w for w in argv if w in ("--pretrained_model_name_or_path", "--t5xxl", "--ae")] == [
        "--pretrained_model_name_or_path", "--t5xxl", "--ae"]


def test_chroma_refuses_cpu_offload_checkpointing_in_one_line(project: Path) -> None:
    session = make_session(project, "chroma", train__extra_args=["--cpu_offload_checkpointing"])
    with pytest.raises(cmd.CommandError) as caught:
        command(session)
    assert "\n" not in str(caught.value) and "Chroma cannot use it" in str(caught.value)
    assert "--cpu_offload_checkpointing" in command(make_session(project, train__extra_args=["--cpu_offload_checkpointing"])).argv


def test_a_family_cannot_be_changed_through_extra_args(project: Path) -> None:
    with pytest.raises(cmd.CommandError, match="models.family"):
        command(make_session(project, train__extra_args=["--model_type", "chroma"]))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_familys_command_passes_the_options_table(project: Path, name: str) -> None:
    """Every option and value of each family's command is one sd-scripts' parser accepts (the table captured from it);
    the preset files are the family's."""
    family = FAMILIES[name]
    for preset in family.presets:
        argv = command(make_session(project, name, models__preset=preset.name)).argv
        assert option(argv, "pretrained_model_name_or_path").endswith("/" + preset.file_for("flux").filename)
        for role, flag in family.backend.role_options:
            assert option(argv, flag).endswith("/" + preset.file_for(role).filename)
    assert {n: v for n, v in command(make_session(project, name)).options.items() if n in family.backend.fixed_options} == \
        dict(family.backend.fixed_options)


def test_krea_and_schnell_train_as_flux_with_their_own_files(project: Path) -> None:
    krea = command(make_session(project, "flux1-krea-dev")).argv
    schnell = command(make_session(project, "flux1-schnell")).argv
    assert option(krea, "pretrained_model_name_or_path").endswith("/flux1-krea-dev.safetensors")
    assert option(schnell, "pretrained_model_name_or_path").endswith("/flux1-schnell-fp8.safetensors")
    for argv in (krea, schnell):
        assert "--model_type" not in argv and "--clip_l" in argv and option(argv, "discrete_flow_shift") == "3.1582"


# ---------------------------------------------------------------- budgets, samples, card, VRAM


def test_token_budgets_are_the_familys() -> None:
    assert (FLUX1_DEV.budget("clip_l"), FLUX1_DEV.budget("t5xxl")) == (77, 512)
    assert (FLUX1_SCHNELL.budget("clip_l"), FLUX1_SCHNELL.budget("t5xxl")) == (77, 256)  # sd-scripts: 256 for schnell
    assert (CHROMA.budget("clip_l"), CHROMA.budget("t5xxl")) == (None, 512)
    chroma = estimate_counter(family=CHROMA)
    assert chroma.over(500, 10) == (False, False) and chroma.budget_line(5, 9) == "T5 9/512"
    schnell = estimate_counter(family=FLUX1_SCHNELL)
    assert schnell.over(78, 300) == (True, True) and schnell.budget_line(5, 9) == "CLIP 5/77 · T5 9/256"
    # Chroma's trainer still reads CLIP-L's tokenizer (sd-scripts' FluxTokenizeStrategy loads both)
    assert [t.repo for t in CHROMA.tokenizers] == [t.repo for t in FLUX1_DEV.tokenizers]


def test_chroma_samples_carry_a_cfg_and_a_negative_prompt(project: Path) -> None:
    run = project / "run"
    run.mkdir()
    samples.sample_overrides(make_session(project, "chroma", dataset__trigger="ohwx"), run)
    entries = json.loads((run / samples.PROMPT_FILE).read_text(encoding="utf-8"))
    assert {(e["scale"], e["guidance_scale"], e["sample_steps"]) for e in entries} == {(4.0, 0.0, 20)}
    assert all(e["negative_prompt"].startswith("low quality") for e in entries)
    samples.sample_overrides(make_session(project, "flux1-schnell"), run)
    entries = json.loads((run / samples.PROMPT_FILE).read_text(encoding="utf-8"))
    assert {e["sample_steps"] for e in entries} == {4} and not any("scale" in e for e in entries)


def test_the_model_card_names_the_familys_base_model_and_licence(project: Path) -> None:
    from lorawizard.core.publish.step import model_card

    lora = project / "mylora.safetensors"
    card = model_card(make_session(project, "chroma", models__preset="chroma1-base-bf16"), lora, {}, [])
    assert 'base_model: "lodestones/Chroma1-Base"' in card and "license: apache-2.0\n" in card
    assert "license_name" not in card and '- "chroma"' in card and "derivative of Chroma" in card
    krea = model_card(make_session(project, "flux1-krea-dev"), lora, {}, [])
    assert 'base_model: "black-forest-labs/FLUX.1-Krea-dev"' in krea and "license: other" in krea
    assert 'license_name: "flux-1-dev-non-commercial-license"' in krea
    schnell = model_card(make_session(project, "flux1-schnell"), lora, {}, [])
    assert 'base_model: "black-forest-labs/FLUX.1-schnell"' in schnell and "license: apache-2.0" in schnell


def test_vram_presets_are_the_familys(project: Path) -> None:
    from lorawizard.core.gpu.presets import load_presets

    chroma = {p.name: p.blocks_to_swap for p in load_presets(make_session(project, "chroma"))}
    dev = {p.name: p.blocks_to_swap for p in load_presets(make_session(project))}
    assert chroma.keys() == dev.keys()
    assert all(chroma[name] <= dev[name] for name in dev) and chroma["12gb"] < dev["12gb"]  # smaller blocks, fewer swapped
    assert FLUX1_SCHNELL.vram_presets == FLUX1_DEV.vram_presets  # the docs' FLUX.1 table is for dev and schnell


def test_every_family_is_complete() -> None:
    for family in FAMILIES.values():
        for preset in family.presets:
            assert sorted(f.role for f in preset.files) == sorted(family.role_names), preset.name
            assert preset.precision in ("fp8", "16bit")
        assert {role for role, _ in family.backend.role_options} == set(family.role_names)
        assert (family.signature is not None and family.note) or family is FLUX1_DEV
    assert FLUX1_KREA_DEV.signature == FLUX1_DEV.signature  # the same architecture: headers cannot tell them apart
    assert len({p.name for f in FAMILIES.values() for p in f.presets}) == sum(len(f.presets) for f in FAMILIES.values())
    assert profile.all_role_names() == ("flux", "ae", "clip_l", "t5xxl")


# ---------------------------------------------------------------- the trainer's release


def _git(cwd: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
                   cwd=cwd, check=True, capture_output=True)


def test_the_clone_fix_checks_out_a_release_tag() -> None:
    from lorawizard.core.environment.checkout import DEFAULT_BRANCH, PINNED_TAG, clone_argv

    assert DEFAULT_BRANCH == PINNED_TAG == "v0.10.1"
    assert clone_argv(Path("/x"))[3:5] == ["--branch", "v0.10.1"]


def test_a_checkout_older_than_chroma_needs_is_warned_with_its_tag(project: Path) -> None:
    """A git checkout at a tag without Chroma (no library/chroma_models.py): the environment step names the tag and
    says what Chroma needs; FLUX.1-dev is fine with it; at a release with Chroma, so is Chroma."""
    import shutil

    from lorawizard.core.environment.checkout import family_problem, inspect_checkout
    from lorawizard.core.environment.doctor import _checkout_finding

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    sd = project / "sd-scripts"
    (sd / "library").mkdir(parents=True)
    (sd / "flux_train_network.py").write_text("# FLUX\n", encoding="utf-8")
    (sd / "train_network.py").write_text("# base\n", encoding="utf-8")
    _git(sd, "init", "-q")
    _git(sd, "add", ".")
    _git(sd, "commit", "-q", "-m", "old")
    _git(sd, "tag", "v0.9.1")
    checkout = inspect_checkout(sd)
    assert checkout.tag == "v0.9.1" and "release v0.9.1" in checkout.describe()
    assert family_problem(checkout, FLUX1_DEV) is None
    line = family_problem(checkout, CHROMA) or ""
    assert "release v0.9.1" in line and "older than Chroma needs: sd-scripts v0.10.0 or later" in line
    finding = _checkout_finding(make_session(project, "chroma"), sd, checkout)
    assert finding.status == "warning" and "checkout v0.10.1" in finding.fix
    assert _checkout_finding(make_session(project), sd, checkout).status == "ok"
    (sd / "library" / "chroma_models.py").write_text("# Chroma\n", encoding="utf-8")
    _git(sd, "add", ".")
    _git(sd, "commit", "-q", "-m", "chroma")
    later = inspect_checkout(sd)
    assert later.tag == "v0.9.1+" and family_problem(later, CHROMA) is None


def test_the_models_step_says_the_familys_note_and_the_ignored_clip_l(project: Path) -> None:
    from lorawizard.core.contract import StepContext
    from lorawizard.core.models import step as models_step

    session = make_session(project, "chroma", models__clip_l="clip_l.safetensors")
    lines: list[str] = []
    result = models_step.run_step(StepContext(session=session, options={"action": "find"}, log=lines.append))
    assert any(line.startswith("Chroma: No CLIP-L") for line in lines)
    assert "models.clip_l: Chroma has no clip_l file; ignored (kept in session.toml)" in lines
    assert result.data["missing"] == ["flux", "ae", "t5xxl"]


# ---------------------------------------------------------------- an fp8 file trained as a 16-bit base


def test_an_fp8_file_with_a_16bit_base_is_warned_in_one_line(tmp_path: Path) -> None:
    """sd-scripts loads the fp8 file cast to bf16 without --fp8_base: no quality gained, twice the memory. Said once,
    in the plan's notes (replay: `train: warning: …`); a 16-bit file, or fp8 as the base precision, says nothing."""
    import io

    from lorawizard.core.train.step import fp8_file_line, plan_run
    from lorawizard.headless import replay
    from tests.support.model_files import KINDS, write_safetensors
    from tests.support.sessions import save
    from tests.support.standin import make_train_project

    session = make_train_project(tmp_path, epochs=1)
    fp8 = write_safetensors(tmp_path / "flux1-dev-fp8.safetensors",
                            {k: ("F8_E4M3", shape) for k, (_, shape) in KINDS["flux"].items()})
    bf16 = write_safetensors(tmp_path / "flux1-dev.safetensors", KINDS["flux"])
    session.set("models.flux", str(fp8))
    assert fp8_file_line(session, cmd.trainer_options(session)) is None  # base_precision fp8 (the default)
    session.set("train.base_precision", "16bit")
    line = fp8_file_line(session, cmd.trainer_options(session))
    assert line is not None and "\n" not in line
    assert line.startswith("warning: flux1-dev-fp8.safetensors holds fp8 weights") and "upcasts" in line
    session.set("train.extra_args", ["--fp8_base"])  # the person's own --fp8_base: loaded as fp8, nothing to say
    assert fp8_file_line(session, cmd.trainer_options(session)) is None
    session.set("train.extra_args", [])
    session.set("models.flux", str(bf16))
    assert fp8_file_line(session, cmd.trainer_options(session)) is None
    session.set("models.flux", None)  # not there yet: the file set's precision (flux1-dev-fp8 by default)
    assert "holds fp8 weights" in (fp8_file_line(session, cmd.trainer_options(session)) or "")
    session.set("models.preset", "flux1-dev-bf16")
    assert fp8_file_line(session, cmd.trainer_options(session)) is None

    session.set("models.preset", None)
    session.set("models.flux", str(fp8))
    save(session)
    assert plan_run(session).notes[0] == line
    out, err = io.StringIO(), io.StringIO()
    assert replay(session.path, ["train"], dry_run=True, out=out, err=err, tty=False) == 0, err.getvalue()
    assert out.getvalue().count("holds fp8 weights") == 1
