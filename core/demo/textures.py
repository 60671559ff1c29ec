"""Periodic H&E-like texture sheets for the demo cohort: stroma, five tumour morphologies and outlier tissues.

A sheet is a square, seamlessly tileable patch of tissue (``SHEET_UM`` microns a side) drawn as stain
concentrations (haematoxylin ``h``, eosin ``e``) and coloured by Beer-Lambert optical density. Sizes are in
microns and converted with the pixel size, so a 0.25-mpp TMA sheet shows the same structures as a 0.5-mpp one
at twice the pixels. Everything is periodic (FFT noise, wrapped splats, periodic nearest-centre fields), so a
slide is composed by tiling sheets without seams. Pure numpy/scipy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial import cKDTree

SHEET_UM = 512.0
PATTERNS = ("clear_cells", "glands", "solid_pleomorphic", "papillae", "mucin_pools")
OUTLIER_KINDS = ("ihc", "lymphoid", "trichrome")

# optical density per unit concentration (R, G, B)
HAEM = np.array([0.65, 0.72, 0.30])
EOSIN = np.array([0.10, 0.85, 0.35])
DAB = np.array([0.27, 0.57, 0.78])
ANILINE_BLUE = np.array([0.85, 0.40, 0.10])


@dataclass(frozen=True)
class Stain:
    """Two stain vectors (nuclear, counter) and their strengths; jittered per slide."""

    nuclear: np.ndarray
    counter: np.ndarray
    nuclear_scale: float = 1.0
    counter_scale: float = 1.0


def jittered_stain(rng: np.random.Generator, kind: str = "he") -> Stain:
    """A per-slide stain: H&E by default, ``ihc`` (haematoxylin + DAB) or ``trichrome`` for outliers."""
    counter = {"he": EOSIN, "ihc": DAB, "trichrome": ANILINE_BLUE}[kind]
    nuc = HAEM * rng.uniform(0.9, 1.1, 3)
    cou = counter * rng.uniform(0.88, 1.12, 3)
    strength = {"he": 1.0, "ihc": 1.8, "trichrome": 1.2}[kind]  # DAB on a light counterstain reads darker
    return Stain(nuc, cou, float(rng.uniform(0.85, 1.15)), strength * float(rng.uniform(0.85, 1.15)))


# --- periodic building blocks -------------------------------------------------------------------------------
def smooth_noise(rng: np.random.Generator, n: int, scale_px: float, aspect: float = 1.0,
                 angle: float = 0.0) -> np.ndarray:
    """Periodic Gaussian-filtered white noise of unit std; blobs ~``scale_px`` wide (stretched by ``aspect``)."""
    white = rng.standard_normal((n, n)).astype(np.float32)
    fy = np.fft.fftfreq(n).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    c, s = np.cos(angle), np.sin(angle)
    u, v = fx * c + fy * s, -fx * s + fy * c  # u along the stretch direction
    sig = scale_px / 2.5
    filt = np.exp(-2 * (np.pi * sig) ** 2 * ((u * aspect) ** 2 + v ** 2))
    out = sfft.irfft2(sfft.rfft2(white) * filt.astype(np.float32), s=(n, n)).astype(np.float32)
    return out / (out.std() + 1e-8)


def jittered_points(rng: np.random.Generator, n: int, spacing: float, jitter: float = 0.45) -> np.ndarray:
    """Points on a jittered square grid of ``spacing`` px covering the periodic sheet (M x 2, x/y)."""
    k = max(1, int(round(n / spacing)))
    step = n / k
    g = (np.arange(k) + 0.5) * step
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    pts += rng.uniform(-jitter, jitter, pts.shape) * step
    return np.mod(pts, n)


def splat(n: int, pts: np.ndarray, a: np.ndarray, b: np.ndarray, angle: np.ndarray, weight: np.ndarray,
          ring: float = 0.0) -> np.ndarray:
    """Sum of soft ellipses (semi-axes ``a`` along ``angle``, ``b`` across) at ``pts``, wrapped on the sheet.

    ``ring`` > 0 draws concentric lamination (psammoma bodies) of that period in px instead of a solid disk.
    """
    out = np.zeros(n * n, np.float32)
    if len(pts) == 0:
        return out.reshape(n, n)
    r = int(np.ceil(max(a.max(), b.max()))) + 2
    off = np.arange(-r, r + 1, dtype=np.float32)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    cx, cy = np.floor(pts[:, 0]).astype(np.int64), np.floor(pts[:, 1]).astype(np.int64)
    fx, fy = (pts[:, 0] - cx).astype(np.float32), (pts[:, 1] - cy).astype(np.float32)
    dx = ox[None] - fx[:, None, None]
    dy = oy[None] - fy[:, None, None]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = dx * c + dy * s, -dx * s + dy * c
    q = np.sqrt((u / a[:, None, None]) ** 2 + (v / b[:, None, None]) ** 2)
    val = np.clip((1.0 - q) * b[:, None, None] + 0.5, 0.0, 1.0)  # ~1 px anti-aliased edge
    if ring > 0:
        rr = q * a[:, None, None]
        val = val * (0.55 + 0.45 * np.cos(2 * np.pi * rr / ring))
    val *= weight[:, None, None].astype(np.float32)
    iy = np.mod(cy[:, None, None] + oy[None].astype(np.int64), n)
    ix = np.mod(cx[:, None, None] + ox[None].astype(np.int64), n)
    out += np.bincount((iy * n + ix).ravel(), weights=val.ravel(), minlength=n * n).astype(np.float32)
    return out.reshape(n, n)


def nearest_field(n: int, centres: np.ndarray, radii: np.ndarray, step: int = 4) -> np.ndarray:
    """Periodic distance to the nearest centre divided by its radius (0 at a centre, 1 on its outline).

    Computed on a grid ``step`` times coarser and upsampled (bilinear), which is smooth enough for outlines.
    """
    m = n // step
    g = (np.arange(m) + 0.5) * step
    xx, yy = np.meshgrid(g, g)
    tree = cKDTree(np.mod(centres, n), boxsize=n)
    d, idx = tree.query(np.stack([xx.ravel(), yy.ravel()], 1), k=2)
    # power-like normalisation: pick the centre with the smallest d/r among the two nearest
    q = d / radii[idx]
    pick = np.argmin(q, 1)
    return upsample(q[np.arange(len(q)), pick].reshape(m, m).astype(np.float32), step)


def voronoi_edges(n: int, centres: np.ndarray, step: int = 2) -> np.ndarray:
    """Periodic distance (px) from each pixel to the nearest Voronoi edge (d2 - d1) / 2, upsampled."""
    m = n // step
    g = (np.arange(m) + 0.5) * step
    xx, yy = np.meshgrid(g, g)
    d, _ = cKDTree(np.mod(centres, n), boxsize=n).query(np.stack([xx.ravel(), yy.ravel()], 1), k=2)
    return upsample(((d[:, 1] - d[:, 0]) / 2).reshape(m, m).astype(np.float32), step)


def upsample(field: np.ndarray, factor: int) -> np.ndarray:
    """Periodic bilinear upsampling by an integer factor."""
    if factor == 1:
        return field
    return ndimage.zoom(field, factor, order=1, mode="grid-wrap", grid_mode=True).astype(np.float32)


def colourise(h: np.ndarray, e: np.ndarray, stain: Stain, rng: np.random.Generator) -> np.ndarray:
    """Stain concentrations -> RGB uint8 by Beer-Lambert, with a little per-pixel grain."""
    n = h.shape[0]
    grain = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), 0.8, mode="wrap")
    grain = 1.0 + 0.35 * grain
    hh = np.clip(h, 0, 2.2) * grain * stain.nuclear_scale
    ee = np.clip(e, 0, 1.5) * (2.0 - grain) * stain.counter_scale
    od = hh[..., None] * stain.nuclear[None, None] + ee[..., None] * stain.counter[None, None] + 0.03
    return np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)


# --- tissues -----------------------------------------------------------------------------------------------
class _Sheet:
    """Drawing context: sheet size in px and micron->px conversion."""

    def __init__(self, rng: np.random.Generator, mpp: float, sheet_um: float = SHEET_UM) -> None:
        self.rng = rng
        self.px = 1.0 / mpp
        self.n = int(round(sheet_um * self.px / 16)) * 16

    def um(self, v: float) -> float:
        return v * self.px

    def nuclei(self, pts: np.ndarray, a_um: tuple[float, float], b_um: tuple[float, float],
               angle: np.ndarray | float | None = None, weight: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        rng, k = self.rng, len(pts)
        a = rng.uniform(*a_um, k) * self.px
        b = np.minimum(rng.uniform(*b_um, k) * self.px, a)
        ang = rng.uniform(0, np.pi, k) if angle is None else np.broadcast_to(np.asarray(angle, float), (k,))
        return splat(self.n, pts, a, b, ang, rng.uniform(*weight, k))


def stroma(ctx: _Sheet) -> tuple[np.ndarray, np.ndarray]:
    """Pink fibrous stroma with wavy collagen, small clefts and sparse spindle nuclei."""
    rng, n = ctx.rng, ctx.n
    theta = rng.uniform(0, np.pi)
    fib = smooth_noise(rng, n, ctx.um(3), aspect=8, angle=theta)
    loose = smooth_noise(rng, n, ctx.um(60))
    e = 0.42 + 0.13 * np.tanh(fib) + 0.03 * loose
    cleft = smooth_noise(rng, n, ctx.um(4), aspect=6, angle=theta) > 1.9
    e = np.where(cleft, e * 0.15, e)
    pts = jittered_points(rng, n, ctx.um(24), 0.5)
    h = ctx.nuclei(pts, (4.5, 7.0), (1.3, 2.0), theta + rng.normal(0, 0.25, len(pts)), (0.8, 1.1))
    return h + 0.04, e


def clear_cells(ctx: _Sheet) -> tuple[np.ndarray, np.ndarray]:
    """CC: sheets of polygonal cells with water-clear cytoplasm, crisp pink membranes, round central nuclei."""
    rng, n = ctx.rng, ctx.n
    cells = jittered_points(rng, n, ctx.um(21), 0.4)
    edge = voronoi_edges(n, cells, step=max(1, int(ctx.px)))
    membrane = np.clip(1.0 - (edge - ctx.um(0.6)) / ctx.um(0.8), 0, 1)
    e = 0.05 + 0.04 * smooth_noise(rng, n, ctx.um(3)).clip(-1, 2) + 0.55 * membrane
    nuc_pts = cells + rng.normal(0, ctx.um(1.5), cells.shape)
    h = ctx.nuclei(nuc_pts, (3.2, 4.2), (2.8, 3.6), None, (1.0, 1.3)) + 0.08 * membrane
    return h, e


def round_structures(ctx: _Sheet, spacing_um: float, jitter: float, radius_um: tuple[float, float],
                     wobble: float, wobble_um: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round structures (glands, papillae, pools) on a jittered grid: their centres, radii and the normalised
    distance field ``q`` (< 1 inside a structure), its outline wobbled by smooth noise."""
    rng, n = ctx.rng, ctx.n
    centres = jittered_points(rng, n, ctx.um(spacing_um), jitter)
    radii = rng.uniform(ctx.um(radius_um[0]), ctx.um(radius_um[1]), len(centres))
    q = nearest_field(n, centres, radii, step=max(1, int(2 * ctx.px)))
    return centres, radii, q + wobble * smooth_noise(rng, n, ctx.um(wobble_um))


