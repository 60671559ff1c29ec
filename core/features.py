"""Patch features: the per-slide HDF5 file format (ours, CLAM's, TRIDENT's) and batched extraction.

A features file is ``<image_id>.h5`` with datasets ``features`` (N x D float32, or float16 with
``extract --dtype float16``: half the disk and page cache, read back as float32) and ``coords`` (N x 2 int64,
level-0 top-left x,y) and attributes ``patch_size_level0``, ``mpp``, ``backbone`` (plus ``patch_size`` and
``target_mpp``). Files written by CLAM or TRIDENT load as they are; odd shapes (N x 1 x D, float coords) are normalised.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from core.backbones import Backbone, embed
from core.errors import InputError, SlideError, SlideLensError
from core.slides import Slide, open_slide
from core.tiling import patch_grid
from core.tta import check_mode, embed_tta, feature_identity

Progress = Callable[[float, str], None]

FEATURES_SUFFIX = ".h5"


@dataclass
class FeatureBag:
    """One slide's patch features: ``features`` N x D float32 and level-0 ``coords`` N x 2 int64, in the same order."""

    features: np.ndarray
    coords: np.ndarray
    patch_size_level0: int | None = None
    mpp: float | None = None
    backbone: str | None = None
    path: Path | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # other attributes found in the file (kept, not interpreted)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.features.shape[1])

    @property
    def image_id(self) -> str | None:
        """The slide id, from the file name (``<image_id>.h5``)."""
        return self.path.stem if self.path is not None else None


