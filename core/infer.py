"""Inference with a saved model: per-slide probabilities, per-patch attention and the OOD score.

Results are cached per (model version, slide) under ``<results>/<version>/``: ``predictions.csv`` and
``attention/<image_id>.h5``; ``ensure_results`` computes only the slides that are missing (or whose features
changed since), and every file is written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from core import models as mfolders
from core import outliers
from core.errors import InputError
from core.features import FeatureBag, read_features
from core.mil import MILModel, create_model
from core.train import predictions_frame

Progress = Callable[[float, str], None]
PREDICTIONS_CSV = "predictions.csv"
ATTENTION_DIR = "attention"


@dataclass
class LoadedModel:
    """A model ready for inference, with what it was trained on."""

    model: MILModel
    classes: list[str]
    feature_dim: int
    backbone: str | None
    version: str
    meta: dict[str, Any]
    path: Path
    device: str
    ood_ref: outliers.OODReference | None


@dataclass
class SlideResult:
    """One slide's result: ``probs [C]``, ``pred`` (class name), ``attention [N]`` or ``[N, C]``, ``ood_score``."""

    probs: np.ndarray
    pred: str
    attention: np.ndarray
    ood_score: float
    embedding: np.ndarray
    logits: np.ndarray
    is_outlier: bool = False


