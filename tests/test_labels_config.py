"""Labels validation, settings resolution and the cohort file."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SHARED_SLIDES
from core.cohort.cohort_file import load_cohort
from core.cohort.labels import read_labels
from core.cohort.settings import load_settings
from core.errors import InputError


def _csv(tmp: Path, text: str) -> Path:
    p = tmp / "labels.csv"
    p.write_text(text)
    return p


def test_classes_come_from_the_file_and_other_is_not_trained(tmp_path: Path) -> None:
    t = read_labels(_csv(tmp_path, "image_id,label,is_tma\na,Zeta,0\nb,Alpha,1\nc,Other,0\nd,Alpha,0\n"))
    assert t.classes == ("Alpha", "Zeta")
    assert list(t.training_rows()["image_id"]) == ["a", "b", "d"]
    assert "is_tma" in t.df.columns


def test_bad_labels_report_every_problem_with_lines(tmp_path: Path) -> None:
    p = _csv(tmp_path, "image_id,label\na,CC\nb,XX\na,EC\nc,HGSC\n")
    with pytest.raises(InputError) as err:
        read_labels(p, classes=["CC", "EC", "HGSC"], slide_ids=["a", "b"])
    msg = str(err.value)
    assert str(p) in msg and "\n" not in msg
    assert "unknown class 'XX' on line(s) 3" in msg
    assert "duplicate id 'a' on lines 2, 4" in msg
    assert "no slide: c" in msg


def test_missing_columns_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing column"):
        read_labels(_csv(tmp_path, "id,class\na,CC\n"))
    with pytest.raises(InputError, match="not found"):
        read_labels(tmp_path / "none.csv")


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("target_mpp = 0.25\npatch_size = 224\n")
    env = {"SLIDELENS_CONFIG": str(cfg), "SLIDELENS_PATCH_SIZE": "512", "SLIDELENS_DEFAULT_MPP": "0.5"}
    s = load_settings(env=env)
    assert s.target_mpp == 0.25 and s.patch_size == 224 and s.default_mpp == 0.5  # file beats environment
    assert load_settings({"patch_size": 128}, env=env).patch_size == 128  # overrides beat everything
    with pytest.raises(InputError, match="not a valid"):
        load_settings(env={"SLIDELENS_PATCH_SIZE": "big"})


def test_cohort_toml_resolves_paths(tmp_path: Path) -> None:
    (tmp_path / "cohort.toml").write_text(
        f'name = "t"\nslides = "{SHARED_SLIDES}"\nlabels = "labels.csv"\ndefault_mpp = 0.5\n'
        '[patches]\npatch_size = 224\n[mpp]\n"CMU-1-Small-Region" = 0.25\n')
    c = load_cohort(tmp_path)
    assert c.labels == tmp_path / "labels.csv" and c.features == tmp_path / "features"
    assert c.database == f"sqlite:///{tmp_path}/slidelens.db"
    # every slide of the shared folder (it grows: an NDPI sample was added), each found once under its id
    expected = {"CMU-1-Small-Region", "CMU-1-Small-Region.pyramid", "dicom-camelyon-overview"}
    expected |= {p.stem for p in SHARED_SLIDES.glob("*.ndpi")}
    assert set(c.slide_paths) == expected
    assert c.mpp_for("CMU-1-Small-Region") == 0.25 and c.patch_size == 224
    again = tmp_path / "again"
    again.mkdir()
    (again / "cohort.toml").write_text(c.to_toml())
    assert load_cohort(again).slide_paths == c.slide_paths
