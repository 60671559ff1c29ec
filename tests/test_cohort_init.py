"""`cohort init` on good and broken folders: every problem reported, nothing written half."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PYRAMID_TIFF, SVS, synthetic_tissue, write_pyramid_tiff
from core.cohort import load_cohort
from core.cohort_init import init_cohort

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
