"""``bench ensemble``: what ensembles and test-time augmentation buy on held-out demo data, and what they cost.

A training demo cohort (``--train-seed``) is extracted plainly and with TTA; ABMIL, TransMIL and DSMIL are trained on
each; the fold ensemble of ABMIL and the 3-model ensemble are registered. Demo cohorts built with other seeds
(``--test-seeds``; never trained on, never tuned on) are then predicted by: one model (ABMIL), the fold ensemble, the
3-model ensemble, each on plain and TTA features. Scores against the true labels (outliers left out): balanced
accuracy, log loss, expected calibration error (15 bins, top-label). Costs: extraction, training and prediction time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.bench._util import write_json
from core.bench.cohorts import DEFAULT_WORK

MODELS = ("abmil", "transmil", "dsmil")


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence (equal-width bins)."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(float((pred[m] == y[m]).mean()) - float(conf[m].mean()))
    return float(total)


def score(preds: pd.DataFrame, truth: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """Balanced accuracy, log loss and ECE of ``preds`` against the true labels (outliers and unknown labels out)."""
    from sklearn.metrics import balanced_accuracy_score, log_loss

    t = truth[(truth["is_outlier"] == 0) & truth["true_label"].isin(classes)].set_index("image_id")
    p = preds.set_index(preds["image_id"].astype(str)).reindex(t.index).dropna(subset=["pred"])
    y = np.array([classes.index(v) for v in t.loc[p.index, "true_label"]])
    probs = p[[f"prob_{c}" for c in classes]].to_numpy(np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    pred = np.array([classes.index(v) for v in p["pred"]])
    return {"n": len(y), "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4),
            "log_loss": round(float(log_loss(y, probs, labels=list(range(len(classes))))), 4),
            "ece": round(ece(probs, y), 4)}


def extraction_cost(cohort: Any, backbone: Any, tta: str, n_slides: int = 3, repeat: int = 2) -> dict[str, Any]:
    """Patches/s of plain and ``tta`` extraction on the same few whole slides, interleaved in one run (written to a
    scratch folder), and their ratio: what test-time augmentation costs at extraction."""
    from core.bench.cohorts import extraction_speed

    ids, med = extraction_speed(cohort, backbone, {"none": {"tta": "none"}, tta: {"tta": tta}}, n_slides, repeat)
    return {"slides": ids, "repeat": repeat, "patches_per_s": {m: round(v, 2) for m, v in med.items()},
            "tta_cost_ratio": round(med["none"] / med[tta], 2)}


def bench_ensemble(work: Path, train_seed: int, test_seeds: list[int], tta: str = "flips", tiny: bool = False,
                   folds: int = 5, device: str = "auto", epochs: int | None = None, foci: str = "large"
                   ) -> dict[str, Any]:
    """Build, extract, train, ensemble and score; returns the figures."""
    from core.bench.cohorts import demo_cohort, extracted
    from core.model.backbones import create_backbone
    from core.model.ensemble import Member, build_ensemble, fold_members
    from core.model.infer import infer_features, load_model
    from core.model.train import train_model

    work.mkdir(parents=True, exist_ok=True)
    backbone = create_backbone(device=device)
    train = demo_cohort(work, train_seed, foci, tiny)
    tests = {s: demo_cohort(work, s, foci, tiny) for s in test_seeds}
    res: dict[str, Any] = {"train_seed": train_seed, "test_seeds": test_seeds, "tiny": tiny, "tta": tta, "foci": foci,
                           "folds": folds, "device": backbone.device, "backbone": backbone.name,
                           "extract_seconds": {}, "train_seconds": {}, "rows": []}
    res["extraction_cost"] = extraction_cost(train, backbone, tta)
    for mode in ("none", tta):
        feats, secs = extracted(train, backbone, mode)
        res["extract_seconds"][f"train/{mode}"] = round(secs, 1)
        test_feats = {}
        for s, c in tests.items():
            test_feats[s], secs = extracted(c, backbone, mode)
            res["extract_seconds"][f"seed{s}/{mode}"] = round(secs, 1)
        models_dir = work / "ensemble" / f"models_{foci}_{mode}-seed{train_seed}"
        versions, train_s = {}, {}
        for name in MODELS:
            t = time.perf_counter()
            path = train_model(feats, train.labels, model=name, out_dir=models_dir, folds=folds, epochs=epochs,
                               seed=0, device=device)
            versions[name], train_s[name] = path.name, time.perf_counter() - t
        res["train_seconds"][mode] = {k: round(v, 1) for k, v in train_s.items()}
        fold_ens = build_ensemble(models_dir, fold_members(models_dir, versions["abmil"]), "soft").name
        three = build_ensemble(models_dir, [Member(versions[n]) for n in MODELS], "soft").name
        configs = {"one model (abmil)": (versions["abmil"], train_s["abmil"]),
                   "fold ensemble (abmil x k)": (fold_ens, train_s["abmil"]),
                   "3-model ensemble (soft)": (three, sum(train_s.values()))}
        for label, (version, tsec) in configs.items():
            loaded = load_model(models_dir / version, device=backbone.device)
            for s, c in tests.items():
                truth = pd.read_csv(Path(c.root) / "truth" / "truth.csv", dtype={"image_id": str})
                t = time.perf_counter()
                out = work / "ensemble" / "results" / foci / mode / version / f"seed{s}"
                preds = infer_features(loaded, test_feats[s], out, force=True)
                infer_s = time.perf_counter() - t
                row = {"config": label, "tta": mode, "test_seed": s, "version": version,
                       **score(preds, truth, loaded.classes), "predict_seconds": round(infer_s, 2),
                       "predict_ms_per_slide": round(1000 * infer_s / max(len(preds), 1), 1),
                       "train_seconds": round(tsec, 1)}
                res["rows"].append(row)
                print(f"{label:>28} tta={mode:<8} seed {s}: BA {row['balanced_accuracy']:.3f} "
                      f"log loss {row['log_loss']:.3f} ECE {row['ece']:.3f} ({row['predict_ms_per_slide']} ms/slide)",
                      flush=True)
    df = pd.DataFrame(res["rows"])
    res["summary"] = (df.groupby(["config", "tta"], sort=False)[["balanced_accuracy", "log_loss", "ece",
                                                                 "predict_ms_per_slide", "train_seconds"]]
                      .mean().round(4).reset_index().to_dict(orient="records"))
    return res


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="one model vs fold ensemble vs 3-model ensemble, plain vs TTA, on held-out "
                                        "demo cohorts")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help="folder for the cohorts (shared with bench quality --matrix) and models")
    p.add_argument("--train-seed", type=int, default=20)
    p.add_argument("--test-seeds", default="21,22", help="comma-separated demo seeds never trained on")
    p.add_argument("--tta", choices=("flips", "dihedral"), default="flips")
    p.add_argument("--foci", choices=("large", "small"), default="large", help="tumour regime of the demo cohorts")
    p.add_argument("--tiny", action="store_true", help="tiny demo cohorts (a quick check, not a measurement)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: per model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the result here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    seeds = [int(s) for s in args.test_seeds.split(",") if s.strip()]
    if args.train_seed in seeds:
        from core.errors import InputError

        raise InputError("bench ensemble: the test seeds must differ from --train-seed")
    res = bench_ensemble(args.work, args.train_seed, seeds, args.tta, args.tiny, args.folds, args.device,
                         args.epochs, args.foci)
    write_json({"benchmark": "ensemble", **res}, args.json)
    return 0
