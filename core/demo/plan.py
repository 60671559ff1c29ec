"""The built-in demo cohort: a synthetic ovarian-subtype study with ground truth.

``build_demo`` writes a complete cohort folder (slides, labels with deliberate noise, outliers, tumour masks,
``cohort.toml``) so the app works on a fresh machine and every quality claim can be checked against truth.
WSIs are JPEG-tiled pyramidal TIFFs at 0.5 mpp; TMA cores are 0.25 mpp, half of them plain PNGs as UBC-OCEAN
ships them. A slide's class is decided only by the morphology of its tumour regions (see ``core.demo.textures``).
The folder is built next to the destination and renamed into place, so an interrupted build never looks complete.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from core.cohort.cohort_file import cohort_from_dict
from core.demo.draw import MASK_DS, DrawnSlide, SlidePlan, draw_slide
from core.demo.textures import OUTLIER_KINDS, PATTERNS
from core.errors import InputError

DEFAULT_CLASSES = ("CC", "EC", "HGSC", "LGSC", "MC")
OUTLIER_LABEL = "Other"
# WSIs of 1.5-2.5 mm at 0.5 mpp: about 7,000 patches in all, so a 2-core machine builds the whole demo within four
# minutes of a first start (4000-6500 px gave 11,300 patches and 4.2 minutes; see README, bench firstrun)
FULL = {"n_wsi": 40, "n_tma": 10, "n_outliers": 4, "wsi_side": (3000, 5000), "tma_side": (2600, 3000),
        "sheet_um": (512.0, 384.0)}
TINY = {"n_wsi": 6, "n_tma": 2, "n_outliers": 1, "wsi_side": (1500, 2000), "tma_side": (1000, 1200),
        "sheet_um": (256.0, 192.0)}
WSI_MPP, TMA_MPP = 0.5, 0.25
# the tumour regime: "large" regions (the default cohort) or "small" foci (a few compact islands, the hard case)
FOCI = ("large", "small")
TUMOUR_FRACTION = {"large": {"wsi": (0.12, 0.38), "tma": (0.6, 0.9)},  # of each slide's tissue
                   "small": {"wsi": (0.02, 0.06), "tma": (0.10, 0.25)}}
# small foci: blobs of ~200 um (120 on a TMA core) with smooth outlines, kept inside the tissue's edge, so the
# tumour is one to a few compact islands rather than speckles or slivers along the edge (see core.demo.draw)
SMALL_FOCI_SHAPE = {"wsi": {"tumour_um": 200.0, "tumour_detail": 0.1, "tumour_margin_um": 150.0},
                    "tma": {"tumour_um": 120.0, "tumour_detail": 0.1, "tumour_margin_um": 60.0}}
TRUTH_COLUMNS = ("image_id", "true_label", "given_label", "is_noisy", "is_outlier", "is_tma", "mask_downsample",
                 "tumour_fraction", "pattern", "mpp", "format")
ProgressFn = Callable[[float, str], None]
PLAN_JSON = "truth/plan.json"  # how the cohort was planned (seed, counts, every slide id): what a full demo holds


@dataclass(frozen=True)
class PlannedSlide:
    """One slide of the cohort: how to draw it and what its labels are."""

    plan: SlidePlan
    true_label: str
    given_label: str
    is_noisy: bool

    @property
    def is_tma(self) -> bool:
        return self.plan.kind == "tma"


def sample_slides_dir() -> Path | None:
    """The folder of real sample slides (``$SLIDELENS_SAMPLES`` or ``shared/data/slides`` beside the repo)."""
    here = Path(__file__).resolve().parents[3] / "shared" / "data" / "slides"
    for cand in (os.environ.get("SLIDELENS_SAMPLES"), here, "/work/shared/data/slides"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def tumour_ranges(foci: str = "large", tumour_fraction: Sequence[float] | None = None
                  ) -> dict[str, tuple[float, float]]:
    """The tumour fraction ranges ``{"wsi": (lo, hi), "tma": (lo, hi)}`` of a regime; ``tumour_fraction`` replaces
    the WSI range. ``InputError`` (one line) for an unknown regime or a range outside 0 < lo <= hi < 1."""
    if foci not in FOCI:
        raise InputError(f"demo foci must be one of {', '.join(FOCI)}, got {foci!r}")
    ranges = dict(TUMOUR_FRACTION[foci])
    if tumour_fraction is not None:
        try:
            lo, hi = (float(v) for v in tumour_fraction)
        except (TypeError, ValueError):
            raise InputError(f"demo tumour fraction must be two numbers LO,HI, got {tumour_fraction!r}") from None
        if not 0.0 < lo <= hi < 1.0:
            raise InputError(f"demo tumour fraction LO,HI must satisfy 0 < LO <= HI < 1, got {lo:g},{hi:g}")
        ranges["wsi"] = (lo, hi)
    return ranges


def plan_cohort(seed: int = 0, n_wsi: int | None = None, n_tma: int | None = None, n_outliers: int | None = None,
                noise: float = 0.08, tiny: bool = False, classes: Sequence[str] = DEFAULT_CLASSES,
                foci: str = "large", tumour_fraction: Sequence[float] | None = None) -> list[PlannedSlide]:
    """Decide every slide (pattern, size, labels, label noise, tumour share) from the seed alone; nothing is drawn.

    ``foci``: "large" tumour regions (12-38% of a WSI's tissue, 60-90% of a TMA core's) or "small" foci (2-6%, and
    10-25%, drawn as a few compact islands); ``tumour_fraction=(lo, hi)`` replaces the WSI range. The random draws
    are the same in every regime, so the default cohort of a seed never changes.
    """
    ranges = tumour_ranges(foci, tumour_fraction)
    shape = SMALL_FOCI_SHAPE if foci == "small" else {"wsi": {}, "tma": {}}
    base = TINY if tiny else FULL
    n_wsi = base["n_wsi"] if n_wsi is None else n_wsi
    n_tma = base["n_tma"] if n_tma is None else n_tma
    n_outliers = base["n_outliers"] if n_outliers is None else n_outliers
    classes = tuple(classes)
    if not 2 <= len(classes) <= len(PATTERNS) or len(set(classes)) != len(classes) or OUTLIER_LABEL in classes:
        raise InputError(f"demo classes must be 2 to {len(PATTERNS)} distinct names other than "
                         f"{OUTLIER_LABEL!r}, got {list(classes)}")
    if min(n_wsi, n_tma, n_outliers) < 0 or n_wsi + n_tma < 1:
        raise InputError("demo slide counts must be >= 0, with at least one WSI or TMA")
    if not 0.0 <= noise < 1.0:
        raise InputError(f"demo label noise must be in [0, 1), got {noise}")
    rng = np.random.default_rng([seed, 0])
    pattern_of = dict(zip(classes, PATTERNS))
    wsi_labels = [classes[i % len(classes)] for i in range(n_wsi)]
    tma_labels = [classes[(i + n_wsi) % len(classes)] for i in range(n_tma)]
    wsi_kinds: list[str | None] = [None] * n_wsi + [OUTLIER_KINDS[i % len(OUTLIER_KINDS)] for i in range(n_outliers)]
    wsi_labels += [OUTLIER_LABEL] * n_outliers
    order = rng.permutation(len(wsi_labels))
    wsi = [(wsi_labels[i], wsi_kinds[i]) for i in order]
    tma = [(tma_labels[i], None) for i in rng.permutation(n_tma)]
    labelled = [i for i, (lab, _) in enumerate(wsi + tma) if lab != OUTLIER_LABEL]
    noisy = set(rng.choice(labelled, int(round(noise * len(labelled))), replace=False).tolist()) if labelled else set()
    out: list[PlannedSlide] = []
    for i, (label, okind) in enumerate(wsi + tma):
        is_tma = i >= len(wsi)
        lo, hi = base["tma_side" if is_tma else "wsi_side"]
        w = int(rng.integers(lo, hi + 1))
        h = w if is_tma else int(rng.integers(lo, hi + 1))
        if label == OUTLIER_LABEL:
            given = str(rng.choice(classes))
        elif i in noisy:
            given = str(rng.choice([c for c in classes if c != label]))
        else:
            given = label
        k = i - len(wsi)
        plan = SlidePlan(
            image_id=f"tma_{k + 1:03d}" if is_tma else f"wsi_{i + 1:03d}", kind="tma" if is_tma else "wsi",
            pattern=okind or pattern_of[label], fmt="png" if is_tma and k % 2 == 0 else "tiff", width=w, height=h,
            mpp=TMA_MPP if is_tma else WSI_MPP,
            tumour_fraction=float(rng.uniform(*ranges["tma" if is_tma else "wsi"])), seed=(seed, 1, i),
            sheet_um=base["sheet_um"][int(is_tma)], **shape["tma" if is_tma else "wsi"])
        out.append(PlannedSlide(plan, label, given, i in noisy))
    return out


def build_demo(out: str | Path, seed: int = 0, n_wsi: int | None = None, n_tma: int | None = None,
               n_outliers: int | None = None, noise: float = 0.08, tiny: bool = False, include_samples: bool = False,
               progress: ProgressFn | None = None, classes: Sequence[str] = DEFAULT_CLASSES,
               workers: int | None = None, only: Collection[str] | None = None, foci: str = "large",
               tumour_fraction: Sequence[float] | None = None) -> Path:
    """Build the demo cohort in ``out`` and return the path of its ``cohort.toml``.

    Counts default to 40 WSIs, 10 TMAs and 4 outlier WSIs (6/2/1 small slides with ``tiny``). An existing
    demo cohort in ``out`` is replaced; any other non-empty folder is refused. ``only``: draw just these planned
    slides (the first handful of a progressive first run; ``core.demo.progressive`` adds the rest later).
    ``foci`` / ``tumour_fraction``: the tumour regime (see :func:`plan_cohort`). ``truth/plan.json`` records the
    whole plan either way.
    """
    out = Path(out).resolve()
    if out.exists() and not _replaceable(out):
        raise InputError(f"{out}: exists and is not a demo cohort; choose another --out or remove it")
    everything = plan_cohort(seed, n_wsi, n_tma, n_outliers, noise, tiny, classes, foci, tumour_fraction)
    ranges = tumour_ranges(foci, tumour_fraction)
    planned = everything if only is None else [p for p in everything if p.plan.image_id in set(only)]
    if only is not None and len(planned) != len(set(only)):
        raise InputError(f"demo: {sorted(set(only) - {p.plan.image_id for p in planned})} are not in the plan")
    report = progress or (lambda f, m: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        slides_dir, masks_dir = tmp / "slides", tmp / "truth" / "masks"
        slides_dir.mkdir(parents=True)
        masks_dir.mkdir(parents=True)
        drawn = _draw_all(planned, slides_dir, masks_dir, report, workers if workers else (1 if tiny else 2))
        _write_tables(tmp, planned, drawn)
        if include_samples:
            _copy_samples(slides_dir / "samples")
        _write_cohort_toml(tmp, everything)
        plan = {"seed": seed, "n_wsi": n_wsi, "n_tma": n_tma, "n_outliers": n_outliers, "noise": noise, "tiny": tiny,
                "classes": list(classes), "foci": foci, "tumour_fraction": list(ranges["wsi"]),
                "tma_tumour_fraction": list(ranges["tma"]), "ids": [p.plan.image_id for p in everything]}
        (tmp / PLAN_JSON).write_text(json.dumps(plan, indent=1) + "\n")
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(1.0, f"demo cohort ready in {out}")
    return out / "cohort.toml"


# what an app may create in a cohort folder before the demo exists (caches, the database)
_APP_LEFTOVERS = {".cache", "slidelens.db", "slidelens.db-journal", "slidelens.db-wal", "slidelens.db-shm"}


def _replaceable(out: Path) -> bool:
    """True for a previous demo cohort, an empty folder, or one holding only app leftovers."""
    if not out.is_dir():
        return False
    if (out / "cohort.toml").is_file() and (out / "truth" / "truth.csv").is_file():
        return True
    return all(p.name in _APP_LEFTOVERS for p in out.iterdir())


def _draw_all(planned: list[PlannedSlide], slides_dir: Path, masks_dir: Path, report: ProgressFn,
              workers: int) -> dict[str, DrawnSlide]:
    # biggest first so the pool's two workers finish together
    plans = sorted((p.plan for p in planned), key=lambda p: -p.width * p.height)
    total = sum(p.width * p.height for p in plans)
    done, drawn = 0, {}
    report(0.0, f"drawing {len(plans)} slides")
    if workers <= 1:
        results = (draw_slide(p, slides_dir, masks_dir) for p in plans)
        for p, d in zip(plans, results):
            done += p.width * p.height
            drawn[d.image_id] = d
            report(0.98 * done / total, f"drew {d.image_id}")
        return drawn
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(draw_slide, p, slides_dir, masks_dir): p for p in plans}
        from concurrent.futures import as_completed

        for fut in as_completed(futures):
            p = futures[fut]
            d = fut.result()
            done += p.width * p.height
            drawn[d.image_id] = d
            report(0.98 * done / total, f"drew {d.image_id}")
    return drawn


def _write_csv(path: Path, header: Sequence[str], rows: list[Sequence[object]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


LABEL_COLUMNS = ("image_id", "label", "image_width", "image_height", "is_tma")


def label_row(p: PlannedSlide) -> tuple[object, ...]:
    """The labels.csv row of a planned slide."""
    return (p.plan.image_id, p.given_label, p.plan.width, p.plan.height, str(p.is_tma))


def truth_row(p: PlannedSlide, tumour_fraction: float) -> tuple[object, ...]:
    """The truth.csv row of a drawn slide."""
    return (p.plan.image_id, p.true_label, p.given_label, int(p.is_noisy), int(p.plan.is_outlier), int(p.is_tma),
            MASK_DS, f"{tumour_fraction:.4f}", p.plan.pattern, p.plan.mpp, p.plan.fmt)


def _write_tables(root: Path, planned: list[PlannedSlide], drawn: dict[str, DrawnSlide]) -> None:
    planned = sorted(planned, key=lambda p: p.plan.image_id)
    _write_csv(root / "labels.csv", LABEL_COLUMNS, [label_row(p) for p in planned])
    _write_csv(root / "truth" / "truth.csv", TRUTH_COLUMNS,
               [truth_row(p, drawn[p.plan.image_id].tumour_fraction) for p in planned])
    (root / "truth" / "README.txt").write_text(
        "Ground truth of the SlideLens demo cohort (the app never reads this folder; tests and benchmarks do).\n"
        "truth.csv: true_label (Other = outlier tissue or stain), given_label (as in labels.csv), is_noisy\n"
        "(given_label deliberately wrong), is_outlier, is_tma, tumour_fraction (of the tissue), pattern, mpp.\n"
        f"masks/<image_id>.png: tumour mask, 255 = tumour, one pixel per {MASK_DS}x{MASK_DS} level-0 pixels;\n"
        f"mask pixel (x, y) covers level-0 pixels [{MASK_DS}x, {MASK_DS}x+{MASK_DS}) x [{MASK_DS}y, {MASK_DS}y+"
        f"{MASK_DS}). Outlier slides have an empty mask (none of their tissue is ovarian tumour).\n")


def _copy_samples(dest: Path) -> None:
    src = sample_slides_dir()
    if src is None:
        raise InputError("--with-samples: no sample slides found (set SLIDELENS_SAMPLES to their folder)")
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_dir():
            shutil.copytree(p, dest / p.name)
        elif p.suffix.lower() in (".svs", ".tif", ".tiff", ".ndpi", ".png", ".jpg"):
            shutil.copy2(p, dest / p.name)


def _write_cohort_toml(root: Path, planned: list[PlannedSlide]) -> None:
    data = {"name": "demo", "slides": "slides", "labels": "labels.csv", "features": "features", "models": "models",
            "results": "results", "database": "sqlite:///slidelens.db", "default_mpp": WSI_MPP,
            "patches": {"patch_size": 256, "target_mpp": 0.5, "min_tissue": 0.25},
            # PNGs carry no mpp: state the TMAs' 40x pixel size
            "mpp": {p.plan.image_id: p.plan.mpp for p in planned if p.plan.fmt == "png"}}
    text = cohort_from_dict(data, root).to_toml().replace(f"sqlite:///{root.resolve()}/", "sqlite:///")
    (root / "cohort.toml").write_text(text)


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
