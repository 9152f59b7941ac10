"""Auto-captions: instruction, cleaning (table-driven), review statuses, and the subprocess protocol through the
stand-in captioner (tests/support/standin/caption_images.py) — drafts, skips, OOM retry, cancel, fatal reasons."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lorawizard.core.captions import autocaption as ac
from lorawizard.core.captions import captionset as core
from lorawizard.core.captions import step as captions_step
from lorawizard.core.captions.captionset import AUTO, REVIEWED, CaptionSet
from lorawizard.core.captions.tokens import estimate_counter
from lorawizard.core.contract import Cancelled, StepFailed
from lorawizard.core.models import catalog
from lorawizard.core.session.document import Session, SessionError
from tests.support.captions_fixtures import make_project
from tests.support.sessions import save
from tests.support.standin import make_standin_captioner_python
from tests.support.waiting import pid_gone, until

# ---------------------------------------------------------------- cleaning (table-driven)

CLEANING = [
    ("preamble", "The image shows a woman in a red coat.", "A woman in a red coat."),
    ("preamble depicts", "This image depicts a man on a bike at dusk.", "A man on a bike at dusk."),
    ("in the image", "In this image, a dog runs across wet sand.", "A dog runs across wet sand."),
    ("here is", "Sure! Here is a detailed description of the image: A red door.", "A red door."),
    ("photo of", "A photo of a cat on a sofa.", "A cat on a sofa."),
    ("bold and italics", "A **red** coat and *blue* jeans.", "A red coat and blue jeans."),
    ("heading and list", "# Caption\n- A red coat.\n- Blue jeans.", "Caption. A red coat. Blue jeans."),
    ("newlines", "A red coat\nstanding by a window", "A red coat. Standing by a window"),
    ("blank lines", "A red coat.\n\n\nWarm light.", "A red coat. Warm light."),
    ("repeated sentences", "A red coat. Warm light. A red coat. warm light!", "A red coat. Warm light."),
    ("looping phrases", "Red, red, red, red, red.", "Red."),
    ("quotes", '"A red coat."', "A red coat."),
    ("trigger removed", "ohwx wears a red coat.", "Wears a red coat."),
    ("lowercase start", "a red coat.", "A red coat."),
    ("empty", "   \n  ", ""),
    ("only preamble", "The image shows", ""),
    ("code fence", "```\nignored\n``` A red coat.", "A red coat."),
]


@pytest.mark.parametrize(("name", "raw", "want"), CLEANING, ids=[c[0] for c in CLEANING])
def test_clean_caption(name: str, raw: str, want: str) -> None:
    assert ac.clean_caption(raw, trigger="ohwx") == want


def test_clean_drops_the_unfinished_sentence_of_a_truncated_answer() -> None:
    raw = "A cat sits on a mat. " * 30 + "A cat sits on"
    assert ac.clean_caption(raw, truncated=True) == "A cat sits on a mat."
    assert ac.clean_caption("A cat sits on a mat. A dog", truncated=False) == "A cat sits on a mat. A dog"


def test_clean_keeps_within_the_token_budget() -> None:
    raw = " ".join(f"Sentence number {i} is here." for i in range(50))
    counter = estimate_counter()
    cleaned = ac.clean_caption(raw, fits=lambda text: counter.count(text)[1] <= 40)
    assert counter.count(cleaned)[1] <= 40
    assert cleaned.startswith("Sentence number 0 is here.")
    assert len(cleaned) < len(raw) // 3


# ---------------------------------------------------------------- instruction and settings


def test_instruction_follows_kind_and_trigger(tmp_path: Path) -> None:
    subject = ac.build_instruction("subject", "ohwx")
    style = ac.build_instruction("style", "")
    assert "ohwx" in subject and "face" in subject and "clothing" in subject and "\n" not in subject
    assert "Never describe the style" in style and "ohwx" not in style
    session = Session.new(tmp_path / "session.toml")
    session.set("dataset.trigger", "zq")
    session.set("captions.kind", "style")
    assert ac.instruction_for(session) == ac.build_instruction("style", "zq")
    session.set("captions.instruction", "  Describe   only the   background. ")
    assert ac.instruction_for(session) == "Describe only the background."
    with pytest.raises(SessionError, match="captions.kind"):
        session.set("captions.kind", "person")


def test_max_tokens_is_bounded_by_the_t5_budget(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml")
    assert ac.max_new_tokens(session) == 160
    session.set("captions.max_tokens", 480)
    assert ac.max_new_tokens(session, trigger_tokens=100) == 512 - 100 - ac.T5_MARGIN
    with pytest.raises(SessionError, match="T5 budget"):
        session.set("captions.max_tokens", 600)


# ---------------------------------------------------------------- review statuses


def _set(tmp_path: Path, **kwargs) -> tuple[Session, CaptionSet]:
    session = make_project(tmp_path / "p", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], **kwargs)
    return session, CaptionSet.from_session(session, counter=estimate_counter())


def test_auto_drafts_are_a_status_beside_missing_and_reviewed(tmp_path: Path) -> None:
    session, captions = _set(tmp_path, captions={"a.jpg": "written by a person"}, trigger="tok")
    assert captions.items[0].flags & REVIEWED and not captions.items[0].flags & AUTO
    captions.set_body(1, "a draft", auto=True)
    assert captions.items[1].flags & AUTO and not captions.items[1].flags & REVIEWED
    assert captions.counts()["auto"] == 1 and captions.counts()["reviewed"] == 1
    assert captions.filtered("auto") == [1] and captions.filtered("missing") == [2, 3]
    assert captions.items[1].line == "tok, a draft"  # the trigger first, as for every caption
    # stored in session.toml and read back as auto
    session.update_images(captions.session_changes([1]))
    save(session)
    again = CaptionSet.from_session(Session.load(session.path), counter=estimate_counter())
    assert again.items[1].auto and again.filtered("auto") == [1]
    # a person's edit makes it theirs
    again.set_body(1, "a draft, edited")
    assert not again.items[1].auto and again.filtered("auto") == []
    changes = dict(again.session_changes([1]))
    assert changes["b.jpg"]["caption_auto"] is None  # the mark is removed from session.toml


def test_accept_one_and_all(tmp_path: Path) -> None:
    _, captions = _set(tmp_path)
    for i in range(3):
        captions.set_body(i, f"draft {i}", auto=True)
    assert captions.accept([1]) == [1]
    assert captions.filtered("auto") == [0, 2] and captions.filtered("reviewed") == [1]
    assert captions.accept() == [0, 2]
    assert captions.counts()["auto"] == 0 and captions.counts()["reviewed"] == 3
    assert captions.accept() == []


def test_targets_never_include_a_persons_caption_unless_asked(tmp_path: Path) -> None:
    _, captions = _set(tmp_path, captions={"a.jpg": "mine", "b.jpg": "  "})
    captions.set_body(2, "a draft", auto=True)
    items = captions.items
    assert [i.file for i in ac.targets(items)] == ["b.jpg", "d.jpg"]  # empty and missing; drafts are kept
    assert [i.file for i in ac.targets(items, files={"a.jpg"})] == []  # regenerate one: not a person's
    assert [i.file for i in ac.targets(items, files={"a.jpg"}, overwrite=True)] == ["a.jpg"]
    assert [i.file for i in ac.targets(items, files={"c.jpg"})] == ["c.jpg"]  # a draft may be redrafted
    assert [i.file for i in ac.targets(items, overwrite=True)] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


# ---------------------------------------------------------------- the model folder and the catalog


def test_catalog_captioners_name_size_vram_licence() -> None:
    default = catalog.CAPTIONERS[catalog.DEFAULT_CAPTIONER]
    assert default.repo == "Qwen/Qwen2.5-VL-3B-Instruct" and default.vram_gb <= 12
    assert any(c.vram_gb >= 24 for c in catalog.CAPTIONERS.values())
    for spec in catalog.CAPTIONERS.values():
        assert spec.license and spec.approx_gb > 0 and spec.architecture == "Qwen2_5_VLForConditionalGeneration"
        assert "config.json" in spec.files() and f"model-00001-of-{spec.shards:05d}.safetensors" in spec.files()


def make_model_folder(folder: Path, *, shards: tuple[str, ...] = ("model-00001-of-00001.safetensors",)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["Qwen2_5_VLForConditionalGeneration"]}')
    index = {"weight_map": {f"layer{i}": name for i, name in enumerate(shards)}}
    (folder / "model.safetensors.index.json").write_text(__import__("json").dumps(index))
    for name in shards:
        (folder / name).write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{}")
    return folder


def test_folder_problem_names_what_is_missing(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m", shards=("a.safetensors", "b.safetensors"))
    assert ac.folder_problem(folder) is None
    (folder / "b.safetensors").unlink()
    assert "lacks 1 weight file(s), e.g. b.safetensors" in ac.folder_problem(folder)
    assert "does not exist" in ac.folder_problem(tmp_path / "nowhere")
    (folder / "config.json").unlink()
    assert "no config.json" in ac.folder_problem(folder)


def test_model_setting_is_a_catalog_name_or_a_folder(tmp_path: Path) -> None:
    session = Session.new(tmp_path / "session.toml")
    choice = ac.choose_model(session)
    assert choice.spec is catalog.CAPTIONERS["qwen2.5-vl-3b"]
    assert choice.folder == session.paths.models / "captioners" / "Qwen2.5-VL-3B-Instruct"
    session.set("captions.model", "~/my-vlm")
    assert ac.choose_model(session).spec is None and ac.choose_model(session).folder == Path("~/my-vlm").expanduser()
    session.set("captions.model", "blip")
    with pytest.raises(StepFailed, match="neither a catalog captioner"):
        ac.choose_model(session)


# ---------------------------------------------------------------- the protocol, through the stand-in captioner


def captioner_project(tmp_path: Path, sources: list[str], **kwargs) -> Session:
    session = make_project(tmp_path / "p", sources, **kwargs)
    session.set("paths.python", str(make_standin_captioner_python(tmp_path)))
    session.set("captions.model", str(make_model_folder(tmp_path / "vlm")))
    session.set("captions.device", "cpu")
    save(session)
    return session


def run_draft(session: Session, captions: CaptionSet, *, cancel: threading.Event | None = None, **kwargs):
    drafts: dict[str, str] = {}
    lines: list[str] = []
    images = [(item.file, item.output) for item in ac.targets(captions.items)]
    report = ac.draft(session, images, on_draft=drafts.__setitem__, cancel=cancel or threading.Event(),
                      log=lines.append, **kwargs)
    return report, drafts, lines


def test_drafts_stream_cleaned_one_per_image_and_bad_images_are_skipped(tmp_path: Path, monkeypatch) -> None:
    session = captioner_project(tmp_path, ["rose.jpg", "empty.jpg", "endless.jpg", "broken.jpg", "mine.jpg"],
                                captions={"mine.jpg": "my own words"})
    (session.paths.dataset / "1024x1024" / "0004.png").write_bytes(b"not a png")  # broken.jpg's prepared image
    captions = CaptionSet.from_session(session, counter=estimate_counter())
    report, drafts, lines = run_draft(session, captions)
    assert drafts == {"rose.jpg": "A rose standing in a garden. Soft light from the left. Shot with a wide lens.",
                      "endless.jpg": "A cat sits on a mat."}
    assert report.skipped["empty.jpg"] == "the model returned an empty caption"
    assert report.skipped["broken.jpg"].startswith("cannot decode the image")
    assert "mine.jpg" not in drafts and "mine.jpg" not in report.skipped  # a person's caption is not even sent
    assert report.device == "cpu" and report.images_per_s and report.images_per_s > 0
    assert any("on the CPU this is slow: roughly" in line for line in lines)  # said before starting
    job = __import__("json").loads((session.paths.state / ac.JOB_FILE).read_text())
    assert job["max_new_tokens"] == 160 and "face" in job["instruction"] and len(job["images"]) == 4


def test_oom_retries_with_a_smaller_batch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STANDIN_CAPTION_BATCH", "8")
    monkeypatch.setenv("STANDIN_CAPTION_OOM_ABOVE", "1")
    session = captioner_project(tmp_path, [f"img{i}.jpg" for i in range(5)])
    captions = CaptionSet.from_session(session, counter=estimate_counter())
    _report, drafts, lines = run_draft(session, captions)
    assert len(drafts) == 5
    assert [line for line in lines if line.startswith("out of GPU memory")] == [
        "out of GPU memory: retrying with batch 4", "out of GPU memory: retrying with batch 2",
        "out of GPU memory: retrying with batch 1"]


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"STANDIN_CAPTION_FATAL": "too_old:transformers 4.40.0 is too old for Qwen (needs 4.49.0 or newer)"},
         "the captioner cannot run: transformers 4.40.0 is too old"),
        ({"STANDIN_CAPTION_FATAL": "no_gpu:no CUDA GPU is visible"}, "the captioner cannot run: no CUDA GPU"),
        ({"STANDIN_CAPTION_CRASH": "1"}, "has no torch: install sd-scripts' requirements"),
    ],
)
def test_fatal_reasons_are_one_line(tmp_path: Path, monkeypatch, env: dict[str, str], reason: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    session = captioner_project(tmp_path, ["a.jpg"])
    captions = CaptionSet.from_session(session, counter=estimate_counter())
    with pytest.raises(StepFailed, match=reason) as caught:
        run_draft(session, captions)
    assert "\n" not in str(caught.value)


def test_missing_model_files_refuse_before_starting(tmp_path: Path) -> None:
    session = captioner_project(tmp_path, ["a.jpg"])
    session.set("captions.model", "qwen2.5-vl-3b")
    captions = CaptionSet.from_session(session, counter=estimate_counter())
    with pytest.raises(StepFailed, match="captioner qwen2.5-vl-3b: .* does not exist .*Models step"):
        run_draft(session, captions)
    assert not (session.paths.state / ac.JOB_FILE).exists()


def test_cancel_halfway_keeps_the_drafts_so_far_and_kills_the_group(tmp_path: Path, monkeypatch) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("STANDIN_CAPTION_DELAY", "0.15")
    monkeypatch.setenv("STANDIN_CAPTION_BATCH", "1")
    monkeypatch.setenv("STANDIN_CAPTION_PIDFILE", str(pidfile))
    session = captioner_project(tmp_path, [f"img{i}.jpg" for i in range(40)])
    captions = CaptionSet.from_session(session, counter=estimate_counter())
    cancel = threading.Event()
    drafts: dict[str, str] = {}

    def on_draft(file: str, text: str) -> None:
        drafts[file] = text
        if len(drafts) == 2:
            cancel.set()

    images = [(item.file, item.output) for item in captions.items]
    with pytest.raises(Cancelled):
        ac.draft(session, images, on_draft=on_draft, cancel=cancel)
    assert 2 <= len(drafts) < 40
    pid = int(pidfile.read_text())
    until(lambda: pid_gone(pid), 10, "the captioner to end after the cancel")


def test_refuses_while_a_training_run_uses_the_gpu(tmp_path: Path, monkeypatch) -> None:
    session = captioner_project(tmp_path, ["a.jpg"])

    class Run:
        run_id, gpu_uuid = "20260101-120000", "GPU-1"

    monkeypatch.setattr("lorawizard.core.launch.runs.live_run", lambda runs: Run())
    assert "training run 20260101-120000 is using the GPU" in ac.busy_training(session, "GPU-1")
    assert ac.busy_training(session, "GPU-2") is None  # another GPU is free to use
    placement = ac.Placement("gpu", "GPU-1", "GPU 0")
    captions = CaptionSet.from_session(session, counter=estimate_counter())
    with pytest.raises(StepFailed, match="is using the GPU"):
        run_draft(session, captions, placement=placement)


def test_placement_falls_back_to_the_cpu_with_an_estimate(tmp_path: Path) -> None:
    from tests.support.fake_nvml import FakeNvml

    session = Session.new(tmp_path / "session.toml")
    spec = catalog.CAPTIONERS["qwen2.5-vl-3b"]
    none = ac.place(session, 100, spec, nvml=FakeNvml([]))
    assert none.device == "cpu" and "no GPU found" in none.note and "100 images" in none.note
    session.set("captions.device", "gpu")
    with pytest.raises(StepFailed, match='captions.device = "cpu"'):
        ac.place(session, 100, spec, nvml=FakeNvml([]))


def test_core_does_not_import_torch() -> None:
    source = Path(ac.__file__).read_text()
    assert "import torch" not in source and "transformers" not in source.split('"""')[2].split("import")[0]
    assert core.FILTERS["auto"][1] == AUTO


