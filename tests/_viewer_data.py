"""Tiny test data for the viewer tests: synthetic pyramidal TIFFs, attention files, a cohort, predictions."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import tifffile
from PIL import Image

SAMPLE_SVS = Path("/work/shared/data/slides/CMU-1-Small-Region.svs")
PATCH = 64  # level-0 patch side of the synthetic slides
CLASSES = ["benign", "tumor"]


def write_pyramid(path: Path, width: int, height: int, levels: int = 3, mpp: float | None = 0.5,
                  seed: int = 0) -> Path:
    """A tiled pyramidal TIFF of pink 'tissue' blobs; each level is the previous one halved, rounding up."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.full((height, width, 3), 240, np.uint8)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.15, 0.35) * min(width, height)
        blob = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[blob] = rng.integers([150, 60, 120], [230, 140, 200])
    arrays = [img]
    for _ in range(levels - 1):
        prev = arrays[-1]
        w, h = -(-prev.shape[1] // 2), -(-prev.shape[0] // 2)  # rounded up: odd sizes stay odd-ish
        arrays.append(np.asarray(Image.fromarray(prev).resize((w, h), Image.Resampling.BOX)))
    res = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        for i, arr in enumerate(arrays):
            tif.write(arr, tile=(64, 64), photometric="rgb", compression="jpeg", subfiletype=0 if i == 0 else 1,
                      metadata=None, **res)
    return path


def grid_coords(width: int, height: int, patch: int = PATCH, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Top-left corners of every full patch of a regular grid starting at ``origin``."""
    xs = np.arange(origin[0], width - patch + 1, patch)
    ys = np.arange(origin[1], height - patch + 1, patch)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)


def write_attention(path: Path, coords: np.ndarray, attention: np.ndarray, patch: int = PATCH,
                    version: str = "v001-abmil", classes: list[str] | None = None) -> Path:
    """An attention file in the CONTRACTS.md layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["coords"] = np.asarray(coords, np.int64)
        f["attention"] = np.asarray(attention, np.float32)
        f.attrs["model_version"] = version
        f.attrs["patch_size_level0"] = patch
        f.attrs["classes"] = json.dumps(classes or CLASSES)
    return path


def add_sample_attention(root: Path, version: str = "v001-abmil") -> None:
    """Attention on the real sample slide's tissue patches: a hot spot, so the overlay shows a clear pattern."""
    from core.slides.slide import open_slide
    from core.slides.tiling import patch_grid

    slide = open_slide(SAMPLE_SVS)
    grid = patch_grid(slide, 128, 0.5, min_tissue=0.1)
    centre = grid.coords.mean(axis=0) + [300, -500]
    d2 = ((grid.coords - centre) ** 2).sum(axis=1) / 700.0**2
    a = np.exp(-d2)[:, None] * [1.0, 0.3] + np.random.default_rng(5).random((len(grid), 2)) * 0.15
    a = a / a.sum(axis=0, keepdims=True)
    write_attention(root / "results" / version / "attention" / f"{SAMPLE_SVS.stem}.h5", grid.coords, a,
                    patch=grid.patch_size_level0, version=version)
    with (root / "results" / version / "predictions.csv").open("a") as f:
        f.write(f"{SAMPLE_SVS.stem},tumor,0.35,0.65,0.2\n")


def build_cohort(root: Path, version: str = "v001-abmil", with_svs: bool = True) -> Path:
    """A cohort folder: two synthetic slides (one with odd level sizes), optionally the CMU sample, labels,
    predictions and per-class attention for the synthetic slides. Returns the cohort.toml path."""
    slides = root / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    write_pyramid(slides / "synth_a.tiff", 1000, 700, seed=1)  # width not a multiple of the patch size
    write_pyramid(slides / "synth_odd.tiff", 1001, 757, seed=2)  # levels 501x379, 251x190: rounded
    rng = np.random.default_rng(0)
    att_dir = root / "results" / version / "attention"
    for name, (w, h) in {"synth_a": (1000, 700), "synth_odd": (1001, 757)}.items():
        coords = grid_coords(w, h)
        att = rng.random((len(coords), 2)).astype(np.float32)
        att /= att.sum(axis=0, keepdims=True)
        write_attention(att_dir / f"{name}.h5", coords, att, version=version)
    rows = ["image_id,pred,prob_benign,prob_tumor,ood_score",
            "synth_a,tumor,0.2,0.8,0.1", "synth_odd,benign,0.7,0.3,0.9"]
    (root / "results" / version / "predictions.csv").write_text("\n".join(rows) + "\n")
    # out-of-fold predictions (they judge errors): synth_a wrong, synth_odd right, unlike the final model's
    oof = root / "models" / version / "oof_predictions.csv"
    oof.parent.mkdir(parents=True, exist_ok=True)
    oof.write_text("image_id,pred,prob_benign,prob_tumor\nsynth_a,benign,0.6,0.4\nsynth_odd,tumor,0.3,0.7\n")
    (root / "labels.csv").write_text("image_id,label\nsynth_a,tumor\nsynth_odd,tumor\n")
    sources = ['"slides"'] + ([f'"{SAMPLE_SVS}"'] if with_svs else [])
    toml = root / "cohort.toml"
    toml.write_text(f'name = "viewertest"\nslides = [{", ".join(sources)}]\nlabels = "labels.csv"\n'
                    'database = "sqlite:///slidelens.db"\n')
    return toml