def glands(ctx: _Sheet) -> tuple[np.ndarray, np.ndarray]:
    """EC: back-to-back round glands lined by stratified columnar nuclei around empty lumens."""
    rng = ctx.rng
    centres, radii, q = round_structures(ctx, 88, 0.25, (37, 46), 0.06, 14)
    epi = (q > 0.55) & (q < 1.0)
    lumen = q <= 0.55
    e = np.where(epi, 0.48, np.where(lumen, 0.04, 0.36)).astype(np.float32)
    h = np.where(epi, 0.22, 0.05).astype(np.float32)
    pts, ang = [], []
    for (cx, cy), r in zip(centres, radii):
        k = int(2 * np.pi * r * 0.75 / ctx.um(3.2))
        t = rng.uniform(0, 2 * np.pi, k)
        rr = r * rng.uniform(0.64, 0.9, k)
        pts.append(np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], 1))
        ang.append(t)
    h = h + ctx.nuclei(np.concatenate(pts), (4.0, 5.5), (1.6, 2.2), np.concatenate(ang), (1.0, 1.3))
    return h, e


def solid_pleomorphic(ctx: _Sheet) -> tuple[np.ndarray, np.ndarray]:
    """HGSC: solid sheets of crowded, large, dark, pleomorphic nuclei with slit-like spaces."""
    rng, n = ctx.rng, ctx.n
    slits = np.abs(smooth_noise(rng, n, ctx.um(5), aspect=7, angle=rng.uniform(0, np.pi))) < 0.05
    slits &= smooth_noise(rng, n, ctx.um(40)) > 0.3
    e = np.where(slits, 0.03, 0.34).astype(np.float32)
    pts = jittered_points(rng, n, ctx.um(10.5), 0.45)
    h = np.where(slits, 0.02, 0.28) + ctx.nuclei(pts, (3.5, 7.5), (2.8, 5.0), None, (1.1, 1.8))
    mit = jittered_points(rng, n, ctx.um(90), 0.5)
    h = h + ctx.nuclei(mit, (2.0, 3.5), (1.2, 2.0), None, (1.6, 2.0))
    return h, e