def load_model(model_dir: str | Path, device: str = "cpu") -> LoadedModel:
    """Load a model folder; ``InputError`` if it is incomplete or its weights do not fit its model.json."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    meta = mfolders.read_model_meta(model_dir)
    kwargs = dict(meta.get("settings", {}).get("model_kwargs", {}))
    try:
        model = create_model(meta["model"], int(meta["feature_dim"]), len(meta["classes"]), **kwargs)
        state = load_file(str(model_dir / mfolders.WEIGHTS))
        model.load_state_dict(state)
    except (ValueError, RuntimeError, OSError, TypeError) as exc:
        raise InputError(f"{model_dir}: weights do not load into {meta['model']} ({str(exc).splitlines()[0]})") from exc
    ref = None
    if (meta.get("ood") or {}).get("method", "mahalanobis") == "mahalanobis":
        ood_path = model_dir / mfolders.OOD_FILE
        if not ood_path.is_file():
            raise InputError(f"{model_dir}: incomplete model folder (missing {mfolders.OOD_FILE})")
        ref = outliers.load_reference(ood_path)
    model.to(device).eval()
    return LoadedModel(model, list(meta["classes"]), int(meta["feature_dim"]), meta.get("backbone"),
                       str(meta.get("version") or model_dir.name), meta, model_dir, device, ref)


def check_bag(loaded: LoadedModel, bag: FeatureBag) -> None:
    """``InputError`` naming the file, the model and both values when the features do not fit the model."""
    src = bag.path or "features"
    if bag.features.ndim != 2 or bag.dim != loaded.feature_dim:
        raise InputError(f"{src}: features have dimension {bag.features.shape[-1]} but model {loaded.version} "
                         f"was trained on dimension {loaded.feature_dim}")
    if bag.backbone and loaded.backbone and bag.backbone != loaded.backbone:
        raise InputError(f"{src}: features come from backbone {bag.backbone!r} but model {loaded.version} "
                         f"was trained on {loaded.backbone!r}")
    if len(bag) == 0:
        raise InputError(f"{src}: no patches (no tissue found), nothing to predict")


@torch.inference_mode()
def infer_slide(loaded: LoadedModel, bag: FeatureBag) -> SlideResult:
    """Run the model once on a bag: probabilities, attention (coords order) and OOD score."""
    check_bag(loaded, bag)
    x = torch.from_numpy(np.ascontiguousarray(bag.features, dtype=np.float32)).to(loaded.device)
    out = loaded.model(x)
    logits = out.logits.float().cpu().numpy()
    emb = out.embedding.float().cpu().numpy()
    method = (loaded.meta.get("ood") or {}).get("method", "mahalanobis")
    score = float(outliers.ood_scores(emb[None], logits[None], ref=loaded.ood_ref, method=method)[0])
    probs = out.probs.float().cpu().numpy()
    return SlideResult(probs=probs, pred=loaded.classes[int(probs.argmax())],
                       attention=out.attention.float().cpu().numpy(), ood_score=score, embedding=emb, logits=logits,
                       is_outlier=outliers.is_outlier(score, loaded.meta))


def write_attention(path: Path, coords: np.ndarray, result: SlideResult, loaded: LoadedModel,
                    patch_size_level0: int | None) -> None:
    """Write ``attention/<image_id>.h5`` (coords, attention; attrs model_version, patch_size_level0, classes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".h5.tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
            f.create_dataset("attention", data=result.attention.astype(np.float32))
            f.attrs["model_version"] = loaded.version
            f.attrs["patch_size_level0"] = int(patch_size_level0 or 0)
            f.attrs["classes"] = json.dumps(loaded.classes)
            f.attrs["pred"] = result.pred
            f.attrs["ood_score"] = result.ood_score
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_attention(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read an attention file: ``(coords [N, 2], attention [N] or [N, C], attrs)``."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            return f["coords"][()], f["attention"][()], attrs
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not a readable attention file ({exc})") from exc


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a predictions.csv (empty table if it does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=["image_id", "pred", "ood_score"])
    return pd.read_csv(path, dtype={"image_id": str, "pred": str})


def infer_features(loaded: LoadedModel, features_dir: str | Path, out_dir: str | Path,
                   image_ids: Iterable[str] | None = None, progress: Progress | None = None,
                   force: bool = False) -> pd.DataFrame:
    """Predict every requested slide of ``features_dir`` into ``out_dir`` (predictions.csv + attention/).

    Slides already done (a prediction row and an attention file newer than the features) are skipped unless
    ``force``. Returns the predictions of the requested slides that have features.
    """
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    available = {p.stem: p for p in sorted(features_dir.glob("*.h5"))} if features_dir.is_dir() else {}
    wanted = list(available) if image_ids is None else [i for i in image_ids if i in available]
    pred_path = out_dir / PREDICTIONS_CSV
    existing = read_predictions(pred_path)
    done = set(existing["image_id"].astype(str))

    def fresh(image_id: str) -> bool:
        att = out_dir / ATTENTION_DIR / f"{image_id}.h5"
        return (image_id in done and att.is_file()
                and att.stat().st_mtime >= available[image_id].stat().st_mtime)

    todo = [i for i in wanted if force or not fresh(i)]
    new_rows: list[pd.DataFrame] = []
    last_flush = time.monotonic()
    for n, image_id in enumerate(todo):
        if progress is not None:
            progress(n / len(todo), f"{image_id} ({n + 1}/{len(todo)})")
        bag = read_features(available[image_id])
        res = infer_slide(loaded, bag)
        write_attention(out_dir / ATTENTION_DIR / f"{image_id}.h5", bag.coords, res, loaded, bag.patch_size_level0)
        new_rows.append(predictions_frame([image_id], res.probs[None], loaded.classes, np.array([res.ood_score])))
        if time.monotonic() - last_flush > 20 or n == len(todo) - 1:  # flush now and then: a crash loses little
            existing = _merge(existing, new_rows)
            _write_csv_atomic(existing, pred_path)
            new_rows, last_flush = [], time.monotonic()
    if progress is not None:
        progress(1.0, f"{len(todo)} slide(s) computed, {len(wanted) - len(todo)} cached")
    return existing[existing["image_id"].astype(str).isin(wanted)].reset_index(drop=True)


def _merge(existing: pd.DataFrame, new_rows: list[pd.DataFrame]) -> pd.DataFrame:
    new = pd.concat(new_rows, ignore_index=True)
    keep = existing[~existing["image_id"].astype(str).isin(set(new["image_id"]))]
    parts = [p for p in (keep, new) if len(p)]
    return pd.concat(parts, ignore_index=True).sort_values("image_id", ignore_index=True)


def ensure_results(cohort: Any, version: str | None = None, image_ids: Iterable[str] | None = None,
                   progress: Progress | None = None, loaded: LoadedModel | None = None) -> pd.DataFrame:
    """Make sure ``<results>/<version>/`` holds predictions and attention for ``image_ids`` (default: all slides
    with features), computing only what is missing. ``version`` defaults to the latest model of the cohort.
    """
    model_dir = mfolders.resolve_model_dir(cohort.models, version)
    loaded = loaded if loaded is not None and loaded.path == model_dir else load_model(model_dir)
    return infer_features(loaded, cohort.features, Path(cohort.results) / loaded.version, image_ids, progress)


def slide_attention(cohort: Any, version: str | None, image_id: str,
                    loaded: LoadedModel | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Attention of one slide for the viewer, computed on demand if not cached: ``(coords, attention, attrs)``."""
    version = version or mfolders.latest_version(cohort.models)
    if version is None:
        raise InputError(f"{cohort.models}: no trained model yet")
    path = Path(cohort.results) / version / ATTENTION_DIR / f"{image_id}.h5"
    feats = Path(cohort.features) / f"{image_id}.h5"
    if not feats.is_file():
        raise InputError(f"{feats}: no features for slide {image_id!r} (run `python -m core extract`)")
    if not path.is_file() or path.stat().st_mtime < feats.stat().st_mtime:
        ensure_results(cohort, version, [image_id], loaded=loaded)
    return read_attention(path)
