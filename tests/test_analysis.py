"""Error analysis: metrics against hand-computed values and scikit-learn, impact, calibration, label issues, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from core.analysis.label_issues import planted_recall, rank_label_issues
from core.analysis.metrics import (
    calibration,
    cell_slides,
    compare_versions,
    compute_metrics,
    confusion,
    coverage_curve,
    error_impact,
    join_predictions,
    metrics_by,
)
from core.cli import main as cli_main
from core.errors import InputError

CLASSES = ["CC", "EC", "HGSC"]


def table(labels: list[str], probs: list[list[float]], extra: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and labels frames following the contracts (pred = argmax)."""
    ids = [f"s{i}" for i in range(len(labels))]
    p = np.asarray(probs, float)
    preds = pd.DataFrame({"image_id": ids, "pred": [CLASSES[k] for k in p.argmax(1)],
                          **{f"prob_{c}": p[:, i] for i, c in enumerate(CLASSES)}, "ood_score": 0.0})
    lab = pd.DataFrame({"image_id": ids, "label": labels, **(extra or {})})
    return preds, lab


@pytest.fixture
def small() -> pd.DataFrame:
    # true:  CC CC CC EC EC HGSC HGSC HGSC HGSC + one "Other" (excluded)
    # pred:  CC CC EC EC HGSC HGSC HGSC CC  HGSC
    labels = ["CC", "CC", "CC", "EC", "EC", "HGSC", "HGSC", "HGSC", "HGSC", "Other"]
    probs = [[.8, .1, .1], [.6, .3, .1], [.3, .6, .1], [.2, .7, .1], [.1, .3, .6],
             [.1, .1, .8], [.2, .2, .6], [.5, .1, .4], [.05, .05, .9], [.4, .3, .3]]
    preds, lab = table(labels, probs, {"is_tma": [0, 0, 1, 0, 1, 0, 0, 1, 0, 0]})
    return join_predictions(preds, lab)


def test_metrics_hand_computed(small: pd.DataFrame) -> None:
    m = compute_metrics(small, CLASSES)
    assert m["n"] == 9 and m["n_excluded"] == 1
    # recalls: CC 2/3, EC 1/2, HGSC 3/4
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert m["accuracy"] == pytest.approx(6 / 9)
    cc = m["per_class"]["CC"]  # predicted CC: s0, s1, s7 -> 2 right
    assert cc["precision"] == pytest.approx(2 / 3) and cc["recall"] == pytest.approx(2 / 3) and cc["support"] == 3
    ec = m["per_class"]["EC"]  # predicted EC: s2, s3 -> 1 right
    assert ec["precision"] == pytest.approx(0.5) and ec["f1"] == pytest.approx(0.5)


