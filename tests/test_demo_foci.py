"""The demo's tumour regimes: small foci (a few compact islands, 2-6% of a WSI's tissue), a chosen range, and the
default cohort left exactly as it was."""

from __future__ import annotations

import csv
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from core.cli import main
from core.demo.draw import SlidePlan
from core.demo.plan import build_demo, plan_cohort
from core.errors import InputError

SEED = 4
KW = {"tiny": True, "n_wsi": 5, "n_tma": 2, "n_outliers": 1}


def _truth(root: Path) -> dict[str, dict[str, str]]:
    with open(root / "truth" / "truth.csv", newline="") as fh:
        return {r["image_id"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo(tmp_path_factory.mktemp("foci") / "small", seed=SEED, foci="small", **KW).parent


def test_small_foci_cover_two_to_six_percent_of_each_wsi_as_a_few_compact_islands(small: Path) -> None:
    truth = _truth(small)
    wsis = [r for r in truth.values() if r["is_tma"] == "0" and r["is_outlier"] == "0"]
    tmas = [r for r in truth.values() if r["is_tma"] == "1"]
    assert len(wsis) == 5 and len(tmas) == 2
    for r in wsis:  # measured on the mask; the quantile cut leaves only a rounding error
        assert 0.02 - 0.003 <= float(r["tumour_fraction"]) <= 0.06 + 0.003, r
    for r in tmas:
        assert 0.10 - 0.01 <= float(r["tumour_fraction"]) <= 0.25 + 0.01, r
    for r in wsis:
        mask = np.asarray(Image.open(small / "truth" / "masks" / f"{r['image_id']}.png")) > 0
        labels, n = ndimage.label(mask)
        sizes = np.bincount(labels.ravel())[1:]
        # one to a few islands carry the tumour (no scatter of specks), each a blob rather than a thin sliver
        assert 1 <= int((sizes >= 0.1 * sizes.sum()).sum()) <= 5, (r["image_id"], sorted(sizes))
        big = labels == int(sizes.argmax()) + 1
        assert ndimage.binary_erosion(big, iterations=2).any(), r["image_id"]
    plan = json.loads((small / "truth" / "plan.json").read_text())
    assert plan["foci"] == "small" and plan["tumour_fraction"] == [0.02, 0.06]
    assert plan["tma_tumour_fraction"] == [0.1, 0.25]


def test_plan_json_replans_the_same_small_foci_cohort(small: Path) -> None:
    plan = json.loads((small / "truth" / "plan.json").read_text())
    # what core.demo.progressive.planned_slides does with a plan.json, regime included
    again = plan_cohort(int(plan["seed"]), plan.get("n_wsi"), plan.get("n_tma"), plan.get("n_outliers"),
                        float(plan.get("noise", 0.08)), bool(plan.get("tiny")), plan.get("classes") or None,
                        foci=plan.get("foci", "large"), tumour_fraction=plan.get("tumour_fraction"))
    assert again == plan_cohort(SEED, foci="small", **KW)
    truth = _truth(small)
    for p in again:
        expected = 0.0 if p.plan.is_outlier else p.plan.tumour_fraction
        assert float(truth[p.plan.image_id]["tumour_fraction"]) == pytest.approx(expected, abs=0.003)
    # an old plan.json (no regime recorded) replans the default cohort
    old = {k: v for k, v in plan.items() if k not in ("foci", "tumour_fraction", "tma_tumour_fraction")}
    assert plan_cohort(SEED, **KW, foci=old.get("foci", "large"), tumour_fraction=old.get("tumour_fraction")) == \
        plan_cohort(SEED, **KW)


def test_the_default_regime_is_the_cohort_it_always_was() -> None:
    defaults = {f.name: f.default for f in fields(SlidePlan) if f.name.startswith("tumour_") and f.name !=
                "tumour_fraction"}
    for kw in ({"n_wsi": 40, "n_tma": 10, "n_outliers": 4}, KW):
        plain, large = plan_cohort(SEED, **kw), plan_cohort(SEED, foci="large", **kw)
        small = plan_cohort(SEED, foci="small", **kw)
        assert plain == large
        for p in plain:  # today's ranges and drawing parameters
            lo, hi = (0.6, 0.9) if p.is_tma else (0.12, 0.38)
            assert lo <= p.plan.tumour_fraction <= hi
            assert {k: getattr(p.plan, k) for k in defaults} == defaults
        # the same random draws in every regime: identical slides, labels and noise, the fraction rescaled
        for p, q in zip(plain, small, strict=True):
            assert (p.plan.image_id, p.plan.width, p.plan.height, p.plan.pattern, p.given_label, p.is_noisy) == \
                (q.plan.image_id, q.plan.width, q.plan.height, q.plan.pattern, q.given_label, q.is_noisy)
            (a, b), (c, d) = ((0.6, 0.9), (0.10, 0.25)) if p.is_tma else ((0.12, 0.38), (0.02, 0.06))
            assert (q.plan.tumour_fraction - c) / (d - c) == pytest.approx((p.plan.tumour_fraction - a) / (b - a))
            assert q.plan.tumour_um is not None and q.plan.tumour_margin_um > 0


def test_a_chosen_range_replaces_the_wsi_range(tmp_path: Path) -> None:
    planned = plan_cohort(SEED, tumour_fraction=(0.3, 0.3), **KW)
    assert {p.plan.tumour_fraction for p in planned if not p.is_tma} == {0.3}
    assert all(0.6 <= p.plan.tumour_fraction <= 0.9 for p in planned if p.is_tma)  # TMAs keep the regime's
    assert main(["demo", "--out", str(tmp_path / "d"), "--tiny", "--wsi", "2", "--tma", "0", "--outliers", "0",
                 "--foci", "small", "--tumour-fraction", "0.08,0.1"]) == 0
    truth = _truth(tmp_path / "d")
    assert all(0.08 - 0.003 <= float(r["tumour_fraction"]) <= 0.1 + 0.003 for r in truth.values())
    assert json.loads((tmp_path / "d" / "truth" / "plan.json").read_text())["tumour_fraction"] == [0.08, 0.1]


@pytest.mark.parametrize("value", ["0.3,0.1", "0,0.5", "0.2,1", "0.1", "a,b", "0.1,0.2,0.3"])
def test_a_bad_range_is_refused_in_one_line(value: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bad"
    assert main(["demo", "--out", str(out), "--tiny", "--tumour-fraction", value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "tumour" in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_plan_cohort_refuses_an_unknown_regime() -> None:
    with pytest.raises(InputError, match="foci"):
        plan_cohort(0, foci="medium")
    with pytest.raises(InputError, match="0 < LO <= HI < 1"):
        plan_cohort(0, tumour_fraction=(0.5, 0.2))
