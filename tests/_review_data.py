"""A tiny review cohort written as files: slides (PNG), labels, one model version with predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

CLASSES = ("normal", "tumor")
# image_id: (given label, p_tumor out-of-fold, p_tumor final, ood_score)
SLIDES = {
    "s00": ("normal", 0.05, 0.04, 1.0),
    "s01": ("normal", 0.96, 0.95, 1.2),   # label issue: model is sure it is tumor
    "s02": ("tumor", 0.90, 0.92, 9.0),    # likely outlier: OOD score over the threshold (5.0)
    "s03": ("tumor", 0.55, 0.54, 0.8),    # low confidence
    "s04": ("tumor", 0.97, 0.98, 1.1),
    "s05": ("normal", 0.08, 0.10, 0.9),
    "s06": ("tumor", 0.93, 0.91, 1.3),
    "s07": ("normal", 0.02, 0.03, 0.7),
}
OOD_THRESHOLD = 5.0
VERSION = "v001-abmil"


def _preds(col: int) -> str:
    lines = ["image_id,pred,prob_normal,prob_tumor,ood_score"]
    for i, (_, p_oof, p_fin, ood) in SLIDES.items():
        p = p_oof if col == 1 else p_fin
        lines.append(f"{i},{'tumor' if p >= 0.5 else 'normal'},{1 - p:.4f},{p:.4f},{ood}")
    return "\n".join(lines) + "\n"


def make_review_cohort(root: Path, db_url: str | None = None, with_model: bool = True) -> Path:
    """Write the cohort under ``root`` and return its cohort.toml."""
    (root / "slides").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, image_id in enumerate(SLIDES):
        img = np.full((96, 128, 3), 240, np.uint8)
        img[20:76, 24:104] = (200 - 10 * k, 120, 170)
        img[20:76, 24:104] += rng.integers(0, 20, (56, 80, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "slides" / f"{image_id}.png")
    (root / "labels.csv").write_text("image_id,label,site\n" + "".join(
        f"{i},{lab},site{n % 2}\n" for n, (i, (lab, *_)) in enumerate(SLIDES.items())))
    db = db_url or "sqlite:///slidelens.db"
    (root / "cohort.toml").write_text(f'name = "review-test"\nslides = "slides"\nlabels = "labels.csv"\n'
                                      f'database = "{db}"\ndefault_mpp = 0.5\n')
    if with_model:
        mdir = root / "models" / VERSION
        mdir.mkdir(parents=True, exist_ok=True)
        meta = {"version": VERSION, "model": "abmil", "classes": list(CLASSES), "feature_dim": 8,
                "backbone": "test", "settings": {}, "created": "2025-01-01T00:00:00Z", "labels_file": "labels.csv",
                "metrics": {"balanced_accuracy": 0.8}, "ood": {"method": "energy", "threshold": OOD_THRESHOLD}}
        (mdir / "model.json").write_text(json.dumps(meta))
        save_file({"placeholder": np.zeros(1, np.float32)}, str(mdir / "weights.safetensors"))  # queue reads no weights
        (mdir / "oof_predictions.csv").write_text(_preds(1))
        (root / "results" / VERSION).mkdir(parents=True, exist_ok=True)
        (root / "results" / VERSION / "predictions.csv").write_text(_preds(2))
    return root / "cohort.toml"


def set_final_predictions(root: Path, p_tumor: dict[str, float]) -> None:
    """Rewrite the final model's predictions.csv with other p_tumor values for some slides (out-of-fold kept)."""
    path = root / "results" / VERSION / "predictions.csv"
    lines = path.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        image_id, *_rest, ood = line.split(",")
        if image_id in p_tumor:
            p = p_tumor[image_id]
            line = f"{image_id},{'tumor' if p >= 0.5 else 'normal'},{1 - p:.4f},{p:.4f},{ood}"
        out.append(line)
    path.write_text("\n".join(out) + "\n")