def _scalar(value: Any) -> Any:
    """HDF5 attributes come back as numpy scalars, 0-d/1-element arrays or bytes: make them plain Python."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.size == 1:
            value = value.reshape(()).item()
        else:
            return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _first(attrs: list[dict[str, Any]], *keys: str) -> Any:
    for d in attrs:
        for k in keys:
            if k in d and d[k] is not None and d[k] != "":
                return d[k]
    return None


def _normalise_features(arr: np.ndarray, path: Path, keep_half: bool = False) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[1] == 1:  # N x 1 x D (some CLAM/TRIDENT variants)
        arr = arr[:, 0, :]
    elif arr.ndim == 3 and arr.shape[0] == 1:  # 1 x N x D
        arr = arr[0]
    elif arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != 2:
        raise InputError(f"{path}: 'features' has shape {arr.shape}; expected N x D")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{path}: 'features' has non-numeric type {arr.dtype}")
    if keep_half and arr.dtype == np.float16:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _normalise_coords(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[1] == 1:
        arr = arr[:, 0, :]
    elif arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{path}: 'coords' has shape {arr.shape}; expected N x 2 (x, y)")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{path}: 'coords' has non-numeric type {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.rint(arr)
    return np.ascontiguousarray(arr, dtype=np.int64)


def read_features(path: str | Path) -> FeatureBag:
    """Read a features file (ours, CLAM or TRIDENT); raise InputError naming the file if it is missing or malformed."""
    path = Path(path)
    with _open_features(path) as f:
        try:
            feats_raw = f["features"][()]
            coords_raw = f["coords"][()]
            attrs = _all_attrs(f)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a readable HDF5 features file ({exc})") from exc
    features = _normalise_features(np.asarray(feats_raw), path)
    coords = _normalise_coords(np.asarray(coords_raw), path)
    if features.shape[0] == 0 and coords.shape[0] == 0 and features.shape[1] == 0:
        features = features.reshape(0, int(attrs[0].get("feature_dim", 0) or 0))
    if features.shape[0] != coords.shape[0]:
        raise InputError(f"{path}: {features.shape[0]} feature rows but {coords.shape[0]} coords")
    size0, mpp, backbone = _meta(attrs)
    return FeatureBag(features=features, coords=coords, patch_size_level0=size0, mpp=mpp, backbone=backbone,
                      path=path, attrs={**attrs[1], **attrs[2], **attrs[0]})


@dataclass(frozen=True)
class FeatureInfo:
    """What a features file holds, read from its header only (no feature rows are decoded)."""

    path: Path
    n: int
    dim: int
    dtype: str
    patch_size_level0: int | None
    mpp: float | None
    backbone: str | None


def read_feature_info(path: str | Path, verify: bool = False) -> FeatureInfo:
    """Shape, dtype and attributes of a features file without reading its rows (constant memory per file).

    ``verify`` also reads the last row of each dataset, so a file cut short by a crashed writer is refused."""
    path = Path(path)
    with _open_features(path) as f:
        try:
            if verify and f["features"].shape and f["features"].shape[0]:
                _tail = (f["features"][-1], f["coords"][-1])  # raises if the data was cut short
            shape, dtype = tuple(f["features"].shape), f["features"].dtype
            n_coords = int(f["coords"].shape[0]) if f["coords"].ndim else 0
            if f["coords"].ndim == 3 and f["coords"].shape[0] == 1:
                n_coords = int(f["coords"].shape[1])
            attrs = _all_attrs(f)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a readable HDF5 features file ({exc})") from exc
    if len(shape) == 3 and shape[1] == 1:
        shape = (shape[0], shape[2])
    elif len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2 and not (len(shape) == 1 and shape[0] == 0):
        raise InputError(f"{path}: 'features' has shape {shape}; expected N x D")
    if not np.issubdtype(dtype, np.number):
        raise InputError(f"{path}: 'features' has non-numeric type {dtype}")
    n, dim = (shape[0], shape[1]) if len(shape) == 2 else (0, int(attrs[0].get("feature_dim", 0) or 0))
    if n != n_coords:
        raise InputError(f"{path}: {n} feature rows but {n_coords} coords")
    size0, mpp, backbone = _meta(attrs)
    return FeatureInfo(path, int(n), int(dim), str(dtype), size0, mpp, backbone)


def read_feature_rows(path: str | Path, keep_half: bool = False) -> np.ndarray:
    """The ``features`` matrix of a file (N x D) as float32, or float16 as stored with ``keep_half`` (half the
    memory; converting a row to float32 is exact, so a subset converted later equals the converted whole)."""
    path = Path(path)
    with _open_features(path) as f:
        try:
            raw = f["features"][()]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a readable HDF5 features file ({exc})") from exc
    return _normalise_features(np.asarray(raw), path, keep_half)


def read_feature_coords(path: str | Path) -> np.ndarray:
    """The ``coords`` of a file as int64 (N x 2), without reading its features."""
    path = Path(path)
    with _open_features(path) as f:
        try:
            raw = f["coords"][()]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a readable HDF5 features file ({exc})") from exc
    return _normalise_coords(np.asarray(raw), path)


@contextlib.contextmanager
def _open_features(path: Path) -> Iterator[h5py.File]:
    """The HDF5 file with its ``features`` and ``coords`` datasets checked; InputError naming the file otherwise."""
    if not path.is_file():
        raise InputError(f"{path}: features file not found")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable HDF5 features file ({exc})") from exc
    with f:
        missing = [k for k in ("features", "coords") if k not in f or not isinstance(f[k], h5py.Dataset)]
        if missing:
            raise InputError(f"{path}: no {' or '.join(repr(m) for m in missing)} dataset in the features file")
        yield f


def _all_attrs(f: h5py.File) -> list[dict[str, Any]]:
    """Root, coords and features attributes, in the order they are searched."""
    return [{k: _scalar(v) for k, v in f.attrs.items()}, {k: _scalar(v) for k, v in f["coords"].attrs.items()},
            {k: _scalar(v) for k, v in f["features"].attrs.items()}]


def _meta(all_attrs: list[dict[str, Any]]) -> tuple[int | None, float | None, str | None]:
    """(patch_size_level0, mpp, backbone) from our attributes or CLAM's / TRIDENT's."""
    size0 = _first(all_attrs, "patch_size_level0")
    if size0 is None:
        # CLAM: coords.attrs patch_size at patch_level; only level 0 (or a stored downsample) maps to level 0 safely
        ps, level = _first(all_attrs, "patch_size"), _first(all_attrs, "patch_level")
        down = _first(all_attrs, "downsample")
        if ps is not None and (level is None or int(level) == 0):
            size0 = int(ps)
        elif ps is not None and down is not None:
            d = down[0] if isinstance(down, list) else down
            size0 = int(round(float(ps) * float(d)))
    mpp = _first(all_attrs, "mpp", "target_mpp")
    if mpp is None:
        mag = _first(all_attrs, "target_magnification")  # TRIDENT: 20x ~ 0.5 um/px
        if mag:
            mpp = 10.0 / float(mag)
    backbone = _first(all_attrs, "backbone", "encoder", "model_name", "patch_encoder")
    tta = _first(all_attrs, "tta")
    if backbone is not None and tta not in (None, "none"):  # TTA features are their own feature space
        backbone = feature_identity(str(backbone), str(tta))
    return (int(size0) if size0 is not None else None, float(mpp) if mpp is not None else None,
            str(backbone) if backbone is not None else None)


def find_features(feature_dir: str | Path) -> dict[str, Path]:
    """image_id -> features file for every finished ``<image_id>.h5`` in ``feature_dir`` (temp files ignored)."""
    folder = Path(feature_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: features folder not found")
    return {p.stem: p for p in sorted(folder.glob(f"*{FEATURES_SUFFIX}")) if not p.name.startswith(".")}


def is_valid_features(path: str | Path) -> bool:
    """True when ``path`` is a complete, readable features file (used to skip slides already done)."""
    try:
        read_features(path)
    except InputError:
        return False
    return True


FEATURE_DTYPES = ("float32", "float16")


def write_features(path: str | Path, bag: FeatureBag, extra_attrs: dict[str, Any] | None = None,
                   dtype: str = "float32") -> Path:
    """Write ``bag`` to ``path`` atomically: a temp file in the same folder, then ``os.replace``.

    ``dtype`` float16 halves the file (features are read back as float32 either way)."""
    path = Path(path)
    if dtype not in FEATURE_DTYPES:
        raise InputError(f"feature dtype {dtype!r}: choose {' or '.join(FEATURE_DTYPES)}")
    features = np.asarray(bag.features, dtype=np.float32)
    if dtype == "float16":
        if np.abs(features).max(initial=0.0) > np.finfo(np.float16).max:
            raise InputError(f"{path}: features exceed the float16 range; extract with --dtype float32")
        features = features.astype(np.float16)
    coords = np.asarray(bag.coords, dtype=np.int64).reshape(-1, 2)
    if features.ndim != 2 or features.shape[0] != coords.shape[0]:
        raise InputError(f"{path}: features {features.shape} and coords {coords.shape} do not match")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".h5.tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features)
            f.create_dataset("coords", data=coords)
            attrs = dict(bag.attrs)
            attrs.update(extra_attrs or {})
            attrs["feature_dim"] = int(features.shape[1])
            if bag.patch_size_level0 is not None:
                attrs["patch_size_level0"] = int(bag.patch_size_level0)
            if bag.mpp is not None:
                attrs["mpp"] = float(bag.mpp)
            if bag.backbone is not None:
                attrs["backbone"] = str(bag.backbone)
            for k, v in attrs.items():
                if v is not None:
                    f.attrs[k] = v
            if bag.patch_size_level0 is not None:  # also where CLAM/TRIDENT readers look
                f["coords"].attrs["patch_size_level0"] = int(bag.patch_size_level0)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a features file is ordinary shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Extraction: a DataLoader whose workers read patches (each opens the slide itself) while the model runs.


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
                  default_mpp: float | None = None, batch_size: int = 64, num_workers: int = 2,
                  cache_dir: str | Path | None = None, prefetch_factor: int = 4,
                  progress: Progress | None = None, dtype: str = "float32", tta: str = "none") -> Path:
    """Tile one slide, embed every tissue patch with ``backbone`` and write ``out_path`` atomically; returns it.

    ``tta`` (flips | dihedral, see core/tta.py) averages each patch's features over its flips and rotations."""
    tta = check_mode(tta)
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
                   default_mpp: float | None = None, batch_size: int = 64, num_workers: int = 2,
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
