"""The Hamamatsu NDPI sample (../shared/data/slides/test3-TRITC-2.ndpi, CC BY 4.0, (c) Manuel Stritt; see SOURCES.md
there): read through OpenSlide by the Slide facade, Deep Zoom tiles equal OpenSlide's own generator."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_SLIDES
from core.slides.slide import open_slide

NDPI = SHARED_SLIDES / "test3-TRITC-2.ndpi"
pytestmark = pytest.mark.skipif(not NDPI.is_file(), reason="NDPI sample not in ../shared/data/slides")


def test_ndpi_metadata() -> None:
    s = open_slide(NDPI)
    assert s.vendor == "hamamatsu"
    assert s.dimensions == (3968, 4864) and s.level_count == 7
    assert s.mpp == pytest.approx(0.228, rel=1e-2) and s.objective_power == 40
    assert "macro" in s.associated_image_names


def test_ndpi_deepzoom_tiles_match_openslide() -> None:
    import io

    import openslide
    from openslide.deepzoom import DeepZoomGenerator
    from PIL import Image

    s = open_slide(NDPI)
    ref = DeepZoomGenerator(openslide.OpenSlide(str(NDPI)), tile_size=254, overlap=1, limit_bounds=False)
    top = ref.level_count - 1
    for level, col, row in [(top, 0, 0), (top, 5, 7), (top - 2, 1, 1), (top - 5, 0, 0)]:
        tile = s.deepzoom_tile(level, col, row)
        img = Image.open(io.BytesIO(tile)) if isinstance(tile, bytes) else tile
        want = np.asarray(ref.get_tile(level, (col, row)).convert("RGB"), np.int16)
        got = np.asarray(img.convert("RGB"), np.int16)
        assert got.shape == want.shape
        assert np.abs(got - want).mean() < 2.0, (level, col, row)  # OpenSlide paints both: same pixels, JPEG aside
