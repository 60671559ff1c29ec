"""``bench quality``: extract (skipping done slides), train and infer on a demo cohort, scored against its truth.

Reports, per model: balanced accuracy of the out-of-fold predictions against the given and the true labels
(outliers left out), attention localisation (AUROC of patch attention against the tumour masks, per slide
averaged over slides with both kinds of patch, and pooled over per-slide attention ranks) for the held-out
(out-of-fold) attention and for the final model's, OOD AUROC for the planted outliers (each slide scored by a
model that did not train on it), and the share of planted label errors in the label-issue ranking's top 1.5x.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from core.bench._util import write_json


def tumour_patches(mask: np.ndarray, downsample: float, coords: np.ndarray, size0: int, min_cover: float = 0.5
                   ) -> np.ndarray:
    """True for patches whose level-0 footprint the mask covers by at least ``min_cover`` (integral image)."""
    m = (mask > 0).astype(np.float64)
    ii = np.pad(m.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = m.shape
    x0 = np.clip(np.floor(coords[:, 0] / downsample).astype(int), 0, w)
    y0 = np.clip(np.floor(coords[:, 1] / downsample).astype(int), 0, h)
    x1 = np.clip(np.ceil((coords[:, 0] + size0) / downsample).astype(int), 0, w)
    y1 = np.clip(np.ceil((coords[:, 1] + size0) / downsample).astype(int), 0, h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    covered = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    return covered / area >= min_cover


def _rank01(a: np.ndarray) -> np.ndarray:
    return (np.argsort(np.argsort(a)) + 0.5) / len(a)


def attention_auroc(items: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Mean per-slide AUROC over slides with tumour and non-tumour patches, and the pooled AUROC of ranks."""
    per, ys, ss = [], [], []
    for tumour, att in items:
        if tumour.all() or not tumour.any():
            continue
        per.append(roc_auc_score(tumour, att))
        ys.append(tumour)
        ss.append(_rank01(att))
    if not per:
        return {"mean": None, "pooled": None, "n_slides": 0}
    return {"mean": round(float(np.mean(per)), 4), "median": round(float(np.median(per)), 4),
            "min": round(float(np.min(per)), 4),
            "pooled": round(float(roc_auc_score(np.concatenate(ys), np.concatenate(ss))), 4), "n_slides": len(per)}


def attention_column(att: np.ndarray, classes: list[str], label: str) -> np.ndarray:
    """A slide's attention for scoring: itself when ``[N]``; the column of ``label`` when per class (``[N, C]``),
    else the maximum over the classes."""
    if att.ndim == 1:
        return att
    return att[:, classes.index(label)] if label in classes else att.max(axis=1)


def _label_issue_hook(oof: pd.DataFrame, labels: pd.DataFrame, classes: list[str], truth: pd.DataFrame
                      ) -> dict[str, Any] | None:
    """Call core.analysis.label_issues.rank_label_issues (if present) on the OOF predictions; recall of planted noise."""
    try:
        from core.analysis.label_issues import rank_label_issues
        from core.analysis.metrics import join_predictions
    except ImportError:
        return None
    issues = rank_label_issues(join_predictions(oof, labels, classes), classes)
    planted = truth.loc[(truth["is_noisy"] == 1) & (truth["is_outlier"] == 0), "image_id"].astype(str)
    planted = [i for i in planted if i in set(issues["image_id"])]
    if not planted:
        return {"planted": 0}
    top = set(issues.nsmallest(int(np.ceil(1.5 * len(planted))), "rank")["image_id"])
    return {"planted": len(planted), "top_k": int(np.ceil(1.5 * len(planted))),
            "recall_at_1.5x": round(len(set(planted) & top) / len(planted), 4)}


