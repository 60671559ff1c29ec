"""Training and inference end to end on tiny synthetic bags written as real features files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cli import main as cli_main
from core.cohort.cohort_file import cohort_from_dict
from core.errors import InputError
from core.model.feature_files import FeatureBag, read_features, write_features
from core.model.infer import ensure_results, infer_slide, load_model, read_attention, slide_attention
from core.model.train import train_model
from core.model.versions import latest_version, list_versions

D = 16
CLASSES = ["A", "B", "C"]


def make_bag(rng: np.random.Generator, cls: int, n: int, dim: int = D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background noise plus a few 'tumour' patches shifted along the class's own direction."""
    x = rng.normal(0, 1, (n, dim)).astype(np.float32)
    tumour = rng.random(n) < 0.3
    tumour[0] = True
    x[tumour, cls] += 4.0
    coords = np.stack(np.meshgrid(np.arange(n) % 10, np.arange(n) // 10)[0:1], -1).reshape(-1, 1)
    coords = np.stack([np.arange(n) % 10 * 256, np.arange(n) // 10 * 256], axis=1).astype(np.int64)
    return x, coords, tumour


def write_cohort(root: Path, per_class: int = 6, seed: int = 0, backbone: str = "toy") -> dict[str, str]:
    """Features for ``per_class`` slides per class + labels.csv (with one noisy label, one outlier row)."""
    rng = np.random.default_rng(seed)
    labels = {}
    for c, name in enumerate(CLASSES):
        for k in range(per_class):
            image_id = f"{name}{k}"
            x, coords, _ = make_bag(rng, c, int(rng.integers(20, 60)))
            write_features(root / "features" / f"{image_id}.h5",
                           FeatureBag(x, coords, patch_size_level0=256, mpp=0.5, backbone=backbone))
            labels[image_id] = name
    rows = [{"image_id": i, "label": lab, "is_outlier": 0} for i, lab in labels.items()]
    rows.append({"image_id": "nofeatures", "label": "A", "is_outlier": 0})
    rows.append({"image_id": "weird", "label": "B", "is_outlier": 1})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cohort")
    labels = write_cohort(root)
    model_dir = train_model(root / "features", root / "labels.csv", model="abmil", folds=3, epochs=12, seed=0)
    return root, model_dir, labels


def test_training_writes_a_complete_model_folder(trained: tuple[Path, Path, dict[str, str]]) -> None:
    root, model_dir, _ = trained
    assert model_dir == root / "models" / "v001-abmil"
    for name in ("model.json", "weights.safetensors", "tissue_ood.safetensors", "oof_predictions.csv", "folds.csv"):
        assert (model_dir / name).is_file(), name
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["classes"] == CLASSES and meta["feature_dim"] == D and meta["backbone"] == "toy"
    assert meta["version"] == "v001-abmil" and meta["settings"]["model"] == "abmil"
    assert meta["skipped_no_features"] == ["nofeatures"]
    assert meta["ood"]["threshold"] > 0
    assert not list((root / "models").glob(".staging-*"))


def test_oof_covers_each_labelled_slide_once_and_is_accurate(trained: tuple[Path, Path, dict[str, str]]) -> None:
    _, model_dir, labels = trained
    oof = pd.read_csv(model_dir / "oof_predictions.csv")
    assert list(oof.columns) == ["image_id", "pred", "prob_A", "prob_B", "prob_C", "ood_score"]
    assert sorted(oof["image_id"]) == sorted(labels)  # no 'weird' (outlier), no 'nofeatures'
    np.testing.assert_allclose(oof[["prob_A", "prob_B", "prob_C"]].sum(axis=1), 1.0, atol=1e-4)
    acc = (oof["pred"] == oof["image_id"].map(labels)).mean()
    assert acc >= 0.9, acc
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["metrics"]["oof_balanced_accuracy"] >= 0.9


def test_folds_are_stratified_and_disjoint(trained: tuple[Path, Path, dict[str, str]]) -> None:
    _, model_dir, labels = trained
    folds = pd.read_csv(model_dir / "folds.csv")
    assert sorted(folds["image_id"]) == sorted(labels) and folds["image_id"].is_unique
    assert set(folds["fold"]) == {0, 1, 2}
    per = folds.groupby(["fold", "label"]).size().unstack()
    assert (per == 2).all().all()  # 6 slides per class over 3 folds


def test_oof_prediction_of_a_mislabelled_slide_comes_from_a_model_that_did_not_see_it(tmp_path: Path) -> None:
    """An in-sample model would echo the wrong label; a held-out fold model predicts the true class."""
    labels = write_cohort(tmp_path, per_class=5, seed=3)
    df = pd.read_csv(tmp_path / "labels.csv")
    df.loc[df["image_id"] == "A0", "label"] = "C"  # plant a label error
    df.to_csv(tmp_path / "labels.csv", index=False)
    model_dir = train_model(tmp_path / "features", tmp_path / "labels.csv", model="abmil", folds=5, epochs=12)
    oof = pd.read_csv(model_dir / "oof_predictions.csv").set_index("image_id")
    assert oof.loc["A0", "pred"] == "A"
    assert oof.loc["A0", "prob_A"] > oof.loc["A0", "prob_C"]
    assert len(oof) == len(labels)


def test_versions_are_numbered_and_listed(trained: tuple[Path, Path, dict[str, str]]) -> None:
    root, _, _ = trained
    assert latest_version(root / "models") == "v001-abmil"
    assert [v["version"] for v in list_versions(root / "models")] == ["v001-abmil"]
    assert latest_version(root / "nowhere") is None


def test_infer_slide_gives_probs_and_attention_in_coords_order(trained: tuple[Path, Path, dict[str, str]]) -> None:
    root, model_dir, _ = trained
    loaded = load_model(model_dir)
    bag = read_features(root / "features" / "B1.h5")
    res = infer_slide(loaded, bag)
    assert res.pred == "B" and res.probs.shape == (3,) and abs(res.probs.sum() - 1) < 1e-5
    assert res.attention.shape == (len(bag),)
    tumour = bag.features[:, 1] > 2.5  # the shifted patches should get the attention
    assert res.attention[tumour].mean() > res.attention[~tumour].mean()


def test_infer_refuses_other_dimension_or_backbone(trained: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    _, model_dir, _ = trained
    loaded = load_model(model_dir)
    rng = np.random.default_rng(0)
    x, coords, _ = make_bag(rng, 0, 10, dim=D + 4)
    wrong_dim = FeatureBag(x, coords, 256, 0.5, "toy", path=tmp_path / "s1.h5")
    with pytest.raises(InputError, match=r"s1\.h5.*dimension 20.*v001-abmil.*dimension 16"):
        infer_slide(loaded, wrong_dim)
    x, coords, _ = make_bag(rng, 0, 10)
    wrong_bb = FeatureBag(x, coords, 256, 0.5, "resnet50", path=tmp_path / "s2.h5")
    with pytest.raises(InputError, match=r"s2\.h5.*'resnet50'.*v001-abmil.*'toy'"):
        infer_slide(loaded, wrong_bb)


def test_load_model_rejects_incomplete_folder(trained: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    _, model_dir, _ = trained
    broken = tmp_path / "v009-abmil"
    broken.mkdir()
    (broken / "model.json").write_text((model_dir / "model.json").read_text())
    with pytest.raises(InputError, match="missing weights.safetensors"):
        load_model(broken)


def _cohort(root: Path):
    return cohort_from_dict({"slides": "slides", "labels": "labels.csv"}, root)


def test_ensure_results_computes_only_missing_slides(trained: tuple[Path, Path, dict[str, str]]) -> None:
    root, _, labels = trained
    cohort = _cohort(root)
    first = ensure_results(cohort, "v001-abmil", ["A0", "B0"])
    out = root / "results" / "v001-abmil"
    assert sorted(first["image_id"]) == ["A0", "B0"]
    mt = {p.name: p.stat().st_mtime_ns for p in (out / "attention").glob("*.h5")}
    pred_mtime = (out / "predictions.csv").stat().st_mtime_ns
    again = ensure_results(cohort, "v001-abmil", ["A0", "B0"])  # all cached: nothing written
    assert {p.name: p.stat().st_mtime_ns for p in (out / "attention").glob("*.h5")} == mt
    assert (out / "predictions.csv").stat().st_mtime_ns == pred_mtime
    pd.testing.assert_frame_equal(first, again)
    everything = ensure_results(cohort)  # latest version, every slide with features
    assert sorted(everything["image_id"]) == sorted(labels)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "attention").glob(f"{'[AB]'}0.h5")} == mt
    coords, attention, attrs = read_attention(out / "attention" / "C3.h5")
    assert len(coords) == len(attention) and attrs["model_version"] == "v001-abmil"
    assert json.loads(attrs["classes"]) == CLASSES


def test_slide_attention_on_demand(trained: tuple[Path, Path, dict[str, str]]) -> None:
    root, _, _ = trained
    cohort = _cohort(root)
    coords, attention, _ = slide_attention(cohort, None, "A5")
    assert coords.shape == (len(attention), 2)
    with pytest.raises(InputError, match="no features"):
        slide_attention(cohort, None, "nofeatures")


def test_cli_train_and_infer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cohort(tmp_path, per_class=3, seed=5)
    rc = cli_main(["train", "--features", str(tmp_path / "features"), "--labels", str(tmp_path / "labels.csv"),
                   "--model", "dsmil", "--out", str(tmp_path / "models"), "--folds", "3", "--epochs", "4"])
    assert rc == 0
    model_dir = tmp_path / "models" / "v001-dsmil"
    assert model_dir.is_dir()
    rc = cli_main(["infer", "--model", str(model_dir), "--features", str(tmp_path / "features"),
                   "--out", str(tmp_path / "out")])
    assert rc == 0
    preds = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(preds) == 9
    _, attention, _ = read_attention(tmp_path / "out" / "attention" / "A0.h5")
    assert attention.ndim == 2 and attention.shape[1] == 3  # DSMIL: per-class attention
    rc = cli_main(["infer", "--model", str(tmp_path / "models" / "v404-x"), "--features", str(tmp_path / "features"),
                   "--out", str(tmp_path / "out")])
    assert rc == 2 and "model folder not found" in capsys.readouterr().err


def test_quality_bench_patch_truth_uses_half_footprint_cover() -> None:
    from core.bench.quality import attention_auroc, tumour_patches

    mask = np.zeros((16, 16), np.uint8)
    mask[:, :8] = 255  # left half tumour, mask at downsample 16 -> 256 x 256 level-0 pixels
    coords = np.array([[0, 0], [64, 0], [96, 0], [160, 0]])  # patches of 64 px: cover 1, 1, 0.5, 0
    tumour = tumour_patches(mask, 16, coords, 64)
    assert tumour.tolist() == [True, True, True, False]
    res = attention_auroc([(tumour, np.array([0.9, 0.8, 0.7, 0.1])), (np.array([True, True]), np.ones(2))])
    assert res["mean"] == 1.0 and res["n_slides"] == 1


def test_quality_bench_trains_into_its_work_folder_not_the_cohorts(tmp_path: Path) -> None:
    """bench quality must never add a version to <cohort>/models (the app shows the latest one)."""
    from core.bench.quality import bench_quality

    labels = write_cohort(tmp_path, per_class=3, seed=7)
    (tmp_path / "cohort.toml").write_text('slides = "slides"\nlabels = "labels.csv"\n')
    (tmp_path / "truth").mkdir()
    rows = [{"image_id": i, "given_label": lab, "true_label": lab, "is_outlier": 0, "is_noisy": 0,
             "mask_downsample": 16} for i, lab in labels.items()]
    pd.DataFrame(rows).to_csv(tmp_path / "truth" / "truth.csv", index=False)
    res = bench_quality(tmp_path / "cohort.toml", ["abmil"], folds=3, extract=False, seed=1,
                        overrides={"abmil": {"epochs": 4}})
    assert not (tmp_path / "models").exists() and not (tmp_path / "results").exists()
    model_dir = tmp_path / "bench" / "models" / "v001-abmil"
    assert json.loads((model_dir / "model.json").read_text())["settings"]["seed"] == 1
    assert len(list((tmp_path / "bench" / "results" / "v001-abmil" / "attention").glob("*.h5"))) == len(labels)
    assert res["models"]["abmil"]["n_oof"] == len(labels) and res["seed"] == 1


def test_patch_dropout_trains_on_random_subsets_reproducibly(tmp_path: Path) -> None:
    """patch_dropout keeps a random share of each bag per step: another model than without it, the same one again
    for the same seed, and recorded in the settings."""
    write_cohort(tmp_path)
    kw = {"model": "abmil", "folds": 2, "epochs": 4, "seed": 3}
    runs = [train_model(tmp_path / "features", tmp_path / "labels.csv", out_dir=tmp_path / f"m{i}", **kw,
                        **({"patch_dropout": 0.5} if i < 2 else {})) for i in range(3)]
    from safetensors.numpy import load_file

    w = [load_file(str(r / "weights.safetensors")) for r in runs]
    assert all(np.array_equal(w[0][k], w[1][k]) for k in w[0])  # same seed, same subsets
    assert not all(np.array_equal(w[0][k], w[2][k]) for k in w[0])  # without dropout: another model
    assert json.loads((runs[0] / "model.json").read_text())["settings"]["patch_dropout"] == 0.5


def test_early_stopping_never_keeps_an_epoch_before_min_epochs(tmp_path: Path) -> None:
    """A validation set whose loss is lowest at the start (its labels disagree with what the model learns) used to
    keep the first epoch, a barely trained model; the kept epoch is now never before min_epochs."""
    from core.model.train import TrainSettings, fit
    from core.model.train_data import load_bags

    labels = write_cohort(tmp_path, per_class=4, seed=5)
    bags, _ = load_bags(tmp_path / "features", sorted(labels))
    y = np.array([CLASSES.index(labels[b.image_id]) for b in bags])
    wrong = (y + 1) % len(CLASSES)  # validation labels the model is trained away from
    for min_epochs, expect_at_least in ((1, 1), (6, 6)):
        s = TrainSettings(model="abmil", epochs=12, lr=1e-3, patience=3, min_epochs=min_epochs)
        _, kept = fit(bags, y, len(CLASSES), s, "cpu", seed=0, val=(bags, wrong))
        assert kept >= expect_at_least
        if min_epochs == 1:
            assert kept <= 2  # the loss on the disagreeing labels is lowest before the model learns
