"""A project with finished runs on disk (no trainer): run.json, epoch LoRAs with sd-scripts' metadata, sample PNGs and
the prompt file, for the base run (`runs/<id>/`) and variants (`runs/variants/<V>/<id>/`)."""

from __future__ import annotations

import json
from pathlib import Path

from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.session.document import Session
from tests.support.model_files import write_safetensors

PROMPTS = ["mychar, a photo, plain background", "mychar on a city street at night, neon lights"]


def write_sample(folder: Path, output_name: str, epoch: int, index: int, *, shade: int = 0, size: int = 48,
                 stamp: str | None = None) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{output_name}_e{epoch:06d}_{index:02d}_{stamp or f'20261125{epoch:06d}'}_42.png"
    picture = Image.new("RGB", (size, size), ((shade + epoch * 30) % 256, (index * 90) % 256, 120))
    picture.save(path)
    return path


def make_run(session: Session, run_id: str, *, variant: str | None = None, epochs: list[int], prompts: list[str] | None
             = None, started_ts: float = 0.0, shade: int = 0, argv: list[str] | None = None,
             resumed_from: RunRecord | None = None) -> RunRecord:
    """A finished run: samples for each of `epochs` (0 = baseline) and every prompt, a LoRA for each epoch > 0."""
    runs_dir = Path(session.paths.runs)
    folder = runs_dir / "variants" / variant / run_id if variant else runs_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    output = f"{session.name}-{variant}" if variant else session.name
    prompts = PROMPTS if prompts is None else prompts
    (folder / "sample_prompts.json").write_text(json.dumps([{"prompt": p} for p in prompts]), encoding="utf-8")
    for epoch in epochs:
        for index in range(len(prompts)):
            write_sample(folder / "sample", output, epoch, index, shade=shade)
        if epoch:
            write_safetensors(folder / f"{output}-{epoch:06d}.safetensors", {"w": ("F16", [8])},
                              metadata={"ss_epoch": str(epoch), "ss_steps": str(epoch * 10)})
    record = RunRecord(run_id=run_id, dir=folder, argv=list(argv or []), env={}, cwd=str(folder), output_name=output,
                       started_ts=started_ts or float(len(run_id)), extra={"variant": variant} if variant else {},
                       resumed_from=str(resumed_from.dir / "state") if resumed_from else None)
    record.save()
    return record
