"""Inference with a saved model: per-slide probabilities, per-patch attention and the OOD score.

Results are cached per (model version, slide) under ``<results>/<version>/``: ``predictions.csv`` and
``attention/<image_id>.h5``; ``ensure_results`` computes only the slides that are missing (or whose features
changed since), and every file is written atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from core.atomic import atomic_path
from core.errors import InputError
from core.model import outliers, tissue_ood
from core.model import versions as mfolders
from core.model.feature_files import FeatureBag, read_features
from core.model.mil import MILModel, create_model
from core.model.train import predictions_frame

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
    ood_ref: outliers.OODReference | tissue_ood.TissueReference | None
    members: list[LoadedModel] | None = None  # an ensemble's loaded members (``model`` is None then)
    mc_samples: int = 0  # > 1: Monte-Carlo dropout draws per slide (mean and spread)


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
    samples: np.ndarray | None = None  # [S, C] probability draws (MC dropout, ensemble members) or None

    @property
    def uncertainty(self) -> float | None:
        """Spread (standard deviation) of the predicted class's probability over the draws; None without draws."""
        if self.samples is None or len(self.samples) < 2:
            return None
        return float(np.std(self.samples[:, int(np.argmax(self.probs))]))


def load_model(model_dir: str | Path, device: str = "cpu", fold: int | None = None,
               mc_samples: int = 0) -> LoadedModel:
    """Load a model folder (an ensemble loads its members; ``fold`` loads one of the run's fold models);
    ``InputError`` if it is incomplete or its weights do not fit its model.json. ``mc_samples > 1``: predictions
    average that many Monte-Carlo dropout draws."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    meta = mfolders.read_model_meta(model_dir)
    if mfolders.is_ensemble(meta):
        from core.model.ensemble import load_ensemble

        return load_ensemble(model_dir, meta, device, mc_samples)
    kwargs = dict(meta.get("settings", {}).get("model_kwargs", {}))
    weights = model_dir / (mfolders.WEIGHTS if fold is None else mfolders.fold_weights(fold))
    try:
        model = create_model(meta["model"], int(meta["feature_dim"]), len(meta["classes"]), **kwargs)
        state = load_file(str(weights))
        model.load_state_dict(state)
    except (ValueError, RuntimeError, OSError, TypeError) as exc:
        raise InputError(f"{model_dir}: weights do not load into {meta['model']} ({str(exc).splitlines()[0]})") from exc
    ref: outliers.OODReference | tissue_ood.TissueReference | None = None
    method = (meta.get("ood") or {}).get("method", "mahalanobis")
    if method in ("mahalanobis", tissue_ood.METHOD):
        ood_name = (mfolders.TISSUE_OOD_FILE if method == tissue_ood.METHOD
                    else mfolders.OOD_FILE if fold is None else mfolders.fold_ood(fold))
        ood_path = model_dir / ood_name
        if not ood_path.is_file():
            raise InputError(f"{model_dir}: incomplete model folder (missing {ood_name})")
        ref = (tissue_ood.load_reference(ood_path) if method == tissue_ood.METHOD
               else outliers.load_reference(ood_path))
    model.to(device).eval()
    version = str(meta.get("version") or model_dir.name) + ("" if fold is None else f"/fold{fold}")
    return LoadedModel(model, list(meta["classes"]), int(meta["feature_dim"]), meta.get("backbone"),
                       version, meta, model_dir, device, ref, mc_samples=mc_samples)


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
    """Run the model once on a bag: probabilities, attention (coords order) and OOD score (an ensemble runs each
    member, see core/model/ensemble.py; with ``mc_samples > 1`` the probabilities are the mean of MC dropout draws)."""
    check_bag(loaded, bag)
    if loaded.members is not None:
        from core.model.ensemble import infer_ensemble_slide

        return infer_ensemble_slide(loaded, bag)
    x = torch.from_numpy(np.ascontiguousarray(bag.features, dtype=np.float32)).to(loaded.device)
    out = loaded.model(x)
    logits = out.logits.float().cpu().numpy()
    emb = out.embedding.float().cpu().numpy()
    method = (loaded.meta.get("ood") or {}).get("method", "mahalanobis")
    if isinstance(loaded.ood_ref, tissue_ood.TissueReference):
        score = tissue_ood.slide_score(bag.features, loaded.ood_ref)
    else:
        score = float(outliers.ood_scores(emb[None], logits[None], ref=loaded.ood_ref, method=method)[0])
    probs = out.probs.float().cpu().numpy()
    samples = mc_dropout_probs(loaded.model, x, loaded.mc_samples) if loaded.mc_samples > 1 else None
    if samples is not None:
        probs = samples.mean(axis=0).astype(np.float32)
    return SlideResult(probs=probs, pred=loaded.classes[int(probs.argmax())],
                       attention=out.attention.float().cpu().numpy(), ood_score=score, embedding=emb, logits=logits,
                       is_outlier=outliers.is_outlier(score, loaded.meta), samples=samples)


def mc_dropout_probs(model: MILModel, x: torch.Tensor, samples: int, seed: int = 0) -> np.ndarray:
    """``[samples, C]`` probabilities with only the dropout layers active (seeded: the same draws every run)."""
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if x.is_cuda else None
    torch.manual_seed(seed)
    try:
        for m in drops:
            m.train()
        out = np.stack([model(x).probs.float().cpu().numpy() for _ in range(samples)])
    finally:
        for m in drops:
            m.eval()
        torch.random.set_rng_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    return out


def write_attention(path: Path, coords: np.ndarray, result: SlideResult, loaded: LoadedModel,
                    patch_size_level0: int | None) -> None:
    """Write ``attention/<image_id>.h5`` (coords, attention; attrs model_version, patch_size_level0, classes)."""
    with atomic_path(path, suffix=".h5.tmp", prefix=f".{path.stem}.") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
        f.create_dataset("attention", data=result.attention.astype(np.float32))
        f.attrs["model_version"] = loaded.version
        f.attrs["patch_size_level0"] = int(patch_size_level0 or 0)
        f.attrs["classes"] = json.dumps(loaded.classes)
        f.attrs["pred"] = result.pred
        f.attrs["ood_score"] = result.ood_score


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
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


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
    plan = pending_slides(loaded, features_dir, out_dir, image_ids, force)
    existing, todo, out_dir = plan.existing, plan.todo, Path(out_dir)
    new_rows: list[pd.DataFrame] = []
    last_flush = time.monotonic()
    for n, image_id in enumerate(todo):
        if progress is not None:
            progress(n / len(todo), f"{image_id} ({n + 1}/{len(todo)})")
        new_rows.append(infer_one(loaded, image_id, plan.available[image_id], out_dir))
        if time.monotonic() - last_flush > 20 or n == len(todo) - 1:  # flush now and then: a crash loses little
            existing = flush_predictions(existing, new_rows, out_dir)
            new_rows, last_flush = [], time.monotonic()
    if progress is not None:
        progress(1.0, f"{len(todo)} slide(s) computed, {len(plan.wanted) - len(todo)} cached")
    return existing[existing["image_id"].astype(str).isin(plan.wanted)].reset_index(drop=True)


@dataclass
class PendingSlides:
    """What ``infer_features`` has to do: features files found, slides asked for, slides to compute, rows so far."""

    available: dict[str, Path]
    wanted: list[str]
    todo: list[str]
    existing: pd.DataFrame


def pending_slides(loaded: LoadedModel, features_dir: str | Path, out_dir: str | Path,
                   image_ids: Iterable[str] | None = None, force: bool = False) -> PendingSlides:
    """The requested slides with features, and those not done yet (a prediction row and an attention file newer
    than the features; with MC dropout, a row with draws) unless ``force``."""
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    available = {p.stem: p for p in sorted(features_dir.glob("*.h5"))} if features_dir.is_dir() else {}
    wanted = list(available) if image_ids is None else [i for i in image_ids if i in available]
    existing = read_predictions(out_dir / PREDICTIONS_CSV)
    done = set(existing["image_id"].astype(str))

    if loaded.mc_samples > 1:  # a slide predicted without MC draws is redone
        with_draws = existing["uncertainty"].notna() if "uncertainty" in existing else pd.Series(False, existing.index)
        done = set(existing.loc[with_draws, "image_id"].astype(str))

    def fresh(image_id: str) -> bool:
        att = out_dir / ATTENTION_DIR / f"{image_id}.h5"
        return (image_id in done and att.is_file()
                and att.stat().st_mtime >= available[image_id].stat().st_mtime)

    return PendingSlides(available, wanted, [i for i in wanted if force or not fresh(i)], existing)


def infer_one(loaded: LoadedModel, image_id: str, features_path: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """Predict one slide: write its attention file (atomically) and return its predictions row."""
    bag = read_features(features_path)
    res = infer_slide(loaded, bag)
    write_attention(Path(out_dir) / ATTENTION_DIR / f"{image_id}.h5", bag.coords, res, loaded, bag.patch_size_level0)
    row = predictions_frame([image_id], res.probs[None], loaded.classes, np.array([res.ood_score]))
    row["pred"] = res.pred  # an ensemble's hard vote may differ from the argmax of the mean probabilities
    if res.uncertainty is not None:
        row["uncertainty"] = round(res.uncertainty, 6)
        row["draws"] = len(res.samples)  # type: ignore[arg-type]
    return row


def flush_predictions(existing: pd.DataFrame, new_rows: list[pd.DataFrame], out_dir: str | Path) -> pd.DataFrame:
    """``existing`` with ``new_rows`` merged in (by image id), written atomically to ``out_dir/predictions.csv``."""
    merged = _merge(existing, new_rows) if new_rows else existing
    _write_csv_atomic(merged, Path(out_dir) / PREDICTIONS_CSV)
    return merged


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
    if getattr(cohort, "ray", None) and image_ids is None:  # a bulk job, and the cohort sets [compute] ray
        from core.model.ray_jobs import infer_on_ray

        report = infer_on_ray(loaded, cohort.features, Path(cohort.results) / loaded.version, address=cohort.ray,
                              progress=progress)
        if report.failed:  # the others are saved; say which failed, as the local path does
            first = next(iter(report.failed.items()))
            raise InputError(f"predictions failed for {len(report.failed)} slide(s), e.g. {first[0]}: {first[1]}")
        return report.predictions
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