# ---------------------------------------------------------------- headless: --steps captions with [captions] auto


def _replay(session: Session) -> tuple[int, str, str]:
    import io

    from lorawizard.headless import replay

    out, err = io.StringIO(), io.StringIO()
    code = replay(session.path, ["captions"], out=out, err=err, tty=False)
    return code, out.getvalue(), err.getvalue()


def test_headless_drafts_every_missing_caption_then_writes_the_files(tmp_path: Path) -> None:
    from tests.support.captions_fixtures import txt_of

    session = captioner_project(tmp_path, ["a.jpg", "b.jpg", "c.jpg"], captions={"b.jpg": "my own words"},
                                trigger="tok")
    session.set("captions.auto", True)
    save(session)
    before = session.path.read_text()
    code, out, err = _replay(session)
    assert code == 0, err
    assert txt_of(session.project_dir, 1).read_text() == "tok, A a standing in a garden. Soft light from the left. Shot with a wide lens.\n"
    assert txt_of(session.project_dir, 2).read_text() == "tok, my own words\n"  # a person's caption stays
    assert "captions: drafting captions 2/2 (100%)" in out and "images/s" in out
    assert "drafting captions 0/2 (0%) 2.0 min/image ETA 4:00 a guess" in out  # a folder of one's own: the guess
    assert "images/s ETA 0:00 measured" in out or "done measured" in out  # then the rate of the first images
    assert "drafted 2 captions in" in out and "2 auto drafts to review" in out
    assert session.path.read_text() == before  # replay never rewrites the user's session
    decisions = (session.paths.state / "replay-decisions.toml").read_text()
    assert "caption_auto = true" in decisions and "my own words" not in decisions


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("fatal", "the captioner cannot run: transformers 4.40.0 is too old"),
        ("no model", "has no config.json"),
        ("no torch", "has no torch"),
    ],
)
def test_headless_exits_1_with_the_reason_when_the_model_cannot_run(tmp_path: Path, monkeypatch, setup: str,
                                                                     reason: str) -> None:
    session = captioner_project(tmp_path, ["a.jpg"])
    session.set("captions.auto", True)
    if setup == "fatal":
        monkeypatch.setenv("STANDIN_CAPTION_FATAL", "too_old:transformers 4.40.0 is too old for it")
    elif setup == "no model":
        (tmp_path / "vlm" / "config.json").unlink()
    else:
        monkeypatch.setenv("STANDIN_CAPTION_CRASH", "1")
    save(session)
    code, out, err = _replay(session)
    assert code == 1
    assert reason in err and "Traceback" not in err + out
    assert (session.paths.state / ac.JOB_FILE).exists() == (setup != "no model")  # refused before starting


