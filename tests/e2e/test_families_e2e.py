"""Extra (not in the default suite): each model family's command, dataset config and sample prompt file are
accepted by sd-scripts' own parser, validator and prompt loader (issue 27 item 3), in the trainer's Python.

Needs `LORAWIZARD_E2E=<dir>` with `venv/bin/python` and `sd-scripts/` (../shared/e2e/run.sh setup); no model file is
read (the parser takes paths), so it runs in about 20 s on a CPU:
    LORAWIZARD_E2E=/work/e2e python -m pytest -m extra tests/e2e/test_families_e2e.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lorawizard.core.launch import command as cmd
from lorawizard.core.profile import FAMILIES
from lorawizard.core.session.document import Session
from lorawizard.core.train import samples

pytestmark = pytest.mark.extra

E2E = Path(os.environ.get("LORAWIZARD_E2E", "/nonexistent-lorawizard-e2e"))
READY = (E2E / "venv/bin/python").exists() and (E2E / "sd-scripts/flux_train_network.py").exists()
needs_e2e = pytest.mark.skipif(not READY, reason="set LORAWIZARD_E2E to a ready ../shared/e2e setup")

# sd-scripts' own parser, dataset validator and prompt loader, for several commands in one interpreter.
REAL_CHECK = r"""
import json, sys
cases = json.loads(open(sys.argv[1]).read())
sys.argv = ["flux_train_network.py"]
import flux_train_network
from library import config_util, train_util
parser = flux_train_network.setup_parser()
for case in cases:
    args = parser.parse_args(case["options"])
    blueprint = config_util.BlueprintGenerator(config_util.ConfigSanitizer(True, True, args.masked_loss, True)).generate(
        config_util.load_user_config(case["dataset_config"]), args)
    prompts = train_util.load_prompts(args.sample_prompts)
    print("REAL-CHECK " + json.dumps({"name": case["name"], "model_type": args.model_type,
          "apply_t5_attn_mask": args.apply_t5_attn_mask, "guidance_scale": args.guidance_scale,
          "timestep_sampling": args.timestep_sampling, "clip_l": args.clip_l, "model": args.pretrained_model_name_or_path,
          "datasets": len(blueprint.dataset_group.datasets),
          "prompt": {k: prompts[0].get(k) for k in ("sample_steps", "guidance_scale", "scale", "negative_prompt")}}))
"""


@needs_e2e
def test_every_familys_command_is_accepted_by_sd_scripts(tmp_path: Path) -> None:
    cases, expected = [], {}
    for name, family in FAMILIES.items():
        for preset in family.presets:
            project = tmp_path / preset.name
            (project / "dataset" / "1024x1024").mkdir(parents=True)
            run = project / "run"
            run.mkdir()
            session = Session.new(project / "session.toml", name="mylora")
            session.set("paths.sd_scripts", str(E2E / "sd-scripts"))
            session.set("paths.python", str(E2E / "venv/bin/python"))
            session.set("models.family", name)
            session.set("models.preset", preset.name)
            session.set("dataset.trigger", "ohwx")
            overrides = samples.sample_overrides(session, run)
            command = cmd.build_train_command(session, dataset_config=run / "ds.toml", accelerate_config=run / "acc.yaml",
                                              output_dir=run, overrides=overrides)
            cmd.write_dataset_config(session, run / "ds.toml", buckets={"1024x1024": 1})
            options = command.argv[command.argv.index(command.script) + 1:]
            cases.append({"name": preset.name, "options": options, "dataset_config": str(run / "ds.toml")})
            expected[preset.name] = (family, preset)
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases), encoding="utf-8")
    script = tmp_path / "real_check.py"
    script.write_text(REAL_CHECK, encoding="utf-8")
    out = subprocess.run([str(E2E / "venv/bin/python"), str(script), str(spec)], cwd=E2E / "sd-scripts",
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(E2E / "sd-scripts")})
    seen = {(r := json.loads(line.removeprefix("REAL-CHECK ")))["name"]: r
            for line in out.stdout.splitlines() if line.startswith("REAL-CHECK ")}
    assert seen.keys() == expected.keys(), out.stderr[-3000:]
    for name, (family, preset) in expected.items():
        got = seen[name]
        fixed = family.backend.fixed_options
        assert got["model_type"] == fixed.get("model_type", "flux")
        assert got["apply_t5_attn_mask"] is bool(fixed.get("apply_t5_attn_mask", False))
        assert got["guidance_scale"] == fixed["guidance_scale"] and got["timestep_sampling"] == fixed["timestep_sampling"]
        assert (got["clip_l"] is None) is (not family.has_role("clip_l"))
        assert got["model"].endswith("/" + preset.file_for("flux").filename) and got["datasets"] == 1
        prompt = got["prompt"]
        assert (prompt["sample_steps"], prompt["guidance_scale"]) == (family.samples.steps, family.samples.guidance)
        if family.samples.cfg_scale != 1.0:  # Chroma: the CFG scale and its negative prompt reach the sampler
            assert prompt["scale"] == family.samples.cfg_scale and prompt["negative_prompt"] == family.samples.negative_prompt
        else:
            assert prompt["scale"] is None and prompt["negative_prompt"] is None
