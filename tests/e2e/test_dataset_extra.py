"""The dataset step over ../shared/data/images: Pillow's hostile test images and real camera photos.

Every row of MANIFEST.tsv is checked against its `expected_ingest_behaviour` (translated into the table
below), once with the headless defaults and once with every image "used anyway" so that each decodable
file goes through the whole conversion. Skips cleanly without ../shared.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from lorawizard.core.contract import StepContext
from lorawizard.core.dataset import step as dataset
from lorawizard.core.dataset.imaging import choose_bucket, to_rgb8
from lorawizard.core.session.document import Session

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "images"
MANIFEST = SHARED / "MANIFEST.tsv"

pytestmark = [
    pytest.mark.extra,
    pytest.mark.skipif(not MANIFEST.exists(), reason="../shared/data/images is not here"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Pillow on hostile files; we give our own reasons
]

# expected_ingest_behaviour → what lorawizard does. "reject": bad input with a reason (or ignored when it is
# not an image at all); "skip": not trained by default (too small, or an aspect too extreme for the buckets);
# "ok": decodes and converts (it may still be flagged small at the buckets' size).
REJECT = {
    "pillow/broken.png", "pillow/broken_data_stream.png", "pillow/crash-2020-10-test.tif", "pillow/decompression_bomb.gif",
    "pillow/drawing.emf", "pillow/hopper.heif", "pillow/l2rgb_read.bmp", "pillow/png_decompression_dos.png",
    "pillow/reallybig.bmp", "pillow/rgb24png.bmp", "pillow/shortfile.bmp", "pillow/test-ole-file.doc",
    "pillow/timeout-060745d3f534ad6e4128c51d336ea5489182c69d.blp", "pillow/truncated_end_chunk.png",
    "pillow/truncated_image.png", "pillow/truncated_jpeg.jpg", "pillow/ultrahdr.jpg", "pillow/zero_width.gif",
    "photos/iphone_13_pro_max.HEIC",
}
SKIP = {
    "pillow/courB08.pbm", "pillow/padded_idat.png", "pillow/multipage.tiff", "pillow/multiple_exif.jpg",
    "pillow/orientation_rectangle.jpg", "pillow/tRNS_null_1x1.png", "pillow/200x32_la.png",
}
HEIF = {"pillow/hopper.heif", "photos/iphone_13_pro_max.HEIC"}
ANIMATED = {"pillow/iss634.apng", "pillow/iss634.gif", "pillow/iss634.webp", "pillow/frozenpond.mpo"}
HOPPER_ORIENTED = [f"pillow/hopper_orientation_{n}.jpg" for n in range(2, 9)] + ["pillow/hopper_orientation_6.webp"]


def rows() -> list[dict[str, str]]:
    lines = [line for line in MANIFEST.read_text("utf-8").splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def upright_size(row: dict[str, str]) -> tuple[int, int] | None:
    first = row["pillow_exif_transpose"].split(" ")[0]
    if "x" not in first or not first.replace("x", "").isdigit():
        return None
    width, height = first.split("x")
    return int(width), int(height)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shared-images")
    for row in rows():
        target = folder / row["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / row["file"], target)
    return folder


def run(project: Path, source: Path, images: str = "") -> dataset.StepResult:
    project.mkdir(parents=True, exist_ok=True)
    (project / "session.toml").write_text(f'version = 1\n[dataset]\nsource = "{source}"\nmax_side = 256\n{images}', "utf-8")
    return dataset.run_step(StepContext(session=Session.load(project / "session.toml")))


def test_every_manifest_row_is_classified() -> None:
    files = {row["file"] for row in rows()}
    assert len(files) == 86
    assert files >= REJECT and files >= SKIP and files >= ANIMATED


def test_defaults_match_the_manifest(source: Path, tmp_path: Path) -> None:
    result = run(tmp_path / "project", source)
    assert result.ok
    plan = result.data["plan"]
    items = {item.source: item for item in plan.items}
    ignored = dict(plan.ignored)
    for row in rows():
        name = row["file"]
        item = items.get(name)
        if name in REJECT:
            assert (item is not None and item.status == "bad" and item.reason) or name in ignored, name
            if name in HEIF:
                assert "install pillow-heif" in item.reason  # type: ignore[union-attr]
            continue
        assert item is not None, f"{name}: {ignored.get(name)}"
        if name in SKIP:
            assert item.status in ("small", "bad") and item.reason, name
            continue
        assert item.status in ("use", "small"), f"{name}: {item.status} {item.reason}"
        size = upright_size(row)
        assert size is not None and (item.width, item.height) == size, (name, item.width, item.height, size)
        if name in ANIMATED:
            assert any("frames: first used" in note for note in item.notes), name
    assert any("flat colour" in note for note in items["photos/67-0_length_string.jpg"].notes)
    report = (tmp_path / "project" / "dataset" / dataset.REPORT_FILE).read_text()
    for name in REJECT:
        assert sum(f": {name}: " in line for line in report.splitlines()) == 1, name


def test_every_decodable_file_converts_when_used_anyway(source: Path, tmp_path: Path) -> None:
    entries = "".join(f'\n[[dataset.images]]\nfile = "{row["file"]}"\nskip = false\n' for row in rows())
    result = run(tmp_path / "project", source, entries)
    items = {item.source: item for item in result.data["plan"].items}
    out = tmp_path / "project" / "dataset"
    rendered: dict[str, Image.Image] = {}
    for row in rows():
        name = row["file"]
        item = items.get(name)
        if name in REJECT or (item is not None and item.status == "bad" and name in SKIP):
            assert item is None or item.status == "bad", name
            continue
        assert item is not None and item.used and item.output, f"{name}: {item and item.reason}"
        with Image.open(out / item.output) as im:
            assert im.format == "PNG" and im.mode == "RGB", name
            assert im.size == choose_bucket(item.width, item.height, 256), name
            im.load()
            rendered[name] = im.copy()
    # 16-bit and float TIFFs are scaled, not clipped to white
    for name in ("pillow/16bit.cropped.tif", "pillow/10ct_32bit_128.tiff", "pillow/i_trns.png"):
        assert ImageStat.Stat(rendered[name]).mean[0] < 250, name
    # every hopper_orientation_* comes out like hopper.jpg itself (upright, not mirrored)
    reference = rendered["pillow/hopper.jpg"]
    for name in HOPPER_ORIENTED:
        difference = ImageStat.Stat(ImageChops.difference(rendered[name], reference)).mean
        assert max(difference) < 12, (name, difference)
    # Adobe RGB (1998) → sRGB: saturated colours move (greys stay), unlike taking the pixels as sRGB
    with Image.open(SHARED / "pillow/xmp_test.jpg") as im:
        im.load()
        shift = ImageChops.difference(to_rgb8(im), im.convert("RGB")).getextrema()
    assert max(high for _, high in shift) > 20, shift
    upright = {name: (items[name].width, items[name].height) for name in ("photos/landscape_6.jpg", "photos/portrait_8.jpg", "photos/canon_hdr_NO.jpg")}
    assert upright == {"photos/landscape_6.jpg": (600, 450), "photos/portrait_8.jpg": (450, 600), "photos/canon_hdr_NO.jpg": (1536, 2048)}
