"""Model files are checked by what they are (their safetensors header), not by their name (issue 24 item 4)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lorawizard.core.contract import StepContext
from lorawizard.core.models.identify import identify, role_problem
from lorawizard.core.profile import FLUX1_DEV
from lorawizard.core.session.document import Session
from tests.support.model_files import KINDS, write_model, write_safetensors
from tests.support.sessions import save


def run(session: Session, **options: object):
    from lorawizard.core.models.step import run_step

    lines: list[str] = []
    states: list = []
    ctx = StepContext(session=session, log=lines.append, options={"on_state": states.append, **options})
    return run_step(ctx), lines, states


def new_session(project: Path) -> Session:
    session = Session.new(project / "session.toml")
    save(session)
    return session


def last(states: list, role: str):
    return [s for s in states if s.role == role][-1]


@pytest.mark.parametrize(("kind", "expected", "dtype", "cell"), [
    ("flux", "flux", "bf16", "FLUX transformer bf16"),
    ("ae", "ae", "fp32", "AE fp32"),
    ("clip_l", "clip_l", "fp16", "CLIP-L fp16"),
    ("t5xxl", "t5xxl", "fp16", "T5-XXL fp16"),
    ("t5xxl_fp8", "t5xxl", "fp8 e4m3fn", "T5-XXL fp8"),
    ("lora", "lora", "bf16", "LoRA bf16"),
    ("clip_g", "other", "fp16", "CLIP-L fp16"),  # CLIP-L's names at another width: a near miss, not CLIP-L
    ("sdxl_unet", "other", "fp16", "other fp16"),
])
def test_a_file_is_told_by_its_header(tmp_path: Path, kind: str, expected: str, dtype: str, cell: str) -> None:
    identity = identify(write_model(tmp_path / "x.safetensors", kind), FLUX1_DEV)
    assert (identity.kind, identity.dtype, identity.cell()) == (expected, dtype, cell)
    assert identity.tensors == len(KINDS[kind])


def test_the_e2e_checkpoint_prefix_and_diffusers_names_are_a_flux_transformer(tmp_path: Path) -> None:
    prefixed = {f"model.diffusion_model.{k}": v for k, v in KINDS["flux"].items()}
    assert identify(write_safetensors(tmp_path / "a.safetensors", prefixed), FLUX1_DEV).kind == "flux"
    diffusers = {"transformer_blocks.0.attn.add_k_proj.bias": ("BF16", [3072])}
    assert identify(write_safetensors(tmp_path / "b.safetensors", diffusers), FLUX1_DEV).kind == "flux"


def test_only_the_header_is_read_and_it_is_bounded(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"x" * 100)  # 8 bytes of "x" read as a length: far over the bound, refused unread
    identity = identify(garbage, FLUX1_DEV)
    assert identity.kind == "unreadable" and "header length" in identity.problem
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 200 * 1024 * 1024) + b"{}")
    assert "not a safetensors file" in identify(huge, FLUX1_DEV).problem
    cut = write_model(tmp_path / "cut.safetensors", "t5xxl")
    with cut.open("r+b") as handle:
        handle.truncate(cut.stat().st_size - 1)  # the last tensor's last byte is missing
    assert "incomplete download" in identify(cut, FLUX1_DEV).problem
    assert identify(tmp_path / "gone.safetensors", FLUX1_DEV).kind == "unreadable"


def test_a_file_of_another_role_is_refused_in_one_line_naming_both(tmp_path: Path) -> None:
    t5 = write_model(tmp_path / "t5xxl_fp16.safetensors", "t5xxl")
    assert role_problem(t5, "clip_l", identify(t5, FLUX1_DEV), FLUX1_DEV) == (
        "t5xxl_fp16.safetensors is a T5-XXL text encoder (fp16), not CLIP-L")
    assert role_problem(t5, "t5xxl", identify(t5, FLUX1_DEV), FLUX1_DEV) is None
    lora = write_model(tmp_path / "mine.safetensors", "lora")
    assert "is a LoRA" in (role_problem(lora, "flux", identify(lora, FLUX1_DEV), FLUX1_DEV) or "")
    clip_g = write_model(tmp_path / "clip_g.safetensors", "clip_g")
    line = role_problem(clip_g, "clip_l", identify(clip_g, FLUX1_DEV), FLUX1_DEV)
    assert line == "clip_g.safetensors has CLIP-L's tensor names but its hidden size is 1280, not 768: not the CLIP-L file"
    for problem in (line, role_problem(t5, "clip_l", identify(t5, FLUX1_DEV), FLUX1_DEV)):
        assert problem is not None and "\n" not in problem


def test_the_t5_file_chosen_for_clip_l_is_an_error_not_found(project: Path) -> None:
    """QA: models.clip_l = the T5 file gave `✓ found (unverified)`."""
    session = new_session(project)
    session.set("models.clip_l", str(write_model(project / "t5xxl_fp16.safetensors", "t5xxl")))
    save(session)
    _result, _, states = run(session, action="find")
    clip = last(states, "clip_l")
    assert clip.state == "error"
    assert clip.note == "models.clip_l: t5xxl_fp16.safetensors is a T5-XXL text encoder (fp16), not CLIP-L"


def test_a_file_by_the_right_name_but_of_another_kind_is_passed_over(project: Path) -> None:
    session = new_session(project)
    write_model(session.paths.models / "clip_l.safetensors", "t5xxl")  # offline: the name says CLIP-L, it is T5
    _result, lines, states = run(session, action="find")
    assert last(states, "clip_l").state == "missing"
    assert any("clip_l.safetensors not used: clip_l.safetensors is a T5-XXL text encoder" in line for line in lines)


def test_an_added_folder_is_searched_by_header_and_says_how_many(project: Path, isolated_home: Path) -> None:
    """QA: "Add folder" on a folder whose files have other names found nothing and said nothing."""
    from lorawizard.core.models.step import add_search_folder

    folder = isolated_home / "stash"
    write_model(folder / "my-flux-tiny.safetensors", "flux")
    write_model(folder / "vae" / "random-ae.sft", "ae")
    write_model(folder / "te" / "clip-random.safetensors", "clip_l")
    write_model(folder / "te" / "t5-random.safetensors", "t5xxl_fp8")
    write_model(folder / "loras" / "ohwx.safetensors", "lora")  # searched, not matched
    (folder / "notes.safetensors").write_bytes(b"not a model")  # searched, unreadable, not matched
    session = new_session(project)
    assert add_search_folder(session, folder) is None
    result, lines, states = run(session, action="find", header_search=True)
    line = "searched 6 files by header, matched 4: FLUX transformer, AE, CLIP-L, T5-XXL"
    assert result.data["header_search"] == line and line in lines
    found = {role: last(states, role) for role in ("flux", "ae", "clip_l", "t5xxl")}
    assert {r: s.state for r, s in found.items()} == dict.fromkeys(found, "found")
    assert found["t5xxl"].path == folder / "te" / "t5-random.safetensors" and found["t5xxl"].what == "T5-XXL fp8"
    assert found["flux"].source == "added folder" and "found by its header" in found["flux"].note
    assert "· FLUX transformer bf16" in found["flux"].line()


def test_headers_are_remembered_per_path_size_and_mtime(project: Path, isolated_home: Path, monkeypatch) -> None:
    from lorawizard.core.models import finder
    from lorawizard.core.models.step import add_search_folder

    folder = isolated_home / "stash"
    flux = write_model(folder / "a.safetensors", "flux")
    write_model(folder / "b.safetensors", "ae")
    session = new_session(project)
    add_search_folder(session, folder)
    read: list[Path] = []
    real = finder.identify

    def counting(path: Path, family):
        read.append(Path(path))
        return real(path, family)

    monkeypatch.setattr(finder, "identify", counting)
    run(session, action="find")
    assert sorted(p.name for p in read) == ["a.safetensors", "b.safetensors"]
    read.clear()
    run(session, action="find")
    assert read == []  # the second look reads no header
    write_model(flux, "flux")  # rewritten: new mtime, read again
    run(session, action="find")
    assert read == [flux]


def test_the_tokenizers_folder_check(tmp_path: Path) -> None:
    from lorawizard.core.models.files import tokenizer_problem

    tokenizers = FLUX1_DEV.tokenizers
    base = tmp_path / "tok"
    assert tokenizer_problem(base, tokenizers) == f"none yet: {base} does not exist (Ctrl+G downloads them into it)"
    base.write_text("")
    assert tokenizer_problem(base, tokenizers) == f"{base} is a file, not a folder"
    base.unlink()
    clip = tokenizers[0]
    for name in clip.required:  # the CLIP tokenizer's own files, directly inside
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text("{}")
    assert tokenizer_problem(base, tokenizers) == (
        f"{base} is the openai/clip-vit-large-patch14 tokenizer's own folder: choose the folder that holds "
        "openai_clip-vit-large-patch14/ and google_t5-v1_1-xxl/")
    for name in clip.required:
        (base / name).rename(base / "x")
        (base / clip.folder).mkdir(exist_ok=True)
        (base / clip.folder / name).write_text("{}")
    assert tokenizer_problem(base, tokenizers) == (
        f"3 of 7 files missing from {base}, e.g. google_t5-v1_1-xxl/spiece.model (Ctrl+G downloads them)")
    for name in tokenizers[1].required:
        (base / tokenizers[1].folder).mkdir(exist_ok=True)
        (base / tokenizers[1].folder / name).write_text("{}")
    assert tokenizer_problem(base, tokenizers) is None


def test_the_tokenizers_row_names_what_its_folder_lacks(project: Path) -> None:
    session = new_session(project)
    session.set("paths.tokenizers", str(project / "tok"))
    (project / "tok" / "openai_clip-vit-large-patch14").mkdir(parents=True)
    save(session)
    _result, _, states = run(session, action="find")
    row = last(states, "tokenizers")
    assert row.state == "missing"
    assert row.note == (f"7 of 7 files missing from {project}/tok, e.g. openai_clip-vit-large-patch14/vocab.json "
                        "(Ctrl+G downloads them)")


def test_the_captioner_row_follows_a_local_captions_model_folder(project: Path) -> None:
    """QA: the row still showed "missing (7.5 GB) Qwen/Qwen2.5-VL-3B" after captions.model named a local folder."""
    from lorawizard.core.models.captioners import CAPTIONER_ROLE, captioner_row

    folder = project / "qwen-local"
    folder.mkdir()
    session = new_session(project)
    session.set("captions.model", str(folder))
    save(session)
    row = captioner_row(session)
    assert row.state == "error" and "has no config.json" in row.note and "Qwen" not in row.line()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        (folder / name).write_text("{}")
    row = captioner_row(session)
    assert (row.state, row.path, row.size) == ("found", folder, None)
    _result, _, states = run(session, action="find")
    shown = [s for s in states if s.role == CAPTIONER_ROLE]
    assert shown and shown[-1].state == "found" and shown[-1].path == folder


def test_replay_stops_at_a_file_of_the_wrong_role_with_one_line(project: Path) -> None:
    """Replay's models step (a download run) with everything present but models.clip_l = the T5 file: not ok, the
    summary is the one line naming both, and nothing is downloaded in its place."""
    session = new_session(project)
    models = session.paths.models
    write_model(models / "flux1-dev-fp8.safetensors", "flux")
    write_model(models / "ae.safetensors", "ae")
    write_model(models / "t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp8")
    for tokenizer in FLUX1_DEV.tokenizers:
        for name in tokenizer.required:
            (models / "tokenizers" / tokenizer.folder).mkdir(parents=True, exist_ok=True)
            (models / "tokenizers" / tokenizer.folder / name).write_text("{}")
    session.set("models.clip_l", str(models / "t5xxl_fp8_e4m3fn.safetensors"))
    save(session)
    result, _, _ = run(session)
    assert not result.ok
    assert result.summary == ("models.clip_l: t5xxl_fp8_e4m3fn.safetensors is a T5-XXL text encoder (fp8 e4m3fn), "
                              "not CLIP-L")
    assert not (models / "clip_l.safetensors").exists()


def test_offline_the_missing_tokenizers_point_at_the_field_not_at_a_download(project: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline with every model file found, the line said "tokenizers missing: Ctrl+G downloads them": Ctrl+G
    cannot fetch anything then; the field that takes a local folder can help."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    session = new_session(project)
    models = session.paths.models
    for name, kind in (("flux1-dev-fp8.safetensors", "flux"), ("ae.safetensors", "ae"),
                       ("clip_l.safetensors", "clip_l"), ("t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp8")):
        write_model(models / name, kind)
    result, _, _ = run(session, action="find")
    assert not result.ok
    assert result.summary == "tokenizers missing: offline: set the tokenizers field to a folder that has them"
