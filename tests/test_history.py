"""Training history: a row per fold and epoch, the chosen epoch, consistent with the out-of-fold results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_train_infer import CLASSES, write_cohort

from core.cli import main as cli_main
from core.model.history import class_metrics, curves, lagging_classes, read_history
from core.model.train import train_model


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hist")
    write_cohort(root, per_class=8, seed=1)  # 4 training slides per class per fold: inner early-stopping split
    return train_model(root / "features", root / "labels.csv", model="abmil", folds=2, epochs=6, seed=0,
                       patience=2)


def test_history_has_every_fold_and_epoch_and_the_chosen_one(run: Path) -> None:
    hist = read_history(run)
    meta = json.loads((run / "model.json").read_text())
    best = meta["settings"]["fold_best_epochs"]
    for f in range(2):
        rows = hist[hist["fold"] == f]
        assert list(rows["epoch"]) == list(range(1, len(rows) + 1)) and 1 <= len(rows) <= 6
        assert rows["chosen"].sum() == 1 and int(rows.loc[rows["chosen"], "epoch"].iloc[0]) == best[f]
        assert rows["train_loss"].notna().all() and rows["stop_loss"].notna().all()  # early stopping ran
        for c in CLASSES:
            assert rows[f"recall_{c}"].between(0, 1).all()
    final = hist[hist["fold"] == -1]
    assert len(final) == max(meta["settings"]["final_epochs"], 3) and final["val_loss"].isna().all()


def test_chosen_epoch_metrics_are_the_out_of_fold_metrics(run: Path) -> None:
    hist = read_history(run)
    oof = pd.read_csv(run / "oof_predictions.csv").set_index("image_id")
    folds = pd.read_csv(run / "folds.csv")
    for f in range(2):
        ids = folds.loc[folds["fold"] == f, "image_id"]
        y = np.array([CLASSES.index(lab) for lab in folds.loc[folds["fold"] == f, "label"]])
        want = class_metrics(y, oof.loc[ids, [f"prob_{c}" for c in CLASSES]].to_numpy(), CLASSES)
        got = hist[(hist["fold"] == f) & hist["chosen"]].iloc[0]
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, atol=1e-4, equal_nan=True, err_msg=k)
    ba = [hist[(hist["fold"] == f) & hist["chosen"]]["balanced_accuracy"].iloc[0] for f in range(2)]
    meta = json.loads((run / "model.json").read_text())
    assert min(ba) - 1e-9 <= meta["metrics"]["oof_balanced_accuracy"] <= max(ba) + 0.34  # pooled vs per fold


def test_class_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = class_metrics(y, probs, ["a", "b", "c"])
    assert m["recall_a"] == 0.5 and m["recall_b"] == 1.0 and np.isnan(m["recall_c"])  # no 'c' slide
    assert m["precision_a"] == 1.0 and m["precision_b"] == pytest.approx(2 / 3) and np.isnan(m["precision_c"])
    assert m["f1_a"] == pytest.approx(2 / 3) and m["balanced_accuracy"] == 0.75
    assert m["val_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.8, 0.6])))


def test_lagging_classes_and_first_epoch_over_half() -> None:
    rows = []
    for f in range(2):
        for e in range(1, 5):
            rows.append({"fold": f, "epoch": e, "train_loss": 1.0, "chosen": e == 4, "recall_a": 0.9,
                         "recall_b": min(1.0, 0.25 * e), "recall_c": 0.0 if e < 4 else 0.2 + 0.1 * f})
    hist = pd.DataFrame(rows)
    lag = lagging_classes(hist).set_index("class")
    assert lag.loc["c", "lagging"] and not lag.loc["a", "lagging"] and not lag.loc["b", "lagging"]
    assert lag.loc["c", "recall_at_chosen"] == pytest.approx(0.25)
    assert lag.loc["b", "first_epoch_recall_0.5"] == 2 and pd.isna(lag.loc["c", "first_epoch_recall_0.5"])
    assert lag.index[0] == "c"  # the most lagging first
    c = curves(hist, ["recall_c"])
    last = c[c["epoch"] == 4].iloc[0]
    assert last["mean"] == pytest.approx(0.25) and last["lo"] == pytest.approx(0.2) and last["hi"] == pytest.approx(0.3)


def test_cli_train_prints_the_per_class_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cohort(tmp_path, per_class=3, seed=2)
    rc = cli_main(["train", "--features", str(tmp_path / "features"), "--labels", str(tmp_path / "labels.csv"),
                   "--out", str(tmp_path / "models"), "--folds", "2", "--epochs", "4", "--every", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("(recall per class)") == 2  # one header per fold
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(("1 ", "2 "))]
    assert len(lines) == 4 and all(len(ln.split()) == 5 + 1 + len(CLASSES) for ln in lines)  # epochs 2 and 4
