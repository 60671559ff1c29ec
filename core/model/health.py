"""A trained model's health: did it learn anything? Judged on its out-of-fold predictions (and the final model's
predictions on its own training slides), stored in model.json as ``"health"``.

A model is unhealthy when its out-of-fold balanced accuracy is near chance, when its probabilities are nearly
uniform (it hedges on every slide), or when it predicts one class for almost every slide of a cohort with several
well-represented classes. An unhealthy version is registered like any other but never preferred as the default
over a healthy one (``core.model.versions.default_version``). model.json files without "health" count as healthy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# balanced accuracy below chance + this share of the way from chance to 1: the folds learned (almost) nothing
NEAR_CHANCE_SHARE = 0.25
# median top probability below 1/C + this share of the way to 1: no slide gets a confident call (the entropy is
# reported too, but not judged: with two classes any entropy cut flags sound models whose calls are merely modest)
UNIFORM_TOP_SHARE = 0.10
# out-of-fold predictions say nothing about a class with fewer training slides than this: the fold model that
# predicts its slide has seen no other slide of it (the first run's quick model, one slide per class)
MIN_SLIDES_PER_CLASS = 2
# one class taking this share of the out-of-fold predictions is a collapse onto one class ...
ONE_CLASS_SHARE = 0.90
# ... when at least two classes each hold this share of the labels (a majority-class cohort may fairly look like it)
WELL_REPRESENTED = 0.20


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (sklearn's definition, without its warnings)."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def _spread(probs: np.ndarray) -> tuple[float, float]:
    """(median top probability, median entropy / log C) of an ``N x C`` probability array."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(p.shape[1])
    return float(np.median(p.max(axis=1))), float(np.median(entropy))


def _uniform(probs: np.ndarray, what: str, n_cols: int) -> tuple[float, float, str | None]:
    """The spread of ``probs`` and a warning when it is nearly uniform."""
    top, ent = _spread(probs)
    floor = 1.0 / n_cols + UNIFORM_TOP_SHARE * (1.0 - 1.0 / n_cols)
    if top < floor:
        return top, ent, (f"{what} nearly uniform: median top probability {top:.2f} for {n_cols} classes "
                          f"(median normalised entropy {ent:.2f})")
    return top, ent, None


def assess(y: np.ndarray, oof_probs: np.ndarray, final_probs: np.ndarray | None, classes: Sequence[str],
           oof_pred: np.ndarray | None = None) -> dict[str, Any]:
    """The health block of a model: ``y`` class indices into ``classes``, ``oof_probs`` (N x C) out-of-fold
    probabilities of the same slides, ``final_probs`` the final model's on its training slides (or None),
    ``oof_pred`` the out-of-fold predicted indices when they are not the argmax (a hard-voting ensemble)."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(oof_probs, dtype=np.float64).reshape(len(y), -1)
    n_cols = max(int(probs.shape[1]), 1)
    pred = probs.argmax(axis=1) if oof_pred is None else np.asarray(oof_pred, dtype=np.int64)
    present = np.unique(y)
    chance = 1.0 / max(len(present), 1)
    out: dict[str, Any] = {"ok": True, "warnings": [], "n_slides": int(len(y)), "chance": chance,
                           "thresholds": {"near_chance_share": NEAR_CHANCE_SHARE, "uniform_top_share": UNIFORM_TOP_SHARE,
                                          "one_class_share": ONE_CLASS_SHARE, "well_represented": WELL_REPRESENTED,
                                          "min_slides_per_class": MIN_SLIDES_PER_CLASS}}
    if len(y) == 0 or n_cols < 2:
        return out
    fewest = int(np.bincount(y)[present].min()) if len(present) else 0
    if fewest < MIN_SLIDES_PER_CLASS:  # not judged: "near chance" would be a property of the split, not the model
        out["ok"] = None
        out["notes"] = [f"not judged: a class has {fewest} labelled slide(s), too few for out-of-fold predictions "
                        f"to test the model (at least {MIN_SLIDES_PER_CLASS} per class)"]
        return out
    warnings: list[str] = []
    ba = _balanced_accuracy(y, pred)
    out["oof_balanced_accuracy"] = ba
    if len(present) >= 2 and ba < chance + NEAR_CHANCE_SHARE * (1.0 - chance):
        warnings.append(f"out-of-fold balanced accuracy {ba:.2f} is near chance ({chance:.2f} for "
                        f"{len(present)} classes)")
    top, ent, warn = _uniform(probs, "out-of-fold probabilities are", n_cols)
    out["median_top_prob"], out["median_norm_entropy"] = top, ent
    warnings += [warn] if warn else []
    if final_probs is not None and len(final_probs):
        top, ent, warn = _uniform(np.asarray(final_probs).reshape(-1, n_cols),
                                  "the final model's probabilities on its training slides are", n_cols)
        out["final_median_top_prob"], out["final_median_norm_entropy"] = top, ent
        warnings += [warn] if warn else []
    pred_share = np.bincount(pred, minlength=n_cols) / len(pred)
    label_share = np.bincount(y, minlength=n_cols) / len(y)
    top_cls = int(pred_share.argmax())
    out["top_predicted_class"] = str(classes[top_cls]) if top_cls < len(classes) else str(top_cls)
    out["top_predicted_share"] = float(pred_share[top_cls])
    if pred_share[top_cls] >= ONE_CLASS_SHARE and int((label_share >= WELL_REPRESENTED).sum()) >= 2:
        shares = ", ".join(f"{classes[c]} {label_share[c]:.0%}" for c in present)
        warnings.append(f"predicts one class for almost all slides: {out['top_predicted_class']} for "
                        f"{pred_share[top_cls]:.0%} of the out-of-fold predictions (labels: {shares})")
    out["ok"], out["warnings"] = not warnings, warnings
    return out


def is_healthy(meta: Mapping[str, Any]) -> bool:
    """False only when model.json's health block says ``ok: false`` (no block: healthy, as before it existed)."""
    health = meta.get("health")
    return not (isinstance(health, Mapping) and health.get("ok") is False)


def health_warnings(meta: Mapping[str, Any]) -> list[str]:
    """The health warnings recorded in model.json (empty for a healthy or older model)."""
    health = meta.get("health")
    if not isinstance(health, Mapping) or health.get("ok") is not False:
        return []
    return [str(w) for w in health.get("warnings") or []] or ["marked unhealthy"]
