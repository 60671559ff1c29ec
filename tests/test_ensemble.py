"""Ensembles: voting by hand, registration as a model version, prediction like any version, refusals; MC dropout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_train_infer import CLASSES, write_cohort

from core.cli import main as cli_main
from core.cohort.cohort_file import cohort_from_dict
from core.errors import InputError
from core.model.ensemble import Member, build_ensemble, combine_attention, hard_vote, rank_normalise, soft_vote
from core.model.infer import ensure_results, infer_features, load_model, read_attention
from core.model.train import train_model
from core.model.versions import list_versions, read_model_meta


def test_soft_vote_is_the_mean() -> None:
    p = np.array([[[0.75, 0.25]], [[0.25, 0.75]], [[0.5, 0.5]]])  # [members, slides, classes], exact in binary
    pred, mean = soft_vote(p)
    np.testing.assert_array_equal(mean, [[0.5, 0.5]])
    assert pred.tolist() == [0]  # an exact tie goes to the first class (argmax)
    pred, mean = soft_vote(np.array([[[0.6, 0.4]], [[0.0, 1.0]]]))
    assert pred.tolist() == [1] and mean[0, 1] == pytest.approx(0.7)


def test_hard_vote_majority_and_ties_by_mean_probability() -> None:
    # votes a, a, b: a wins although the mean probability favours b
    majority = np.array([[[0.51, 0.49]], [[0.51, 0.49]], [[0.0, 1.0]]])
    pred, mean = hard_vote(majority)
    assert pred.tolist() == [0] and mean[0, 1] > mean[0, 0]
    # two members, one vote each: the tie goes to the class with the higher mean probability (b: .72 > .28)
    assert hard_vote(np.array([[[0.51, 0.49]], [[0.05, 0.95]]]))[0].tolist() == [1]
    # three members, three classes, one vote each: highest mean (a .233, b .367, c .4) -> c
    three = np.array([[[0.5, 0.3, 0.2]], [[0.1, 0.5, 0.4]], [[0.1, 0.3, 0.6]]])
    assert hard_vote(three)[0].tolist() == [2]
    # a class nobody voted for never wins, whatever its mean: votes b, c (tie) while a has the highest mean
    assert hard_vote(np.array([[[0.45, 0.46, 0.09]], [[0.45, 0.1, 0.45000001]]]))[0].tolist() == [1]
    # several slides at once: [members, slides, classes]
    both = np.concatenate([majority, np.array([[[0.3, 0.7]], [[0.2, 0.8]], [[0.9, 0.1]]])], axis=1)
    assert hard_vote(both)[0].tolist() == [0, 1]


def test_rank_normalised_attention_mixes_single_and_per_class_maps() -> None:
    a = np.array([0.1, 0.5, 0.4])
    b = np.array([[1.0, 9.0], [2.0, 8.0], [3.0, 7.0]])
    np.testing.assert_allclose(rank_normalise(a), [1 / 3, 1, 2 / 3])
    out = combine_attention([a, b], 2)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out[:, 0], ([1 / 3, 1, 2 / 3] + np.array([1, 2, 3]) / 3) / 2, rtol=1e-6)
    assert combine_attention([a, a * 10], 2).shape == (3,)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ens")
    write_cohort(root, per_class=4, seed=4)
    for model in ("abmil", "dsmil"):
        train_model(root / "features", root / "labels.csv", model=model, folds=2, epochs=4, seed=0)
    return root


def _c(root: Path):
    return cohort_from_dict({"slides": "slides", "labels": "labels.csv"}, root)


def test_soft_ensemble_is_a_version_predicted_like_any(cohort: Path) -> None:
    models = cohort / "models"
    path = build_ensemble(models, [Member("v001-abmil"), Member("v002-dsmil")], "soft")
    assert path.name == "v003-ensemble" and not (path / "weights.safetensors").exists()
    meta = read_model_meta(path)
    assert meta["ensemble"]["method"] == "soft" and [m["version"] for m in meta["ensemble"]["members"]] == [
        "v001-abmil", "v002-dsmil"]
    assert "v003-ensemble" in [v["version"] for v in list_versions(models)]
    cols = [f"prob_{c}" for c in CLASSES]
    oofs = [pd.read_csv(models / v / "oof_predictions.csv").set_index("image_id") for v in ("v001-abmil", "v002-dsmil")]
    ens = pd.read_csv(path / "oof_predictions.csv").set_index("image_id")
    np.testing.assert_allclose(ens[cols], (oofs[0].loc[ens.index, cols] + oofs[1].loc[ens.index, cols]) / 2,
                               atol=2e-6)
    assert set(meta["metrics"]["member_oof_balanced_accuracy"]) == {"v001-abmil", "v002-dsmil"}
    ids = ["A0", "B1", "C2"]
    got = ensure_results(_c(cohort), "v003-ensemble", ids).set_index("image_id")
    a = ensure_results(_c(cohort), "v001-abmil", ids).set_index("image_id")
    d = ensure_results(_c(cohort), "v002-dsmil", ids).set_index("image_id")
    np.testing.assert_allclose(got[cols], (a[cols] + d[cols]) / 2, atol=2e-6)
    assert got["uncertainty"].notna().all()  # the members' spread
    coords, att, attrs = read_attention(cohort / "results" / "v003-ensemble" / "attention" / "A0.h5")
    assert att.shape == (len(coords), 3) and attrs["model_version"] == "v003-ensemble"  # DSMIL member: per class
    assert att.min() > 0 and att.max() <= 1
    assert (path / "oof_attention.h5").is_file()


def test_hard_and_fold_ensembles_from_the_command_line(cohort: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = cohort / "models"
    assert cli_main(["ensemble", "--models", str(models), "--versions", "v001,v002", "--method", "hard"]) == 0
    hard = sorted(models.glob("v*-ensemble"))[-1]
    oofs = [pd.read_csv(models / v / "oof_predictions.csv").set_index("image_id") for v in ("v001-abmil", "v002-dsmil")]
    ens = pd.read_csv(hard / "oof_predictions.csv").set_index("image_id")
    cols = [f"prob_{c}" for c in CLASSES]
    p = np.stack([o.loc[ens.index, cols].to_numpy() for o in oofs])
    assert ens["pred"].tolist() == [CLASSES[i] for i in hard_vote(p)[0]]
    assert cli_main(["ensemble", "--models", str(models), "--folds-of", "v001-abmil"]) == 0
    folds = sorted(models.glob("v*-ensemble"))[-1]
    meta = read_model_meta(folds)
    assert [m["fold"] for m in meta["ensemble"]["members"]] == [0, 1]
    run = pd.read_csv(models / "v001-abmil" / "oof_predictions.csv").set_index("image_id")
    f_oof = pd.read_csv(folds / "oof_predictions.csv").set_index("image_id")
    assert (f_oof["pred"] == run.loc[f_oof.index, "pred"]).all()  # a fold model's OOF is its run's
    res = ensure_results(_c(cohort), folds.name, ["A1"])
    assert len(res) == 1 and res["pred"].iloc[0] in CLASSES
    assert "out-of-fold balanced accuracy" in capsys.readouterr().out


def test_members_with_other_classes_or_backbone_are_refused(cohort: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    models = cohort / "models"
    labels = pd.read_csv(cohort / "labels.csv")
    labels[labels["label"] != "C"].to_csv(tmp_path / "ab.csv", index=False)
    ab = train_model(cohort / "features", tmp_path / "ab.csv", model="abmil", out_dir=models, folds=2, epochs=2)
    with pytest.raises(InputError, match=rf"{ab.name} has classes \['A', 'B'\] but v001-abmil has .*same classes"):
        build_ensemble(models, [Member("v001-abmil"), Member(ab.name)])
    write_cohort(tmp_path / "other", per_class=3, seed=9, backbone="resnet50")
    rn = train_model(tmp_path / "other" / "features", tmp_path / "other" / "labels.csv", model="abmil",
                     out_dir=models, folds=2, epochs=2)
    rc = cli_main(["ensemble", "--models", str(models), "--versions", f"v001-abmil,{rn.name}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{rn.name} was trained on 'resnet50' features" in err and "one feature backbone" in err
    assert cli_main(["ensemble", "--models", str(models), "--versions", "v001,v999"]) == 2
    assert "no model version 'v999'" in capsys.readouterr().err
    assert not list(models.glob(".staging-*"))


def test_mc_dropout_gives_a_mean_and_a_spread(cohort: Path, tmp_path: Path) -> None:
    loaded = load_model(cohort / "models" / "v001-abmil", mc_samples=8)
    out = infer_features(loaded, cohort / "features", tmp_path / "mc", ["A0", "B0"])
    assert (out["uncertainty"] > 0).all() and (out["draws"] == 8).all()
    again = infer_features(loaded, cohort / "features", tmp_path / "mc2", ["A0", "B0"])
    pd.testing.assert_frame_equal(out, again)  # seeded draws: the same numbers every run
    plain = infer_features(load_model(cohort / "models" / "v001-abmil"), cohort / "features", tmp_path / "p", ["A0"])
    assert "uncertainty" not in plain.columns
    assert cli_main(["infer", "--model", str(cohort / "models" / "v001-abmil"), "--features", str(cohort / "features"),
                     "--out", str(tmp_path / "cli"), "--mc-samples", "4"]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "predictions.csv")
    assert cli["uncertainty"].notna().all() and (cli["draws"] == 4).all()
    assert json.loads((cohort / "models" / "v001-abmil" / "model.json").read_text())["model"] == "abmil"
