"""The demo cohort: real files that open through core.slides.slide, aligned masks, requested noise, determinism."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.cohort.cohort_file import load_cohort
from core.cohort.labels import read_labels
from core.demo.plan import DEFAULT_CLASSES, FULL, OUTLIER_LABEL, build_demo, plan_cohort
from core.errors import InputError
from core.slides.slide import open_slide

SEED = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    calls: list[float] = []
    toml = build_demo(root / "cohort", seed=SEED, tiny=True, progress=lambda f, m: calls.append(f))
    assert toml == root / "cohort" / "cohort.toml"
    assert calls and calls[-1] == 1.0 and calls == sorted(calls)
    return root / "cohort"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_slide_opens_with_its_stated_mpp(demo: Path, tmp_path: Path) -> None:
    cohort = load_cohort(demo)
    truth = _rows(demo / "truth" / "truth.csv")
    labels = {r["image_id"]: r for r in _rows(demo / "labels.csv")}
    assert {r["format"] for r in truth if r["is_tma"] == "1"} == {"png", "tiff"}
    for row in truth:
        iid = row["image_id"]
        slide = open_slide(cohort.slide_path(iid), mpp=cohort.mpp_for(iid), cache_dir=tmp_path)
        assert slide.mpp == pytest.approx(float(row["mpp"]), rel=1e-3), iid
        assert slide.dimensions == (int(labels[iid]["image_width"]), int(labels[iid]["image_height"]))
        if row["format"] == "tiff":
            assert slide.file_mpp == pytest.approx(float(row["mpp"]), rel=1e-3)
            assert slide.level_count >= 3
            for (w0, h0), (w1, h1) in zip(slide.level_dimensions, slide.level_dimensions[1:]):
                assert (w1, h1) == (math.ceil(w0 / 2), math.ceil(h0 / 2))
        else:
            assert slide.file_mpp is None  # a plain PNG: the cohort states its 40x pixel size
        thumb = np.asarray(slide.thumbnail(256)).astype(int)
        corner = thumb[:4, :4].reshape(-1, 3)
        assert (corner.min(1) > 225).all(), f"{iid}: background is not white"
        stained = (thumb.max(2) - thumb.min(2) > 25) | (thumb.min(2) < 200)
        assert stained.mean() > 0.1, f"{iid}: no tissue"


def _block_features(slide, mask: np.ndarray, ds: int, block: int, rng: np.random.Generator,
                    n: int) -> list[np.ndarray]:
    """Colour and texture of level-0 blocks centred on random pixels of ``mask``."""
    ys, xs = np.nonzero(mask)
    pick = rng.choice(len(ys), min(n, len(ys)), replace=False)
    feats = []
    for y, x in zip(ys[pick], xs[pick]):
        cx, cy = x * ds + ds // 2, y * ds + ds // 2
        px = np.asarray(slide.read_region((cx - block // 2, cy - block // 2), 0, (block, block))).astype(float)
        grey = px.mean(2)
        feats.append(np.r_[px.reshape(-1, 3).mean(0), grey.std(), np.abs(np.diff(grey, axis=1)).mean()])
    return feats


def test_masks_align_with_drawn_tumour(demo: Path, tmp_path: Path) -> None:
    from scipy import ndimage

    cohort = load_cohort(demo)
    rng = np.random.default_rng(0)
    checked = 0
    for row in _rows(demo / "truth" / "truth.csv"):
        iid, ds = row["image_id"], int(row["mask_downsample"])
        slide = open_slide(cohort.slide_path(iid), mpp=cohort.mpp_for(iid), cache_dir=tmp_path)
        mask = np.asarray(Image.open(demo / "truth" / "masks" / f"{iid}.png")) > 127
        w, h = slide.dimensions
        assert mask.shape == (math.ceil(h / ds), math.ceil(w / ds)), iid
        if row["is_outlier"] == "1":
            assert not mask.any(), f"{iid}: an outlier has no ovarian tumour"
            continue
        assert mask.any(), iid
        thumb = np.asarray(slide.thumbnail(max(mask.shape))).astype(int)
        tissue = np.asarray(Image.fromarray((thumb.min(2) < 215).astype(np.uint8) * 255).resize(
            mask.shape[::-1], Image.Resampling.NEAREST)) > 0
        tissue = ndimage.binary_closing(tissue, iterations=2)
        block = int(round(48 / float(row["mpp"])))  # 48 um: a few cells or one gland wall, at any mpp
        margin = block // (2 * ds) + 2
        inside = ndimage.binary_erosion(mask, iterations=margin)
        outside = ndimage.binary_erosion(tissue & ~mask, iterations=margin)
        if inside.sum() < 8 or outside.sum() < 8:
            continue
        tum = np.array(_block_features(slide, inside, ds, block, rng, 30))
        nor = np.array(_block_features(slide, outside, ds, block, rng, 30))
        # leave-one-out nearest centroid on standardised features
        x = np.r_[tum, nor]
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = np.r_[np.ones(len(tum), bool), np.zeros(len(nor), bool)]
        hits = 0
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            ct, cn = x[keep & y].mean(0), x[keep & ~y].mean(0)
            hits += (np.linalg.norm(x[i] - ct) < np.linalg.norm(x[i] - cn)) == y[i]
        acc = hits / len(x)
        assert acc >= 0.85, f"{iid} ({row['pattern']}): tumour vs stroma separable only {acc:.2f}"
        checked += 1
    assert checked >= 4


def test_label_noise_and_outliers_match_the_request(demo: Path) -> None:
    truth = _rows(demo / "truth" / "truth.csv")
    labels = {r["image_id"]: r["label"] for r in _rows(demo / "labels.csv")}
    assert list(labels) == sorted(labels)
    outliers = [r for r in truth if r["is_outlier"] == "1"]
    labelled = [r for r in truth if r["is_outlier"] == "0"]
    assert len(outliers) == 1 and len(labelled) == 6 + 2
    assert all(r["true_label"] == OUTLIER_LABEL and r["given_label"] in DEFAULT_CLASSES for r in outliers)
    noisy = [r for r in labelled if r["is_noisy"] == "1"]
    assert len(noisy) == round(0.08 * len(labelled))
    assert all(r["given_label"] != r["true_label"] for r in noisy)
    assert all(r["given_label"] == r["true_label"] for r in labelled if r["is_noisy"] == "0")
    assert all(labels[r["image_id"]] == r["given_label"] for r in truth)
    assert OUTLIER_LABEL not in labels.values()  # users don't know which slides are outliers


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("noise", [0.0, 0.08, 0.2])
def test_plan_fractions_and_balance(seed: int, noise: float) -> None:
    planned = plan_cohort(seed, n_wsi=40, n_tma=10, n_outliers=4, noise=noise)
    assert len(planned) == 54
    outliers = [p for p in planned if p.true_label == OUTLIER_LABEL]
    assert len(outliers) == 4 and all(p.plan.is_outlier and not p.is_tma for p in outliers)
    assert sum(p.is_noisy for p in planned) == round(noise * 50)
    counts = Counter(p.true_label for p in planned if p.true_label != OUTLIER_LABEL)
    assert set(counts) == set(DEFAULT_CLASSES) and max(counts.values()) - min(counts.values()) <= 1
    wsis = [p.plan for p in planned if not p.is_tma]
    lo, hi = FULL["wsi_side"]
    assert all(lo <= p.width <= hi and lo <= p.height <= hi and p.mpp == 0.5 for p in wsis)
    assert any(p.width % 2 for p in wsis)  # odd sizes exercise rounding at lower levels
    tmas = [p.plan for p in planned if p.is_tma]
    assert all(p.mpp == 0.25 for p in tmas) and {p.fmt for p in tmas} == {"png", "tiff"}
    assert min(p.plan.tumour_fraction for p in planned if not p.is_tma and not p.plan.is_outlier) >= 0.1


def test_class_list_is_a_parameter() -> None:
    planned = plan_cohort(2, n_wsi=9, n_tma=0, n_outliers=0, noise=0.0, classes=("A", "B", "C"))
    assert Counter(p.true_label for p in planned) == {"A": 3, "B": 3, "C": 3}
    assert len({p.plan.pattern for p in planned}) == 3
    with pytest.raises(InputError, match="distinct"):
        plan_cohort(0, classes=("A", "A"))
    with pytest.raises(InputError, match="noise"):
        plan_cohort(0, noise=1.5)


def test_same_seed_is_byte_identical_and_another_seed_differs(demo: Path, tmp_path: Path) -> None:
    again = build_demo(tmp_path / "again", seed=SEED, tiny=True).parent
    other = build_demo(tmp_path / "other", seed=SEED + 1, tiny=True).parent
    for name in ("labels.csv", "truth/truth.csv", "cohort.toml"):
        assert (demo / name).read_bytes() == (again / name).read_bytes(), name
    for mask in (demo / "truth" / "masks").iterdir():
        assert mask.read_bytes() == (again / "truth" / "masks" / mask.name).read_bytes()
    assert (demo / "labels.csv").read_bytes() != (other / "labels.csv").read_bytes()
    assert (demo / "truth/truth.csv").read_bytes() != (other / "truth/truth.csv").read_bytes()


def test_cohort_toml_lists_every_slide(demo: Path) -> None:
    cohort = load_cohort(demo / "cohort.toml")
    truth = _rows(demo / "truth" / "truth.csv")
    assert set(cohort.slide_paths) == {r["image_id"] for r in truth}
    assert cohort.default_mpp == 0.5 and cohort.patch_size == 256 and cohort.target_mpp == 0.5
    assert cohort.min_tissue == 0.25
    assert cohort.mpp_overrides == {r["image_id"]: 0.25 for r in truth if r["format"] == "png"}
    assert cohort.database == f"sqlite:///{demo.resolve()}/slidelens.db"
    table = read_labels(cohort.labels, slide_ids=cohort.slide_paths)
    assert set(table.classes) <= set(DEFAULT_CLASSES) and len(table.df) == len(truth)


def test_existing_folders_are_protected_and_failed_builds_leave_nothing(tmp_path: Path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(InputError, match="not a demo cohort"):
        build_demo(user, tiny=True)
    assert (user / "notes.txt").read_text() == "precious"

    leftovers = tmp_path / "fresh"
    (leftovers / ".cache").mkdir(parents=True)
    (leftovers / "slidelens.db").write_bytes(b"")
    build_demo(leftovers, tiny=True, n_wsi=2, n_tma=0, n_outliers=0)  # an app's cache and database are no data
    assert (leftovers / "cohort.toml").is_file() and not (leftovers / "slidelens.db").exists()

    def boom(fraction: float, message: str) -> None:
        if fraction > 0.3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_demo(tmp_path / "half", tiny=True, n_wsi=3, n_tma=0, n_outliers=0, progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "mine"]


def test_cli_builds_with_samples_and_rejects_bad_input(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["demo", "--out", str(out), "--tiny", "--wsi", "2", "--tma", "1", "--outliers", "0",
                 "--with-samples", "--seed", "5"])
    assert code == 0
    cohort = load_cohort(out)
    assert "CMU-1-Small-Region" in cohort.slide_paths  # a real slide, unlabelled
    assert {"wsi_001", "wsi_002", "tma_001"} <= set(cohort.slide_paths)
    assert "CMU-1-Small-Region" not in {r["image_id"] for r in _rows(out / "labels.csv")}
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path / "bad"), "--tiny", "--noise", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "noise" in err and "\n" not in err


def test_progressive_demo_starts_with_a_handful_and_adds_each_slide_fully_formed(tmp_path: Path) -> None:
    from core.demo.progressive import add_slides, pending_ids, read_plan, starter_ids

    kw = {"seed": SEED, "tiny": True, "n_wsi": 4, "n_tma": 1, "n_outliers": 1, "classes": ("A", "B")}
    planned = plan_cohort(SEED, n_wsi=4, n_tma=1, n_outliers=1, tiny=True, classes=("A", "B"))
    first = starter_ids(planned)
    by_id = {p.plan.image_id: p for p in planned}
    # one correctly labelled whole slide per class, a TMA and an outlier
    assert sorted(by_id[i].true_label for i in first if not by_id[i].is_tma and not by_id[i].plan.is_outlier) == \
        ["A", "B"]
    assert sum(by_id[i].is_tma for i in first) == 1 and sum(by_id[i].plan.is_outlier for i in first) == 1
    assert not any(by_id[i].is_noisy for i in first)

    root = build_demo(tmp_path / "demo", only=first, **kw).parent
    assert set(load_cohort(root).slide_paths) == set(first)
    assert {r["image_id"] for r in _rows(root / "labels.csv")} == set(first)
    assert read_plan(root)["ids"] == [p.plan.image_id for p in planned]
    rest = pending_ids(root)
    assert sorted(rest) == sorted(set(by_id) - set(first)) and rest

    seen: list[str] = []

    def extract(slide: Path, out: Path, p, progress) -> None:
        assert slide.is_file() and not (root / "slides" / slide.name).exists()
        progress(0.5, f"{slide.name}: half")
        out.write_bytes(b"features")

    def predict(image_id: str) -> None:  # features in place, the slide not visible yet
        assert (root / "features" / f"{image_id}.h5").is_file()
        assert image_id not in load_cohort(root).slide_paths
        seen.append(f"predict {image_id}")

    def published(image_id: str) -> None:  # the slide and its labels arrive together, after its prediction
        assert image_id in load_cohort(root).slide_paths
        assert image_id in {r["image_id"] for r in _rows(root / "labels.csv")}
        seen.append(f"published {image_id}")

    fracs: list[float] = []
    assert add_slides(root, extract, predict, published, lambda f, m: fracs.append(f)) == rest
    assert seen == [f"{what} {i}" for i in rest for what in ("predict", "published")]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    assert pending_ids(root) == [] and not (root / ".pending").exists()
    # the finished cohort is the one a build in one go makes, byte for byte
    whole = build_demo(tmp_path / "whole", **kw).parent
    for name in ("labels.csv", "truth/truth.csv", "cohort.toml", "truth/plan.json"):
        assert (root / name).read_bytes() == (whole / name).read_bytes(), name
    for p in (whole / "slides").iterdir():
        assert (root / "slides" / p.name).read_bytes() == p.read_bytes(), p.name
    assert add_slides(root, extract, predict, published) == []  # nothing left: a second run adds nothing
