"""A picture of a demo cohort: one thumbnail per class, an outlier and TMAs, each with its tumour outline (green)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from core.cohort.cohort_file import load_cohort
from core.slides.slide import open_slide

OUTLINE = (20, 200, 60)


def outlined_thumbnail(slide_path: Path, mask_path: Path, size: int, mpp: float | None = None,
                       cache_dir: Path | None = None) -> Image.Image:
    """The slide's thumbnail (longest side ``size``) with the tumour mask's outline drawn in green."""
    slide = open_slide(slide_path, mpp=mpp, cache_dir=cache_dir)
    thumb = slide.thumbnail(size)
    mask = Image.open(mask_path).convert("L").resize(thumb.size, Image.Resampling.BILINEAR)
    m = np.asarray(mask) > 127
    edge = m & ~ndimage.binary_erosion(m, iterations=2)
    arr = np.asarray(thumb).copy()
    arr[edge] = OUTLINE
    return Image.fromarray(arr)


def preview_grid(cohort_dir: str | Path, out_png: str | Path, size: int = 300, n_tma: int = 2) -> Path:
    """Save a labelled grid: the first WSI of each true class, one outlier and ``n_tma`` TMAs (a small PNG)."""
    cohort_dir = Path(cohort_dir)
    cohort = load_cohort(cohort_dir)
    with open(cohort_dir / "truth" / "truth.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picks: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["is_tma"] == "0" and r["is_outlier"] == "0":
            picks.setdefault(r["true_label"], r)
    picks = dict(sorted(picks.items()))
    extra = [r for r in rows if r["is_outlier"] == "1"][:1]
    tmas: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["is_tma"] == "1" and len(tmas) < n_tma:
            tmas.setdefault(r["true_label"], r)
    for r in extra:
        picks[f"outlier ({r['pattern']})"] = r
    for label, r in tmas.items():
        picks[f"TMA {label} (0.25 mpp)"] = r
    cells = []
    for title, r in picks.items():
        iid = r["image_id"]
        img = outlined_thumbnail(cohort.slide_path(iid), cohort_dir / "truth" / "masks" / f"{iid}.png", size,
                                 cohort.mpp_for(iid), cohort.cache_dir)
        cell = Image.new("RGB", (size, size + 18), "white")
        cell.paste(img, ((size - img.width) // 2, 18 + (size - img.height) // 2))
        ImageDraw.Draw(cell).text((4, 3), f"{title}  [{iid}]", fill=(0, 0, 0))
        cells.append(cell)
    cols = min(4, len(cells))
    rows_n = -(-len(cells) // cols)
    grid = Image.new("RGB", (cols * (size + 6), rows_n * (size + 24)), "white")
    for i, c in enumerate(cells):
        grid.paste(c, ((i % cols) * (size + 6), (i // cols) * (size + 24)))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".part")
    grid.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    tmp.replace(out_png)
    return out_png