def evaluate(cohort: Any, model_dir: Path, truth: pd.DataFrame, masks_dir: Path) -> dict[str, Any]:
    """Score one trained model (its OOF files and its results in the cohort) against the truth."""
    from core.model.infer import ATTENTION_DIR, ensure_results, read_attention
    from core.model.versions import read_model_meta

    meta = read_model_meta(model_dir)
    classes = list(meta["classes"])
    t = time.perf_counter()
    results = ensure_results(cohort, meta["version"])
    infer_s = time.perf_counter() - t
    oof = pd.read_csv(model_dir / "oof_predictions.csv", dtype={"image_id": str})
    tr = truth.set_index("image_id")
    j = oof.join(tr, on="image_id")
    inl = j[j["is_outlier"] == 0]
    out: dict[str, Any] = {"version": meta["version"], "train_seconds": meta["metrics"].get("train_seconds"),
                           "infer_seconds_all_slides": round(infer_s, 1), "n_oof": len(oof),
                           "ba_vs_given": round(float(balanced_accuracy_score(inl["given_label"], inl["pred"])), 4),
                           "ba_vs_true": round(float(balanced_accuracy_score(inl["true_label"], inl["pred"])), 4)}
    # OOD: OOF score for slides trained on, final-model score for the rest (never scored by a model that saw it)
    score = dict(zip(results["image_id"], results["ood_score"], strict=True))
    score.update(dict(zip(oof["image_id"], oof["ood_score"], strict=True)))
    ids = [i for i in truth["image_id"] if i in score]
    y = tr.loc[ids, "is_outlier"].to_numpy(int)
    s = np.array([score[i] for i in ids])
    thr = meta["ood"]["threshold"]
    if 0 < y.sum() < len(y):
        out["ood_auroc"] = round(float(roc_auc_score(y, s)), 4)
        out["ood_tpr_at_threshold"] = round(float(np.mean(s[y == 1] > thr)), 4)
        out["ood_fpr_at_threshold"] = round(float(np.mean(s[y == 0] > thr)), 4)
        out["ood_caught"] = f"{int(np.sum(s[y == 1] > thr))}/{int(y.sum())}"
        out["ood_false_flags"] = f"{int(np.sum(s[y == 0] > thr))}/{int((y == 0).sum())}"
        out["ood_threshold"] = {k: meta["ood"].get(k) for k in ("threshold", "threshold_method", "n_excluded")}
    # attention localisation against the tumour masks (inliers only), held-out and final-model attention
    res_dir = Path(cohort.results) / meta["version"] / ATTENTION_DIR
    held, final = [], []
    oof_h5 = model_dir / "oof_attention.h5"
    with h5py.File(oof_h5, "r") if oof_h5.is_file() else _null() as f:
        for image_id, row in tr.iterrows():
            mask_path = masks_dir / f"{image_id}.png"
            if row["is_outlier"] or not mask_path.is_file() or not (res_dir / f"{image_id}.h5").is_file():
                continue
            mask = np.asarray(Image.open(mask_path).convert("L"))
            coords, att, attrs = read_attention(res_dir / f"{image_id}.h5")
            tumour = tumour_patches(mask, float(row["mask_downsample"]), coords, int(attrs["patch_size_level0"]))
            final.append((tumour, attention_column(att, classes, row["true_label"])))
            if f is not None and image_id in f:
                held.append((tumour, attention_column(f[image_id]["attention"][()], classes, row["true_label"])))
    out["attention_auroc_oof"] = attention_auroc(held)
    out["attention_auroc_final"] = attention_auroc(final)
    labels = pd.read_csv(cohort.labels, dtype={"image_id": str, "label": str}, keep_default_na=False)
    out["label_issues"] = _label_issue_hook(oof, labels, classes, truth)
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def bench_cohort(cohort: Any, work: Path | None = None) -> Any:
    """The cohort with ``models`` and ``results`` moved under ``work`` (default ``<cohort>/bench``)."""
    work = Path(work) if work is not None else Path(cohort.root) / "bench"
    return dataclasses.replace(cohort, models=work / "models", results=work / "results")