def test_headless_without_auto_does_not_start_the_captioner(tmp_path: Path) -> None:
    session = captioner_project(tmp_path, ["a.jpg"])
    code, _out, err = _replay(session)
    assert code == 1 and "have no caption" in err  # as before: the captions are missing, no model involved
    assert not (session.paths.state / ac.JOB_FILE).exists()


def test_a_draft_counts_as_auto_not_as_the_persons_edit(tmp_path: Path) -> None:
    _, captions = _set(tmp_path)
    captions.set_body(0, "a draft", auto=True)
    assert captions.counts()["edited"] == 0 and captions.counts()["auto"] == 1
    captions.set_body(0, "a draft, then mine")
    assert captions.counts()["edited"] == 1 and captions.counts()["auto"] == 0


def test_writing_unreviewed_drafts_says_so(tmp_path: Path) -> None:
    """QA: Ctrl+G wrote 3 captions that were still auto drafts and the summary said nothing about them."""
    from lorawizard.core.contract import StepContext

    session = make_project(tmp_path / "p", ["a.jpg", "b.jpg", "c.jpg"], captions={"a.jpg": "mine"}, trigger="tok")
    session.update_image("b.jpg", caption="a draft", caption_auto=True)
    session.update_image("c.jpg", caption="another draft", caption_auto=True)
    save(session)
    result = captions_step.run_step(StepContext(session=session))
    assert result.ok and "2 auto drafts not reviewed yet" in result.summary
    session.update_image("c.jpg", caption_auto=None)
    result = captions_step.run_step(StepContext(session=session))
    assert "1 auto draft not reviewed yet" in result.summary


