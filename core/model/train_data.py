"""Bags for training and batch prediction (shared by core.model.train and core.model.infer), streamed from the HDF5 files.

A :class:`Bag` holds a slide's header (patch count, dimension, backbone), not its features: ``bag.features`` reads
them through a process-wide LRU cache bounded in bytes (``SLIDELENS_BAG_CACHE_MB``, default 1024), so peak memory does
not grow with the cohort. A cohort that fits in the cache trains exactly as if every bag were in memory; a larger one
re-reads bags from the files (the page cache keeps that cheap; float16 files halve it).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from core.atomic import atomic_path
from core.errors import InputError
from core.model.feature_files import read_feature_coords, read_feature_info, read_feature_rows
from core.model.mil import MILModel

DEFAULT_CACHE_MB = 1024


class BagCache:
    """Least-recently-used feature tensors by file, as stored (float16 stays float16), bounded by ``max_bytes``
    (a bag bigger than that is read each time, not kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Path, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, path: Path) -> torch.Tensor:
        """The features of ``path`` as an ``[N, D]`` float32 or float16 tensor (read on a miss)."""
        with self._lock:
            t = self._items.get(path)
            if t is not None:
                self._items.move_to_end(path)
                self.hits += 1
                return t
            self.misses += 1
        with torch.inference_mode(False):  # a bag first read while predicting is later trained on
            t = torch.from_numpy(read_feature_rows(path, keep_half=True))
        size = t.numel() * t.element_size()
        with self._lock:
            if size <= self.max_bytes and path not in self._items:
                self._items[path] = t
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.numel() * old.element_size()
        return t

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


_CACHE: BagCache | None = None


def _return_big_blocks_to_the_os() -> None:
    """Make glibc serve every allocation of 1 MiB or more with its own mapping, returned to the OS when freed.

    glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), after which the bags'
    16-32 MiB tensors come from the heap and fragment it: streamed training over 100 bags of 8,000 x 1,024 peaked
    at 3.8 GiB RSS with a 256 MiB cache, 1.06 GiB with this (same seconds per epoch, measured in one run)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; setting it also turns the dynamic adjustment off
    except (OSError, AttributeError):
        pass  # not glibc (macOS, musl): nothing to do


def bag_cache() -> BagCache:
    """The process-wide bag cache (its size from ``SLIDELENS_BAG_CACHE_MB``)."""
    global _CACHE
    if _CACHE is None:
        _return_big_blocks_to_the_os()
        mb = float(os.environ.get("SLIDELENS_BAG_CACHE_MB") or DEFAULT_CACHE_MB)
        _CACHE = BagCache(int(mb * 2**20))
    return _CACHE


def set_bag_cache(max_bytes: int) -> BagCache:
    """Replace the process-wide cache with one of ``max_bytes`` (benchmarks and tests)."""
    global _CACHE
    _return_big_blocks_to_the_os()
    _CACHE = BagCache(max_bytes)
    return _CACHE


@dataclass(frozen=True)
class Bag:
    """One slide's features file: its header, and its features and coords read on demand."""

    image_id: str
    path: Path
    n: int  # patches
    dim: int
    backbone: str | None
    patch_size_level0: int | None
    mpp: float | None

    @property
    def features(self) -> torch.Tensor:
        """``[N, D]`` float32, through the bag cache."""
        return bag_cache().get(self.path).float()

    def rows(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 features of the patches ``index`` (all when None): a float16 bag converts only those rows."""
        stored = bag_cache().get(self.path)
        return (stored if index is None else stored[index]).float()

    @property
    def coords(self) -> np.ndarray:
        """``[N, 2]`` int64 level-0 coordinates (read from the file each time: only written once per slide)."""
        return read_feature_coords(self.path)


@dataclass
class BagOutputs:
    """Stacked model outputs for a list of bags."""

    logits: np.ndarray  # [n, C]
    probs: np.ndarray  # [n, C]
    embeddings: np.ndarray  # [n, E]
    attention: list[np.ndarray]  # n arrays of [N_i] or [N_i, C]


def load_bags(features_dir: Path, image_ids: list[str]) -> tuple[list[Bag], list[str]]:
    """The bag of each id that has a features file (headers only); returns the bags and the ids without one.

    All bags must share one feature dimension and backbone (``InputError`` naming the odd file otherwise).
    """
    bags: list[Bag] = []
    missing: list[str] = []
    for image_id in image_ids:
        path = features_dir / f"{image_id}.h5"
        if not path.is_file():
            missing.append(image_id)
            continue
        info = read_feature_info(path)
        if info.n == 0:
            missing.append(image_id)  # no tissue patches: nothing to learn from
            continue
        bag = Bag(image_id, path, info.n, info.dim, info.backbone, info.patch_size_level0, info.mpp)
        if bags and (bag.dim != bags[0].dim or bag.backbone != bags[0].backbone):
            raise InputError(f"{path}: features of dimension {bag.dim} from backbone {bag.backbone!r} "
                             f"do not match {bags[0].path.name} (dimension {bags[0].dim}, "
                             f"backbone {bags[0].backbone!r}); extract all slides with one backbone")
        bags.append(bag)
    return bags, missing


def input_stats(bags: Iterable[Bag]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) standard deviation of every patch of ``bags``, one bag at a time (float64, Chan et al.'s
    pairwise merge), so standardising inputs never needs all patches in memory."""
    n, mean, m2 = 0, None, None
    for b in bags:
        x = b.features.to(torch.float64)
        nb = x.shape[0]
        if nb == 0:
            continue
        mb = x.mean(dim=0)
        m2b = ((x - mb) ** 2).sum(dim=0)
        if mean is None:
            n, mean, m2 = nb, mb, m2b
            continue
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta**2 * (n * nb / tot)
        n = tot
    if mean is None:
        raise InputError("no patches to compute input statistics from")
    std = (m2 / (n - 1)).sqrt() if n > 1 else torch.ones_like(mean)
    return mean.float(), std.float()


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


def write_oof_attention(path: Path, bags: list[Bag], attention: dict[str, np.ndarray]) -> None:
    """One HDF5 file with a group per slide (``coords``, ``attention``) for the out-of-fold attention."""
    by_id = {b.image_id: b for b in bags}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for image_id, att in attention.items():
            g = f.create_group(image_id)
            g.create_dataset("coords", data=by_id[image_id].coords)
            g.create_dataset("attention", data=att.astype(np.float32))
