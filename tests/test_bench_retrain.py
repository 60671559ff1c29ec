"""``bench retrain`` on a tiny demo cohort with made-up (class-informative) features: the review path fixes the
planted noise in a scratch workspace, the export holds the true labels, and the cohort's own files stay untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.bench.retrain import MARKER, REVIEWER, bench_retrain, make_workspace, score_oof
from core.cli import main
from core.cohort.cohort_file import load_cohort
from core.demo.plan import build_demo
from core.errors import InputError
from core.model.feature_files import FeatureBag, write_features
from core.review.store import open_store


def _fake_features(root: Path, truth: pd.DataFrame, dim: int = 16, n: int = 12) -> None:
    """Random features whose mean depends on the slide's true class (as extraction would give, only cheaper)."""
    rng = np.random.default_rng(0)
    classes = sorted(truth["true_label"].unique())
    centres = {c: 3.0 * rng.standard_normal(dim) for c in classes}
    for r in truth.itertuples(index=False):
        feats = centres[r.true_label] + rng.standard_normal((n, dim))
        coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1)
        write_features(root / "features" / f"{r.image_id}.h5",
                       FeatureBag(feats.astype(np.float32), coords, patch_size_level0=256, mpp=0.5,
                                  backbone="test-random"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retrain") / "demo"
    build_demo(root, tiny=True, n_wsi=10, n_tma=2, n_outliers=1, noise=0.2)
    truth = pd.read_csv(root / "truth" / "truth.csv", dtype={"image_id": str})
    _fake_features(root, truth)
    (root / "models" / "v001-abmil").mkdir(parents=True)  # the cohort's own model: must stay as it is
    (root / "models" / "v001-abmil" / "model.json").write_text('{"version": "v001-abmil"}')
    return root


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_bench_retrain_fixes_planted_noise_in_a_workspace(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = pd.read_csv(demo / "truth" / "truth.csv", dtype={"image_id": str})
    noisy = set(truth.loc[(truth["is_noisy"] == 1) & (truth["is_outlier"] == 0), "image_id"])
    outliers = set(truth.loc[truth["is_outlier"] == 1, "image_id"])
    assert noisy and outliers
    models_before = _tree(demo / "models")
    labels_before = (demo / "labels.csv").read_bytes()
    out = demo.parent / "retrain.json"
    rc = main(["bench", "retrain", "--cohort", str(demo), "--seeds", "0,1", "--folds", "3", "--epochs", "3",
               "--device", "cpu", "--json", str(out)])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("retrain abmil: balanced accuracy vs truth") and last.endswith(("not lowered", "LOWERED"))
    res = json.loads(out.read_text())
    assert res["benchmark"] == "retrain" and res["seeds"] == [0, 1] and len(res["runs"]) == 2
    assert res["n_noisy"] == len(noisy) and res["n_outliers"] == len(outliers)
    assert res["source_untouched"] is True
    changes = [r["ba_change"] for r in res["runs"]]
    assert res["median_ba_change"] == pytest.approx(float(np.median(changes)), abs=1e-4)
    assert res["verdict"] == ("not lowered" if res["median_ba_change"] >= 0 else "LOWERED")
    work = Path(res["workspace"])
    assert work == (demo / "bench" / "retrain").resolve() and (work / MARKER).is_file()
    for run in res["runs"]:
        for key in ("ba_vs_true_before", "ba_vs_true_after", "ba_vs_given_before", "ba_vs_corrected_after"):
            assert 0.0 <= run[key] <= 1.0
        assert run["ba_change"] == pytest.approx(run["ba_vs_true_after"] - run["ba_vs_true_before"], abs=1e-4)
        assert run["model"] == "abmil" and run["baseline"]["version"] != run["retrained"]["version"]
        # outliers are trained on before (given labels) and dropped after; scoring leaves them out both times
        assert run["baseline"]["n_train"] == len(truth) and run["retrained"]["n_train"] == len(truth) - len(outliers)
        assert run["baseline"]["n_scored"] == run["retrained"]["n_scored"] == len(truth) - len(outliers)
        assert run["retrained"]["labels_file"].endswith("labels_v2.csv")
        # one audit row per fix, all by the bench reviewer, and the export made after all of them
        assert run["review"]["noisy_fixed"] == len(noisy) and run["review"]["outliers_flagged"] == len(outliers)
        assert run["review"]["audit_rows"] == len(noisy) + len(outliers)
        queue = run["review"]["baseline_queue"]
        assert 0 <= queue["noisy_suggested_true_label"] <= queue["noisy_as_label_issue"] <= queue["noisy_in_queue"]
        assert queue["noisy_in_queue"] <= len(noisy) and queue["outliers_in_queue"] <= len(outliers)
        assert queue["noisy_in_queue"] + queue["outliers_in_queue"] <= queue["queue_size"] <= len(truth)
        seed_dir = Path(run["workspace"])
        store = open_store(f"sqlite:///{seed_dir / 'slidelens.db'}")
        rows = [r for r in store.history() if r.reason != "import"]
        assert len(rows) == len(noisy) + len(outliers) and {r.reviewer for r in rows} == {REVIEWER}
        assert run["export"]["audit_max_id"] == max(r.id for r in store.history())
        store.engine.dispose()
        exported = pd.read_csv(run["export"]["labels"], dtype={"image_id": str}).set_index("image_id")
        true = truth.set_index("image_id")
        for i in noisy:
            assert exported.loc[i, "label"] == true.loc[i, "true_label"] != exported.loc[i, "original_label"]
            assert exported.loc[i, "reviewed_by"] == REVIEWER
        assert all(exported.loc[i, "is_outlier"] == 1 for i in outliers)
        assert run["export"]["changed"] == len(noisy)
        assert Path(run["export"]["manifest"]).is_file()
        oof = pd.read_csv(seed_dir / "models" / run["retrained"]["version"] / "oof_predictions.csv")
        assert not outliers & set(oof["image_id"])
    # the cohort's own models, results, database and labels are untouched
    assert _tree(demo / "models") == models_before
    assert not (demo / "results").exists() and not (demo / "slidelens.db").exists()
    assert (demo / "labels.csv").read_bytes() == labels_before


def test_workspace_refuses_other_folders(demo: Path, tmp_path: Path) -> None:
    cohort = load_cohort(demo)
    for bad in (demo, demo / "models", demo / "features" / "x"):
        with pytest.raises(InputError, match="workspace must be a folder of its own"):
            make_workspace(cohort, bad)
    (demo / "results").mkdir()  # an empty cohort folder is refused too (and left empty)
    with pytest.raises(InputError, match="workspace must be a folder of its own"):
        bench_retrain(demo, [0], work=demo / "results")
    assert not any((demo / "results").iterdir())
    (demo / "results").rmdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a bench retrain workspace"):
        bench_retrain(demo, [0], work=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="no truth/truth.csv"):
        bench_retrain(_plain_cohort(tmp_path), [0])


def _plain_cohort(tmp_path: Path) -> Path:
    root = tmp_path / "plain"
    (root / "slides").mkdir(parents=True)
    (root / "cohort.toml").write_text('name = "plain"\n')
    return root


def test_score_oof_leaves_outliers_out() -> None:
    truth = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "true_label": ["X", "Y", "X", "Other"],
                          "is_outlier": [0, 0, 0, 1]})
    oof = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "pred": ["X", "Y", "Y", "X"]})
    given = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "label": ["X", "Y", "Y", "X"]})
    s = score_oof(oof, truth, given)
    assert s["n_scored"] == 3
    assert s["ba_vs_true"] == pytest.approx(0.75)  # X: 1/2, Y: 1/1
    assert s["ba_vs_labels"] == pytest.approx(1.0)
