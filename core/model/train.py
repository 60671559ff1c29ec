"""Training MIL heads on slide labels: class-balanced sampling, stratified k-fold out-of-fold predictions,
then a final model on all labelled slides, saved as a new model version (see core/model/versions.py).

Out-of-fold (OOF) predictions come from models that never saw the slide; the error analysis, the label-issue
ranking and the OOD threshold are computed from them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.cohort.labels import read_labels
from core.cohort.settings import resolve_device
from core.errors import InputError
from core.model import health, history, outliers, tissue_ood
from core.model import versions as mfolders
from core.model.mil import MILModel, create_model, list_models
from core.model.train_data import Bag, input_stats, load_bags, predict_bags, write_oof_attention

Progress = Callable[[float, str], None]
EpochHook = Callable[[int, MILModel, float, "float | None"], None]

DEFAULTS: dict[str, dict[str, Any]] = {  # per-model training defaults (small bags, CPU-cheap)
    "abmil": {"lr": 1e-3, "epochs": 40, "model_kwargs": {"hidden": 256, "dropout": 0.25}},
    # TransMIL: no early stopping (on the demo's ~7 inner-validation slides it stopped folds after 1-3 epochs,
    # leaving attention near chance). Small tumour foci: trained on whole bags it leaned on the background and fell to
    # balanced accuracy 0.73-0.79 on held-out cohorts; dropping up to 15% of each bag's patches per step brought it to
    # 0.95-1.00. With large tumour regions the CLS token's attention covered only part of the tumour (AUROC 0.75-0.90
    # on held-out seeds, rollout of both layers); gated attention pooling over the patch tokens instead of the CLS
    # token reads the whole region (0.89 against 0.87 on the tuning seeds, and better balanced accuracy and outlier
    # embedding). Chosen on demo seeds 10/11 (and a 3-class pair 30/31), README.
    "transmil": {"lr": 5e-4, "epochs": 15, "val_fraction": 0.0, "patch_dropout": 0.15,
                 "model_kwargs": {"hidden": 128, "dropout": 0.1, "pooling": "gated"}},
    "dsmil": {"lr": 1e-3, "epochs": 40, "model_kwargs": {"hidden": 256, "dropout": 0.25}},
}


@dataclass
class TrainSettings:
    """Everything that shaped a model; saved in model.json["settings"]."""

    model: str = "abmil"
    epochs: int = 40
    lr: float = 5e-4
    weight_decay: float = 1e-4
    max_patches: int = 2048  # random subset of patches per training step (bounds time and acts as augmentation)
    patch_dropout: float = 0.0  # each training step keeps a random (1 - U(0, this)) share of the bag's patches
    patience: int = 8  # epochs without inner-validation improvement before stopping
    # early stopping never keeps an epoch before this one: on a handful of inner-validation slides the loss is often
    # lowest at the start (uniform guesses), which left fold and final models barely trained (nearly uniform
    # probabilities, the failure core/model/health.py reports)
    min_epochs: int = 10
    val_fraction: float = 0.15  # inner validation split for early stopping (used when each class has >= 4 slides)
    folds: int = 5
    seed: int = 0
    cpu_threads: int | None = None  # None: 1 thread for small bags (tiny ops lose to threading overhead), else torch's
    ood_method: str = "patches"  # core/model/tissue_ood.py (the same for every head); or mahalanobis | energy | msp
    target_fpr: float = outliers.DEFAULT_FPR
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def _report(progress: Progress | None, frac: float, msg: str) -> None:
    if progress is not None:
        progress(min(max(frac, 0.0), 1.0), msg)


def _balanced_order(y: np.ndarray, gen: torch.Generator) -> list[int]:
    """One epoch of indices drawn with replacement, each class equally likely (class-balanced sampling)."""
    counts = np.bincount(y)
    w = torch.tensor(1.0 / counts[y], dtype=torch.float64)
    return torch.multinomial(w, num_samples=len(y), replacement=True, generator=gen).tolist()


def fit(bags: list[Bag], y: np.ndarray, n_classes: int, s: TrainSettings, device: str, seed: int,
        val: tuple[list[Bag], np.ndarray] | None = None, epochs: int | None = None,
        progress: Callable[[float], None] | None = None, on_epoch: EpochHook | None = None) -> tuple[MILModel, int]:
    """Train one model; with ``val``, keep the weights of the epoch with the lowest validation loss.

    ``on_epoch(epoch, model, mean training loss, validation loss or None)`` is called after every epoch (it must not
    draw random numbers). Returns the model (eval mode) and the number of epochs that produced it.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = create_model(s.model, bags[0].dim, n_classes, **s.model_kwargs).to(device)
    if model.uses_input_norm:  # streamed over the bags: never all training patches in memory at once
        model.set_input_norm(*(t.to(device) for t in input_stats(bags)))
    epochs = epochs or s.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(bags), eta_min=s.lr * 0.05)
    best = (float("inf"), epochs, None)
    stale = 0
    for epoch in range(epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        for i in _balanced_order(y, gen):
            n = bags[i].n
            keep = min(n, s.max_patches)
            if s.patch_dropout > 0:
                keep = max(1, int(round(keep * (1.0 - s.patch_dropout * float(torch.rand((), generator=gen))))))
            x = bags[i].rows(torch.randperm(n, generator=gen)[:keep] if keep < n else None)
            loss = model.loss(model(x.to(device)), torch.tensor(int(y[i]), device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
        if progress is not None:
            progress((epoch + 1) / epochs)
        vloss = _mean_loss(model, val[0], val[1], device) if val is not None else None
        if on_epoch is not None:
            on_epoch(epoch + 1, model, float(loss_sum) / max(len(y), 1), vloss)
        if vloss is not None and epoch + 1 >= min(s.min_epochs, epochs):
            if vloss < best[0] - 1e-4:
                best, stale = (vloss, epoch + 1, {k: v.detach().clone() for k, v in model.state_dict().items()}), 0
            else:
                stale += 1
                if stale >= s.patience:
                    break
    if val is not None and best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()
    return model, int(best[1])


@torch.inference_mode()
def _mean_loss(model: MILModel, bags: list[Bag], y: np.ndarray, device: str) -> float:
    model.eval()
    losses = [model.loss(model(b.features.to(device)), torch.tensor(int(t), device=device)).item()
              for b, t in zip(bags, y, strict=True)]
    return float(np.mean(losses))


def _inner_split(y: np.ndarray, s: TrainSettings, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified train/validation indices for early stopping, or None when classes are too small for it."""
    from sklearn.model_selection import train_test_split

    if np.bincount(y)[np.unique(y)].min() < 4 or s.val_fraction <= 0:
        return None
    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=max(s.val_fraction, len(np.unique(y)) / len(y)), stratify=y,
                              random_state=seed)
    return np.sort(tr), np.sort(va)


def _fit_with_stopping(bags: list[Bag], y: np.ndarray, n_classes: int, s: TrainSettings, device: str, seed: int,
                       progress: Callable[[float], None] | None,
                       on_epoch: EpochHook | None = None) -> tuple[MILModel, int]:
    split = _inner_split(y, s, seed)
    if split is None:
        return fit(bags, y, n_classes, s, device, seed, progress=progress, on_epoch=on_epoch)
    tr, va = split
    return fit([bags[i] for i in tr], y[tr], n_classes, s, device, seed, val=([bags[i] for i in va], y[va]),
               progress=progress, on_epoch=on_epoch)


def make_folds(y: np.ndarray, folds: int, seed: int, path: Path) -> np.ndarray:
    """Fold index per slide from a stratified k-fold (classes smaller than k are spread as far as they go)."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = max(2, min(folds, len(y) // 2, int(counts.max())))
    if len(y) < 4:
        raise InputError(f"{path}: need at least 4 labelled slides with features for out-of-fold predictions, "
                         f"found {len(y)}")
    fold = np.full(len(y), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only n members"
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
        for f, (_, test) in enumerate(splits):
            fold[test] = f
    return fold


def predictions_frame(ids: list[str], probs: np.ndarray, classes: list[str], ood: np.ndarray) -> pd.DataFrame:
    """The predictions.csv table: image_id, pred, prob_<class>..., ood_score."""
    df = pd.DataFrame({"image_id": ids, "pred": [classes[i] for i in probs.argmax(axis=1)]})
    for c, name in enumerate(classes):
        df[f"prob_{name}"] = probs[:, c].astype(np.float64).round(6)
    df["ood_score"] = np.asarray(ood, dtype=np.float64).round(6)
    return df


def _ood_fit_score(s: TrainSettings, ref_emb: np.ndarray, ref_y: np.ndarray, emb: np.ndarray,
                   logits: np.ndarray) -> tuple[outliers.OODReference | None, np.ndarray]:
    if s.ood_method == tissue_ood.METHOD:  # scored on the patch features apart from the head: see _tissue_ood
        return None, np.full(len(emb), np.nan)
    if s.ood_method == "mahalanobis":
        ref = outliers.fit_ood(ref_emb, ref_y)
        return ref, outliers.ood_scores(emb, ref=ref)
    return None, outliers.ood_scores(emb, logits, method=s.ood_method)  # type: ignore[arg-type]


def _tissue_ood(bags: list[Bag], seed: int) -> tuple[tissue_ood.TissueReference, np.ndarray]:
    """The patch-feature outlier reference of the training slides and each one's leave-one-slide-out score (their
    out-of-fold outlier scores: a slide is never compared with its own patches). Bags are read one at a time."""
    gen = torch.Generator().manual_seed(seed)
    sampled = [b.rows(torch.randperm(b.n, generator=gen)[: tissue_ood.PER_SLIDE]).float().numpy() for b in bags]
    ref = tissue_ood.fit_reference(sampled, seed=seed)
    return ref, np.array([tissue_ood.slide_score(b.features.float().numpy(), ref, leave_out=i)
                          for i, b in enumerate(bags)])


def train_model(features_dir: str | Path, labels_csv: str | Path, model: str = "abmil",
                out_dir: str | Path | None = None, folds: int = 5, epochs: int | None = None, seed: int = 0,
                progress: Progress | None = None, device: str = "auto",
                on_epoch: Callable[[dict[str, Any]], None] | None = None, **overrides: Any) -> Path:
    """Train ``model`` on the labelled slides that have features; return the new model folder.

    Writes ``<out_dir>/<vNNN-model>/`` (default ``out_dir``: ``<features_dir>/../models``) with model.json,
    weights.safetensors, ood.safetensors, oof_predictions.csv, folds.csv, oof_attention.h5, history.csv (see
    core/model/history.py; ``on_epoch`` receives each row as it is recorded) and folds/fold<k>.safetensors (+ its OOD
    reference), the fold models a fold ensemble is made of. model.json's "health" says whether the model learned
    anything (core/model/health.py); an unhealthy version is registered but never the default over a healthy one.
    """

    t0 = time.time()
    threads = torch.get_num_threads()
    try:
        return _train(features_dir, labels_csv, model, out_dir, folds, epochs, seed, progress, device, t0, overrides,
                      on_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(features_dir: str | Path, labels_csv: str | Path, model: str, out_dir: str | Path | None, folds: int,
           epochs: int | None, seed: int, progress: Progress | None, device: str, t0: float,
           overrides: dict[str, Any], on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    from safetensors.torch import save_file

    if model not in list_models():
        raise InputError(f"unknown model {model!r} (choose from {', '.join(list_models())})")
    features_dir, labels_csv = Path(features_dir), Path(labels_csv)
    out_dir = Path(out_dir) if out_dir is not None else features_dir.parent / "models"
    table = read_labels(labels_csv)
    classes = list(table.classes)
    rows = table.training_rows()
    base = DEFAULTS[model]
    kw = {**base["model_kwargs"], **overrides.pop("model_kwargs", {})}
    fields = {**{k: v for k, v in base.items() if k != "model_kwargs"}, **overrides}  # per-model defaults < caller
    fields["epochs"] = epochs or fields["epochs"]
    try:
        s = TrainSettings(model=model, folds=folds, seed=seed, model_kwargs=kw, **fields)
    except TypeError as exc:
        raise InputError(f"train {model}: unknown training setting ({exc})") from None
    device = resolve_device(device)
    _report(progress, 0.0, "reading features")
    bags, missing = load_bags(features_dir, list(rows["image_id"]))
    if not bags:
        raise InputError(f"{features_dir}: none of the {len(rows)} labelled slides in {labels_csv} has a features file")
    ids = [b.image_id for b in bags]
    if device == "cpu":
        median_size = float(np.median([min(b.n, s.max_patches) for b in bags])) * bags[0].dim
        torch.set_num_threads(s.cpu_threads or (1 if median_size < 2_000_000 else torch.get_num_threads()))
    label_of = dict(zip(rows["image_id"], rows["label"], strict=True))
    y = np.array([classes.index(label_of[i]) for i in ids])
    present = sorted({classes[i] for i in y})
    if len(present) < 2:
        raise InputError(f"{labels_csv}: need slides of at least 2 classes with features, found {present}")
    fold = make_folds(y, folds, seed, labels_csv)
    k = int(fold.max()) + 1
    n_fits = k + 1
    oof_probs = np.zeros((len(ids), len(classes)))
    oof_ood = np.zeros(len(ids))
    oof_attention: dict[str, np.ndarray] = {}
    best_epochs = []
    hist_rows: list[dict[str, Any]] = []
    fold_states: list[tuple[dict[str, torch.Tensor], outliers.OODReference | None]] = []
    for f in range(k):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)

        def fold_progress(frac: float, f: int = f) -> None:
            _report(progress, (f + frac) / n_fits, f"fold {f + 1}/{k}")

        m, best_epoch = _fit_with_stopping([bags[i] for i in tr], y[tr], len(classes), s, device, seed + f,
                                           fold_progress, _history_hook(hist_rows, f, [bags[i] for i in te], y[te],
                                                                        classes, device, on_epoch))
        for row in hist_rows:
            row["chosen"] = row["chosen"] or (row["fold"] == f and row["epoch"] == best_epoch)
        best_epochs.append(best_epoch)
        out_tr = predict_bags(m, [bags[i] for i in tr], device)
        out_te = predict_bags(m, [bags[i] for i in te], device)
        fold_ref, scores = _ood_fit_score(s, out_tr.embeddings, y[tr], out_te.embeddings, out_te.logits)
        fold_states.append(({n: v.detach().cpu().contiguous() for n, v in m.state_dict().items()}, fold_ref))
        oof_probs[te], oof_ood[te] = out_te.probs, scores
        for j, i in enumerate(te):
            oof_attention[ids[i]] = out_te.attention[j]
    final_epochs = int(np.ceil(np.median(best_epochs))) if best_epochs else s.epochs
    _report(progress, k / n_fits, f"final model ({final_epochs} epochs, {len(ids)} slides)")
    final, _ = fit(bags, y, len(classes), s, device, seed + 1000, epochs=max(final_epochs, 3),
                   progress=lambda frac: _report(progress, (k + frac) / n_fits, "final model"),
                   on_epoch=_history_hook(hist_rows, history.FINAL_FOLD, [], y[:0], classes, device, on_epoch))
    out_all = predict_bags(final, bags, device)
    ref, _ = _ood_fit_score(s, out_all.embeddings, y, out_all.embeddings, out_all.logits)
    tissue_ref = None
    if s.ood_method == tissue_ood.METHOD:
        tissue_ref, oof_ood = _tissue_ood(bags, seed)
    oof = predictions_frame(ids, oof_probs, classes, oof_ood)
    from sklearn.metrics import balanced_accuracy_score

    oof_pred = oof_probs.argmax(axis=1)
    meta = {
        "version": None, "model": model, "classes": classes, "feature_dim": int(bags[0].dim),
        "backbone": bags[0].backbone, "patch_size_level0": bags[0].patch_size_level0, "mpp": bags[0].mpp,
        "settings": {**asdict(s), "device": device, "final_epochs": final_epochs, "fold_best_epochs": best_epochs},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "labels_file": str(labels_csv.resolve()),
        "labels_sha256": hashlib.sha256(labels_csv.read_bytes()).hexdigest(),
        "features_dir": str(features_dir.resolve()),
        "metrics": {"oof_balanced_accuracy": float(balanced_accuracy_score(y, oof_pred)),
                    "oof_accuracy": float(np.mean(oof_pred == y)), "n_slides": len(ids), "n_folds": k,
                    "class_counts": {c: int((y == i).sum()) for i, c in enumerate(classes)},
                    "train_seconds": round(time.time() - t0, 1)},
        "ood": outliers.ood_meta(oof_ood, s.ood_method, s.target_fpr,
                                 threshold_method="ratio" if s.ood_method == tissue_ood.METHOD else "robust"),
        # did it learn anything? (near-chance, nearly uniform or one-class predictions: core/model/health.py)
        "health": health.assess(y, oof_probs, out_all.probs, classes),
        "skipped_no_features": missing,
    }
    staging = mfolders.new_staging_dir(out_dir)
    save_file({k: v.detach().cpu().contiguous() for k, v in final.state_dict().items()},
              str(staging / mfolders.WEIGHTS))
    if ref is not None:
        outliers.save_reference(ref, staging / mfolders.OOD_FILE)
    if tissue_ref is not None:  # one reference for the final model and its fold models alike
        tissue_ood.save_reference(tissue_ref, staging / mfolders.TISSUE_OOD_FILE)
    oof.to_csv(staging / mfolders.OOF_CSV, index=False)
    pd.DataFrame({"image_id": ids, "label": [classes[i] for i in y], "fold": fold}).to_csv(
        staging / "folds.csv", index=False)
    write_oof_attention(staging / "oof_attention.h5", bags, oof_attention)
    history.history_frame(hist_rows, classes).to_csv(staging / history.HISTORY_CSV, index=False)
    (staging / mfolders.FOLDS_DIR).mkdir()
    for f, (state, fold_ref) in enumerate(fold_states):
        save_file(state, str(staging / mfolders.fold_weights(f)))
        if fold_ref is not None:
            outliers.save_reference(fold_ref, staging / mfolders.fold_ood(f))
    (staging / mfolders.MODEL_JSON).write_text(json.dumps(meta, indent=2, default=str))
    path = mfolders.publish(staging, out_dir, model)
    _report(progress, 1.0, f"saved {path.name}")
    return path


def _history_hook(rows: list[dict[str, Any]], fold: int, held_out: list[Bag], y_held: np.ndarray,
                  classes: list[str], device: str, report: Callable[[dict[str, Any]], None] | None) -> EpochHook:
    """An ``on_epoch`` hook appending one history row per epoch (scored on ``held_out``) to ``rows``."""

    def hook(epoch: int, model: MILModel, train_loss: float, stop_loss: float | None) -> None:
        row: dict[str, Any] = {"fold": fold, "epoch": epoch, "train_loss": train_loss,
                               "stop_loss": np.nan if stop_loss is None else stop_loss, "chosen": False}
        if held_out:
            row.update(history.class_metrics(y_held, predict_bags(model, held_out, device).probs, classes))
        rows.append(row)
        if report is not None:
            report(row)

    return hook