def papillae(ctx: _Sheet) -> tuple[np.ndarray, np.ndarray]:
    """LGSC: small round papillae of uniform small nuclei in clear spaces, with psammoma bodies."""
    rng, n = ctx.rng, ctx.n
    _, _, q = round_structures(ctx, 56, 0.3, (17, 24), 0.07, 10)
    inside = q < 1.0
    core = q < 0.35
    e = np.where(core, 0.52, np.where(inside, 0.30, 0.03)).astype(np.float32)
    nuc = jittered_points(rng, n, ctx.um(6.5), 0.25)
    qi = q[nuc[:, 1].astype(int) % n, nuc[:, 0].astype(int) % n]
    nuc = nuc[(qi < 0.92) & (qi > 0.4)]
    h = np.where(inside, 0.12, 0.02) + ctx.nuclei(nuc, (2.3, 2.7), (2.0, 2.4), None, (0.9, 1.05))
    psam = jittered_points(rng, n, ctx.um(170), 0.4)
    k = len(psam)
    r = rng.uniform(ctx.um(9), ctx.um(15), k)
    h = h + splat(n, psam, r, r, np.zeros(k), np.full(k, 0.9), ring=ctx.um(2.6))
    return h, e


def mucin_pools(ctx: _Sheet) -> tuple[np.ndarray, np.ndarray]:
    """MC: large pools of pale blue-grey mucin lined by tall columnar cells with basal nuclei."""
    rng, n = ctx.rng, ctx.n
    centres, radii, q = round_structures(ctx, 128, 0.2, (50, 64), 0.04, 20)
    wisp = smooth_noise(rng, n, ctx.um(6), aspect=4, angle=rng.uniform(0, np.pi))
    pool = q < 0.86
    lining = (q >= 0.86) & (q < 1.0)
    e = np.where(pool, 0.06 + 0.03 * wisp.clip(-1, 2), np.where(lining, 0.22, 0.38)).astype(np.float32)
    h = np.where(pool, 0.16 + 0.05 * wisp.clip(-1, 2), np.where(lining, 0.07, 0.05)).astype(np.float32)
    pts, ang = [], []
    for (cx, cy), r in zip(centres, radii):
        k = int(2 * np.pi * r / ctx.um(3.6))
        t = (np.arange(k) + rng.uniform(0, 1)) * 2 * np.pi / k
        rr = r * rng.uniform(0.955, 0.975, k)
        pts.append(np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], 1))
        ang.append(t)
    h = h + ctx.nuclei(np.concatenate(pts), (2.6, 3.2), (1.5, 1.8), np.concatenate(ang), (1.1, 1.3))
    return h, e


