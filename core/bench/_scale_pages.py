"""``bench scale`` part ``pages``: each page of the app rendered with AppTest on a cohort of 1,000 slides.

The cohort is generated (small PNG slides, UBC-OCEAN-like labels with ``is_tma``, one model version with final and
out-of-fold predictions, a review database with some edits); each page is run once cold (first visit of a session:
database sync, table reads) and then ``repeat`` times warm (the reruns a user's clicks cause). Target: under 2 s.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ("CC", "EC", "HGSC", "LGSC", "MC")
VERSION = "v001-abmil"
PAGES = {"home": "pages/home.py", "viewer": "pages/viewer.py", "analysis": "pages/analysis.py",
         "review": "pages/review.py"}
TARGET_S = 2.0


def make_page_cohort(root: Path, n: int = 1000, seed: int = 0) -> Path:
    """A cohort of ``n`` small PNG slides with labels, a model version and its predictions; returns cohort.toml."""
    from PIL import Image
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    slides = root / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    ids = [f"{10000 + k}" for k in range(n)]
    labels = [CLASSES[k % len(CLASSES)] for k in range(n)]
    for image_id in ids:
        path = slides / f"{image_id}.png"
        if not path.is_file():
            img = np.full((192, 256, 3), 240, np.uint8)
            img[40:150, 40:220] = rng.integers(120, 220, (110, 180, 3), dtype=np.uint8)
            Image.fromarray(img).save(path, compress_level=1)
    tma = rng.random(n) < 0.15
    (root / "labels.csv").write_text("image_id,label,image_width,image_height,is_tma\n" + "".join(
        f"{i},{lab},256,192,{int(t)}\n" for i, lab, t in zip(ids, labels, tma, strict=True)))
    (root / "cohort.toml").write_text('name = "scale-1000"\nslides = "slides"\nlabels = "labels.csv"\n'
                                      'database = "sqlite:///slidelens.db"\ndefault_mpp = 0.5\n')
    mdir = root / "models" / VERSION
    mdir.mkdir(parents=True, exist_ok=True)
    meta = {"version": VERSION, "model": "abmil", "classes": list(CLASSES), "feature_dim": 8, "backbone": "bench",
            "settings": {}, "created": "2026-01-01T00:00:00Z", "labels_file": "labels.csv",
            "ood": {"method": "mahalanobis", "threshold": 3.0}}
    (mdir / "model.json").write_text(json.dumps(meta))
    save_file({"placeholder": np.zeros(1, np.float32)}, str(mdir / "weights.safetensors"))

    def preds(noise: float) -> str:
        truth = np.array([CLASSES.index(lab) for lab in labels])
        logits = rng.normal(0, noise, (n, len(CLASSES)))
        logits[np.arange(n), truth] += 2.0
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        ood = rng.gamma(2.0, 1.0, n)
        head = "image_id,pred," + ",".join(f"prob_{c}" for c in CLASSES) + ",ood_score\n"
        return head + "".join(f"{i},{CLASSES[int(p[k].argmax())]}," + ",".join(f"{v:.4f}" for v in p[k])
                              + f",{ood[k]:.3f}\n" for k, i in enumerate(ids))

    (mdir / "oof_predictions.csv").write_text(preds(1.2))
    (root / "results" / VERSION).mkdir(parents=True, exist_ok=True)
    (root / "results" / VERSION / "predictions.csv").write_text(preds(0.8))
    return root / "cohort.toml"


def _seed_edits(toml: Path, count: int = 50) -> None:
    """A reviewer's day: ``count`` relabels and flags, so the queue and the history have rows."""
    from core.cohort.cohort_file import load_cohort
    from core.review.queue import open_cohort_store

    cohort = load_cohort(toml)
    store = open_cohort_store(cohort)
    states = store.states()
    if any(s.updated_by not in (None, "import") for s in states.values()):
        return
    for k, image_id in enumerate(sorted(states)[:count]):
        st = store.state(image_id)
        if k % 2:
            store.set_label(image_id, CLASSES[(k + 1) % len(CLASSES)], "bench", "bench relabel", st.version)
        else:
            store.set_flag(image_id, "outlier", True, "bench", "bench flag", st.version)


def bench_pages(work: Path, n: int = 1000, repeat: int = 3) -> dict[str, Any]:
    """Cold and warm render seconds of each page, timed by ``ui/bench_pages.py`` (AppTest) in a child process
    (core never imports streamlit)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    toml = make_page_cohort(work / "cohort", n)
    _seed_edits(toml)
    env = {**os.environ, "SLIDELENS_COHORT": str(toml), "SLIDELENS_DEMO_DIR": str(work / "no-demo"),
           "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-m", "ui.bench_pages", "--repeat", str(repeat), "--slide", "10001",
                           *[f"{k}={v}" for k, v in PAGES.items()]], cwd=repo, env=env, capture_output=True,
                          text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"ui.bench_pages failed ({proc.returncode}): {proc.stderr[-1500:]}")
    out: dict[str, Any] = {"slides": n, "target_s": TARGET_S}
    for name, res in json.loads(line[7:]).items():
        med = statistics.median(res["warm_s"])
        out[name] = {**res, "warm_median_s": round(med, 3),
                     "meets_target": med < TARGET_S and res["cold_s"] < 2 * TARGET_S}
    return out
