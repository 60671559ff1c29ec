"""Shared fixtures: the real sample slides and a writer of synthetic pyramidal TIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

SHARED_SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
if not SHARED_SLIDES.is_dir():  # CI clones the repo with shared/ beside it; locally it is /work/shared
    SHARED_SLIDES = Path("/work/shared/data/slides")

SVS = SHARED_SLIDES / "CMU-1-Small-Region.svs"
PYRAMID_TIFF = SHARED_SLIDES / "CMU-1-Small-Region.pyramid.tiff"
DICOM = SHARED_SLIDES / "dicom-camelyon-overview" / "camelyon-overview.dcm"


def write_pyramid_tiff(path: Path, rgb: np.ndarray, mpp: float | None = 0.5, levels: int = 3, tile: int = 256,
                       compression: str = "jpeg") -> Path:
    """Write ``rgb`` as a tiled pyramidal TIFF (one page per level), with resolution tags when ``mpp`` is given."""
    from PIL import Image

    kwargs = {}
    if mpp is not None:
        px_per_cm = 1e4 / mpp
        kwargs = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        img = rgb
        for i in range(levels):
            tif.write(img, tile=(tile, tile), photometric="rgb", compression=compression,
                      subfiletype=0 if i == 0 else 1, metadata=None, **kwargs)
            if min(img.shape[:2]) < 2 * tile:
                break
            img = np.asarray(Image.fromarray(img).reduce(2))
            if mpp is not None:
                mpp_l = mpp * (rgb.shape[1] / img.shape[1])
                px_per_cm = 1e4 / mpp_l
                kwargs = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
    return path


def synthetic_tissue(width: int, height: int, seed: int = 0) -> np.ndarray:
    """White glass with a pink, nucleus-speckled ellipse of 'tissue' in the middle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx - width / 2) / (width * 0.35)) ** 2 + ((yy - height / 2) / (height * 0.35)) ** 2 <= 1
    img = np.full((height, width, 3), 245, np.uint8)
    pink = np.array([225, 140, 180], np.uint8)
    img[inside] = pink
    nuclei = inside & (rng.random((height, width)) < 0.02)
    img[nuclei] = (80, 40, 120)
    return img


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-level pyramidal TIFF (1501 x 1203, odd sizes) with mpp 0.5 and tissue in the middle."""
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.tiff"
    return write_pyramid_tiff(path, synthetic_tissue(1501, 1203), mpp=0.5)
