"""Text-encoder caches made for other settings (issue 27): sd-scripts checks a `*_flux_te.npz` only for
`apply_t5_attn_mask`, so a switch FLUX.1-dev ↔ schnell (T5 512 ↔ 256 tokens), a new T5-XXL or CLIP-L file would train
on the old caches. Before a run they are removed (said in one line), the person's images and captions never."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lorawizard.core.launch import command as cmd
from lorawizard.core.session.document import Session
from lorawizard.core.train import te_cache
from lorawizard.headless import replay
from tests.support.sessions import save
from tests.support.standin import make_train_project
from tests.support.te_caches import caches, project_with_caches, write_cache


def _replay(session: Session, **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = replay(session.path, ["train"], out=out, err=err, tty=False, **kwargs)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


def test_a_caches_own_arrays_say_its_t5_length_and_mask(tmp_path: Path) -> None:
    write_cache(tmp_path / "a.npz", 256, True)
    assert te_cache.read_cache_header(tmp_path / "a.npz") == (256, True)
    write_cache(tmp_path / "b.npz", 512, False)
    assert te_cache.read_cache_header(tmp_path / "b.npz") == (512, False)
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    assert te_cache.read_cache_header(tmp_path / "c.npz") is None


@pytest.mark.parametrize(("family", "tokens", "mask", "clip"), [
    (None, 512, False, None), ("flux1-krea-dev", 512, False, None), ("flux1-schnell", 256, False, None),
    ("chroma", 512, True, te_cache.DUMMY)])
def test_the_key_follows_the_family(tmp_path: Path, family: str | None, tokens: int, mask: bool,
                                    clip: str | None) -> None:
    session = make_train_project(tmp_path)
    if family:
        session.set("models.family", family)
    key = te_cache.cache_key(session, cmd.trainer_options(session))
    assert (key.family, key.t5_tokens, key.attn_mask, key.clip_l) == (family or "flux1-dev", tokens, mask, clip)


def test_extra_args_t5_length_and_the_t5_file_count(tmp_path: Path) -> None:
    session = make_train_project(tmp_path)
    session.set("train.extra_args", ["--t5xxl_max_token_length", "128"])
    t5 = tmp_path / "t5xxl_fp8_e4m3fn.safetensors"
    t5.write_bytes(b"x" * 10)
    session.set("models.t5xxl", str(t5))
    key = te_cache.cache_key(session, cmd.trainer_options(session))
    assert key.t5_tokens == 128 and key.t5 == "t5xxl_fp8_e4m3fn.safetensors 10"
    other = key.__class__(key.family, 128, False, "t5xxl_fp16.safetensors 9", key.clip_l)
    assert key.changes_from(other) == ["T5-XXL file t5xxl_fp16.safetensors → t5xxl_fp8_e4m3fn.safetensors"]
    assert key.changes_from(key) == []


def test_dev_to_schnell_removes_the_512_token_caches_before_the_run(tmp_path: Path) -> None:
    session = project_with_caches(tmp_path, "flux1-schnell", tokens=512)
    code, out, err = _replay(session, dry_run=True)
    assert code == 0, err
    assert "3 text-encoder caches (*_flux_te.npz)" in out and "would be removed before the run" in out
    assert "T5 512 → 256 tokens" in out and len(caches(session)) == 3  # a dry run removes nothing

    code, out, err = _replay(session)
    assert code == 0, err
    line = next(line for line in out.splitlines() if "text-encoder caches" in line)
    assert line.startswith("train: 3 text-encoder caches") and "removed: made for other settings (T5 512 → 256" in line
    assert caches(session) == []
    kept = sorted(p.name for p in (session.paths.dataset / "512x512").iterdir())
    assert kept == [f"{i:04d}{ext}" for i in range(3) for ext in (".png", ".txt", "_512x512_flux.npz")]
    record = json.loads((session.paths.dataset / te_cache.RECORD_FILE).read_text())
    assert (record["family"], record["t5_tokens"], record["attn_mask"]) == ("flux1-schnell", 256, False)

    # the trainer's new caches (256 tokens) are kept by the next run; back to FLUX.1-dev, they go again
    for png in (session.paths.dataset / "512x512").glob("*.png"):
        write_cache(png.with_name(png.stem + "_flux_te.npz"), 256)
    code, out, _ = _replay(session)
    assert code == 0 and "text-encoder caches" not in out and len(caches(session)) == 3
    session.set("models.family", "flux1-dev")
    save(session)
    code, out, _ = _replay(session)
    assert code == 0 and "T5 256 → 512 tokens" in out and caches(session) == []


def test_caches_that_fit_are_kept_and_the_record_is_written(tmp_path: Path) -> None:
    session = project_with_caches(tmp_path)  # FLUX.1-dev, 512 tokens, no mask: what the caches say
    code, out, err = _replay(session)
    assert code == 0, err
    assert "text-encoder caches" not in out and len(caches(session)) == 3
    assert json.loads((session.paths.dataset / te_cache.RECORD_FILE).read_text())["t5_tokens"] == 512


def test_chroma_after_flux_names_the_mask_and_the_dummy_clip(tmp_path: Path) -> None:
    session = project_with_caches(tmp_path)
    (tmp_path / "clip_l.safetensors").write_bytes(b"clip")
    session.set("models.clip_l", str(tmp_path / "clip_l.safetensors"))
    te_cache.save_record(session, te_cache.cache_key(session, cmd.trainer_options(session)))
    session.set("models.family", "chroma")
    verdict = te_cache.check(session, cmd.trainer_options(session))
    assert len(verdict.files) == 3
    assert verdict.changes == ["T5 attention mask off → on", "CLIP-L clip_l.safetensors → dummy"]


def test_an_unreadable_cache_is_removed_and_other_files_never(tmp_path: Path) -> None:
    session = project_with_caches(tmp_path)
    (session.paths.dataset / "512x512" / "0000_flux_te.npz").write_bytes(b"cut short")
    (session.paths.dataset / "512x512" / "mine_flux_te.npz").write_bytes(b"a person's file")
    line = te_cache.refresh(session, cmd.trainer_options(session))
    assert line is not None and "0000_flux_te.npz cannot be read" in line
    assert caches(session) == ["mine_flux_te.npz"]


def test_beside_another_run_stale_caches_are_refused_not_removed(tmp_path: Path) -> None:
    session = project_with_caches(tmp_path, "flux1-schnell")
    with pytest.raises(ValueError, match="another run of this project is reading them"):
        te_cache.refresh(session, cmd.trainer_options(session), others_running=True)
    assert len(caches(session)) == 3


def test_no_disk_cache_no_check(tmp_path: Path) -> None:
    session = project_with_caches(tmp_path, "flux1-schnell")
    options = {**cmd.trainer_options(session), "cache_text_encoder_outputs_to_disk": False}
    assert te_cache.refresh(session, options) is None
    assert len(caches(session)) == 3 and not (session.paths.dataset / te_cache.RECORD_FILE).exists()
