"""Patch features: batched extraction of every tissue patch into a features file (``core.model.feature_files``).

A features file is ``<image_id>.h5`` with datasets ``features`` (N x D float32, or float16 with
``extract --dtype float16``: half the disk and page cache, read back as float32) and ``coords`` (N x 2 int64,
level-0 top-left x,y) and attributes ``patch_size_level0``, ``mpp``, ``backbone`` (plus ``patch_size`` and
``target_mpp``). Files written by CLAM or TRIDENT load as they are; odd shapes (N x 1 x D, float coords) are normalised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import InputError, SlideError, SlideLensError
from core.model.backbones import Backbone, embed
from core.model.feature_files import FEATURES_SUFFIX, FeatureBag, read_feature_info, write_features
from core.model.tta import check_mode, embed_tta, feature_identity
from core.slides.slide import Slide, open_slide
from core.slides.tiling import patch_grid

Progress = Callable[[float, str], None]



class PatchDataset(torch.utils.data.Dataset):
    """Patches of one slide as uint8 H x W x 3 tensors; each worker opens its own handle (OpenSlide is not picklable).

    A failed read does not raise inside the worker (that would lose the message in a traceback): it returns a blank
    patch and the error text, and the consumer raises one clear SlideError.
    """

    def __init__(self, slide_path: Path, coords: np.ndarray, patch_size: int, target_mpp: float,
                 mpp: float | None = None, default_mpp: float | None = None, cache_dir: Path | None = None) -> None:
        self.slide_path = Path(slide_path)
        self.coords = coords
        self.patch_size = patch_size
        self.target_mpp = target_mpp
        self.mpp = mpp
        self.default_mpp = default_mpp
        self.cache_dir = cache_dir
        self._slide: Slide | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_slide": None}

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            if self._slide is None:
                # already validated by the caller; a plain image's pyramid is already in the cache
                self._slide = open_slide(self.slide_path, mpp=self.mpp, cache_dir=self.cache_dir, validate=False)
            x, y = (int(v) for v in self.coords[i])
            img = self._slide.read_region_mpp((x, y), (self.patch_size, self.patch_size), self.target_mpp,
                                              self.default_mpp)
            return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)), ""
        except Exception as exc:  # reported by the consumer as one line naming the slide
            msg = str(exc) if isinstance(exc, SlideLensError) else f"{type(exc).__name__}: {exc}"
            return torch.zeros((self.patch_size, self.patch_size, 3), dtype=torch.uint8), msg


def default_workers(device: str = "cpu") -> int:
    """Patch-reading worker processes to use when none are asked for: none on a CPU machine of two cores or fewer
    (the backbone needs both cores; reading in-process ran the demo at 71 patches/s against 41 with two workers),
    else two."""
    import os

    return 0 if not device.startswith("cuda") and (os.cpu_count() or 1) <= 2 else 2


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only decode patches; leave the cores to the model


def patch_loader(dataset: PatchDataset, batch_size: int = 64, num_workers: int = 2, pin_memory: bool = False,
                 prefetch_factor: int = 4) -> torch.utils.data.DataLoader:
    """Ordered batches of (uint8 patches, error texts); workers prefetch ``prefetch_factor`` batches each."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {"prefetch_factor": prefetch_factor, "worker_init_fn": _worker_init}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       pin_memory=pin_memory, **kwargs)


@dataclass(frozen=True)
class SlidePlan:
    """Where one slide's patches are: level-0 ``coords`` (N x 2), their level-0 side and the slide's own mpp."""

    coords: np.ndarray
    patch_size_level0: int
    slide_mpp: float | None


def plan_slide(slide_path: str | Path, *, patch_size: int = 256, target_mpp: float = 0.5, min_tissue: float = 0.25,
               mpp: float | None = None, default_mpp: float | None = None,
               cache_dir: str | Path | None = None) -> SlidePlan:
    """Open and validate a slide, find its tissue patches (``SlideError`` naming the file if it cannot be read)."""
    slide = open_slide(Path(slide_path), mpp=mpp, cache_dir=Path(cache_dir) if cache_dir is not None else None)
    try:
        grid = patch_grid(slide, patch_size=patch_size, target_mpp=target_mpp, min_tissue=min_tissue,
                          default_mpp=default_mpp)
        slide_mpp = slide.mpp_or(default_mpp)
    finally:
        slide.close()
    return SlidePlan(grid.coords, int(grid.patch_size_level0), float(slide_mpp) if slide_mpp is not None else None)


def check_patch_errors(slide_path: Path, errors: list[str] | tuple[str, ...]) -> None:
    """Raise one ``SlideError`` naming the slide for the first failed read of a batch (PatchDataset error texts)."""
    bad = next((e for e in errors if e), None)
    if bad:
        raise SlideError(slide_path, f"reading patches failed: {bad.removeprefix(f'{slide_path}: ')}")


def read_patch_batch(dataset: PatchDataset, start: int, stop: int) -> np.ndarray:
    """Patches ``start:stop`` of ``dataset`` as one uint8 array (n x H x W x 3), read in this process."""
    items = [dataset[i] for i in range(start, stop)]
    check_patch_errors(dataset.slide_path, [e for _, e in items])
    return np.stack([t.numpy() for t, _ in items]) if items else np.zeros((0, 0, 0, 3), np.uint8)


