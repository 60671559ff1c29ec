"""Bags in memory for training and batch prediction (shared by core.train and core.infer)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from core.errors import InputError
from core.features import read_features
from core.mil import MILModel


@dataclass
class Bag:
    """One slide's features as a tensor, with what is needed to check and place its results."""

    image_id: str
    features: torch.Tensor  # [N, D] float32
    coords: np.ndarray  # [N, 2] int64, level 0
    backbone: str | None
    patch_size_level0: int | None
    mpp: float | None
    path: Path


@dataclass
class BagOutputs:
    """Stacked model outputs for a list of bags."""

    logits: np.ndarray  # [n, C]
    probs: np.ndarray  # [n, C]
    embeddings: np.ndarray  # [n, E]
    attention: list[np.ndarray]  # n arrays of [N_i] or [N_i, C]


def load_bags(features_dir: Path, image_ids: list[str]) -> tuple[list[Bag], list[str]]:
    """Read ``<id>.h5`` for each id; returns the bags and the ids that have no features file.

    All bags must share one feature dimension and backbone (``InputError`` naming the odd file otherwise).
    """
    bags: list[Bag] = []
    missing: list[str] = []
    for image_id in image_ids:
        path = features_dir / f"{image_id}.h5"
        if not path.is_file():
            missing.append(image_id)
            continue
        fb = read_features(path)
        if len(fb) == 0:
            missing.append(image_id)  # no tissue patches: nothing to learn from
            continue
        bag = Bag(image_id, torch.from_numpy(np.ascontiguousarray(fb.features, dtype=np.float32)), fb.coords,
                  fb.backbone, fb.patch_size_level0, fb.mpp, path)
        if bags and (bag.features.shape[1] != bags[0].features.shape[1] or bag.backbone != bags[0].backbone):
            raise InputError(f"{path}: features of dimension {bag.features.shape[1]} from backbone {bag.backbone!r} "
                             f"do not match {bags[0].path.name} (dimension {bags[0].features.shape[1]}, "
                             f"backbone {bags[0].backbone!r}); extract all slides with one backbone")
        bags.append(bag)
    return bags, missing


@torch.inference_mode()
def predict_bags(model: MILModel, bags: list[Bag], device: str) -> BagOutputs:
    """Run the model once per bag in eval mode (full bags, no subsampling)."""
    model.eval()
    logits, probs, emb, attn = [], [], [], []
    for b in bags:
        out = model(b.features.to(device))
        logits.append(out.logits.float().cpu().numpy())
        probs.append(out.probs.float().cpu().numpy())
        emb.append(out.embedding.float().cpu().numpy())
        attn.append(out.attention.float().cpu().numpy())
    c = model.n_classes
    return BagOutputs(np.stack(logits) if logits else np.zeros((0, c)), np.stack(probs) if probs else np.zeros((0, c)),
                      np.stack(emb) if emb else np.zeros((0, 0)), attn)


def write_oof_attention(path: Path, coords: dict[str, np.ndarray], attention: dict[str, np.ndarray]) -> None:
    """One HDF5 file with a group per slide (``coords``, ``attention``) for the out-of-fold attention."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for image_id, att in attention.items():
                g = f.create_group(image_id)
                g.create_dataset("coords", data=coords[image_id])
                g.create_dataset("attention", data=att.astype(np.float32))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
