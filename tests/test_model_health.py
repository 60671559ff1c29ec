"""A model's health (core/model/health.py): near-chance, nearly uniform and one-class predictions are flagged in
model.json, printed by ``train`` and kept from being the default version; true labels give a healthy model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.model.ensemble import build_ensemble, fold_members
from core.model.feature_files import FeatureBag, write_features
from core.model.health import assess, health_warnings, is_healthy
from core.model.train import train_model
from core.model.versions import default_version, health_note, read_model_meta, version_label

CLASSES = ["A", "B", "C"]
PER_CLASS = 8


def _onehot(idx: np.ndarray, p: float = 0.9, c: int = 3) -> np.ndarray:
    out = np.full((len(idx), c), (1 - p) / (c - 1))
    out[np.arange(len(idx)), idx] = p
    return out


Y = np.repeat(np.arange(3), 10)


# --- the rule on hand-made probabilities ---------------------------------------------------------------------------
def test_a_confident_accurate_model_is_healthy() -> None:
    h = assess(Y, _onehot(Y), _onehot(Y, 0.95), CLASSES)
    assert h["ok"] and h["warnings"] == []
    assert h["oof_balanced_accuracy"] == 1.0 and h["chance"] == pytest.approx(1 / 3)
    assert h["median_top_prob"] == pytest.approx(0.9) and h["median_norm_entropy"] < 0.6
    assert h["final_median_top_prob"] == pytest.approx(0.95)


def test_near_chance_accuracy_is_flagged() -> None:
    pred = np.roll(Y, 10)  # confidently wrong on every slide: balanced accuracy 0
    h = assess(Y, _onehot(pred), None, CLASSES)
    assert not h["ok"] and len(h["warnings"]) == 1
    assert h["warnings"][0] == "out-of-fold balanced accuracy 0.00 is near chance (0.33 for 3 classes)"
    # just over the line (chance + a quarter of the way to 1 = 0.5) is fine
    pred = Y.copy()
    pred[[0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]] = pred[[10, 11, 12, 13, 20, 21, 22, 23, 0, 1, 2, 3]]
    h = assess(Y, _onehot(pred), None, CLASSES)
    assert h["oof_balanced_accuracy"] == pytest.approx(0.6) and h["ok"]


def test_nearly_uniform_probabilities_are_flagged_even_when_the_argmax_is_right() -> None:
    h = assess(Y, _onehot(Y, 0.36), None, CLASSES)
    assert not h["ok"] and len(h["warnings"]) == 1
    assert h["warnings"][0].startswith("out-of-fold probabilities are nearly uniform: median top probability 0.36 "
                                       "for 3 classes")
    # the final model hedging on its own training slides is flagged too
    h = assess(Y, _onehot(Y), _onehot(Y, 0.35), CLASSES)
    assert not h["ok"] and h["warnings"][0].startswith("the final model's probabilities on its training slides are "
                                                       "nearly uniform")


def test_one_class_for_almost_every_slide_is_flagged_unless_the_labels_are_that_skewed() -> None:
    pred = np.zeros_like(Y)
    pred[-1] = 2
    h = assess(Y, _onehot(pred), None, CLASSES)
    assert not h["ok"] and h["top_predicted_class"] == "A" and h["top_predicted_share"] == pytest.approx(29 / 30)
    assert any(w.startswith("predicts one class for almost all slides: A for 97% of the out-of-fold predictions "
                            "(labels: A 33%, B 33%, C 33%)") for w in h["warnings"])
    skewed = np.array([0] * 26 + [1, 1, 2, 2])  # one class is 87% of the labels: predicting it is no collapse
    h = assess(skewed, _onehot(skewed), None, CLASSES)
    assert h["ok"], h["warnings"]


def test_a_class_with_one_slide_leaves_the_model_unjudged_not_unhealthy() -> None:
    """One slide per class (the first run's quick model): each slide's fold model never saw its class, so a
    near-chance out-of-fold score says nothing about the model; it is not judged, and not marked unhealthy."""
    y = np.array([0, 1, 2])
    h = assess(y, _onehot(np.array([1, 2, 0])), _onehot(y), CLASSES)
    assert h["ok"] is None and h["warnings"] == [] and h["notes"][0].startswith("not judged: a class has 1 labelled")
    assert is_healthy({"health": h}) and health_warnings({"health": h}) == []


def test_old_model_json_without_health_is_healthy() -> None:
    assert is_healthy({"version": "v001-abmil"}) and health_warnings({"version": "v001-abmil"}) == []
    assert not is_healthy({"health": {"ok": False, "warnings": ["x"]}})
    assert health_warnings({"health": {"ok": False, "warnings": ["x"]}}) == ["x"]


# --- a real model on shuffled labels ---------------------------------------------------------------------------------
def _write_cohort(root: Path) -> dict[str, str]:
    """Class-informative features: a few patches shifted along the class's own direction."""
    rng = np.random.default_rng(0)
    labels = {}
    for c, name in enumerate(CLASSES):
        for k in range(PER_CLASS):
            n = int(rng.integers(20, 40))
            x = rng.normal(0, 1, (n, 16)).astype(np.float32)
            x[: max(3, n // 4), c] += 4.0
            coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1).astype(np.int64)
            write_features(root / "features" / f"{name}{k}.h5",
                           FeatureBag(x, coords, patch_size_level0=256, mpp=0.5, backbone="toy"))
            labels[f"{name}{k}"] = name
    pd.DataFrame({"image_id": list(labels), "label": list(labels.values())}).to_csv(root / "labels.csv",
                                                                                 index=False)
    shuffled = np.random.default_rng(7).permutation(list(labels.values()))
    pd.DataFrame({"image_id": list(labels), "label": shuffled}).to_csv(root / "shuffled.csv", index=False)
    return labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cohort with v001-abmil trained on its true labels (the shuffled labels are trained on by a test)."""
    root = tmp_path_factory.mktemp("health")
    _write_cohort(root)
    train_model(root / "features", root / "labels.csv", out_dir=root / "models", folds=3, epochs=10, device="cpu")
    return root


def test_true_labels_give_a_healthy_model(trained: Path) -> None:
    root = trained
    meta = read_model_meta(root / "models" / "v001-abmil")
    h = meta["health"]
    assert h["ok"] and h["warnings"] == [], h
    assert h["oof_balanced_accuracy"] == pytest.approx(meta["metrics"]["oof_balanced_accuracy"])
    assert h["chance"] == pytest.approx(1 / 3) and 0 < h["median_norm_entropy"] < 0.95
    assert h["median_top_prob"] > 0.4 and "final_median_top_prob" in h


def test_shuffled_labels_warn_and_never_become_the_default(trained: Path, capsys: pytest.CaptureFixture) -> None:
    root = trained
    models = root / "models"
    assert main(["train", "--features", str(root / "features"), "--labels", str(root / "shuffled.csv"),
                 "--out", str(models), "--folds", "3", "--epochs", "10", "--device", "cpu", "--every", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    meta = read_model_meta(models / "v002-abmil")
    h = meta["health"]
    assert not h["ok"] and h["warnings"], h
    summary = next(i for i, line in enumerate(out) if line.startswith("saved "))
    warned = [line for line in out[summary + 1:] if line.startswith("warning: v002-abmil: ")]
    assert [w.removeprefix("warning: v002-abmil: ") for w in warned[:len(h["warnings"])]] == h["warnings"]
    assert "not made the default (pages keep opening v001-abmil)" in warned[-1]
    # the older healthy version stays the default; the new one is marked in selectors
    assert default_version(models) == "v001-abmil"
    assert version_label(models, "v002-abmil") == "v002-abmil \u26a0" and version_label(models, "v001-abmil") == \
        "v001-abmil"
    note = health_note(models, "v002-abmil")
    assert note.startswith("v002-abmil was registered but is not the default: ") and h["warnings"][0] in note
    assert health_note(models, "v001-abmil") is None
    # an ensemble of its fold models inherits the problem; one of the healthy run's folds does not
    bad = read_model_meta(build_ensemble(models, fold_members(models, "v002-abmil")))
    good = read_model_meta(build_ensemble(models, fold_members(models, "v001-abmil")))
    assert not bad["health"]["ok"] and good["health"]["ok"], (bad["health"], good["health"])
    assert default_version(models) == "v004-ensemble"  # the newest healthy one
    # every candidate unhealthy: the usual rule (the newest) all the same, and the note says why (on a copy: the
    # module's cohort stays as it was)
    models = Path(shutil.copytree(models, root / "models_all_unhealthy"))
    for v in ("v001-abmil", "v004-ensemble"):
        mj = models / v / "model.json"
        meta = json.loads(mj.read_text())
        mj.write_text(json.dumps({**meta, "health": {**meta["health"], "ok": False, "warnings": ["made up"]}}))
    assert default_version(models) == "v004-ensemble"
    assert "is the default only because no healthy version exists" in health_note(models, "v004-ensemble")


def test_a_model_json_without_health_stays_a_candidate(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for v, health in (("v001-abmil", None), ("v002-abmil", {"ok": False, "warnings": ["near chance"]})):
        (models / v).mkdir(parents=True)
        meta = {"version": v, "model": "abmil", "classes": CLASSES, "feature_dim": 16}
        (models / v / "model.json").write_text(json.dumps(meta if health is None else {**meta, "health": health}))
        (models / v / "weights.safetensors").write_bytes(b"")
        (models / v / "oof_predictions.csv").write_text("image_id,pred\n")
    assert default_version(models) == "v001-abmil"
    assert health_note(models, "v002-abmil") == "v002-abmil was registered but is not the default: near chance"


# --- the review page's retrain -------------------------------------------------------------------------------------
def test_retrain_of_an_unhealthy_model_warns_on_the_review_page(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """Every slide with the same features: the model cannot tell them apart (out-of-fold balanced accuracy exactly
    chance), so the page warns that the new version is registered but not the default instead of a plain success."""
    import time

    from _review_data import SLIDES, VERSION, make_review_cohort
    from test_review_page import _button, _plain, _run

    toml = make_review_cohort(tmp_path / "c")
    x = np.random.default_rng(0).normal(0, 1, (10, 8)).astype(np.float32)
    coords = np.stack([np.arange(10) * 64, np.zeros(10)], axis=1).astype(np.int64)
    for image_id in SLIDES:
        write_features(toml.parent / "features" / f"{image_id}.h5",
                       FeatureBag(x, coords, patch_size_level0=64, mpp=0.5, backbone="test"))
    at = _run(monkeypatch, toml)
    _button(at, "Retrain on the reviewed labels").click().run()
    def registered() -> list[str]:
        return [_plain(w.value) for w in at.warning if "was registered" in w.value]

    deadline = time.time() + 120
    while not registered() and not any("New model version" in s.value for s in at.success) \
            and time.time() < deadline:
        assert not at.error, [e.value for e in at.error]
        time.sleep(1.0)
        at.run()
    assert not any("New model version" in s.value for s in at.success), [s.value for s in at.success]
    shown = registered()[0]
    assert shown.startswith("v002-abmil was registered but is not the default: out-of-fold balanced accuracy 0.50 "
                            "is near chance (0.50 for 2 classes)"), shown
    models = toml.parent / "models"
    assert default_version(models, toml.parent / "results") == VERSION
    at.run()  # the version selector marks it
    assert at.selectbox(key="rv_version").options == [VERSION, "v002-abmil \u26a0"]


def test_an_unhealthy_ensemble_warns_on_the_training_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Members whose out-of-fold probabilities are all but uniform: the button says the ensemble is registered but
    not the default, instead of a plain success."""
    from streamlit.testing.v1 import AppTest
    from test_analysis_page import CLASSES as AN_CLASSES
    from test_analysis_page import ROOT, ROWS, build_cohort
    from test_review_page import _plain

    toml = build_cohort(tmp_path, versions=2, slides=False)
    rng = np.random.default_rng(0)
    for v in (1, 2):
        mdir = tmp_path / "models" / f"v00{v}-abmil"
        (mdir / "weights.safetensors").write_bytes(b"")
        meta = json.loads((mdir / "model.json").read_text())
        (mdir / "model.json").write_text(json.dumps({**meta, "feature_dim": 16, "backbone": "toy"}))
        p = 1 / 3 + rng.uniform(-0.01, 0.01, (len(ROWS), 3))
        p /= p.sum(axis=1, keepdims=True)
        oof = pd.DataFrame({"image_id": [r[0] for r in ROWS], "pred": [AN_CLASSES[i] for i in p.argmax(axis=1)],
                            **{f"prob_{c}": p[:, i] for i, c in enumerate(AN_CLASSES)}, "ood_score": 0.1})
        oof.to_csv(mdir / "oof_predictions.csv", index=False)
        pd.DataFrame({"image_id": [r[0] for r in ROWS], "label": [r[1] for r in ROWS], "fold": 0}).to_csv(
            mdir / "folds.csv", index=False)
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    at = AppTest.from_file(str(ROOT / "pages" / "training.py"), default_timeout=60)
    at.run()
    at.multiselect(key="tr_members").set_value(["v001-abmil", "v002-abmil"])
    at.button(key="tr_build").click().run()
    assert not at.exception and not at.error and not at.success, [s.value for s in at.success]
    shown = _plain(at.warning[0].value)
    assert shown.startswith("saved ensemble: v003-ensemble was registered but is not the default: "), shown
    assert "nearly uniform" in shown
    assert not read_model_meta(tmp_path / "models" / "v003-ensemble")["health"]["ok"]