def bench_quality(cohort_path: Path, models: list[str], folds: int = 5, extract: bool = True,
                  model_dirs: dict[str, Path] | None = None, work: Path | None = None, seed: int = 0,
                  overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Extract (skip done) + train + infer each model into ``work`` (default ``<cohort>/bench``); return the figures.

    ``overrides`` maps a model name to extra ``train_model`` keyword arguments (e.g. ``{"transmil": {"lr": 1e-4}}``).
    """
    from core.cli import main as cli_main
    from core.cohort.cohort_file import load_cohort
    from core.model.train import train_model

    cohort = bench_cohort(load_cohort(cohort_path), work)
    truth_dir = cohort.root / "truth"
    truth = pd.read_csv(truth_dir / "truth.csv", dtype={"image_id": str})
    result: dict[str, Any] = {"cohort": str(cohort.root), "work": str(cohort.models.parent), "seed": seed,
                              "n_slides": len(truth),
                              "n_outliers": int(truth["is_outlier"].sum()), "n_noisy": int(truth["is_noisy"].sum())}
    if extract:
        t = time.perf_counter()
        rc = cli_main(["extract", "--cohort", str(cohort.source or cohort_path)])
        result["extract_seconds"] = round(time.perf_counter() - t, 1)
        result["extract_rc"] = rc
    result["models"] = {}
    for name in models:
        model_dir = (model_dirs or {}).get(name)
        scored = cohort
        if model_dir is None:
            model_dir = train_model(cohort.features, cohort.labels, model=name, out_dir=cohort.models, folds=folds,
                                    seed=seed, **dict((overrides or {}).get(name, {})))
            # a version number can come back after bench/models was cleared: never reuse its old results
            shutil.rmtree(Path(cohort.results) / Path(model_dir).name, ignore_errors=True)
        else:  # an existing folder: results go under the work folder, apart from the bench's own versions
            model_dir = Path(model_dir).resolve()
            key = hashlib.sha256(str(model_dir.parent).encode()).hexdigest()[:8]
            scored = dataclasses.replace(cohort, models=model_dir.parent,
                                         results=Path(cohort.results).parent / "external" / key)
        result["models"][name] = evaluate(scored, Path(model_dir), truth, truth_dir / "masks")
        print(f"{name}: {result['models'][name]}", flush=True)
    return result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quality", help="extract + train + infer on a demo cohort, scored against its truth")
    p.add_argument("--cohort", type=Path, default=Path("data/demo"), help="cohort folder or cohort.toml")
    p.add_argument("--models", default=None,
                   help="comma-separated MIL models (default abmil,transmil; with --matrix abmil,transmil,dsmil)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--no-extract", action="store_true", help="use the features already there")
    p.add_argument("--model-dir", action="append", default=[], metavar="NAME=DIR",
                   help="evaluate an existing model folder instead of training (repeatable)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the benchmark's models/ and results/ (default <cohort>/bench)")
    p.add_argument("--seed", type=int, default=0, help="seed for folds and training")
    p.add_argument("--matrix", action="store_true",
                   help="train each head on a demo cohort of one seed and score it on another, in both tumour regimes "
                        "(cohorts built and extracted under --work, default data/bench_cohorts; see quality_matrix.py)")
    p.add_argument("--regimes", default="large,small", help="--matrix: tumour regimes (large, small)")
    p.add_argument("--seeds", default="20,21,22", help="--matrix: demo seeds; each trains once and is scored once")
    p.add_argument("--tiny", action="store_true", help="--matrix: tiny cohorts (a mechanics check, not a figure)")
    p.add_argument("--json", default=None, help="write the result here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.errors import InputError

    if args.matrix:
        from core.bench.cohorts import DEFAULT_WORK
        from core.bench.quality_matrix import HEADS, run_matrix

        heads = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else HEADS
        res = run_matrix(args.work or DEFAULT_WORK, heads, tuple(r.strip() for r in args.regimes.split(",")),
                         tuple(int(s) for s in args.seeds.split(",")), args.folds, tiny=args.tiny)
        write_json({"benchmark": "quality --matrix", **res}, args.json)
        return 0
    cohort = args.cohort / "cohort.toml" if args.cohort.is_dir() else args.cohort
    if not (cohort.parent / "truth" / "truth.csv").is_file():
        raise InputError(f"{cohort.parent}: no truth/truth.csv (bench quality needs a demo cohort: python -m core demo)")
    dirs = dict(item.split("=", 1) for item in args.model_dir)
    models = [m.strip() for m in (args.models or "abmil,transmil").split(",") if m.strip()]
    res = bench_quality(cohort, models, args.folds, extract=not args.no_extract,
                        model_dirs={k: Path(v) for k, v in dirs.items()}, work=args.work, seed=args.seed)
    write_json({"benchmark": "quality", **res}, args.json)
    return 0