def lymphoid(ctx: _Sheet, follicle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Outlier: dense lymphoid tissue of packed small round dark nuclei (paler and sparser in a follicle)."""
    rng, n = ctx.rng, ctx.n
    pts = jittered_points(rng, n, ctx.um(6.2), 0.45)
    if follicle:
        pts = pts[rng.random(len(pts)) < 0.45]
    # haematoxylin-dominated: blue-purple, almost no eosinophilic cytoplasm between the cells
    h = 0.28 + ctx.nuclei(pts, (2.4, 3.0) if not follicle else (3.0, 3.8), (2.2, 2.8), None, (1.4, 1.7))
    e = np.full((n, n), 0.05 if not follicle else 0.15, np.float32)
    return h, e


def follicle(ctx: _Sheet) -> tuple[np.ndarray, np.ndarray]:
    """Outlier: the paler germinal centre of a lymphoid follicle."""
    return lymphoid(ctx, follicle=True)


TISSUES = {"stroma": stroma, "clear_cells": clear_cells, "glands": glands, "solid_pleomorphic": solid_pleomorphic,
           "papillae": papillae, "mucin_pools": mucin_pools, "lymphoid": lymphoid,
           "follicle": follicle}


def render_sheet(tissue: str, rng: np.random.Generator, mpp: float, stain: Stain,
                 sheet_um: float = SHEET_UM) -> np.ndarray:
    """One periodic RGB sheet (n x n x 3 uint8) of ``tissue``, ``sheet_um`` microns a side at ``mpp``."""
    ctx = _Sheet(rng, mpp, sheet_um)
    h, e = TISSUES[tissue](ctx)
    return colourise(h.astype(np.float32), e.astype(np.float32), stain, rng)