def test_metrics_match_sklearn(small: pd.DataFrame) -> None:
    m = compute_metrics(small, CLASSES)
    sc = small[small["scored"]]
    y, p = sc["label"].to_numpy(), sc["pred"].to_numpy()
    probs = sc[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=CLASSES, zero_division=0)
    for i, c in enumerate(CLASSES):
        got = m["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((prec[i], rec[i], f1[i], sup[i]))
    assert m["macro_auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=CLASSES))
    assert m["log_loss"] == pytest.approx(log_loss(y, probs, labels=CLASSES))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    labels = [CLASSES[k] for k in rng.integers(0, 3, n)]
    logits = rng.normal(size=(n, 3)) + 2 * np.eye(3)[[CLASSES.index(c) for c in labels]]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = join_predictions(*table(labels, probs.tolist()))
    m = compute_metrics(df, CLASSES)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(df["label"], df["pred"]))
    assert m["macro_auroc"] == pytest.approx(roc_auc_score(df["label"], probs, multi_class="ovr", average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(df["label"], probs, labels=CLASSES))


def test_outlier_flag_excluded_from_score() -> None:
    preds, lab = table(["CC", "EC", "HGSC"], [[.9, .05, .05], [.9, .05, .05], [.1, .1, .8]],
                       {"is_outlier": ["false", "true", ""]})
    df = join_predictions(preds, lab)
    m = compute_metrics(df, CLASSES)
    assert m["n"] == 2 and m["n_excluded"] == 1 and m["accuracy"] == 1.0


def test_confusion_counts_and_normalised(small: pd.DataFrame) -> None:
    cm = confusion(small, CLASSES)
    assert cm.loc["CC"].tolist() == [2, 1, 0]
    assert cm.loc["EC"].tolist() == [0, 1, 1]
    assert cm.loc["HGSC"].tolist() == [1, 0, 3]
    norm = confusion(small, CLASSES, normalize=True)
    assert norm.loc["HGSC"].tolist() == pytest.approx([0.25, 0, 0.75])
    assert set(cell_slides(small, "HGSC", "CC")["image_id"]) == {"s7"}
    assert list(cell_slides(small, "CC", "CC")["image_id"]) == ["s1", "s0"]  # most confident correct last


def test_metrics_by_slide_kind_and_column(small: pd.DataFrame) -> None:
    by = metrics_by(small, CLASSES, "slide_kind").set_index("slide_kind")
    assert by.loc["TMA", "n"] == 3 and by.loc["WSI", "n"] == 6
    assert by.loc["TMA", "accuracy"] == pytest.approx(0.0)  # s2, s4, s7 are all wrong
    assert by.loc["WSI", "accuracy"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="no column"):
        metrics_by(small, CLASSES, "site")


def test_error_impact_matches_recomputed_score(small: pd.DataFrame) -> None:
    imp = error_impact(small, CLASSES)
    assert imp["ba_gain"].is_monotonic_decreasing
    assert int(imp["count"].sum()) == 3
    base = compute_metrics(small, CLASSES)["balanced_accuracy"]
    for row in imp.itertuples():
        fixed = small.copy()
        hit = fixed["scored"] & (fixed["label"] == row.true) & (fixed["pred"] == row.pred)
        fixed.loc[hit, "pred"] = row.true
        gain = balanced_accuracy_score(fixed.loc[fixed["scored"], "label"], fixed.loc[fixed["scored"], "pred"]) - base
        assert row.ba_gain == pytest.approx(gain)
    # EC has support 2, so its one error is worth the most
    assert (imp.loc[0, "true"], imp.loc[0, "pred"]) == ("EC", "HGSC")


def test_calibration_ece_hand_computed() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right)
    preds, lab = table(["CC", "EC", "HGSC", "CC"], [[.9, .05, .05], [.9, .05, .05], [.2, .2, .6], [.6, .2, .2]])
    tab, ece = calibration(join_predictions(preds, lab), CLASSES, bins=10)
    # bin (0.8,0.9]: conf 0.9, acc 0.5; bin (0.5,0.6]: conf 0.6, acc 1.0
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert tab["count"].sum() == 4 and tab.loc[8, "count"] == 2 and tab.loc[5, "count"] == 2


def test_coverage_curve_monotone(small: pd.DataFrame) -> None:
    cov = coverage_curve(small, CLASSES)
    assert cov.loc[0, "coverage"] == 1.0 and cov["coverage"].is_monotonic_decreasing
    at = cov.set_index("threshold").loc[0.7]
    assert at["n_kept"] == 4 and at["accuracy"] == 1.0  # s0 (.8), s3 (.7), s5 (.8), s8 (.9)


def test_compare_versions(small: pd.DataFrame) -> None:
    b = small.copy()
    b.loc[b["image_id"] == "s7", ["pred", "correct"]] = ["HGSC", True]  # fixed
    b.loc[b["image_id"] == "s0", ["pred", "correct"]] = ["EC", False]  # broken
    metrics, changed = compare_versions(small, b, CLASSES, names=("v1", "v2"))
    assert dict(zip(changed["image_id"], changed["status"], strict=True)) == {"s0": "broken", "s7": "fixed"}
    acc = metrics.set_index("metric").loc["accuracy"]
    assert acc["delta"] == pytest.approx(0.0) and acc["v1"] == pytest.approx(6 / 9)


def test_join_rejects_bad_inputs() -> None:
    preds, lab = table(["CC"], [[.9, .05, .05]])
    with pytest.raises(InputError, match="missing column"):
        join_predictions(preds.drop(columns=["pred"]), lab)
    preds.loc[0, "pred"] = "XX"
    with pytest.raises(InputError, match="not in classes"):
        join_predictions(preds, lab)


def synthetic_oof(seed: int, n: int = 300, noise: float = 0.08) -> tuple[pd.DataFrame, list[str]]:
    """Model-like OOF probabilities for the true class, with a share of given labels flipped (the planted ids)."""
    rng = np.random.default_rng(seed)
    c = len(CLASSES)
    true = rng.choice(c, size=n, p=[0.2, 0.3, 0.5])
    # some slides are hard (weak signal), the model errs on ~15% of them, and is overconfident on a class
    strength = rng.gamma(3.0, 1.2, size=n)
    logits = rng.normal(scale=1.0, size=(n, c)) + strength[:, None] * np.eye(c)[true] + np.array([0, 0, 0.6])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    flip = rng.choice(n, size=int(noise * n), replace=False)
    given[flip] = (true[flip] + rng.integers(1, c, size=len(flip))) % c
    preds, lab = table([CLASSES[k] for k in given], probs.tolist())
    return join_predictions(preds, lab), [f"s{i}" for i in flip]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_label_issues_find_planted_flips(seed: int) -> None:
    df, planted = synthetic_oof(seed)
    issues = rank_label_issues(df, CLASSES)
    assert list(issues.columns) == ["image_id", "given_label", "suggested_label", "score", "rank"]
    assert issues["rank"].tolist() == list(range(1, len(df) + 1))
    assert issues["score"].is_monotonic_decreasing
    assert planted_recall(issues, planted) >= 0.8
    # a random ranking would find about 1.5 x 8% = 12%
    top = issues.set_index("image_id").loc[planted]
    assert (top["given_label"] != top["suggested_label"]).all()


def test_label_issues_demote_ood_slides() -> None:
    df, planted = synthetic_oof(1)
    # four unflagged outlier slides: confidently 'wrong' like a noisy label, but with a far-off OOD score
    odd = ["s0", "s1", "s2", "s3"]
    df["ood_score"] = np.random.default_rng(0).normal(1.0, 0.1, len(df))
    for i in odd:
        wrong = [c for c in CLASSES if c != df.loc[df["image_id"] == i, "label"].iloc[0]][0]
        df.loc[df["image_id"] == i, [f"prob_{c}" for c in CLASSES]] = [0.96 if c == wrong else 0.02 for c in CLASSES]
        df.loc[df["image_id"] == i, "ood_score"] = 5.0
    planted = [p for p in planted if p not in odd]
    issues = rank_label_issues(df, CLASSES).set_index("image_id")
    assert (issues.loc[odd, "suggested_label"] == "Other").all()
    assert planted_recall(issues.reset_index(), planted) >= 0.8
    plain = rank_label_issues(df, CLASSES, ood_z=None).set_index("image_id")
    window = int(np.ceil(1.5 * len(planted)))
    assert (plain.loc[odd, "rank"] <= window).all()  # without the OOD check they crowd the top of the list
    assert (issues.loc[odd, "rank"] > window).all()


def test_label_issues_skip_other_and_outliers() -> None:
    preds, lab = table(["CC", "EC", "Other", "HGSC"], [[.9, .05, .05], [.9, .05, .05], [.1, .1, .8], [.1, .1, .8]],
                       {"is_outlier": [0, 0, 0, 1]})
    issues = rank_label_issues(join_predictions(preds, lab), CLASSES)
    assert set(issues["image_id"]) == {"s0", "s1"}
    assert issues.iloc[0]["image_id"] == "s1" and issues.iloc[0]["suggested_label"] == "CC"


def write_inputs(tmp: Path) -> tuple[Path, Path]:
    df, _ = synthetic_oof(5, n=60)
    pred = tmp / "predictions.csv"
    df[["image_id", "pred", *[f"prob_{c}" for c in CLASSES], "ood_score"]].to_csv(pred, index=False)
    lab = tmp / "labels.csv"
    df[["image_id", "label"]].assign(is_tma=np.arange(len(df)) % 4 == 0).to_csv(lab, index=False)
    return pred, lab


def test_cli_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, lab = write_inputs(tmp_path)
    out = tmp_path / "report"
    assert cli_main(["analyze", "--predictions", str(pred), "--labels", str(lab), "--out", str(out)]) == 0
    assert "balanced accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"overall", "per_class", "per_slide_kind"}
    assert set(metrics["per_slide_kind"]) == {"TMA", "WSI"} and set(metrics["per_class"]) == set(CLASSES)
    assert metrics["per_slide_kind"]["TMA"]["n"] == 15
    cm = pd.read_csv(out / "confusion.csv", index_col=0)
    assert cm.to_numpy().sum() == 60 and list(cm.columns) == CLASSES
    issues = pd.read_csv(out / "label_issues.csv")
    assert list(issues.columns) == ["image_id", "given_label", "suggested_label", "score", "rank"] and len(issues) == 60
    imp = pd.read_csv(out / "impact.csv")
    assert list(imp.columns) == ["true", "pred", "count", "ba_gain"]
    assert not list(out.glob(".*tmp"))


def test_cli_bad_predictions_one_line(tmp_path: Path) -> None:
    """The real entry point in a subprocess: exit code 2 and one line naming the file."""
    pred, lab = write_inputs(tmp_path)
    pred.write_text("image_id,pred\ns0,CC\n")
    r = subprocess.run([sys.executable, "-m", "core", "analyze", "--predictions", str(pred), "--labels", str(lab),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and str(pred) in r.stderr and "prob_" in r.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_cli_cohort_and_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, lab = write_inputs(tmp_path)
    for v in ("v001-abmil", "v002-abmil"):
        (tmp_path / "models" / v).mkdir(parents=True)
        (tmp_path / "models" / v / "model.json").write_text(json.dumps({"classes": CLASSES}))
        (tmp_path / "models" / v / "oof_predictions.csv").write_bytes(pred.read_bytes())
    (tmp_path / "cohort.toml").write_text('name = "t"\nlabels = "labels.csv"\n')
    out = tmp_path / "rep"
    assert cli_main(["analyze", "--cohort", str(tmp_path / "cohort.toml"), "--version", "v001-abmil",
                     "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["overall"]["n"] == 60
    assert cli_main(["analyze", "--cohort", str(tmp_path), "--version", "v009-x", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "v009-x" in err and "v001-abmil, v002-abmil" in err
