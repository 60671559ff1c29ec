"""Ensembles of model versions (or of one training run's k fold models), registered as a model version.

- **soft**: the mean of the members' probabilities; **hard**: a majority vote of the members' predicted classes, ties
  broken by the mean probability (``prob_<class>`` stay the mean probabilities, so log loss and calibration work).
- **Out-of-fold predictions** combine the members' out-of-fold predictions (every member's prediction of a slide comes
  from a model that did not train on it); a fold model's out-of-fold predictions are its run's.
- **Attention** is the mean of the members' rank-normalised attention (per class where a member gives ``[N, C]``).
- **Outlier score**: the mean of the members' scores, each divided by its own threshold; the ensemble's threshold is
  set on its out-of-fold scores like a trained model's.

An ensemble version folder holds model.json (``"ensemble": {"method", "members"}`` instead of weights),
oof_predictions.csv, folds.csv and, when every member has one, oof_attention.h5.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import pandas as pd

from core.errors import InputError
from core.model import health, outliers
from core.model import versions as mfolders

if TYPE_CHECKING:
    from core.model.feature_files import FeatureBag
    from core.model.infer import LoadedModel, SlideResult

METHODS = ("soft", "hard")


@dataclass(frozen=True)
class Member:
    """One member: a model version, or one fold model of a version (``fold`` set)."""

    version: str
    fold: int | None = None

    @property
    def name(self) -> str:
        return self.version if self.fold is None else f"{self.version}/fold{self.fold}"

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "fold": self.fold}


# --- voting and attention ------------------------------------------------------------------------------------------
def soft_vote(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``probs [M, N, C]`` -> (predicted class ``[N]``, mean probabilities ``[N, C]``)."""
    mean = np.asarray(probs, dtype=np.float64).mean(axis=0)
    return mean.argmax(axis=1), mean


