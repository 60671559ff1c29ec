"""Demo cohorts shared by the model benchmarks (``bench quality --matrix``, ``bench ensemble``): each (tumour regime,
seed) is drawn once into ``<work>/demo-<foci>-seed<seed>/`` and its patch features extracted once per test-time
augmentation, so benchmarks that train on one seed and score on another reuse the same slides and features.
A cohort that was only partly built is finished on the next call (drawing is atomic; extraction skips done slides).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

DEFAULT_WORK = Path("data/bench_cohorts")
FOCI = ("large", "small")


def cohort_dir(work: Path, seed: int, foci: str = "large", tiny: bool = False) -> Path:
    """Where the demo cohort of ``seed`` in tumour regime ``foci`` lives under ``work``."""
    return Path(work) / f"demo-{foci}{'-tiny' if tiny else ''}-seed{int(seed)}"


def demo_cohort(work: Path, seed: int, foci: str = "large", tiny: bool = False) -> Any:
    """The cohort (``core.cohort.cohort_file.Cohort``) of ``seed`` in regime ``foci``, drawn on first use."""
    from core.cohort.cohort_file import load_cohort
    from core.demo.plan import build_demo
    from core.errors import InputError

    if foci not in FOCI:
        raise InputError(f"tumour regime {foci!r}: choose one of {', '.join(FOCI)}")
    out = cohort_dir(work, seed, foci, tiny)
    if not ((out / "cohort.toml").is_file() and (out / "truth" / "truth.csv").is_file()):
        build_demo(out, seed=seed, tiny=tiny, **({"foci": foci} if foci != "large" else {}))
    return load_cohort(out / "cohort.toml")


def features_dir(cohort: Any, tta: str = "none") -> Path:
    """The cohort's plain features folder, or ``features_tta-<mode>`` beside it for augmented features."""
    return Path(cohort.features) if tta == "none" else Path(cohort.root) / f"features_tta-{tta}"


def extracted(cohort: Any, backbone: Any, tta: str = "none", progress: Any = None) -> tuple[Path, float]:
    """Extract every slide of ``cohort`` not done yet (``tta``: none | flips | dihedral); returns (folder, seconds).
    Raises ``RuntimeError`` naming the slides that failed."""
    from core.model.features import extract_cohort

    out = features_dir(cohort, tta)
    t = time.perf_counter()
    report = extract_cohort(cohort.slide_paths, out, backbone, patch_size=cohort.patch_size,
                            target_mpp=cohort.target_mpp, min_tissue=cohort.min_tissue,
                            mpp_overrides=dict(cohort.slide_mpps), default_mpp=cohort.default_mpp,
                            cache_dir=cohort.cache_dir, tta=tta, progress=progress)
    if report.failed:
        raise RuntimeError(f"{cohort.root}: extraction failed for {report.failed}")
    return out, time.perf_counter() - t
