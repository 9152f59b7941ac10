"""The finder: ComfyUI layouts, a populated Hugging Face cache, added folders, overrides, the hash cache."""

from __future__ import annotations

from pathlib import Path

from lorawizard.core.contract import StepContext
from lorawizard.core.session.document import Session
from tests.support.fakehub import FakeHub
from tests.support.model_files import write_model
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


def model_gets(hub: FakeHub) -> list[dict]:
    return [e for e in hub.requests(role="cdn", method="GET") if e.get("file", "").endswith(".safetensors")]


def test_comfyui_tree_and_hf_cache_are_used_in_place(hub: FakeHub, project: Path, isolated_home: Path):
    from huggingface_hub import hf_hub_download

    data = hub.data  # type: ignore[attr-defined]
    comfy = isolated_home / "ComfyUI" / "models"
    (comfy / "unet" / "flux").mkdir(parents=True)
    (comfy / "vae").mkdir(parents=True)
    (comfy / "clip").mkdir(parents=True)
    (comfy / "unet" / "flux" / "my-flux-fp8.safetensors").write_bytes(data["flux1-dev-fp8.safetensors"])
    (comfy / "vae" / "ae.sft").write_bytes(data["ae.safetensors"])
    decoy = comfy / "clip" / "clip_l.safetensors"  # right name and size, wrong bytes
    decoy.write_bytes(bytes(len(data["clip_l.safetensors"])))
    (comfy / "text_encoders").mkdir(parents=True)
    (comfy / "text_encoders" / "clip-l.safetensors").write_bytes(data["clip_l.safetensors"])
    cache = isolated_home / ".cache" / "huggingface" / "hub"
    hf_hub_download("camenduru/FLUX.1-dev", "t5xxl_fp8_e4m3fn.safetensors", cache_dir=str(cache), endpoint=hub.endpoint)
    hub.log.clear()

    session = new_session(project)
    result, lines, _ = run(session)
    assert result.ok, result.summary
    assert model_gets(hub) == []  # nothing re-downloaded
    paths = result.data["paths"]
    assert paths["flux"] == str(comfy / "unet" / "flux" / "my-flux-fp8.safetensors")
    assert paths["ae"] == str(comfy / "vae" / "ae.sft")
    assert paths["clip_l"] == str(comfy / "text_encoders" / "clip-l.safetensors")
    assert "/.cache/huggingface/hub/models--camenduru--FLUX.1-dev/snapshots/" in paths["t5xxl"]
    assert any("right size but another sha256" in line and "clip_l.safetensors" in line for line in lines)
    assert decoy.read_bytes() == bytes(len(data["clip_l.safetensors"]))  # the user's files are untouched
    assert not (project / "models" / "flux1-dev-fp8.safetensors").exists()  # used in place, not copied
    from lorawizard.core.models.files import resolved_model_paths

    assert {k: str(v) for k, v in resolved_model_paths(session).items()} == paths


def test_second_look_uses_the_hash_cache(hub: FakeHub, project: Path, isolated_home: Path, monkeypatch):
    folder = isolated_home / "my models"
    folder.mkdir()
    data = hub.data  # type: ignore[attr-defined]
    for name in ("flux1-dev-fp8.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"):
        (folder / name.replace(".safetensors", "-copy.safetensors")).write_bytes(data[name])
    session = new_session(project)
    from lorawizard.core.models.step import add_search_folder

    assert add_search_folder(session, project / "nope") is not None
    assert add_search_folder(session, folder) is None
    result, _, states = run(session, action="find")
    assert result.summary == "tokenizers missing: Ctrl+G downloads them"
    assert result.data["missing"] == [] and all(Path(p).parent == folder for p in result.data["paths"].values()), result.data
    assert {s.role: s.source for s in states if s.state == "found"}["flux"] == "added folder"

    hashed: list[Path] = []
    original_open = Path.open

    def counting_open(self: Path, *args, **kwargs):
        if self.parent == folder:
            hashed.append(self)
        return original_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    result, _, _ = run(session, action="find")
    assert result.data["missing"] == [] and hashed == []  # path + size + mtime unchanged: no file was read again
    target = folder / "ae-copy.safetensors"
    target.write_bytes(data["ae.safetensors"])  # same bytes, new mtime: hashed once more
    hashed.clear()
    result, _, _ = run(session, action="find")
    assert hashed == [target]


def test_override_is_used_and_its_mismatch_is_said(hub: FakeHub, project: Path):
    mine = write_model(project / "my_clip.safetensors", "clip_l")  # a CLIP-L by its header, not the preset's bytes
    session = new_session(project)
    session.set("models.clip_l", str(mine))
    save(session)
    _result, _, states = run(session, action="find")
    clip = [s for s in states if s.role == "clip_l"][-1]
    assert clip.state == "found" and clip.path == mine and "not the preset's" in clip.note
    from lorawizard.core.models.files import resolved_model_paths

    assert resolved_model_paths(session)["clip_l"] == mine


def test_offline_before_first_contact_finds_by_name_unverified(project: Path):
    session = new_session(project)
    models = session.paths.models
    models.mkdir()
    write_model(models / "ae.safetensors", "ae")  # an AE by its header
    result, lines, states = run(session, action="find")
    ae = [s for s in states if s.role == "ae"][-1]
    assert ae.state == "found" and "unverified" in ae.note
    assert [s for s in states if s.role == "flux"][-1].state == "missing"
    assert any("offline" in line for line in lines)
    assert result.summary == ("3 model file(s) missing (size unknown until the hub is reached) + tokenizers: "
                              "offline: a adds a folder, f picks a file")


def test_hash_cache_survives_restart_and_ignores_changed_files(tmp_path: Path):
    from lorawizard.core.models.finder import HashCache, sha256_of

    file = tmp_path / "f.bin"
    file.write_bytes(b"hello")
    cache = HashCache(tmp_path / "cache.json")
    first = sha256_of(file, cache)
    cache.save()
    again = HashCache(tmp_path / "cache.json")
    assert again.get(file) == first
    file.write_bytes(b"world")
    assert again.get(file) is None
    assert sha256_of(file, again) != first


def test_a_wrong_file_at_the_destination_is_never_overwritten(hub: FakeHub, project: Path):
    session = new_session(project)
    models = session.paths.models
    models.mkdir()
    (models / "ae.safetensors").write_bytes(b"mine")
    result, _, _ = run(session)
    assert not result.ok and "is not the preset's file" in result.summary, result.summary
    assert (models / "ae.safetensors").read_bytes() == b"mine"


def test_an_override_that_is_no_safetensors_file_is_an_error(project: Path):
    """QA: models.flux set (by hand, or before the chooser checked) to a text file was "found"."""
    mine = project / "requirements.txt"
    mine.write_text("torch\n")
    session = new_session(project)
    session.set("models.flux", str(mine))
    save(session)
    _result, _, states = run(session, action="find")
    flux = [s for s in states if s.role == "flux"][-1]
    assert flux.state == "error" and "not a .safetensors file" in flux.note
