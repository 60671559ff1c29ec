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


def extraction_speed(cohort: Any, backbone: Any, variants: dict[str, dict[str, Any]], n_slides: int = 3,
                     repeat: int = 2) -> tuple[list[str], dict[str, float]]:
    """End-to-end patches/s of ``extract_slide`` (tiling, reading, backbone, writing to a scratch folder) on the
    first ``n_slides`` WSIs of ``cohort`` (any slides when it has none), for each variant of its keyword arguments
    (``{"flips": {"tta": "flips"}, ...}``), interleaved ``repeat`` times; returns (slide ids, median per variant)."""
    import statistics
    import tempfile

    from core.model.feature_files import read_feature_info
    from core.model.features import extract_slide

    ids = ([i for i in sorted(cohort.slide_paths) if i.startswith("wsi")] or sorted(cohort.slide_paths))[:n_slides]
    mpps = dict(cohort.slide_mpps)
    speed: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            for name, kwargs in variants.items():
                n, t = 0, time.perf_counter()
                for image_id in ids:
                    out = extract_slide(cohort.slide_paths[image_id], Path(tmp) / f"{name}-{image_id}.h5", backbone,
                                        patch_size=cohort.patch_size, target_mpp=cohort.target_mpp,
                                        min_tissue=cohort.min_tissue, mpp=mpps.get(image_id),
                                        default_mpp=cohort.default_mpp, cache_dir=cohort.cache_dir, **kwargs)
                    n += read_feature_info(out).n
                speed[name].append(n / (time.perf_counter() - t))
    return ids, {name: statistics.median(v) for name, v in speed.items()}

