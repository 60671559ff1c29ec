"""A tiny demo-like cohort for the retrain tests: the review cohort (tests/_review_data.py) with stand-in features for
every slide, optionally a finished first-run status, and a newer model version without predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from _review_data import SLIDES, VERSION, make_review_cohort

from core.model.feature_files import FeatureBag, write_features


def write_features_for_slides(root: Path) -> None:
    """Class-informative random features (10 patches x 8 dims) for every slide of the review cohort."""
    rng = np.random.default_rng(0)
    for image_id, (label, *_rest) in SLIDES.items():
        x = rng.normal(0, 1, (10, 8)).astype(np.float32)
        x[:3, 0 if label == "normal" else 1] += 3.0
        coords = np.stack([np.arange(10) * 64, np.zeros(10)], axis=1).astype(np.int64)
        write_features(root / "features" / f"{image_id}.h5",
                       FeatureBag(x, coords, patch_size_level0=64, mpp=0.5, backbone="test"))


def write_done_status(root: Path) -> None:
    """The progress file a finished first run leaves beside the demo folder."""
    from core.demo.firstrun import STAGES, FirstRunStatus, StageStatus, _write_status

    _write_status(root, FirstRunStatus(cohort=str(root), stages=[StageStatus(n, "done", 1.0) for n in STAGES],
                                       pid=0, done=True, tiny=True))


def add_version_without_predictions(root: Path, version: str = "v002-abmil") -> Path:
    """A newer model folder as a killed retrain leaves it: model.json, weights, out-of-fold, no results."""
    src, dst = root / "models" / VERSION, root / "models" / version
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model.json").read_text())
    meta["version"] = version
    (dst / "model.json").write_text(json.dumps(meta))
    return dst


def make_demo_like(root: Path, killed_retrain: bool = False) -> Path:
    """The cohort under ``root`` with features and a finished first-run status; returns its cohort.toml."""
    toml = make_review_cohort(root)
    write_features_for_slides(root)
    write_done_status(root)
    if killed_retrain:
        add_version_without_predictions(root)
    return toml
