"""Dataset step: scan, orientation, buckets, output, incremental re-runs, bad input, replay."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from lorawizard.core.common.progress import Progress
from lorawizard.core.contract import StepContext, StepFailed
from lorawizard.core.dataset import imaging
from lorawizard.core.dataset import step as dataset
from lorawizard.core.dataset.manifest import MANIFEST_FILE, PreparedImage, load_manifest
from lorawizard.core.dataset.step import REPORT_FILE
from lorawizard.core.session.document import Session
from lorawizard.headless import replay
from tests.support import dataset_fixtures as fx

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def run(session_path: Path, **options: object) -> tuple[dataset.StepResult, list[Progress]]:
    events: list[Progress] = []
    session = Session.load(session_path)
    ctx = StepContext(session=session, progress=events.append, options=dict(options))
    return dataset.run_step(ctx), events


def manifest(project: Path) -> dict:
    return json.loads((project / "dataset" / MANIFEST_FILE).read_text())


def outputs_by_source(project: Path) -> dict[str, dict]:
    return {record["source"]: record for record in manifest(project)["images"]}


def item(result: dataset.StepResult, source: str) -> dataset.PlanItem:
    return next(i for i in result.data["plan"].items if i.source == source)


# ---------------------------------------------------------------- buckets and crops (pure)


@pytest.mark.parametrize(
    ("size", "bucket"),
    [((1000, 1000), (1024, 1024)), ((4032, 3024), (1024, 1024)), ((3000, 1600), (1024, 512)),
     ((1600, 3000), (512, 1024)), ((1414, 1000), (1024, 1024)), ((1415, 1000), (1024, 512)), ((8000, 2000), (1024, 512))],
)
def test_bucket_is_closest_in_log_space(size: tuple[int, int], bucket: tuple[int, int]) -> None:
    assert imaging.choose_bucket(*size, 1024) == bucket


def test_buckets_follow_max_side() -> None:
    assert imaging.buckets_for(512) == [(512, 512), (512, 256), (256, 512)]
    assert imaging.buckets_for(2048)[1] == (2048, 1024)


def test_center_crop_keeps_the_bucket_aspect_and_stays_inside() -> None:
    assert imaging.center_crop(4000, 1000, (1024, 512)) == (1000, 0, 3000, 1000)
    assert imaging.center_crop(1000, 4000, (512, 1024)) == (0, 1000, 1000, 3000)
    crop = imaging.move_crop(imaging.center_crop(4000, 1000, (1024, 512)), 10, 0, 4000, 1000)
    assert crop == (2000, 0, 4000, 1000)  # clamped at the right edge
    smaller = imaging.scale_crop(crop, 0.5, 4000, 1000, (1024, 512))
    assert smaller[2] - smaller[0] == 1000 and smaller[3] - smaller[1] == 500
    assert imaging.crop_ok(smaller, 4000, 1000, (1024, 512))
    bigger = imaging.scale_crop(smaller, 10, 4000, 1000, (1024, 512))
    assert bigger[2] - bigger[0] == 2000 and bigger[0] >= 0 and bigger[2] <= 4000
    # tiny images: a crop from the session that no longer fits is brought back inside
    assert imaging.fit_crop((0, 0, 400, 400), 6, 4, (512, 512)) == (2, 0, 6, 4)
    assert imaging.move_crop((0, 0, 4, 4), 0.1, 0, 6, 4) == (1, 0, 5, 4)


# ---------------------------------------------------------------- orientation


def test_all_eight_exif_orientations_come_out_upright(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    for orientation in range(1, 9):
        fx.oriented_jpeg(source / f"o{orientation}.jpg", orientation)
    result, _ = run(fx.write_session(tmp_path / "project", source))
    assert result.ok, result.summary
    records = outputs_by_source(tmp_path / "project")
    assert sorted(records) == [f"o{n}.jpg" for n in range(1, 9)]
    for orientation in range(1, 9):
        record = records[f"o{orientation}.jpg"]
        assert record["bucket"] == "256x128", orientation  # 600×300 upright → the landscape bucket
        with Image.open(tmp_path / "project" / "dataset" / record["output"]) as out:
            assert out.size == (256, 128) and out.mode == "RGB" and out.format == "PNG"
            colours = fx.quadrant_colours(out)
        for got, want in zip(colours, (fx.RED, fx.GREEN, fx.BLUE, fx.WHITE), strict=True):
            assert fx.near(got, want), f"orientation {orientation}: {colours}"
        if orientation != 1:
            assert f"rotated (EXIF {orientation})" in item(result, f"o{orientation}.jpg").notes


# ---------------------------------------------------------------- modes


def test_every_mode_becomes_8_bit_rgb_correctly(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    fx.sixteen_bit_png(source / "deep16.png")
    fx.float_tiff(source / "float.tif")
    fx.transparent_png(source / "alpha.png")
    fx.palette_png(source / "palette.png")
    fx.cmyk_jpeg(source / "cmyk.jpg")
    fx.srgb_tagged_jpeg(source / "icc.jpg")
    fx.quadrants(512, 512).convert("L").save(source / "grey.png")
    fx.quadrants(512, 512).convert("1").save(source / "bw.png")
    fx.quadrants(512, 512).convert("LA").save(source / "la.png")
    result, _ = run(fx.write_session(tmp_path / "project", source))
    assert result.ok
    records = outputs_by_source(tmp_path / "project")
    assert len(records) == 9, result.details

    def out(name: str) -> Image.Image:
        image = Image.open(tmp_path / "project" / "dataset" / records[name]["output"])
        assert image.mode == "RGB" and image.size == (256, 256)
        return image

    deep = out("deep16.png")  # scaled, not clipped: dark on the left, light on the right, grey mid-way
    assert deep.getpixel((5, 128))[0] < 30 and deep.getpixel((250, 128))[0] > 225
    assert 90 < deep.getpixel((128, 128))[0] < 165
    flt = out("float.tif")
    assert flt.getpixel((5, 128))[0] < 30 and flt.getpixel((250, 128))[0] > 225
    alpha = out("alpha.png")  # transparent red must not show: neutral grey instead
    assert fx.near(alpha.getpixel((200, 128)), imaging.BACKGROUND, 3) and fx.near(alpha.getpixel((20, 128)), (0, 0, 255), 3)
    for name in ("palette.png", "cmyk.jpg", "icc.jpg"):
        colours = fx.quadrant_colours(out(name))
        assert all(fx.near(g, w, 45) for g, w in zip(colours, (fx.RED, fx.GREEN, fx.BLUE, fx.WHITE), strict=True)), (name, colours)
    grey = out("grey.png")
    assert grey.getpixel((64, 64))[0] == grey.getpixel((64, 64))[1]
    low, high = out("bw.png").getextrema()[0]
    assert low < 60 and high > 200
    out("la.png")


def test_naive_conversion_of_16_bit_is_white_but_ours_is_not(tmp_path: Path) -> None:
    path = fx.sixteen_bit_png(tmp_path / "deep.png")
    with Image.open(path) as im:
        assert im.convert("RGB").getpixel((400, 10)) == (255, 255, 255)  # the trap the issue describes
        assert imaging.to_rgb8(im).getpixel((100, 10))[0] < 70


# ---------------------------------------------------------------- sizes


def test_tiny_huge_and_panorama(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "tiny.jpg", 100, 80)
    fx.png_header_only(source / "bomb.png", 30000, 30000)  # Pillow's own bomb check
    fx.png_header_only(source / "huge.png", 12000, 10000)  # ours: checked before any decoding
    fx.photo(source / "pano.jpg", 1800, 300)  # 6:1 → 2:1 bucket, centre third kept
    fx.photo(source / "extreme.png", 1000, 100, fmt="PNG")  # 10:1 → refused
    fx.photo(source / "tall.jpg", 300, 700)
    session = fx.write_session(tmp_path / "project", source)
    result, _ = run(session)
    assert result.ok
    tiny, bomb, pano, extreme, tall = (item(result, n) for n in ("tiny.jpg", "bomb.png", "pano.jpg", "extreme.png", "tall.jpg"))
    assert tiny.status == "small" and "would upscale" in tiny.reason
    assert bomb.status == "bad" and bomb.reason.startswith("decompression bomb")
    huge = item(result, "huge.png")
    assert huge.status == "bad" and huge.reason == "absurd dimensions 12000×10000 (120 Mpx; limit 80 Mpx)"
    assert pano.used and pano.bucket == (256, 128) and pano.crop == (600, 0, 1200, 300)
    assert extreme.status == "bad" and "aspect ratio 10.0:1" in extreme.reason
    assert tall.used and tall.bucket == (128, 256)
    assert set(outputs_by_source(tmp_path / "project")) == {"pano.jpg", "tall.jpg"}
    report = (tmp_path / "project" / "dataset" / REPORT_FILE).read_text()
    assert "skipped: tiny.jpg: too small" in report and "bad input: huge.png: absurd dimensions" in report

    # use-anyway: an explicit `skip = false` keeps the small image (upscaled, and said so)
    fx.write_session(tmp_path / "project", source, images='\n[[dataset.images]]\nfile = "tiny.jpg"\nskip = false\n')
    result, _ = run(session)
    assert item(result, "tiny.jpg").used and any("upscaled" in n for n in item(result, "tiny.jpg").notes)
    with Image.open(tmp_path / "project" / "dataset" / outputs_by_source(tmp_path / "project")["tiny.jpg"]["output"]) as im:
        assert im.size == (256, 256)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_get_one_line_reasons_and_never_stop_the_step(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    (source / "sub").mkdir(parents=True)
    fx.photo(source / "good.jpg", 512, 512)
    shutil.copy(source / "good.jpg", source / "sub" / "copy.jpg")  # exact duplicate
    (source / "empty.jpg").write_bytes(b"")
    (source / "notes.jpg").write_text("not a picture at all")
    (source / "readme.md").write_text("# hello")
    fx.truncated_jpeg(source / "cut.jpg")
    fx.animated_gif(source / "anim.gif")
    fx.heic_lookalike(source / "phone.HEIC")
    fx.photo(source / "a.jpg", 512, 512, seed=1)
    fx.photo(source / "a.png", 512, 512, fmt="PNG", seed=2)
    (source / "a.txt").write_text("whose caption am I?")
    fx.photo(source / "b.jpg", 512, 512, seed=3)
    (source / "b.txt").write_text("a caption for b")
    (source / ".DS_Store").write_bytes(b"\0\0")
    os.symlink(source, source / "sub" / "loop")  # a symlink loop must not hang the scan
    os.symlink(source / "missing.jpg", source / "dangling.jpg")
    result, _ = run(fx.write_session(tmp_path / "project", source))
    assert result.ok
    reasons = {i.source: (i.status, i.reason) for i in result.data["plan"].items}
    assert reasons["empty.jpg"] == ("bad", "empty file (0 bytes)")
    assert reasons["notes.jpg"][0] == "bad" and "not a readable image" in reasons["notes.jpg"][1]
    assert reasons["cut.jpg"][0] == "bad" and reasons["cut.jpg"][1].startswith("truncated file")
    assert reasons["phone.HEIC"][0] == "bad" and "install pillow-heif" in reasons["phone.HEIC"][1]
    assert reasons["sub/copy.jpg"] == ("duplicate", "duplicate of good.jpg (same content; trained once)")
    assert reasons["anim.gif"][0] == "use" and "2 frames: first used" in item(result, "anim.gif").notes
    assert any("name collision with a.png" in n for n in item(result, "a.jpg").notes)
    assert item(result, "b.jpg").sidecar == "b.txt" and item(result, "a.jpg").sidecar is None
    ignored = dict(result.data["plan"].ignored)
    assert ignored["readme.md"].startswith("not an image")
    assert ignored[".DS_Store"] == "hidden file"
    assert ignored["dangling.jpg"] == "broken symlink"
    assert ignored["a.txt"].endswith("ambiguous")
    assert "symlink loop" in ignored["sub/loop/"]
    assert outputs_by_source(tmp_path / "project")["b.jpg"]["sidecar"] == "b.txt"
    report = (tmp_path / "project" / "dataset" / REPORT_FILE).read_text().splitlines()
    for name in ("empty.jpg", "notes.jpg", "cut.jpg", "phone.HEIC", "sub/copy.jpg", "readme.md"):
        lines = [line for line in report if f": {name}: " in line]
        assert len(lines) == 1, name  # one line each
    assert "\n" not in "".join(result.details) and not any("Traceback" in line for line in result.details)


def test_a_duplicate_of_a_skipped_image_is_trained(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "a.jpg", 512, 512)
    shutil.copy(source / "a.jpg", source / "b.jpg")
    session = fx.write_session(tmp_path / "project", source)
    result, _ = run(session)
    assert (item(result, "a.jpg").status, item(result, "b.jpg").status) == ("use", "duplicate")
    fx.write_session(tmp_path / "project", source, images='\n[[dataset.images]]\nfile = "a.jpg"\nskip = true\n')
    result, _ = run(session)
    assert (item(result, "a.jpg").status, item(result, "b.jpg").status) == ("skip", "use")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "ok.jpg", 300, 300)
    locked = fx.photo(source / "locked.jpg", 300, 300, seed=4)
    locked.chmod(0)
    result, _ = run(fx.write_session(tmp_path / "project", source))
    assert item(result, "locked.jpg").status == "bad" and "permission denied" in item(result, "locked.jpg").reason


def test_unreadable_file_is_reported_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorawizard.core.dataset import scan

    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "ok.jpg", 300, 300)
    fx.photo(source / "locked.jpg", 300, 300, seed=4)
    real = scan._sha256

    def sha256(path: Path) -> str:
        if path.name == "locked.jpg":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(scan, "_sha256", sha256)
    result, _ = run(fx.write_session(tmp_path / "project", source))
    assert item(result, "locked.jpg").status == "bad" and item(result, "locked.jpg").reason == "unreadable: permission denied"
    assert item(result, "ok.jpg").status == "use"


def test_cancel_stops_between_images_and_the_next_run_finishes(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    for n in range(6):
        fx.photo(source / f"{n}.jpg", 600 + 10 * n, 300, seed=n)
    session_path = fx.write_session(tmp_path / "project", source)
    session = Session.load(session_path)
    ctx = StepContext(session=session, options={"workers": 1})

    def progress(event: Progress) -> None:
        if event.task == "preparing images" and event.done >= 1:
            ctx.cancel.set()

    ctx.progress = progress
    with pytest.raises(dataset.Cancelled):
        dataset.run_step(ctx)
    partial = manifest(tmp_path / "project")
    assert partial["complete"] is False and 1 <= len(partial["images"]) < 6
    result, _ = run(session_path)
    assert result.data["stats"].unchanged == len(partial["images"]) and len(outputs_by_source(tmp_path / "project")) == 6


def test_heic_reason_depends_on_pillow_heif(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    path = fx.heic_lookalike(tmp_path / "phone.heic")
    monkeypatch.setattr(imaging, "_heif_state", None)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed: import fails
    assert "pip install 'lorawizard[heif]'" in imaging.probe_image(path).reason
    registered: list[bool] = []
    monkeypatch.setattr(imaging, "_heif_state", None)
    monkeypatch.setitem(sys.modules, "pillow_heif", types.SimpleNamespace(register_heif_opener=lambda: registered.append(True)))
    assert imaging.probe_image(path).reason == "corrupt HEIC/HEIF photo (pillow-heif cannot read it)"
    assert registered == [True]


def test_hostile_decoder_errors_that_are_not_oserror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fx.photo(tmp_path / "x.jpg", 300, 300)

    def boom(image: Image.Image, **_: object) -> None:
        raise TypeError("Missing dimensions")

    monkeypatch.setattr(imaging.ImageOps, "exif_transpose", boom)
    with pytest.raises(imaging.ImageProblem, match="corrupt file \\(TypeError: Missing dimensions\\)"):
        imaging.load_upright(path)


# ---------------------------------------------------------------- output and originals


def test_output_layout_is_fixed_width_and_originals_are_untouched(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    for n in range(12):
        fx.photo(source / f"p{n:02d}.jpg", 400 + (n % 3) * 300, 400, seed=n)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in source.iterdir()}
    result, events = run(fx.write_session(tmp_path / "project", source), workers=2)
    assert result.ok
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in source.iterdir()} == before
    names = sorted(p.name for p in (tmp_path / "project" / "dataset").rglob("*.png"))
    assert all(len(Path(n).stem) == 4 and Path(n).stem.isdigit() for n in names)
    stems = [Path(n).stem for n in names]
    assert not any(a != b and b.startswith(a) for a in stems for b in stems)
    loaded = load_manifest(Session.load(tmp_path / "project" / "session.toml"))
    assert len(loaded) == 12 and all(isinstance(p, PreparedImage) and p.output.is_absolute() and p.output.exists() for p in loaded)
    assert loaded[0].crop == tuple(manifest(tmp_path / "project")["images"][0]["crop"])
    data = manifest(tmp_path / "project")
    assert data["version"] == 1 and data["max_side"] == 256 and data["complete"] is True
    tasks = {e.task for e in events}
    assert {"scanning photos", "preparing images"} <= tasks
    assert any(e.eta_s is not None and e.total for e in events if e.task == "preparing images") or len(events) > 2


def test_paths_dataset_inside_source_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    session = fx.write_session(tmp_path / "project", source)
    session.write_text(session.read_text().replace("[dataset]", f'[paths]\ndataset = "{source / "out"}"\n\n[dataset]'))
    with pytest.raises(StepFailed, match="inside dataset.source"):
        run(session)
    assert not (source / "out").exists()


def test_empty_manifest_when_the_step_never_ran(project: Path) -> None:
    assert load_manifest(Session.new(project / "session.toml")) == []


# ---------------------------------------------------------------- incremental


def test_rerun_does_only_what_changed(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    for name in ("a", "b", "c", "d"):
        fx.photo(source / f"{name}.jpg", 600, 400, seed=ord(name))
    project = tmp_path / "project"
    session = fx.write_session(project, source)
    result, _ = run(session)
    first = outputs_by_source(project)
    out = project / "dataset"
    for record in first.values():  # what sd-scripts and the captions step leave beside each image
        png = out / record["output"]
        png.with_suffix(".txt").write_text("caption")
        (png.parent / f"{png.stem}_0600x0400_flux.npz").write_bytes(b"latents")
        (png.parent / f"{png.stem}_flux_te.npz").write_bytes(b"te")

    result, _ = run(session)
    assert result.data["stats"].rendered == 0 and result.data["stats"].unchanged == 4

    # content of a changes; b is removed; c gets a new crop; d is skipped
    fx.photo(source / "a.jpg", 600, 400, seed=96)  # content unlike b, c, d
    (source / "b.jpg").unlink()
    fx.write_session(project, source, images=(
        '\n[[dataset.images]]\nfile = "c.jpg"\ncrop = [0, 0, 400, 200]\n'
        '\n[[dataset.images]]\nfile = "d.jpg"\nskip = true\n'
    ))
    result, _ = run(session)
    stats = result.data["stats"]
    assert (stats.rendered, stats.unchanged, stats.removed) == (2, 0, 2)
    now = outputs_by_source(project)
    assert set(now) == {"a.jpg", "c.jpg"}
    assert now["a.jpg"]["sha256"] != first["a.jpg"]["sha256"] and now["a.jpg"]["output"] == first["a.jpg"]["output"]
    assert now["c.jpg"]["crop"] == [0, 0, 400, 200]
    for name in ("b.jpg", "d.jpg"):  # gone with their caches and captions
        stem = Path(first[name]["output"]).stem
        assert not list(out.rglob(f"{stem}*")), name
    a = out / now["a.jpg"]["output"]
    assert not (a.parent / f"{a.stem}_0600x0400_flux.npz").exists()  # stale latents removed
    assert a.with_suffix(".txt").exists() and (a.parent / f"{a.stem}_flux_te.npz").exists()

    # a new bucket moves the image and carries its caption along
    fx.write_session(project, source, images='\n[[dataset.images]]\nfile = "a.jpg"\nbucket = "256x256"\n')
    result, _ = run(session)
    moved = outputs_by_source(project)["a.jpg"]
    assert moved["output"].startswith("256x256/") and (out / moved["output"]).with_suffix(".txt").read_text() == "caption"
    assert not (out / now["a.jpg"]["output"]).exists()

    # a new max_side re-renders everything into the new buckets
    session.write_text(session.read_text().replace("max_side = 256", "max_side = 512"))
    shutil.rmtree(source)
    source.mkdir()
    fx.photo(source / "big.jpg", 1200, 800)
    result, _ = run(session)
    assert [r["bucket"] for r in manifest(project)["images"]] == ["512x256"]
    assert sorted(p.name for p in out.iterdir()) == ["512x256", MANIFEST_FILE, REPORT_FILE]


def test_unchanged_rerun_opens_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    for n in range(5):
        fx.photo(source / f"{n}.jpg", 500, 300, seed=n)
    session = fx.write_session(tmp_path / "project", source)
    run(session)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unchanged re-run opened an image")

    monkeypatch.setattr(imaging.Image, "open", forbidden)
    result, _ = run(session)
    assert result.ok and result.data["stats"].unchanged == 5


# ---------------------------------------------------------------- kill -9 and re-run


def _replay(session: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "lorawizard", "--replay", str(session), "--steps", "dataset"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def test_kill_at_any_moment_then_rerun_finishes_the_job(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    for n in range(16):
        fx.photo(source / f"{n:02d}.jpg", 1600, 1000 + 40 * n, seed=n, quality=90)
    reference = fx.write_session(tmp_path / "reference", source)
    assert _replay(reference).wait(60) == 0
    expected = {s: Image.open(tmp_path / "reference" / "dataset" / r["output"]).tobytes() for s, r in outputs_by_source(tmp_path / "reference").items()}

    session = fx.write_session(tmp_path / "project", source)
    out = tmp_path / "project" / "dataset"
    interrupted = 0
    for pngs in (0, 1, 6, 12):  # kill during the scan, then after 1, 6 and 12 images were written
        child = _replay(session)
        deadline = time.monotonic() + 30
        while child.poll() is None and time.monotonic() < deadline:
            if (pngs == 0 and (tmp_path / "project" / ".lorawizard").exists()) or (pngs and len(list(out.rglob("*.png"))) >= pngs):
                break
            time.sleep(0.002)
        interrupted += child.poll() is None
        os.killpg(child.pid, signal.SIGKILL)  # the whole group: workers die mid-write too
        child.wait(10)
        for png in out.rglob("*.png"):  # never half a file under a real name
            with Image.open(png) as im:
                im.load()
        if (out / MANIFEST_FILE).exists():
            json.loads((out / MANIFEST_FILE).read_text())
    assert interrupted >= 3  # the kills really landed mid-run
    assert _replay(session).wait(60) == 0
    got = outputs_by_source(tmp_path / "project")
    assert set(got) == set(expected)
    for src, record in got.items():
        with Image.open(out / record["output"]) as im:
            assert im.tobytes() == expected[src], src
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- replay


def test_replay_prints_summary_and_report_and_exits_by_usability(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "ok.jpg", 600, 300)
    (source / "empty.jpg").write_bytes(b"")
    session = fx.write_session(tmp_path / "project", source)
    before = session.read_text()
    out = io.StringIO()
    assert replay(session, ["dataset"], out=out, err=io.StringIO(), tty=False) == 0
    text = out.getvalue()
    assert "per bucket: 256x256 0, 256x128 1, 128x256 0" in text
    assert "bad input: empty.jpg: empty file (0 bytes)" in text
    assert session.read_text() == before  # replay never rewrites the session

    (source / "ok.jpg").unlink()
    out = io.StringIO()
    assert replay(session, ["dataset"], out=out, err=io.StringIO(), tty=False) == 1
    assert "no usable image" in out.getvalue()
    assert not list((tmp_path / "project" / "dataset").rglob("*.png"))


def test_dry_run_writes_nothing_outside_the_project(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "ok.jpg", 600, 300)
    outside = tmp_path / "shared-datasets" / "mine"
    session = fx.write_session(tmp_path / "project", source, images=f'\n[paths]\ndataset = "{outside}"\n')
    out = io.StringIO()
    assert replay(session, ["dataset"], dry_run=True, out=out, err=io.StringIO(), tty=False) == 0
    assert "would prepare 1 images" in out.getvalue()
    assert not outside.exists()


def test_dry_run_prepares_a_dataset_inside_the_project(tmp_path: Path) -> None:
    """--dry-run changes nothing outside the project; the default dataset folder is inside it."""
    source = tmp_path / "photos"
    source.mkdir()
    fx.photo(source / "ok.jpg", 600, 300)
    session = fx.write_session(tmp_path / "project", source)
    assert replay(session, ["dataset"], dry_run=True, out=io.StringIO(), err=io.StringIO(), tty=False) == 0
    assert len(list((tmp_path / "project" / "dataset").glob("*/*.png"))) == 1
