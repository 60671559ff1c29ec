"""``bench quality --matrix``: every MIL head trained on a demo cohort of one seed and scored on a cohort of another,
in both tumour regimes (large regions, small foci).

For each regime and each seed ``s[i]`` of ``--seeds``, a head is trained (default settings, the given noisy labels, as
a user would) on the cohort of ``s[i]`` and scored on the cohort of ``s[i+1]`` (cyclically), which it never saw:
balanced accuracy against the true labels (outliers left out), attention AUROC against the tumour masks (per slide,
averaged), and the outlier AUROC of the score the app shows (``ood_score``). Figures per cell are the medians over
seeds; the seeds reported should not be the ones a recipe was chosen on.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from core.bench.cohorts import DEFAULT_WORK, demo_cohort, extracted
from core.bench.quality import attention_auroc, attention_column, tumour_patches

HEADS = ("abmil", "transmil", "dsmil")
TARGETS = {"balanced_accuracy": 0.9, "attention_auroc": 0.85, "ood_auroc": 0.9}
REPORTED = (*TARGETS, "ood_auroc_head_embedding")  # the head's own embedding, for comparison (no target)


def score_predictions(preds: pd.DataFrame, attention_dir: Path, cohort_root: Path, classes: list[str],
                      ood_threshold: float | None = None) -> dict[str, Any]:
    """Balanced accuracy, attention AUROC and outlier AUROC of predictions on a demo cohort, against its truth (and,
    given the model's threshold, the outliers it flags and the other slides it flags too)."""
    truth = pd.read_csv(Path(cohort_root) / "truth" / "truth.csv", dtype={"image_id": str})
    tr = truth.set_index("image_id")
    p = preds.assign(image_id=preds["image_id"].astype(str)).join(tr, on="image_id")
    inl = p[(p["is_outlier"] == 0) & p["true_label"].isin(classes)]
    out: dict[str, Any] = {"n_scored": int(len(inl)),
                           "balanced_accuracy": round(float(balanced_accuracy_score(inl["true_label"], inl["pred"])),
                                                      4)}
    y = p["is_outlier"].to_numpy(int)
    if 0 < y.sum() < len(y):
        score = p["ood_score"].to_numpy(float)
        out["ood_auroc"] = round(float(roc_auc_score(y, score)), 4)
        if ood_threshold is not None:
            over = score > float(ood_threshold)
            out["ood_caught"] = f"{int((over & (y == 1)).sum())}/{int(y.sum())}"
            out["ood_false_flags"] = f"{int((over & (y == 0)).sum())}/{int((y == 0).sum())}"
    items = []
    for image_id, row in inl.set_index("image_id").iterrows():
        att_path = attention_dir / f"{image_id}.h5"
        mask_path = Path(cohort_root) / "truth" / "masks" / f"{image_id}.png"
        if not (att_path.is_file() and mask_path.is_file()):
            continue
        with h5py.File(att_path, "r") as f:
            coords, att = f["coords"][()], f["attention"][()]
            size0 = int(f.attrs["patch_size_level0"])
        mask = np.asarray(Image.open(mask_path).convert("L"))
        tumour = tumour_patches(mask, float(row["mask_downsample"]), coords, size0)
        items.append((tumour, attention_column(att, classes, str(row["true_label"]))))
    auroc = attention_auroc(items)
    out["attention_auroc"] = auroc["mean"]
    out["attention_auroc_detail"] = auroc
    return out


def embedding_ood_auroc(loaded: Any, train_feats: Path, train_labels: Path, test_feats: Path, cohort_root: Path
                        ) -> float | None:
    """Outlier AUROC on the test cohort of the head's own embedding (Mahalanobis distance to the nearest training
    class, fitted on the final model's embeddings of its training slides): what the head alone could offer."""
    import torch

    from core.cohort.labels import read_labels
    from core.model.outliers import fit_ood, ood_scores
    from core.model.train_data import load_bags, predict_bags

    if loaded.model is None:
        return None
    rows = read_labels(train_labels).training_rows()
    bags, _ = load_bags(train_feats, list(rows["image_id"]))
    label_of = dict(zip(rows["image_id"], rows["label"], strict=True))
    with torch.inference_mode():
        ref = fit_ood(predict_bags(loaded.model, bags, loaded.device).embeddings,
                      np.array([loaded.classes.index(label_of[b.image_id]) for b in bags]))
        truth = pd.read_csv(Path(cohort_root) / "truth" / "truth.csv", dtype={"image_id": str})
        test, _ = load_bags(test_feats, list(truth["image_id"]))
        scores = ood_scores(predict_bags(loaded.model, test, loaded.device).embeddings, ref=ref)
    y = truth.set_index("image_id").loc[[b.image_id for b in test], "is_outlier"].to_numpy(int)
    return round(float(roc_auc_score(y, scores)), 4) if 0 < y.sum() < len(y) else None


def run_matrix(work: Path = DEFAULT_WORK, heads: tuple[str, ...] = HEADS, regimes: tuple[str, ...] = ("large", "small"),
               seeds: tuple[int, ...] = (20, 21, 22), folds: int = 5, device: str = "auto",
               overrides: dict[str, dict[str, Any]] | None = None, tiny: bool = False) -> dict[str, Any]:
    """Train each head on each seed's cohort, score it on the next seed's; returns rows and per-cell medians."""
    from core.model.backbones import create_backbone
    from core.model.infer import infer_features, load_model
    from core.model.train import train_model
    from core.model.versions import read_model_meta

    if len(seeds) < 2:
        raise ValueError("bench quality --matrix needs at least two seeds (train on one, score on another)")
    backbone = create_backbone(device=device)
    rows: list[dict[str, Any]] = []
    for regime in regimes:
        cohorts = {s: demo_cohort(work, s, regime, tiny) for s in seeds}
        feats = {s: extracted(c, backbone)[0] for s, c in cohorts.items()}
        for head in heads:
            for i, s_train in enumerate(seeds):
                s_test = seeds[(i + 1) % len(seeds)]
                train = cohorts[s_train]
                t = time.perf_counter()
                model_dir = train_model(feats[s_train], train.labels, model=head, folds=folds, seed=0, device=device,
                                        out_dir=Path(work) / "matrix" / f"models-{regime}-seed{s_train}",
                                        **dict((overrides or {}).get(head, {})))
                train_s = time.perf_counter() - t
                meta = read_model_meta(model_dir)
                loaded = load_model(model_dir, device=backbone.device)
                res_dir = Path(work) / "matrix" / "results" / regime / model_dir.name / f"seed{s_test}"
                preds = infer_features(loaded, feats[s_test], res_dir, force=True)
                row = {"head": head, "regime": regime, "train_seed": s_train, "test_seed": s_test,
                       "version": model_dir.name, "train_seconds": round(train_s, 1),
                       "oof_balanced_accuracy_train": round(float(meta["metrics"]["oof_balanced_accuracy"]), 4),
                       "health_ok": (meta.get("health") or {}).get("ok", True),
                       **score_predictions(preds, res_dir / "attention", Path(cohorts[s_test].root),
                                           list(meta["classes"]), (meta.get("ood") or {}).get("threshold")),
                       "ood_auroc_head_embedding": embedding_ood_auroc(loaded, feats[s_train], train.labels,
                                                                       feats[s_test], Path(cohorts[s_test].root))}
                rows.append(row)
                print(f"{head:>8} {regime:>5} train seed {s_train} -> test seed {s_test}: "
                      f"BA {row['balanced_accuracy']:.3f}  attention AUROC {row['attention_auroc']}  "
                      f"outlier AUROC {row.get('ood_auroc')} (head embedding {row['ood_auroc_head_embedding']}; "
                      f"flags {row.get('ood_caught')} outliers, {row.get('ood_false_flags')} others)  "
                      f"({train_s:.0f} s)", flush=True)
    return {"work": str(work), "seeds": list(seeds), "regimes": list(regimes), "heads": list(heads), "folds": folds,
            "targets": TARGETS, "rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over seeds of each (head, regime) cell, and whether it meets the targets."""
    out = []
    keys = sorted({(r["head"], r["regime"]) for r in rows}, key=lambda k: (HEADS.index(k[0]) if k[0] in HEADS else 9,
                                                                            k[1]))
    for head, regime in keys:
        cell = [r for r in rows if r["head"] == head and r["regime"] == regime]
        med = {}
        for metric in REPORTED:
            vals = [r[metric] for r in cell if r.get(metric) is not None]
            med[metric] = round(statistics.median(vals), 4) if vals else None
        out.append({"head": head, "regime": regime, "n_seeds": len(cell), **med,
                    "per_seed_balanced_accuracy": [r["balanced_accuracy"] for r in cell],
                    "met": {m: (med[m] is not None and med[m] >= t) for m, t in TARGETS.items()}})
    return out
