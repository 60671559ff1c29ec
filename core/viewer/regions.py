"""Regions the model looked at most: neighbouring high-attention patches merged into connected regions.

Presentation mode and the handout show regions, not single patches: the most attended patches (the top ``top``
fraction of the slide's patches) are placed on the patch grid, patches that touch (8-neighbours, across gaps of up to
``gap`` patches) become one region, and regions are ranked by the share of the slide's attention they hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from core.errors import InputError


@dataclass(frozen=True)
class Region:
    """One merged region in level-0 pixels: its bounding box, its patches and its share of the attention."""

    rank: int  # 1 = the region holding the most attention
    x: int
    y: int
    w: int
    h: int
    n_patches: int
    share: float  # fraction of the slide's total attention inside the region (0..1)
    peak: float  # the highest attention of one of its patches
    cells: tuple[tuple[int, int], ...] = field(default=(), repr=False)  # (x, y) level-0 corners of its patches
    patch_size: int = 0

    def box(self, pad: float = 0.0) -> dict[str, float]:
        """The bounding box as {x, y, w, h}, grown by ``pad`` times its size on every side (for a close-up)."""
        px, py = self.w * pad, self.h * pad
        return {"x": self.x - px, "y": self.y - py, "w": self.w + 2 * px, "h": self.h + 2 * py}

    def outline(self) -> list[tuple[int, int, int, int]]:
        """The region's outer and inner borders as level-0 segments (x0, y0, x1, y1) along the patch grid."""
        s = self.patch_size
        cells = set(self.cells)
        segs = []
        for x, y in self.cells:
            if (x, y - s) not in cells:
                segs.append((x, y, x + s, y))
            if (x, y + s) not in cells:
                segs.append((x, y + s, x + s, y + s))
            if (x - s, y) not in cells:
                segs.append((x, y, x, y + s))
            if (x + s, y) not in cells:
                segs.append((x + s, y, x + s, y + s))
        return segs


def top_regions(values: np.ndarray, coords: np.ndarray, patch_size: int, top: float = 0.1, gap: int = 1,
                limit: int = 5) -> list[Region]:
    """The ``limit`` regions holding the most attention.

    ``values``: attention per patch (N,); ``coords``: level-0 top-left corners (N, 2) as (x, y); ``patch_size``:
    the patch side in level-0 pixels; ``top``: the fraction of patches counted as high attention (at least one);
    ``gap``: patches this many grid steps apart still join one region (0 = only touching patches).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if len(values) != len(coords):
        raise InputError(f"attention: {len(values)} values for {len(coords)} patch positions")
    if patch_size <= 0:
        raise InputError(f"attention: patch size {patch_size} is not positive")
    if not 0 < top <= 1:
        raise InputError(f"top fraction {top}: must be in (0, 1]")
    ok = np.isfinite(values)
    values, coords = values[ok], coords[ok]
    if len(values) == 0:
        return []
    total = float(np.clip(values, 0, None).sum()) or 1.0
    k = max(1, int(round(top * len(values))))
    keep = np.argsort(-values, kind="stable")[:k]
    origin = coords.min(axis=0)
    grid = np.rint((coords - origin) / patch_size).astype(np.int64)
    shape = tuple(int(v) + 1 for v in grid.max(axis=0)[::-1])  # rows (y), cols (x)
    mask = np.zeros(shape, dtype=bool)
    mask[grid[keep, 1], grid[keep, 0]] = True
    grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=gap) if gap > 0 else mask
    labels, n = ndimage.label(grown, structure=np.ones((3, 3), bool))
    lab = labels[grid[keep, 1], grid[keep, 0]]
    found = []
    for r in range(1, n + 1):
        idx = keep[lab == r]
        if len(idx) == 0:
            continue
        c = coords[idx]
        x0, y0 = c.min(axis=0)
        x1, y1 = c.max(axis=0) + patch_size
        share = float(np.clip(values[idx], 0, None).sum()) / total
        found.append((share, float(values[idx].max()), int(x0), int(y0), int(x1 - x0), int(y1 - y0), c))
    found.sort(key=lambda t: (-t[0], -t[1], t[3], t[2]))
    return [Region(rank=i + 1, x=x, y=y, w=w, h=h, n_patches=len(c), share=share, peak=peak,
                   cells=tuple((int(a), int(b)) for a, b in c), patch_size=int(patch_size))
            for i, (share, peak, x, y, w, h, c) in enumerate(found[:limit])]