def test_caption_files_older_than_the_captions_are_named(tmp_path: Path) -> None:
    from lorawizard.core.contract import StepContext

    session = make_project(tmp_path / "p", ["a.jpg", "b.jpg"], captions={"a.jpg": "mine", "b.jpg": "more"},
                           trigger="tok")
    assert core.captions_not_written(session) == ["a.jpg", "b.jpg"]  # never written
    assert captions_step.run_step(StepContext(session=session)).ok
    assert core.captions_not_written(session) == []
    session.update_image("b.jpg", caption="more, edited")
    assert core.captions_not_written(session) == ["b.jpg"]
    session.set("dataset.trigger", "sks")  # a new trigger: every written file is old now
    assert core.captions_not_written(session) == ["a.jpg", "b.jpg"]
    assert core.stale_captions_line(["a.jpg", "b.jpg"]).startswith("2 caption files differ from the captions")


# ---------------------------------------------------------------- how long drafting takes (issue 24 item 9)


def test_the_estimate_is_a_labelled_guess_then_follows_the_measured_rate() -> None:
    now = [0.0]
    estimate = ac.DraftEstimate(40, catalog.CPU_S_PER_IMAGE_UNKNOWN, clock=lambda: now[0])
    estimate.start()
    assert not estimate.measured and estimate.s_per_image == 120
    assert estimate.line() == "~2.0 min/image (a guess) · ETA ~1:20:00"
    now[0] = 55.0  # loading the model is not an image's time
    estimate.ready()
    for second in (61.0, 67.0, 73.0):  # the first images: 6 s each
        now[0] = second
        estimate.advance()
    assert estimate.measured and estimate.s_per_image == pytest.approx(6.0)
    assert estimate.eta_s == pytest.approx(37 * 6.0)
    assert estimate.line() == "6.00 s/image (measured) · ETA 3:42"
    now[0] = 76.0  # between images the ETA counts down
    assert estimate.eta_s == pytest.approx(37 * 6.0 - 3)
    now[0] = 85.0
    estimate.advance()  # a slower one: the rate follows
    assert estimate.s_per_image == pytest.approx(7.5) and estimate.eta_s == pytest.approx(36 * 7.5)


