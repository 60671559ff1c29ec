"""First run: build the demo cohort end to end (slides, features, a trained model, predictions, database).

Each stage is skipped when its output already exists, so a second start rebuilds nothing. Progress (per stage,
with an estimate of the time left) is written to a small JSON file that the app polls while this runs in its own
process (``python -m core firstrun``): the UI stays responsive and a page reload does not restart the work.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.cohort import Cohort, load_cohort

STAGES = ("demo", "features", "train", "infer", "database")
# rough seconds per stage on a 2-core CPU for the default cohort; only used before a stage reports progress
ESTIMATE_S = {"demo": 150.0, "features": 480.0, "train": 60.0, "infer": 15.0, "database": 5.0}
TINY_ESTIMATE_S = {"demo": 8.0, "features": 60.0, "train": 20.0, "infer": 3.0, "database": 2.0}


@dataclass
class StageStatus:
    name: str
    status: str = "pending"  # pending | running | done | skipped | failed
    fraction: float = 0.0
    message: str = ""
    started: float | None = None
    finished: float | None = None


@dataclass
class FirstRunStatus:
    """What the progress file holds."""

    cohort: str
    stages: list[StageStatus] = field(default_factory=list)
    pid: int = 0
    error: str | None = None
    done: bool = False
    tiny: bool = False
    updated: float = 0.0

    def eta_seconds(self) -> float:
        """Time left: the running stage extrapolated from its progress, pending stages from estimates."""
        est = TINY_ESTIMATE_S if self.tiny else ESTIMATE_S
        now = time.time()
        left = 0.0
        for st in self.stages:
            if st.status == "running":
                elapsed = now - (st.started or now)
                if st.fraction > 0.05:
                    left += elapsed * (1 - st.fraction) / st.fraction
                else:
                    left += max(est[st.name] - elapsed, est[st.name] * 0.2)
            elif st.status == "pending":
                left += est[st.name]
        return left


def progress_path(cohort_dir: Path) -> Path:
    return cohort_dir.parent / f".{cohort_dir.name}.firstrun.json"


def read_status(cohort_dir: Path) -> FirstRunStatus | None:
    """The last status written by a first run for ``cohort_dir``, or None."""
    p = progress_path(cohort_dir)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    data["stages"] = [StageStatus(**s) for s in data.get("stages", [])]
    return FirstRunStatus(**data)


def is_running(status: FirstRunStatus | None) -> bool:
    """True while the process that writes ``status`` is alive and not finished."""
    if status is None or status.done or status.error or not status.pid:
        return False
    try:
        os.kill(status.pid, 0)
    except OSError:
        return False
    return True


def _write_status(cohort_dir: Path, status: FirstRunStatus) -> None:
    status.updated = time.time()
    p = progress_path(cohort_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".part", dir=p.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(status), fh)
    os.replace(tmp, p)


def demo_is_complete(cohort_dir: Path) -> bool:
    """True when the demo cohort has its slides, a model and predictions (the app can open it directly)."""
    from core.models import latest_version

    toml = cohort_dir / "cohort.toml"
    if not toml.is_file():
        return False
    cohort = load_cohort(toml)
    version = latest_version(cohort.models)
    return version is not None and (cohort.results / version / "predictions.csv").is_file()


def run_first_run(cohort_dir: Path, tiny: bool = False, seed: int = 0, model: str = "abmil",
                  on_update: Callable[[FirstRunStatus], None] | None = None) -> Cohort:
    """Build whatever of the demo cohort is missing, stage by stage, reporting progress."""
    status = FirstRunStatus(cohort=str(cohort_dir), stages=[StageStatus(n) for n in STAGES], pid=os.getpid(),
                            tiny=tiny)
    stages = {s.name: s for s in status.stages}

    def publish() -> None:
        _write_status(cohort_dir, status)
        if on_update:
            on_update(status)

    def reporter(name: str) -> Callable[[float, str], None]:
        last = [0.0]

        def report(fraction: float, message: str = "") -> None:
            st = stages[name]
            st.fraction, st.message = max(0.0, min(1.0, float(fraction))), message
            if time.time() - last[0] > 0.5 or fraction >= 1:
                last[0] = time.time()
                publish()

        return report

    def run(name: str, fn: Callable[[Callable[[float, str], None]], object], skip: bool) -> None:
        st = stages[name]
        if skip:
            st.status, st.fraction, st.message = "skipped", 1.0, "already there"
            publish()
            return
        st.status, st.started = "running", time.time()
        publish()
        fn(reporter(name))
        st.status, st.fraction, st.finished = "done", 1.0, time.time()
        publish()

    try:
        cohort = _pipeline(cohort_dir, tiny, seed, model, run)
    except BaseException as exc:  # recorded for the app, then re-raised for the CLI
        status.error = " ".join(str(exc).split()) or type(exc).__name__
        for st in status.stages:
            if st.status == "running":
                st.status = "failed"
        publish()
        raise
    status.done = True
    publish()
    return cohort


def _pipeline(cohort_dir: Path, tiny: bool, seed: int, model: str, run) -> Cohort:
    from core.backbones import create_backbone
    from core.demo import build_demo
    from core.features import extract_cohort
    from core.infer import ensure_results
    from core.models import latest_version
    from core.train import train_model

    toml = cohort_dir / "cohort.toml"
    # tiny: small slides, but at least two per class so k-fold training has something to hold out
    counts = {"n_wsi": 10, "n_tma": 2, "n_outliers": 1} if tiny else {}
    run("demo", lambda p: build_demo(cohort_dir, seed=seed, tiny=tiny, progress=p, **counts), skip=toml.is_file())
    cohort = load_cohort(toml)
    missing = [i for i in cohort.slide_paths if not (cohort.features / f"{i}.h5").is_file()]

    def extract(p: Callable[[float, str], None]) -> None:
        backbone = create_backbone("efficientnet_lite0")
        extract_cohort({i: cohort.slide_paths[i] for i in missing}, cohort.features, backbone,
                       patch_size=cohort.patch_size, target_mpp=cohort.target_mpp, min_tissue=cohort.min_tissue,
                       default_mpp=cohort.default_mpp, mpp_overrides=cohort.mpp_overrides,
                       cache_dir=cohort.cache_dir, progress=p)

    run("features", extract, skip=not missing)
    version = latest_version(cohort.models)
    run("train", lambda p: train_model(cohort.features, cohort.labels, model=model, out_dir=cohort.models,
                                       progress=p), skip=version is not None)
    version = latest_version(cohort.models)
    run("infer", lambda p: ensure_results(cohort, version, progress=p),
        skip=(cohort.results / version / "predictions.csv").is_file())
    run("database", lambda p: sync_database(cohort, p), skip=False)
    return cohort


def sync_database(cohort: Cohort, progress: Callable[[float, str], None] | None = None) -> None:
    """Import labels and register model versions and their predictions in the cohort's database (idempotent)."""
    import pandas as pd

    from core.labels import read_labels
    from core.models import list_versions
    from core.store import open_store

    store = open_store(cohort.database)
    labels = read_labels(cohort.labels) if cohort.labels else None
    store.sync_slides(cohort, labels)
    versions = list_versions(cohort.models)
    for i, meta in enumerate(versions):
        store.register_model_version(meta)
        preds = cohort.results / meta["version"] / "predictions.csv"
        if preds.is_file():
            store.record_predictions(meta["version"], pd.read_csv(preds))
        if progress:
            progress((i + 1) / max(len(versions), 1), f"registered {meta['version']}")
