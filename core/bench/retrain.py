"""``bench retrain``: does fixing the planted noisy labels (through the review path) keep or raise balanced accuracy?

Issue 7: on a demo cohort, retraining after the planted label errors are corrected must not lower balanced accuracy
against the true labels. Per seed, in a scratch workspace (its own labels copy, models, results and SQLite
database; the cohort's slides and features are only read): train a baseline on the given labels, import them into
the review store, set every planted noisy slide's true label (reviewer ``bench-truth``) and flag every planted
outlier, export ``labels_v2.csv`` + manifest, retrain with the same settings and seed, and score both out-of-fold
predictions against ``truth/truth.csv`` (outliers left out).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import balanced_accuracy_score

from core.bench._util import write_json
from core.cohort.cohort_file import Cohort, load_cohort
from core.errors import InputError

Progress = Callable[[float, str], None]
REVIEWER = "bench-truth"
NOISE_REASON = "planted label noise"
OUTLIER_REASON = "planted outlier"
MARKER = ".slidelens-bench-retrain"  # a workspace holds this file; only such folders are ever wiped
TRUTH_COLUMNS = ("image_id", "true_label", "given_label", "is_noisy", "is_outlier")


def read_truth(cohort_root: str | Path) -> pd.DataFrame:
    """The demo cohort's ``truth/truth.csv`` (image_id, true_label, given_label, is_noisy, is_outlier, ...)."""
    path = Path(cohort_root) / "truth" / "truth.csv"
    if not path.is_file():
        raise InputError(f"{Path(cohort_root)}: no truth/truth.csv (bench retrain needs a demo cohort: "
                         "python -m core demo)")
    try:
        truth = pd.read_csv(path, dtype={"image_id": str, "true_label": str, "given_label": str},
                            keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    for col in ("is_noisy", "is_outlier"):
        truth[col] = pd.to_numeric(truth[col], errors="coerce").fillna(0).astype(int)
    return truth


def score_oof(oof: pd.DataFrame, truth: pd.DataFrame, labels: pd.DataFrame) -> dict[str, Any]:
    """Balanced accuracy of out-of-fold ``pred`` against the true labels and against ``labels`` (the training
    labels: given or corrected), over the slides that are not planted outliers."""
    inliers = set(truth.loc[truth["is_outlier"] == 0, "image_id"])
    j = oof[oof["image_id"].isin(inliers)].join(truth.set_index("image_id")["true_label"], on="image_id")
    j = j.join(labels.drop_duplicates("image_id").set_index("image_id")["label"], on="image_id")
    if j.empty:
        raise InputError("no out-of-fold prediction for any non-outlier slide of the truth table")
    known = j[j["label"].notna() & (j["label"] != "")]
    return {"n_scored": len(j),
            "ba_vs_true": round(float(balanced_accuracy_score(j["true_label"], j["pred"])), 4),
            "ba_vs_labels": round(float(balanced_accuracy_score(known["label"], known["pred"])), 4)
            if len(known) else None}


def _check_work(cohort: Cohort, work: Path) -> Path:
    """``work`` resolved, refused when it is (inside or a parent of) a folder of the cohort that must stay as it is."""
    work = work.resolve()
    kept = [cohort.models, cohort.results, cohort.features, *cohort.slide_sources,
            *([cohort.labels] if cohort.labels is not None else [])]
    kept = [Path(p).resolve() for p in kept]
    if work == cohort.root or any(p.is_relative_to(work) or work.is_relative_to(p) for p in kept):
        raise InputError(f"{work}: the workspace must be a folder of its own, not the cohort's root, models, "
                         "results or features (or a parent of them)")
    return work


def make_workspace(cohort: Cohort, work: Path) -> Cohort:
    """A fresh scratch cohort in ``work``: the source's slides and features, a copy of its labels, and its own
    models, results and database. ``work`` must be new, empty or an earlier workspace (which is wiped)."""
    work = _check_work(cohort, work)
    if cohort.labels is None or not Path(cohort.labels).is_file():
        raise InputError(f"{cohort.source or cohort.root}: the cohort has no labels file to retrain from")
    if work.exists():
        if not work.is_dir() or (any(work.iterdir()) and not (work / MARKER).is_file()):
            raise InputError(f"{work}: exists and is not a bench retrain workspace; choose another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("scratch workspace of `python -m core bench retrain`; safe to delete\n")
    shutil.copyfile(cohort.labels, work / "labels.csv")
    ws = dataclasses.replace(cohort, name=f"{cohort.name}-bench-retrain", root=work, labels=work / "labels.csv",
                             features=cohort.features.resolve(), models=work / "models", results=work / "results",
                             database=f"sqlite:///{work / 'slidelens.db'}", source=work / "cohort.toml")
    tmp = work / ".cohort.toml.tmp"
    tmp.write_text(ws.to_toml())
    tmp.replace(work / "cohort.toml")
    return load_cohort(work / "cohort.toml")


def apply_truth(store: Any, truth: pd.DataFrame, model_version: str | None = None) -> dict[str, Any]:
    """Correct every planted noisy label and flag every planted outlier in the store (one audit row each)."""
    fixed, flagged, skipped = [], [], []
    classes = set(store.classes())
    for r in truth.itertuples(index=False):
        image_id = str(r.image_id)
        if r.is_outlier:
            st = store.state(image_id)
            store.set_flag(image_id, "outlier", True, REVIEWER, OUTLIER_REASON, st.version, model_version)
            flagged.append(image_id)
        elif r.is_noisy:
            if r.true_label not in classes:
                skipped.append(image_id)
                continue
            st = store.state(image_id)
            store.set_label(image_id, str(r.true_label), REVIEWER, NOISE_REASON, st.version, model_version)
            fixed.append(image_id)
    return {"noisy_fixed": len(fixed), "outliers_flagged": len(flagged), "skipped": skipped,
            "fixed_ids": fixed, "flagged_ids": flagged}


def queue_recall(queue: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """How much of the planted noise and outliers the review queue (``core.review.queue.build_queue``) surfaced."""
    q = queue.set_index("image_id")
    noisy = [i for i in truth.loc[(truth["is_noisy"] == 1) & (truth["is_outlier"] == 0), "image_id"] if i in q.index]
    outl = [i for i in truth.loc[truth["is_outlier"] == 1, "image_id"] if i in q.index]
    return {"queue_size": int((q["n_reasons"] > 0).sum()),
            "noisy_in_queue": int((q.loc[noisy, "n_reasons"] > 0).sum()),
            "noisy_as_label_issue": int(q.loc[noisy, "label_issue"].sum()),
            "noisy_suggested_true_label": int(sum(q.loc[i, "suggested_label"] == t for i, t in zip(
                noisy, truth.set_index("image_id").loc[noisy, "true_label"], strict=True))),
            "outliers_in_queue": int((q.loc[outl, "n_reasons"] > 0).sum()),
            "outliers_over_ood_threshold": int(q.loc[outl, "outlier"].sum())}


def _fingerprint(cohort: Cohort) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under the cohort's models and results folders and its SQLite files."""
    out: dict[str, tuple[int, int]] = {}
    for folder in (cohort.models, cohort.results):
        if Path(folder).is_dir():
            for p in Path(folder).rglob("*"):
                if p.is_file():
                    st = p.stat()
                    out[str(p)] = (st.st_size, st.st_mtime_ns)
    if cohort.database.startswith("sqlite:///"):
        db = Path(cohort.database[len("sqlite:///"):])
        for p in (db, db.with_name(db.name + "-wal")):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def _stage(progress: Progress | None, lo: float, hi: float, label: str) -> Progress | None:
    if progress is None:
        return None
    return lambda f, m: progress(lo + (hi - lo) * min(max(f, 0.0), 1.0), f"{label}: {m}")


def retrain_check(cohort_path: str | Path, work: str | Path, model: str = "abmil", seed: int = 0, folds: int = 5,
                  epochs: int | None = None, device: str = "auto", progress: Progress | None = None
                  ) -> dict[str, Any]:
    """One seed: baseline, review with the truth, export, retrain; BA before/after against the true labels."""
    from core.analysis.files import read_predictions
    from core.review.export import export_labels
    from core.review.queue import build_queue, open_cohort_store, retrain

    cohort = load_cohort(cohort_path)
    truth = read_truth(cohort.root)
    ws = make_workspace(cohort, Path(work))
    train_kw = {"folds": folds, "epochs": epochs, "seed": seed, "device": device}
    store = open_cohort_store(ws)
    try:
        t = time.perf_counter()
        v1 = retrain(ws, store, ws.labels, model=model, progress=_stage(progress, 0.0, 0.47, "baseline"), **train_kw)
        t_base = time.perf_counter() - t
        if progress:
            progress(0.47, "review: applying the true labels")
        queue = queue_recall(build_queue(ws, store, v1), truth)
        review = apply_truth(store, truth, model_version=v1)
        audit = [r for r in store.history() if r.reviewer == REVIEWER]
        exp = export_labels(ws, store, ws.root / "labels_v2.csv")
        t = time.perf_counter()
        v2 = retrain(ws, store, exp.path, model=model, progress=_stage(progress, 0.53, 1.0, "retrain"), **train_kw)
        t_retrain = time.perf_counter() - t
    finally:
        store.engine.dispose()
    given = pd.read_csv(ws.labels, dtype=str, keep_default_na=False)
    corrected = pd.read_csv(exp.path, dtype=str, keep_default_na=False)
    before = _model_figures(ws, v1, read_predictions, truth, given, t_base)
    after = _model_figures(ws, v2, read_predictions, truth, corrected, t_retrain)
    after["ba_vs_given"] = score_oof(read_predictions(ws.models / v2 / "oof_predictions.csv"), truth,
                                     given)["ba_vs_labels"]
    change = round(after["ba_vs_true"] - before["ba_vs_true"], 4)
    return {"seed": seed, "model": model, "workspace": str(ws.root),
            "ba_vs_true_before": before["ba_vs_true"], "ba_vs_true_after": after["ba_vs_true"], "ba_change": change,
            "ba_vs_given_before": before["ba_vs_labels"], "ba_vs_corrected_after": after["ba_vs_labels"],
            "verdict": "not lowered" if change >= 0 else "LOWERED",
            "baseline": before, "retrained": after,
            "review": {**review, "audit_rows": len(audit), "baseline_queue": queue,
                       "audit_reasons": sorted({r.reason for r in audit})},
            "export": {"labels": str(exp.path), "manifest": str(exp.manifest_path), "rows": exp.rows,
                       "changed": exp.changed, "outliers": exp.outliers, "audit_max_id": exp.audit_max_id}}


def _model_figures(ws: Cohort, version: str, read_predictions: Callable[[Path], pd.DataFrame], truth: pd.DataFrame,
                   labels: pd.DataFrame, wall: float) -> dict[str, Any]:
    import json

    mdir = ws.models / version
    meta = json.loads((mdir / "model.json").read_text())
    scores = score_oof(read_predictions(mdir / "oof_predictions.csv"), truth, labels)
    return {"version": version, "labels_file": meta.get("labels_file"), "n_train": meta["metrics"]["n_slides"],
            **scores, "train_seconds": meta["metrics"].get("train_seconds"), "wall_seconds": round(wall, 1)}


def bench_retrain(cohort_path: str | Path, seeds: list[int], work: str | Path | None = None, model: str = "abmil",
                  folds: int = 5, epochs: int | None = None, device: str = "auto",
                  progress: Progress | None = None) -> dict[str, Any]:
    """Run :func:`retrain_check` per seed (workspace ``<work>/seed<N>``); per-seed figures and the median change."""
    cohort = load_cohort(cohort_path)
    read_truth(cohort.root)  # fail before any work
    if not seeds:
        raise InputError("no seeds given (e.g. --seeds 0,1,2)")
    work = _check_work(cohort, Path(work) if work is not None else cohort.root / "bench" / "retrain")
    if work.exists() and any(work.iterdir()) and not (work / MARKER).is_file():
        raise InputError(f"{work}: exists and is not a bench retrain workspace; choose another --work")
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("scratch workspace of `python -m core bench retrain`; safe to delete\n")
    before = _fingerprint(cohort)
    runs = []
    for i, seed in enumerate(seeds):
        runs.append(retrain_check(cohort.source or cohort.root, work / f"seed{seed}", model, seed, folds, epochs,
                                  device, _stage(progress, i / len(seeds), (i + 1) / len(seeds), f"seed {seed}")))
    changes = [r["ba_change"] for r in runs]
    median = round(float(statistics.median(changes)), 4)
    truth = read_truth(cohort.root)
    return {"cohort": str(cohort.root), "workspace": str(work), "model": model, "seeds": seeds, "folds": folds,
            "epochs": epochs, "n_slides": len(truth), "n_noisy": int(((truth["is_noisy"] == 1)
                                                                        & (truth["is_outlier"] == 0)).sum()),
            "n_outliers": int(truth["is_outlier"].sum()), "runs": runs,
            "median_ba_change": median, "min_ba_change": min(changes),
            "median_ba_vs_true_before": round(float(statistics.median(r["ba_vs_true_before"] for r in runs)), 4),
            "median_ba_vs_true_after": round(float(statistics.median(r["ba_vs_true_after"] for r in runs)), 4),
            "source_untouched": _fingerprint(cohort) == before,
            "verdict": "not lowered" if median >= 0 else "LOWERED",
            "seeds_lowered": [r["seed"] for r in runs if r["ba_change"] < 0]}


def verdict_line(res: dict[str, Any]) -> str:
    """One line: model, seeds, BA vs truth before -> after, median change, verdict."""
    per = ", ".join(f"seed {r['seed']} {r['ba_vs_true_before']:.3f}->{r['ba_vs_true_after']:.3f} "
                    f"({r['ba_change']:+.3f})" for r in res["runs"])
    return (f"retrain {res['model']}: balanced accuracy vs truth {res['median_ba_vs_true_before']:.3f} -> "
            f"{res['median_ba_vs_true_after']:.3f}, median change {res['median_ba_change']:+.4f} [{per}]: "
            f"{res['verdict']}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrain", help="fix the planted label noise through the review path, retrain, compare BA")
    p.add_argument("--cohort", type=Path, default=Path("data/demo"), help="demo cohort folder or cohort.toml")
    p.add_argument("--work", type=Path, default=None, help="scratch workspace (default <cohort>/bench/retrain)")
    p.add_argument("--model", default="abmil", help="abmil | transmil | dsmil (default abmil)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: per model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", default=None, help="write the result here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.cli.train_cmd import _tqdm_progress

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    progress, bar = _tqdm_progress(f"bench retrain {args.model}")
    try:
        res = bench_retrain(args.cohort, seeds, args.work, args.model, args.folds, args.epochs, args.device, progress)
    finally:
        bar.close()
    write_json({"benchmark": "retrain", **res}, args.json)
    print(verdict_line(res), flush=True)
    return 0
