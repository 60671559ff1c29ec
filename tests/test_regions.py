"""Merging neighbouring high-attention patches into regions, against a hand-built attention map."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.viewer.regions import top_regions

S = 100  # patch side in level-0 pixels

# a 6 x 8 patch grid; digits are attention (x10), '.' is no patch (glass)
MAP = """
9 8 . 1 1 1 1 1
7 1 1 1 1 1 6 1
1 1 1 1 1 . 1 1
1 1 1 1 1 1 1 1
1 1 5 . 1 1 1 1
1 1 5 1 1 1 1 1
"""


def _map() -> tuple[np.ndarray, np.ndarray]:
    vals, coords = [], []
    for row, line in enumerate(MAP.strip().splitlines()):
        for col, ch in enumerate(line.split()):
            if ch != ".":
                vals.append(float(ch) / 10)
                coords.append((1000 + col * S, 2000 + row * S))  # an offset origin, as on a real slide
    return np.array(vals), np.array(coords)


def test_touching_patches_merge_into_ranked_regions() -> None:
    vals, coords = _map()
    regions = top_regions(vals, coords, S, top=6 / len(vals), gap=0)
    # the top six patches: 9, 8, 7 (one L-shaped region), 6 alone, 5 and 5 (one vertical pair)
    assert [r.n_patches for r in regions] == [3, 2, 1]
    first, second, third = regions
    assert (first.x, first.y, first.w, first.h) == (1000, 2000, 200, 200)
    assert (second.x, second.y, second.w, second.h) == (1200, 2400, 100, 200)
    assert (third.x, third.y, third.w, third.h) == (1600, 2100, 100, 100)
    assert first.share == pytest.approx(2.4 / vals.sum())
    assert [r.rank for r in regions] == [1, 2, 3] and first.peak == pytest.approx(0.9)
    assert sorted(first.cells) == [(1000, 2000), (1000, 2100), (1100, 2000)]


def test_gap_joins_patches_one_step_apart_and_limit_keeps_the_top() -> None:
    vals = np.array([1.0, 0.9, 0.8, 0.1])
    coords = np.array([[0, 0], [2 * S, 0], [10 * S, 10 * S], [5 * S, 5 * S]])
    assert [r.n_patches for r in top_regions(vals, coords, S, top=0.75, gap=0)] == [1, 1, 1]
    merged = top_regions(vals, coords, S, top=0.75, gap=1)
    assert [r.n_patches for r in merged] == [2, 1]
    assert (merged[0].x, merged[0].w) == (0, 3 * S)  # the bounding box spans the gap
    assert len(top_regions(vals, coords, S, top=0.75, gap=0, limit=2)) == 2


def test_outline_follows_the_region_border() -> None:
    vals, coords = _map()
    first = top_regions(vals, coords, S, top=6 / len(vals), gap=0)[0]
    segs = first.outline()
    assert len(segs) == 8  # an L of three squares has 8 unit edges on its border
    assert (1000, 2000, 1100, 2000) in segs and (1100, 2100, 1200, 2100) in segs
    box = first.box(pad=0.5)
    assert box == {"x": 900.0, "y": 1900.0, "w": 400.0, "h": 400.0}


def test_bad_and_empty_input() -> None:
    assert top_regions(np.array([]), np.zeros((0, 2)), S) == []
    assert top_regions(np.array([np.nan]), np.zeros((1, 2)), S) == []
    with pytest.raises(InputError, match="3 values for 2 patch positions"):
        top_regions(np.ones(3), np.zeros((2, 2)), S)
    with pytest.raises(InputError, match="top fraction"):
        top_regions(np.ones(2), np.zeros((2, 2)), S, top=0)