def write_slide_features(out_path: str | Path, slide_path: str | Path, plan: SlidePlan, feats: np.ndarray, *,
                         backbone: str, weights: str | None, patch_size: int, target_mpp: float, min_tissue: float,
                         dtype: str = "float32", tta: str = "none") -> Path:
    """Check ``feats`` (one row per ``plan.coords``) and write the slide's features file atomically (``tta``: the
    test-time augmentation they were averaged over, stored as the ``tta`` attribute)."""
    slide_path = Path(slide_path)
    if not np.isfinite(feats).all():
        raise SlideError(slide_path, f"backbone {backbone} produced non-finite features")
    bag = FeatureBag(feats, plan.coords, plan.patch_size_level0, float(target_mpp), backbone)
    extra = {"patch_size": int(patch_size), "target_mpp": float(target_mpp), "image_id": slide_path.stem,
             "slide_mpp": plan.slide_mpp, "weights": weights or "random", "min_tissue": float(min_tissue),
             "tta": None if check_mode(tta) == "none" else tta}
    return write_features(out_path, bag, extra, dtype=dtype)


def extract_slide(slide_path: str | Path, out_path: str | Path, backbone: Backbone, *, patch_size: int = 256,
                  target_mpp: float = 0.5, min_tissue: float = 0.25, mpp: float | None = None,
                  default_mpp: float | None = None, batch_size: int = 64, num_workers: int | None = None,
                  cache_dir: str | Path | None = None, prefetch_factor: int = 4,
                  progress: Progress | None = None, dtype: str = "float32", tta: str = "none") -> Path:
    """Tile one slide, embed every tissue patch with ``backbone`` and write ``out_path`` atomically; returns it.

    ``tta`` (flips | dihedral, see core/model/tta.py) averages each patch's features over its flips and rotations."""
    tta = check_mode(tta)
    num_workers = default_workers(backbone.device) if num_workers is None else num_workers
    slide_path, out_path = Path(slide_path), Path(out_path)
    cache = Path(cache_dir) if cache_dir is not None else None
    plan = plan_slide(slide_path, patch_size=patch_size, target_mpp=target_mpp, min_tissue=min_tissue, mpp=mpp,
                      default_mpp=default_mpp, cache_dir=cache)
    n = len(plan.coords)
    feats = np.zeros((n, backbone.dim), np.float32)
    if n:
        ds = PatchDataset(slide_path, plan.coords, patch_size, target_mpp, mpp, default_mpp, cache)
        loader = patch_loader(ds, batch_size, min(num_workers, max(0, (n + batch_size - 1) // batch_size)),
                              pin_memory=backbone.device.startswith("cuda"), prefetch_factor=prefetch_factor)
        done = 0
        for batch, errors in loader:
            check_patch_errors(slide_path, errors)
            feats[done:done + len(batch)] = (embed(backbone, batch) if tta == "none"
                                             else embed_tta(backbone, batch, tta)).numpy()
            done += len(batch)
            if progress:
                progress(done / n, f"{slide_path.name}: {done}/{n} patches")
    write_slide_features(out_path, slide_path, plan, feats, backbone=backbone.name, weights=backbone.weights,
                         patch_size=patch_size, target_mpp=target_mpp, min_tissue=min_tissue, dtype=dtype, tta=tta)
    if progress:
        progress(1.0, f"{slide_path.name}: {n} patches done")
    return out_path


@dataclass
class ExtractReport:
    """What ``extract_cohort`` did: ids written, ids skipped (already done), ids failed with their one-line reason."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def done_features(path: Path, backbone_name: str) -> bool:
    """True when ``path`` is a complete features file made with ``backbone_name`` (or one that names no backbone).

    Raises InputError when it holds another backbone's features, so a run never mixes two feature spaces.
    """
    if not path.is_file():
        return False
    try:
        info = read_feature_info(path, verify=True)  # header and last row only: a resume scan of a big cohort decodes no features
    except InputError:
        return False  # e.g. a truncated file from a crash of another tool: redo it
    if info.backbone is not None and info.backbone != backbone_name:
        raise InputError(f"{path}: holds {info.backbone} features, not {backbone_name}; use another output folder")
    return True


def extract_cohort(slides: dict[str, Path], out_dir: str | Path, backbone: Backbone, *, patch_size: int = 256,
                   target_mpp: float = 0.5, min_tissue: float = 0.25, mpp_overrides: dict[str, float] | None = None,
                   default_mpp: float | None = None, batch_size: int = 64, num_workers: int | None = None,
                   cache_dir: str | Path | None = None, overwrite: bool = False,
                   progress: Progress | None = None, dtype: str = "float32", tta: str = "none") -> ExtractReport:
    """Extract every slide into ``out_dir/<image_id>.h5``, skipping finished ones and carrying on past bad slides."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExtractReport()
    ids = sorted(slides)
    for k, image_id in enumerate(ids):
        out = out_dir / f"{image_id}{FEATURES_SUFFIX}"

        def sub(frac: float, msg: str, k: int = k) -> None:
            if progress:
                progress((k + frac) / len(ids), msg)

        try:
            if not overwrite and done_features(out, feature_identity(backbone.name, tta)):
                report.skipped.append(image_id)
                sub(1.0, f"{image_id}: already done")
                continue
            extract_slide(slides[image_id], out, backbone, patch_size=patch_size, target_mpp=target_mpp,
                          min_tissue=min_tissue, mpp=(mpp_overrides or {}).get(image_id), default_mpp=default_mpp,
                          batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir, progress=sub,
                          dtype=dtype, tta=tta)
            report.written.append(image_id)
        except SlideLensError as exc:
            report.failed[image_id] = str(exc)
            sub(1.0, f"{image_id}: failed")
    return report
