"""The per-slide features file (ours, CLAM's, TRIDENT's): reading it whole, its header only, its rows or its
coordinates, and writing it atomically.

A features file is ``<image_id>.h5`` with datasets ``features`` (N x D float32, or float16 with
``extract --dtype float16``: half the disk and page cache, read back as float32) and ``coords`` (N x 2 int64,
level-0 top-left x,y) and attributes ``patch_size_level0``, ``mpp``, ``backbone`` (plus ``patch_size`` and
``target_mpp``). Files written by CLAM or TRIDENT load as they are; odd shapes (N x 1 x D, float coords) are normalised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from core.atomic import atomic_path
from core.errors import InputError
from core.model.tta import feature_identity

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
    return _normalise_features(_read_dataset(path, "features"), path, keep_half)


def read_feature_coords(path: str | Path) -> np.ndarray:
    """The ``coords`` of a file as int64 (N x 2), without reading its features."""
    path = Path(path)
    return _normalise_coords(_read_dataset(path, "coords"), path)


def _read_dataset(path: Path, name: str) -> np.ndarray:
    """One whole dataset (``features`` or ``coords``) of a checked features file; InputError naming the file."""
    with _open_features(path) as f:
        try:
            return np.asarray(f[name][()])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a readable HDF5 features file ({exc})") from exc


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
    # the temp name ``.<id>.XXXX.h5.tmp`` is what core/model/ray_runner.py looks for after a killed task
    with atomic_path(path, suffix=".h5.tmp", prefix=f".{path.stem}.") as tmp, h5py.File(tmp, "w") as f:
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
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Extraction: a DataLoader whose workers read patches (each opens the slide itself) while the model runs.
