"""`cohort init` on good and broken folders: every problem reported, nothing written half."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PYRAMID_TIFF, SVS, synthetic_tissue, write_pyramid_tiff
from core.cohort.cohort_file import load_cohort
from core.cohort.cohort_init import init_cohort

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def slides(tmp_path: Path) -> Path:
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy(SVS, d / "case_a.svs")
    shutil.copy(PYRAMID_TIFF, d / "case_b.tiff")
    write_pyramid_tiff(d / "case_c.tiff", synthetic_tissue(700, 500), mpp=None)
    return d


def _labels(tmp: Path, text: str) -> Path:
    p = tmp / "labels.csv"
    p.write_text(text)
    return p


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_good_folder_writes_a_loadable_cohort(tmp_path: Path, slides: Path) -> None:
    labels = _labels(tmp_path, "image_id,label\ncase_a,CC\ncase_b,EC\ncase_c,CC\n")
    out = tmp_path / "study" / "cohort.toml"
    r = run_cli("cohort", "init", "--slides", str(slides), "--labels", str(labels), "--out", str(out),
                "--default-mpp", "0.5")
    assert r.returncode == 0, r.stderr
    c = load_cohort(out)
    assert set(c.slide_paths) == {"case_a", "case_b", "case_c"}
    assert c.labels == labels and c.default_mpp == 0.5
    assert c.database == f"sqlite:///{out.parent}/slidelens.db"
    assert "classes: CC, EC" in r.stdout


def test_unlabelled_slides_and_orphan_labels_are_reported(tmp_path: Path, slides: Path) -> None:
    labels = _labels(tmp_path, "image_id,label\ncase_a,CC\nghost,EC\n")
    rep, cohort = init_cohort(tmp_path / "c.toml", slides, labels)
    assert cohort is not None  # warnings only
    assert rep.unlabelled == ["case_b", "case_c"] and rep.labels_without_slides == ["ghost"]
    rep, cohort = init_cohort(tmp_path / "strict.toml", slides, labels, strict=True)
    assert cohort is None and not (tmp_path / "strict.toml").exists()
    assert any("ghost" in e for e in rep.errors)


def test_unknown_classes_block_writing(tmp_path: Path, slides: Path) -> None:
    labels = _labels(tmp_path, "image_id,label\ncase_a,CC\ncase_b,Nope\n")
    out = tmp_path / "c.toml"
    r = run_cli("cohort", "init", "--slides", str(slides), "--labels", str(labels), "--out", str(out),
                "--classes", "CC,EC")
    assert r.returncode == 2
    assert "unknown class 'Nope' on line(s) 3" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_missing_labels_and_missing_slides(tmp_path: Path, slides: Path) -> None:
    rep, cohort = init_cohort(tmp_path / "c.toml", slides, tmp_path / "nope.csv")
    assert cohort is None and "labels file not found" in rep.errors[0]
    rep, cohort = init_cohort(tmp_path / "c.toml", tmp_path / "no_slides_here")
    assert cohort is None and "slides folder not found" in rep.errors[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    rep, cohort = init_cohort(tmp_path / "c.toml", empty)
    assert cohort is None and "no slide files" in rep.errors[0]
    assert not (tmp_path / "c.toml").exists()


def test_unreadable_slides_are_named(tmp_path: Path, slides: Path) -> None:
    (slides / "broken.svs").write_bytes(SVS.read_bytes()[:40_000])
    rep, cohort = init_cohort(tmp_path / "c.toml", slides)
    assert cohort is not None and set(rep.unreadable) == {"broken"}
    assert str(slides / "broken.svs") in rep.unreadable["broken"]
    rep, cohort = init_cohort(tmp_path / "s.toml", slides, strict=True)
    assert cohort is None and any("broken.svs" in e for e in rep.errors)


def _ubc_folder(tmp: Path, n: int = 4) -> tuple[Path, Path]:
    """A UBC-OCEAN-style folder: train_images/<id>.png, train_thumbnails/<id>_thumbnail.png, train.csv."""
    import numpy as np
    from PIL import Image

    images, thumbs = tmp / "train_images", tmp / "train_thumbnails"
    images.mkdir()
    thumbs.mkdir()
    rows = ["image_id,label,image_width,image_height,is_tma"]
    for i in range(n):
        w, h = 700 + 50 * i, 500
        Image.fromarray(synthetic_tissue(w, h, seed=i)).save(images / f"{10 + i}.png")
        Image.fromarray(np.full((50, 70, 3), (30 * i, 200, 90), np.uint8)).save(thumbs / f"{10 + i}_thumbnail.png")
        tma = "True" if i == 0 else "False"
        rows.append(f"{10 + i},{'CC' if i % 2 else 'HGSC'},{w},{h + (7 if i == 3 else 0)},{tma}")
    (tmp / "train.csv").write_text("\n".join(rows) + "\n")
    return images, tmp / "train.csv"


def test_init_on_pngs_reads_headers_and_converts_nothing(tmp_path: Path) -> None:
    images, labels = _ubc_folder(tmp_path)
    (images / "10_thumbnail.png").write_bytes((tmp_path / "train_thumbnails" / "10_thumbnail.png").read_bytes())
    out = tmp_path / "study" / "cohort.toml"
    r = run_cli("cohort", "init", "--slides", str(images), "--labels", str(labels), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "4 image(s) (2 megapixels) are converted to pyramids on first view" in r.stdout
    assert f"python -m core convert --cohort {out}" in r.stdout
    assert "1 image size(s) differ from the file's header: 13 (header 850x500, labels 850x507)" in r.stderr
    assert not (tmp_path / "study" / ".cache").exists()  # nothing converted, not even into a temporary cache
    c = load_cohort(out)
    assert set(c.slide_paths) == {"10", "11", "12", "13"}  # a *_thumbnail.png is not a slide
    assert c.mpp_for("10") == 0.25 and c.mpp_for("11") == 0.5  # is_tma: 40x TMA, 20x whole slide


def test_init_report_lists_sizes_and_images_to_convert(tmp_path: Path) -> None:
    images, labels = _ubc_folder(tmp_path, n=2)
    (images / "broken.png").write_bytes((images / "10.png").read_bytes()[:3000])
    rep, cohort = init_cohort(tmp_path / "c.toml", images, labels)
    assert cohort is not None and rep.sizes["10"] == (700, 500) and rep.to_convert == ["10", "11"]
    assert "truncated PNG" in rep.unreadable["broken"]


def test_is_tma_mpp_is_overridden_by_the_cohort_and_written_into_the_pyramid(tmp_path: Path) -> None:
    import openslide

    from core.cohort.convert import convert_cohort
    from core.slides.pyramid import pyramid_path

    images, labels = _ubc_folder(tmp_path, n=2)
    toml = tmp_path / "cohort.toml"
    toml.write_text(f'slides = "{images}"\nlabels = "{labels}"\n[mpp]\n"11" = 0.3\n')
    c = load_cohort(toml)
    assert c.slide_mpps == {"10": 0.25, "11": 0.3}
    report = convert_cohort(c)
    assert report.converted == ["10", "11"] and not report.failed
    for image_id, mpp in (("10", 0.25), ("11", 0.3)):
        props = openslide.OpenSlide(str(pyramid_path(c.slide_path(image_id), c.cache_dir))).properties
        assert float(props["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-6)
    assert convert_cohort(c).skipped == ["10", "11"]  # resumable: done ones are not redone


def test_list_thumbnails_use_the_thumbnail_files_and_never_convert(tmp_path: Path) -> None:
    from core.review.viewer_data import thumbnail_data_url
    from core.slides.thumbnails import quick_thumbnail, sidecar_thumbnail

    images, _ = _ubc_folder(tmp_path, n=2)
    assert sidecar_thumbnail(images / "11.png") == tmp_path / "train_thumbnails" / "11_thumbnail.png"
    thumb = quick_thumbnail(images / "11.png", 35, tmp_path / "cache")
    assert thumb is not None and thumb.size == (35, 25) and thumb.getpixel((10, 10)) == (30, 200, 90)
    assert thumbnail_data_url(images / "11.png", tmp_path / "cache", 32).startswith("data:image/jpeg;base64,")
    (tmp_path / "train_thumbnails" / "10_thumbnail.png").unlink()
    assert quick_thumbnail(images / "10.png", 64, tmp_path / "cache") is None  # no thumbnail file, not converted
    assert not (tmp_path / "cache" / "pyramids").exists()


def test_is_tma_gives_an_mpp_only_to_files_that_state_none(tmp_path: Path, slides: Path) -> None:
    labels = _labels(tmp_path, "image_id,label,is_tma\ncase_a,CC,True\ncase_b,EC,False\ncase_c,CC,True\n")
    toml = tmp_path / "c.toml"
    toml.write_text(f'slides = "{slides}"\nlabels = "{labels}"\n')
    c = load_cohort(toml)
    assert c.mpp_for("case_a") is None and c.mpp_for("case_b") is None  # SVS and TIFF with resolution: their own
    assert c.mpp_for("case_c") == 0.25  # a TIFF without resolution tags: the column's