def test_drafting_reports_the_guess_then_the_measured_rate_and_the_next_run_starts_from_it(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    monkeypatch.setenv("STANDIN_CAPTION_DELAY", "0.05")
    monkeypatch.setenv("STANDIN_CAPTION_BATCH", "1")
    session = captioner_project(tmp_path, [f"img{i}.jpg" for i in range(4)])
    captions = CaptionSet.from_session(session, counter=estimate_counter())
    seen: list[tuple[int, bool, float, str]] = []
    run_draft(session, captions, on_estimate=lambda e: seen.append((e.done, e.measured, e.s_per_image, e.line())))
    first, last = seen[0], seen[-1]
    assert first[:3] == (0, False, catalog.CPU_S_PER_IMAGE_UNKNOWN) and "(a guess)" in first[3]  # a folder: unknown
    assert last[0] == 4 and last[1] and last[2] < 5 and "(measured)" in last[3]
    assert any(done == 1 and measured for done, measured, _, _ in seen)  # measured from the first image on
    placement = ac.place(session, 10, None, model=session.captions.model)
    shown = ac.format_rate(1 / round(last[2], 3), "images")
    assert placement.note.startswith(f"on the CPU: {shown} (measured on the last run), about 0:")
    again: list[str] = []
    run_draft(session, CaptionSet.from_session(session, counter=estimate_counter()),
              on_estimate=lambda e: again.append(e.line()))
    assert "(measured on the last run)" in again[0]
