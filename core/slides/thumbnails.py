"""Slide thumbnails for lists and galleries, without converting anything.

UBC-OCEAN ships a ready-made ``<image_id>_thumbnail.png`` for each slide (in ``train_thumbnails/`` beside
``train_images/``): lists use it instead of opening a 5-gigapixel PNG. Other slides are opened (OpenSlide formats,
converted images); an image that is not converted yet and has no thumbnail file gets none.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from PIL import Image

from core.slides.slide import THUMBNAIL_SUFFIX, _rgba_to_rgb, needs_conversion, open_slide

log = logging.getLogger(__name__)


def sidecar_thumbnail(path: str | Path) -> Path | None:
    """A ready-made thumbnail of the slide, UBC-OCEAN style: ``<id>_thumbnail.png`` beside the slide or in a
    sibling folder whose name ends in ``thumbnails`` (``train_images/4.png`` -> ``train_thumbnails/4_thumbnail.png``)."""
    path = Path(path)
    name = f"{path.stem}{THUMBNAIL_SUFFIX}"
    folders = [path.parent]
    with contextlib.suppress(OSError):
        folders += sorted(p for p in path.parent.parent.iterdir()
                          if p.is_dir() and p.name.lower().endswith("thumbnails") and p != path.parent)
    for folder in folders:
        for suffix in (".png", ".jpg", ".jpeg"):
            candidate = folder / (name + suffix)
            if candidate.is_file():
                return candidate
    return None


def quick_thumbnail(path: str | Path, size: int, cache_dir: str | Path | None = None) -> Image.Image | None:
    """An RGB thumbnail whose longest side is ``size`` without converting anything: the slide's ready-made
    thumbnail file if it has one, else the slide (or its cached pyramid); None for a plain image or other TIFF
    not converted yet (a list of thumbnails must never start conversions). ``SlideError`` if unreadable."""
    side = sidecar_thumbnail(path)
    if side is not None:
        try:
            with Image.open(side) as im:
                im.draft("RGB", (size, size))
                img = _rgba_to_rgb(im.convert("RGBA") if im.mode in ("P", "LA", "RGBA") else im.convert("RGB"))
            img.thumbnail((size, size), Image.Resampling.LANCZOS)
            return img
        except (OSError, ValueError, SyntaxError) as exc:
            log.warning("%s: thumbnail file unreadable (%s); using the slide", side, exc)
    if needs_conversion(path, cache_dir):
        return None
    slide = open_slide(path, cache_dir=cache_dir, validate=False)
    try:
        return slide.thumbnail(size)
    finally:
        slide.close()
