"""Draw one demo slide: tissue outline and tumour fields, compose periodic texture sheets, write the file.

A slide is planned as a ``SlidePlan`` (picklable, so a process pool can draw it) and drawn in 256-row strips:
each strip is composed at level 0, written as JPEG tiles and halved into the next level, so memory stays small
and a 6000-pixel slide needs no full-size float arrays. The tumour mask is the same low-resolution field that
drives the drawing, evaluated at ``MASK_DS`` pixel centres, so it is aligned with level 0 by construction.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from core.demo.textures import PATTERNS, jittered_stain, render_sheet, smooth_noise

TILE = 256
MASK_DS = 16  # level-0 pixels per tumour-mask pixel
MIN_LEVEL_SIDE = 512
BACKGROUND = np.array([244.0, 243.0, 246.0], np.float32)
TISSUE_THRESHOLD = 0.0


@dataclass(frozen=True)
class SlidePlan:
    """Everything needed to draw one slide deterministically."""

    image_id: str
    kind: str  # "wsi" or "tma"
    pattern: str  # a tumour pattern from PATTERNS, or an outlier kind ("ihc", "lymphoid", "trichrome")
    fmt: str  # "tiff" or "png"
    width: int
    height: int
    mpp: float
    tumour_fraction: float
    seed: tuple[int, ...]
    sheet_um: float = 512.0  # period of the texture sheets; smaller draws faster and repeats sooner
    tumour_um: float | None = None  # blob size of the tumour field; None: 160 on TMAs, 320 on WSIs (large regions)
    tumour_detail: float = 0.35  # weight of the 60 um detail added to the tumour field (lower: smoother outlines)
    tumour_margin_um: float = 0.0  # keep tumour this far inside the tissue edge (compact islands, not edge slivers)

    @property
    def is_outlier(self) -> bool:
        return self.pattern not in PATTERNS


@dataclass(frozen=True)
class DrawnSlide:
    """What was written for one slide."""

    image_id: str
    path: Path
    width: int
    height: int
    tumour_fraction: float  # of the tissue, measured on the mask


# --- fields ------------------------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, gh: int, gw: int, scale: float) -> np.ndarray:
    n = int(2 ** np.ceil(np.log2(max(gh, gw, 8))))
    return smooth_noise(rng, n, scale)[:gh, :gw]


def layout_fields(plan: SlidePlan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue field (> 0 inside tissue) and tumour field (> 0 inside tumour) on the ``MASK_DS`` grid."""
    gh, gw = -(-plan.height // MASK_DS), -(-plan.width // MASK_DS)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    ypx, xpx = (yy + 0.5) * MASK_DS, (xx + 0.5) * MASK_DS
    um = plan.mpp * MASK_DS  # microns per grid cell
    if plan.kind == "tma":
        r = np.hypot(xpx - plan.width / 2, ypx - plan.height / 2) / (0.44 * min(plan.width, plan.height))
        tissue = 1.0 - r + 0.05 * _noise(rng, gh, gw, 60 / um) + 0.02 * _noise(rng, gh, gw, 15 / um)
        tissue -= 0.03 * np.clip(_noise(rng, gh, gw, 25 / um) - 1.8, 0, None) * 10  # a few tears
    else:
        bump = np.zeros((gh, gw), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.3, 0.7) * plan.width, rng.uniform(0.3, 0.7) * plan.height
            rx, ry = rng.uniform(0.22, 0.36) * plan.width, rng.uniform(0.22, 0.36) * plan.height
            ang = rng.uniform(0, np.pi)
            dx, dy = xpx - cx, ypx - cy
            u, v = dx * np.cos(ang) + dy * np.sin(ang), -dx * np.sin(ang) + dy * np.cos(ang)
            bump = np.maximum(bump, 1.0 - np.hypot(u / rx, v / ry))
        tissue = bump + 0.16 * _noise(rng, gh, gw, 500 / um) + 0.05 * _noise(rng, gh, gw, 90 / um)
        tissue -= 0.4 * (_noise(rng, gh, gw, 40 / um) > 2.3)  # fat vacuoles and tears
        edge = np.minimum(np.minimum(xpx, plan.width - xpx), np.minimum(ypx, plan.height - ypx))
        tissue -= np.clip(0.07 - edge / min(plan.width, plan.height), 0, None) * 12  # keep a glass margin
    inside = tissue > TISSUE_THRESHOLD
    tumour = np.full((gh, gw), -1.0, np.float32)
    if not plan.is_outlier and inside.any():
        scale = plan.tumour_um or (160 if plan.kind == "tma" else 320)
        field = _noise(rng, gh, gw, scale / um) + plan.tumour_detail * _noise(rng, gh, gw, 60 / um)
        if plan.tumour_margin_um > 0:  # lower the field near the tissue's edge (and holes), down to -3 on it
            depth = ndimage.distance_transform_edt(inside) * um
            field -= 3.0 * np.clip(1.0 - depth / plan.tumour_margin_um, 0.0, None)
        cut = np.quantile(field[inside], 1.0 - plan.tumour_fraction)
        tumour = (field - cut).astype(np.float32)
    return tissue.astype(np.float32), tumour


def tumour_mask(tissue: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """Boolean tumour mask on the ``MASK_DS`` grid."""
    return (tissue > TISSUE_THRESHOLD) & (tumour > 0)


# --- composition -------------------------------------------------------------------------------------------
class _Composer:
    def __init__(self, plan: SlidePlan, rng: np.random.Generator) -> None:
        self.plan = plan
        self.tissue, self.tumour = layout_fields(plan, rng)
        self.mix = _noise(rng, *self.tissue.shape, 250 / (plan.mpp * MASK_DS))
        self.mod = _noise(rng, *self.tissue.shape, 400 / (plan.mpp * MASK_DS))
        kind = {"ihc": "ihc", "trichrome": "trichrome"}.get(plan.pattern, "he")
        stain = jittered_stain(rng, kind)
        if plan.is_outlier:  # outliers draw their own "lesion" regions but their truth mask stays empty
            self.tumour = layout_fields(SlidePlan(**{**plan.__dict__, "pattern": PATTERNS[0]}), rng)[1]
        if plan.pattern == "lymphoid":  # follicles in a sea of lymphocytes
            normal = render_sheet("lymphoid", rng, plan.mpp, stain, plan.sheet_um)
            lesion = render_sheet("follicle", rng, plan.mpp, stain, plan.sheet_um)
        elif plan.is_outlier:  # a different stain over ordinary-looking tissue with a lesion
            normal = render_sheet("stroma", rng, plan.mpp, stain, plan.sheet_um)
            lesion = render_sheet(PATTERNS[int(rng.integers(len(PATTERNS)))], rng, plan.mpp, stain, plan.sheet_um)
        else:
            normal = render_sheet("stroma", rng, plan.mpp, stain, plan.sheet_um)
            lesion = render_sheet(plan.pattern, rng, plan.mpp, stain, plan.sheet_um)
        w = plan.width
        self.sheets = [self._wide(s, w) for s in (normal, _rot(normal), lesion, _rot(lesion))]
        self.offsets = rng.integers(0, normal.shape[0], (4, 2))
        self.roughness = smooth_noise(rng, 512, 6.0)
        self.rough_off = rng.integers(0, 512, 2)

    @staticmethod
    def _wide(sheet: np.ndarray, width: int) -> np.ndarray:
        n = sheet.shape[0]
        return np.tile(sheet, (1, -(-(width + n) // n), 1))

    def _field(self, field: np.ndarray, y0: int, y1: int) -> np.ndarray:
        img = Image.fromarray(field, mode="F")
        box = (0.0, y0 / MASK_DS, self.plan.width / MASK_DS, y1 / MASK_DS)
        return np.asarray(img.resize((self.plan.width, y1 - y0), Image.Resampling.BILINEAR, box=box))

    def _rows(self, i: int, y0: int, y1: int) -> Image.Image:
        sheet = self.sheets[i]
        n = sheet.shape[0]
        oy, ox = self.offsets[i]
        rows = np.take(sheet, np.arange(y0 + oy, y1 + oy) % n, axis=0)
        return Image.fromarray(np.ascontiguousarray(rows[:, ox:ox + self.plan.width]))

    def _ramp(self, field: np.ndarray, y0: int, y1: int, gain: float, extra: np.ndarray | float = 0.0) -> np.ndarray:
        v = self._field(field, y0, y1) + extra
        return np.clip(v * (gain * 255.0) + 127.5, 0.0, 255.0).astype(np.uint8)

    def strip(self, y0: int, y1: int) -> np.ndarray:
        """Level-0 RGB rows ``y0:y1`` (uint8): background, stroma and lesion blended by ramped fields."""
        w = self.plan.width
        ry = np.arange(y0 + self.rough_off[0], y1 + self.rough_off[0]) % 512
        rx = np.arange(self.rough_off[1], self.rough_off[1] + w) % 512
        a_t = self._ramp(self.tissue, y0, y1, 80.0, 0.012 * self.roughness[np.ix_(ry, rx)])
        bg = Image.new("RGB", (w, y1 - y0), tuple(int(v) for v in BACKGROUND))
        if not a_t.any():
            return np.asarray(bg)
        mix = Image.fromarray(self._ramp(self.mix, y0, y1, 6.0))
        x = Image.composite(self._rows(1, y0, y1), self._rows(0, y0, y1), mix)
        a_u = self._ramp(self.tumour, y0, y1, 25.0)
        if a_u.any():
            lesion = Image.composite(self._rows(3, y0, y1), self._rows(2, y0, y1), mix)
            x = Image.composite(lesion, x, Image.fromarray(a_u))
        # thinner tissue (low modulation) is paler: scale the tissue alpha by 0.85..1
        mod = np.clip(0.93 + 0.06 * self._field(self.mod, y0, y1), 0.8, 1.0)
        alpha = (a_t * mod).astype(np.uint8)
        return np.asarray(Image.composite(x, bg, Image.fromarray(alpha)))


def _rot(sheet: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(sheet.transpose(1, 0, 2)[:, ::-1])


def _halve(img: np.ndarray) -> np.ndarray:
    """2x2 box mean (level size = ceil(size / 2))."""
    return np.asarray(Image.fromarray(img).reduce(2))


def _tiles(strip: np.ndarray) -> Iterator[np.ndarray]:
    h, w = strip.shape[:2]
    for x in range(0, w, TILE):
        tile = strip[:, x:x + TILE]
        if tile.shape[0] != TILE or tile.shape[1] != TILE:
            pad = np.empty((TILE, TILE, 3), np.uint8)
            pad[:] = BACKGROUND.astype(np.uint8)
            pad[:h, :tile.shape[1]] = tile
            tile = pad
        yield tile


def _write_kwargs(mpp: float) -> dict:
    px_per_cm = 1e4 / mpp
    return dict(tile=(TILE, TILE), photometric="rgb", compression="jpeg", compressionargs={"level": 88},
                resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER", metadata=None, maxworkers=1)


def draw_slide(plan: SlidePlan, slides_dir: Path, masks_dir: Path) -> DrawnSlide:
    """Draw ``plan`` into ``slides_dir`` (TIFF pyramid or PNG) and its tumour mask PNG into ``masks_dir``."""
    rng = np.random.default_rng(list(plan.seed))
    comp = _Composer(plan, rng)
    mask = tumour_mask(comp.tissue, comp.tumour) if not plan.is_outlier else np.zeros(comp.tissue.shape, bool)
    inside = comp.tissue > TISSUE_THRESHOLD
    frac = float(mask.sum() / max(1, inside.sum()))
    w, h = plan.width, plan.height
    path = slides_dir / f"{plan.image_id}.{plan.fmt}"
    tmp = path.with_name(path.name + ".part")
    if plan.fmt == "png":
        full = np.concatenate([comp.strip(y, min(h, y + TILE)) for y in range(0, h, TILE)])
        Image.fromarray(full).save(tmp, format="PNG", compress_level=1)
    else:
        half_rows: list[np.ndarray] = []

        def level0() -> Iterator[np.ndarray]:
            for y in range(0, h, TILE):
                s = comp.strip(y, min(h, y + TILE))
                half_rows.append(_halve(s))
                yield from _tiles(s)

        with tifffile.TiffWriter(tmp, bigtiff=w * h * 3 > 2**31) as tif:
            tif.write(level0(), shape=(h, w, 3), dtype=np.uint8, subfiletype=0, **_write_kwargs(plan.mpp))
            level, mpp = np.concatenate(half_rows), plan.mpp * 2
            while True:
                tif.write(level, subfiletype=1, **_write_kwargs(mpp))
                if max(level.shape[:2]) <= MIN_LEVEL_SIDE:
                    break
                level, mpp = _halve(level), mpp * 2
    os.replace(tmp, path)
    mtmp = masks_dir / f".{plan.image_id}.png.part"
    Image.fromarray((mask * 255).astype(np.uint8)).save(mtmp, format="PNG")
    os.replace(mtmp, masks_dir / f"{plan.image_id}.png")
    return DrawnSlide(plan.image_id, path, w, h, frac)