def hard_vote(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote of the members' argmax; a tie goes to the tied class with the highest mean probability."""
    probs = np.asarray(probs, dtype=np.float64)
    m, n, c = probs.shape
    votes = np.zeros((n, c))
    np.add.at(votes, (np.repeat(np.arange(n)[None], m, 0), probs.argmax(axis=2)), 1)
    mean = probs.mean(axis=0)
    tied = votes == votes.max(axis=1, keepdims=True)
    return np.where(tied, mean, -np.inf).argmax(axis=1), mean


def vote(probs: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`soft_vote` or :func:`hard_vote`."""
    if method not in METHODS:
        raise InputError(f"ensemble method {method!r}: choose soft or hard")
    return soft_vote(probs) if method == "soft" else hard_vote(probs)


def rank_normalise(att: np.ndarray) -> np.ndarray:
    """Each column's ranks scaled to (0, 1] (ties share their mean rank): comparable across models."""
    from scipy.stats import rankdata

    a = np.asarray(att, dtype=np.float64)
    if a.shape[0] == 0:
        return a
    return rankdata(a, axis=0) / a.shape[0]


def combine_attention(atts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Mean rank-normalised attention: ``[N]`` when every member gives one map, else ``[N, C]`` (a single map
    counts for every class)."""
    ranked = [rank_normalise(a) for a in atts]
    if all(r.ndim == 1 for r in ranked):
        return np.mean(ranked, axis=0).astype(np.float32)
    cols = [r if r.ndim == 2 else np.repeat(r[:, None], n_classes, axis=1) for r in ranked]
    return np.mean(cols, axis=0).astype(np.float32)


# --- members -------------------------------------------------------------------------------------------------------
def resolve_version(models_dir: Path, name: str) -> str:
    """A version name from ``v003``, ``3`` or ``v003-abmil``; ``InputError`` listing the versions otherwise."""
    versions = [m["version"] for m in mfolders.list_versions(models_dir)]
    if name in versions:
        return name
    digits = name.strip().lstrip("v")
    hits = [v for v in versions if digits.isdigit() and mfolders.version_number(v) == int(digits)]
    if len(hits) == 1:
        return hits[0]
    raise InputError(f"{models_dir}: no model version {name!r} (versions: {', '.join(versions) or 'none'})")


def parse_members(models_dir: str | Path, names: list[str]) -> list[Member]:
    """Members from ``v001``, ``v001-abmil`` or ``v001-abmil/fold2`` names."""
    out = []
    for raw in (n.strip() for n in names):
        if not raw:
            continue
        version, _, fold = raw.partition("/fold")
        if fold and not fold.isdigit():
            raise InputError(f"ensemble member {raw!r}: write a fold model as <version>/fold<k>")
        out.append(Member(resolve_version(Path(models_dir), version), int(fold) if fold else None))
    return out


def fold_members(models_dir: str | Path, version: str) -> list[Member]:
    """The k fold models of one training run; ``InputError`` when the run did not keep them."""
    models_dir = Path(models_dir)
    version = resolve_version(models_dir, version)
    meta = mfolders.read_model_meta(models_dir / version)
    k = int((meta.get("metrics") or {}).get("n_folds") or 0)
    if mfolders.is_ensemble(meta) or k < 2 or not (models_dir / version / mfolders.fold_weights(0)).is_file():
        raise InputError(f"{models_dir / version}: no fold models kept (retrain it to build a fold ensemble)")
    return [Member(version, f) for f in range(k)]


def member_dir(models_dir: Path, member: Member, fallback: Path | None = None) -> Path:
    """The version folder of ``member``: in ``models_dir``, else in ``fallback`` (where the ensemble was built)."""
    for base in (models_dir, fallback):
        if base is not None and (base / member.version / mfolders.MODEL_JSON).is_file():
            return base / member.version
    raise InputError(f"{models_dir}: ensemble member {member.name} not found")


def check_members(models_dir: Path, members: list[Member]) -> list[dict[str, Any]]:
    """Each member's model.json; ``InputError`` (one line) when members differ in classes, feature dimension or
    backbone, are ensembles themselves, or a fold model is missing."""
    if len(members) < 2:
        raise InputError("an ensemble needs at least 2 members")
    if len(set(members)) < len(members):
        raise InputError(f"ensemble members repeat: {', '.join(m.name for m in members)}")
    metas = []
    for m in members:
        meta = mfolders.read_model_meta(member_dir(models_dir, m))
        if mfolders.is_ensemble(meta):
            raise InputError(f"{m.name} is an ensemble itself; list its members instead")
        if m.fold is not None and not (member_dir(models_dir, m) / mfolders.fold_weights(m.fold)).is_file():
            raise InputError(f"{member_dir(models_dir, m)}: no fold model {m.fold} (retrain it to keep fold models)")
        metas.append(meta)
    first, ref = members[0], metas[0]
    for m, meta in zip(members[1:], metas[1:], strict=True):
        if list(meta["classes"]) != list(ref["classes"]):
            raise InputError(f"ensemble: {m.name} has classes {meta['classes']} but {first.name} has "
                             f"{ref['classes']}; members must predict the same classes")
        if meta.get("backbone") != ref.get("backbone") or int(meta["feature_dim"]) != int(ref["feature_dim"]):
            raise InputError(f"ensemble: {m.name} was trained on {meta.get('backbone')!r} features "
                             f"({meta['feature_dim']}-d) but {first.name} on {ref.get('backbone')!r} "
                             f"({ref['feature_dim']}-d); members must share one feature backbone")
    return metas


def _threshold(meta: dict[str, Any]) -> float:
    thr = (meta.get("ood") or {}).get("threshold")
    return float(thr) if thr is not None and np.isfinite(thr) and float(thr) > 0 else 1.0


# --- building ------------------------------------------------------------------------------------------------------
def build_ensemble(models_dir: str | Path, members: list[Member], method: str = "soft",
                   out_dir: str | Path | None = None) -> Path:
    """Register an ensemble of ``members`` (in ``models_dir``) as a new version in ``out_dir`` (default the same
    folder); returns its folder."""
    models_dir = Path(models_dir)
    out_dir = Path(out_dir) if out_dir is not None else models_dir
    if method not in METHODS:
        raise InputError(f"ensemble method {method!r}: choose soft or hard")
    metas = check_members(models_dir, members)
    classes = list(metas[0]["classes"])
    oofs, folds = [], []
    for m, meta in zip(members, metas, strict=True):
        d = member_dir(models_dir, m)
        if not (d / mfolders.OOF_CSV).is_file():
            raise InputError(f"{d}: no {mfolders.OOF_CSV}; an ensemble needs every member's out-of-fold predictions")
        oof = pd.read_csv(d / mfolders.OOF_CSV, dtype={"image_id": str}).drop_duplicates("image_id")
        oof["ood_score"] = pd.to_numeric(oof["ood_score"], errors="coerce") / _threshold(meta)
        oofs.append(oof.set_index("image_id"))
        if (d / "folds.csv").is_file():
            folds.append(pd.read_csv(d / "folds.csv", dtype={"image_id": str}))
    ids = sorted(set.intersection(*(set(o.index) for o in oofs)))
    if not ids:
        raise InputError(f"ensemble: members {', '.join(m.name for m in members)} share no out-of-fold slide")
    probs = np.stack([o.loc[ids, [f"prob_{c}" for c in classes]].to_numpy(np.float64) for o in oofs])
    pred, mean = vote(probs, method)
    ood = np.mean([o.loc[ids, "ood_score"].to_numpy(np.float64) for o in oofs], axis=0)
    from core.model.train import predictions_frame

    oof_df = predictions_frame(ids, mean, classes, ood)
    oof_df["pred"] = [classes[i] for i in pred]
    labels = pd.concat(folds).drop_duplicates("image_id").set_index("image_id")["label"] if folds else pd.Series()
    metrics = _metrics(oof_df, labels, classes, members, oofs)
    staging = mfolders.new_staging_dir(out_dir)
    oof_df.to_csv(staging / mfolders.OOF_CSV, index=False)
    if folds:
        lab = labels.reindex(ids)
        pd.DataFrame({"image_id": ids, "label": lab.to_numpy(), "fold": -1}).dropna(subset=["label"]).to_csv(
            staging / "folds.csv", index=False)
    _combine_oof_attention([member_dir(models_dir, m) for m in members], ids, len(classes),
                           staging / "oof_attention.h5")
    ref = metas[0]
    meta = {"version": None, "model": "ensemble", "classes": classes, "feature_dim": int(ref["feature_dim"]),
            "backbone": ref.get("backbone"), "patch_size_level0": ref.get("patch_size_level0"), "mpp": ref.get("mpp"),
            mfolders.ENSEMBLE: {"method": method, "members": [m.to_json() for m in members],
                                "member_models": [meta.get("model") for meta in metas],
                                "members_dir": str(models_dir.resolve())},
            "settings": {"model": "ensemble", "method": method, "members": [m.name for m in members]},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "labels_file": ref.get("labels_file"),
            "features_dir": ref.get("features_dir"), "metrics": metrics,
            "ood": outliers.ood_meta(ood, "ensemble", float((ref.get("ood") or {}).get("target_fpr")
                                                             or outliers.DEFAULT_FPR)),
            "health": _health(labels, ids, mean, pred, classes), "skipped_no_features": []}
    meta["ood"]["rule"] = "mean over members of score / member threshold"
    (staging / mfolders.MODEL_JSON).write_text(json.dumps(meta, indent=2, default=str))
    return mfolders.publish(staging, out_dir, "ensemble")


def _health(labels: pd.Series, ids: list[str], mean: np.ndarray, pred: np.ndarray,
            classes: list[str]) -> dict[str, Any]:
    """The health block (core/model/health.py) of the combined out-of-fold predictions of the labelled slides."""
    lab = labels.reindex(ids).to_numpy() if len(labels) else np.array([None] * len(ids))
    keep = pd.Series(lab).isin(classes).to_numpy()
    y = np.array([classes.index(v) for v in lab[keep]], dtype=np.int64)
    return health.assess(y, mean[keep], None, classes, oof_pred=pred[keep])


def _metrics(oof: pd.DataFrame, labels: pd.Series, classes: list[str], members: list[Member],
             member_oofs: list[pd.DataFrame]) -> dict[str, Any]:
    from sklearn.metrics import balanced_accuracy_score

    lab = labels.reindex(oof["image_id"]).to_numpy() if len(labels) else np.array([None] * len(oof))
    keep = pd.Series(lab).isin(classes).to_numpy()
    out: dict[str, Any] = {"n_slides": int(keep.sum()), "n_folds": None, "member_oof_balanced_accuracy": {}}
    if keep.sum() == 0:
        return out
    y = lab[keep]
    out["oof_balanced_accuracy"] = float(balanced_accuracy_score(y, oof["pred"].to_numpy()[keep]))
    out["oof_accuracy"] = float(np.mean(oof["pred"].to_numpy()[keep] == y))
    out["class_counts"] = {c: int((y == c).sum()) for c in classes}
    for m, o in zip(members, member_oofs, strict=True):
        mp = o.loc[oof["image_id"], "pred"].to_numpy()[keep]
        out["member_oof_balanced_accuracy"][m.name] = float(balanced_accuracy_score(y, mp))
    return out


def _combine_oof_attention(dirs: list[Path], ids: list[str], n_classes: int, out: Path) -> None:
    files = [d / "oof_attention.h5" for d in dirs]
    if not all(f.is_file() for f in files):
        return
    handles = [h5py.File(f, "r") for f in files]
    try:
        with h5py.File(out, "w") as dst:
            for image_id in ids:
                if not all(image_id in h for h in handles):
                    continue
                atts = [h[image_id]["attention"][()] for h in handles]
                if len({a.shape[0] for a in atts}) != 1:
                    continue
                g = dst.create_group(image_id)
                g.create_dataset("coords", data=handles[0][image_id]["coords"][()])
                g.create_dataset("attention", data=combine_attention(atts, n_classes))
    finally:
        for h in handles:
            h.close()


# --- prediction ----------------------------------------------------------------------------------------------------
def load_ensemble(model_dir: Path, meta: dict[str, Any], device: str = "cpu", mc_samples: int = 0) -> LoadedModel:
    """An ensemble version ready for :func:`core.model.infer.infer_slide` (its members loaded)."""
    from core.model.infer import LoadedModel, load_model

    spec = meta[mfolders.ENSEMBLE]
    members = [Member(str(m["version"]), m.get("fold")) for m in spec.get("members", [])]
    fallback = Path(spec["members_dir"]) if spec.get("members_dir") else None
    if len(members) < 2:
        raise InputError(f"{model_dir / mfolders.MODEL_JSON}: an ensemble needs at least 2 members")
    loaded = [load_model(member_dir(model_dir.parent, m, fallback), device, fold=m.fold, mc_samples=mc_samples)
              for m in members]
    for m, lm in zip(members, loaded, strict=True):
        if lm.classes != list(meta["classes"]) or lm.backbone != meta.get("backbone"):
            raise InputError(f"{model_dir}: member {m.name} no longer matches the ensemble's classes or backbone")
    return LoadedModel(None, list(meta["classes"]), int(meta["feature_dim"]), meta.get("backbone"),  # type: ignore[arg-type]
                       str(meta.get("version") or model_dir.name), meta, model_dir, device, None, members=loaded,
                       mc_samples=mc_samples)


def infer_ensemble_slide(loaded: LoadedModel, bag: FeatureBag) -> SlideResult:
    """Every member on the bag, combined: probabilities by the ensemble's method, rank-normalised mean attention,
    mean threshold-scaled outlier score; ``samples`` holds every member's (and MC draw's) probabilities."""
    from core.model.infer import SlideResult, infer_slide

    assert loaded.members
    results = [infer_slide(m, bag) for m in loaded.members]
    method = loaded.meta[mfolders.ENSEMBLE].get("method", "soft")
    pred, mean = vote(np.stack([r.probs for r in results])[:, None, :], method)
    score = float(np.mean([r.ood_score / _threshold(m.meta) for r, m in zip(results, loaded.members, strict=True)]))
    samples = np.concatenate([r.samples if r.samples is not None else r.probs[None] for r in results])
    return SlideResult(probs=mean[0].astype(np.float32), pred=loaded.classes[int(pred[0])],
                       attention=combine_attention([r.attention for r in results], len(loaded.classes)),
                       ood_score=score, embedding=np.concatenate([r.embedding for r in results]),
                       logits=np.log(np.clip(mean[0], 1e-12, 1)), is_outlier=outliers.is_outlier(score, loaded.meta),
                       samples=samples)
