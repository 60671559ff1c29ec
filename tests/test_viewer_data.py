"""core.review.viewer_data: the viewer's slide table, filters, chooser rows, thumbnails and gallery (no Streamlit)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.cohort.cohort_file import load_cohort
from core.review import viewer_data as vd
from core.review.queue import open_cohort_store
from core.slides.tiling import TissueMask

sys.path.insert(0, str(Path(__file__).parent))
from _viewer_data import build_cohort  # noqa: E402


def test_table_follows_the_store_and_judges_out_of_fold(tmp_path):
    cohort = load_cohort(build_cohort(tmp_path, with_svs=False))
    store = open_cohort_store(cohort)
    table = vd.viewer_slide_table(cohort, store, "v001-abmil").set_index("image_id")
    assert table.loc["synth_a", ["label", "pred", "pred_source", "final_pred"]].tolist() == \
        ["tumor", "benign", "out-of-fold", "tumor"]
    assert table.loc["synth_a", "correct"] is False or table.loc["synth_a", "correct"] == False  # noqa: E712
    store.set_classes(["benign", "tumor"])
    store.edit("synth_a", {"label": "benign"}, "ann", "re-read", store.state("synth_a").version)
    table = vd.viewer_slide_table(cohort, store, "v001-abmil").set_index("image_id")
    assert table.loc["synth_a", ["label", "given_label"]].tolist() == ["benign", "tumor"]
    assert bool(table.loc["synth_a", "correct"]) is True
    # without the database the labels file stands in; the rule for predictions is the same
    fallback = vd.viewer_slide_table(cohort, None, "v001-abmil").set_index("image_id")
    assert fallback.loc["synth_a", ["label", "pred"]].tolist() == ["tumor", "benign"]
    assert len(vd.table_stamp(cohort, "v001-abmil")) == 4


def test_filters_and_chooser_rows():
    table = pd.DataFrame({"image_id": ["a1", "b2", "c3"], "label": ["CC", "HGSC", None],
                          "pred": ["CC", "CC", "EC"], "pred_source": ["out-of-fold", "out-of-fold", "final model"],
                          "correct": pd.Series([True, False, None], dtype=object)})
    ids = lambda f: list(vd.filter_slides(table, f)["image_id"])  # noqa: E731
    assert ids(vd.SlideFilter(outcome="Incorrect")) == ["b2"]
    assert ids(vd.SlideFilter(outcome="Correct")) == ["a1"]
    assert ids(vd.SlideFilter(outcome="Not judged")) == ["c3"]
    assert ids(vd.SlideFilter(text="hgs")) == ["b2"] and ids(vd.SlideFilter(text="B2")) == ["b2"]
    assert ids(vd.SlideFilter(text="[(")) == []  # plain text, never a regular expression
    assert ids(vd.SlideFilter(labels=("CC",), preds=("CC",))) == ["a1"]
    rows = vd.chooser_rows(table, ["data:x", None, None])
    assert list(rows.columns) == vd.PICK_COLUMNS and rows["ok"].tolist() == ["✓", "✗", "–"]
    assert rows["label"].tolist() == ["CC", "HGSC", ""]


def test_thumbnails_are_cached_on_disk_and_never_start_a_conversion(tmp_path):
    Image.new("RGB", (300, 200), (200, 120, 160)).save(tmp_path / "plain.png")
    assert vd.thumbnail_data_url(tmp_path / "plain.png", tmp_path / "cache") is None  # no pyramid yet
    Image.new("RGB", (30, 20), (90, 20, 60)).save(tmp_path / "plain_thumbnail.png")  # a ready-made one
    assert vd.thumbnail_data_url(tmp_path / "plain.png", tmp_path / "cache").startswith("data:image/jpeg")
    assert not (tmp_path / "cache" / "pyramids").exists()  # nothing was converted
    for f in (tmp_path / "cache" / "thumbs").iterdir():
        f.unlink()
    from _viewer_data import write_pyramid

    path = write_pyramid(tmp_path / "s.tiff", 400, 300)
    url = vd.thumbnail_data_url(path, tmp_path / "cache", 48)
    assert url.startswith("data:image/jpeg;base64,") and len(list((tmp_path / "cache" / "thumbs").iterdir())) == 1
    assert vd.thumbnail_data_url(tmp_path / "missing.tiff", tmp_path / "cache") is None


def test_gallery_ranks_shares_and_leaves_out_glass():
    coords = np.array([[0, 0], [64, 0], [128, 0], [192, 0]])
    values = np.array([0.5, 0.1, 0.3, 0.1])
    mask = TissueMask(np.array([[False, True, True, True]]), 64.0)  # patch 0 is glass
    top, bottom, left = vd.gallery_patches(values, coords, 64, 2, lambda c: vd.patch_tissue_fractions(mask, c, 64))
    assert [p.index for p in top] == [2, 1] and [p.rank for p in top] == [2, 3]
    assert [(p.index, p.rank, p.tissue) for p in left] == [(0, 1, 0.0)]
    assert abs(top[0].share - 0.3) < 1e-9 and top[0].caption(4) == "#2 of 4 · 30.0% of attention"
    assert [p.index for p in bottom] == [3, 1]
    assert vd.gallery_patches(np.array([-1.0, 2.0]), coords[:2], 64, 1)[0][0].share is None  # not a distribution
    assert vd.format_share(0.000123) == "0.012%"
