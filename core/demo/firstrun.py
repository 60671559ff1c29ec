"""First run: build the demo cohort end to end (slides, features, a trained model, predictions, database).

Progressive: the first stages build a handful of slides (one per class, a TMA and an outlier; see
``core.demo.progressive``) all the way through, then the status says ``ready`` and the app opens on them; the same
process goes on in the background, adding the rest of the slides one at a time (each with its features and the first
model's prediction) and finally training the model on every slide. Each stage is skipped when its output already
exists, so a second start rebuilds nothing and an interrupted build resumes. Progress (per stage, with an estimate of
the time left from this machine's measured speed) is written to a small JSON file that the app polls while this runs
in its own process (``python -m core firstrun``): the UI stays responsive and a page reload does not restart it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.atomic import write_json_atomic
from core.cohort.cohort_file import Cohort, load_cohort

QUICK_STAGES = ("demo", "features", "train", "infer", "database")  # until the app opens
BACKGROUND_STAGES = ("more", "final")  # the rest of the slides, then the model on all of them
STAGES = QUICK_STAGES + BACKGROUND_STAGES
# seconds per stage on an idle 2-core CPU (bench firstrun, README); scaled by the speed measured on this machine as
# the build goes
ESTIMATE_S = {"demo": 8.0, "features": 12.0, "train": 2.5, "infer": 0.5, "database": 0.5, "more": 140.0,
              "final": 36.0}
TINY_ESTIMATE_S = {"demo": 4.0, "features": 10.0, "train": 5.0, "infer": 1.0, "database": 1.0, "more": 25.0,
                   "final": 12.0}
LABELS = {"demo": "Demo slides", "features": "Patch features", "train": "Train the MIL model",
          "infer": "Predictions and attention", "database": "Database", "more": "The other slides",
          "final": "The model on every slide"}


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
    measured: dict[str, float] = field(default_factory=dict)  # seconds of stages an earlier run finished here
    ready_at: float | None = None  # when the first handful was complete (the app opens then)
    published: int = 0  # slides and model versions added since the app opened (pages refresh when it moves)

    @property
    def ready(self) -> bool:
        """True once the app can open (the first handful of slides is complete)."""
        return self.ready_at is not None or self.done

    def durations(self) -> dict[str, float]:
        """Seconds each stage finished in this run took (skipped stages aside)."""
        return {st.name: st.finished - st.started for st in self.stages
                if st.status == "done" and st.started and st.finished and st.name in ESTIMATE_S}

    def eta_seconds(self, now: float | None = None, only: tuple[str, ...] | None = None) -> float:
        """Time left. The running stage blends its prior estimate with an extrapolation from its own progress
        (trusted more as it advances); stages still pending use the rough estimates scaled by this machine's
        measured speed (finished stages, this run's and an earlier run's, and the running one so far). ``only``:
        the time left of these stages (e.g. until the app opens)."""
        est = TINY_ESTIMATE_S if self.tiny else ESTIMATE_S
        now = time.time() if now is None else now
        took = {**self.measured, **self.durations()}
        spent, planned = sum(took.values()), sum(est[n] for n in took)
        running: list[tuple[StageStatus, float, float, float]] = []  # (stage, elapsed, observed total, weight)
        for st in self.stages:
            if st.status == "running":
                elapsed = max(now - (st.started or now), 0.0)
                w = st.fraction ** 0.5 if st.fraction >= 0.02 and elapsed >= 2 else 0.0
                observed = elapsed / st.fraction if w else 0.0
                running.append((st, elapsed, observed, w))
                spent, planned = spent + w * observed, planned + w * est[st.name]
        speed = min(max(spent / planned, 0.25), 8.0) if planned > 0 else 1.0
        left = 0.0
        for st, elapsed, observed, w in running:
            if only is None or st.name in only:
                total = (1 - w) * est[st.name] * speed + w * observed
                left += max(total - elapsed, 0.05 * elapsed, 1.0)
        left += sum(est[st.name] * speed for st in self.stages
                    if st.status == "pending" and (only is None or st.name in only))
        return left

    def current(self, only: tuple[str, ...] = STAGES) -> StageStatus | None:
        """The running stage among ``only``, if any."""
        return next((st for st in self.stages if st.status == "running" and st.name in only), None)


def progress_path(cohort_dir: Path) -> Path:
    return cohort_dir.parent / f".{cohort_dir.name}.firstrun.json"


def read_status(cohort_dir: Path) -> FirstRunStatus | None:
    """The last status written by a first run for ``cohort_dir``, or None."""
    p = progress_path(cohort_dir)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    try:
        data["stages"] = [StageStatus(**s) for s in data.get("stages", [])]
        known = FirstRunStatus.__dataclass_fields__
        return FirstRunStatus(**{k: v for k, v in data.items() if k in known})
    except TypeError:  # a file written by another version of this module
        return None


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
    write_json_atomic(progress_path(cohort_dir), asdict(status), indent=None)


def demo_missing(cohort_dir: Path) -> list[str]:
    """What the demo cohort still lacks for the app to open it (empty when complete): its slides, the patch
    features of every slide, and at least one model version with predictions. A newer version without predictions
    (a retrain in progress, failed or killed) does not make the demo incomplete."""
    from core.errors import SlideLensError
    from core.model.versions import list_versions

    toml = cohort_dir / "cohort.toml"
    if not toml.is_file():
        return [f"the demo cohort ({toml})"]
    try:
        cohort = load_cohort(toml)
        ids = list(cohort.slide_paths)
    except SlideLensError as exc:
        return [str(exc)]
    missing: list[str] = [] if ids else [f"slides (none in {', '.join(map(str, cohort.slide_sources))})"]
    no_features = [i for i in ids if not (cohort.features / f"{i}.h5").is_file()]
    if no_features:
        missing.append(f"patch features of {len(no_features)} of {len(ids)} slides (e.g. {no_features[0]})")
    versions = [str(m["version"]) for m in list_versions(cohort.models)]
    if not any((cohort.results / v / "predictions.csv").is_file() for v in versions):
        missing.append(f"predictions of {versions[-1]}" if versions else "a trained model")
    return missing


def demo_is_complete(cohort_dir: Path) -> bool:
    """True when the demo cohort has its slides, their features and a model version with predictions."""
    return not demo_missing(cohort_dir)


def _final_version(cohort_dir: Path, n_slides: int) -> str | None:
    """A model version trained on ``n_slides`` slides (or more) with its predictions, if any."""
    from core.model.versions import list_versions

    cohort = load_cohort(cohort_dir / "cohort.toml")
    for meta in reversed(list_versions(cohort.models)):
        trained = int((meta.get("metrics") or {}).get("n_slides") or 0)
        if trained >= n_slides and (cohort.results / str(meta["version"]) / "predictions.csv").is_file():
            return str(meta["version"])
    return None


def demo_pending(cohort_dir: Path) -> list[str]:
    """What a progressive demo still builds in the background (empty when complete, or for a demo built in one go):
    slides of the plan not added yet, and a model trained on all of them."""
    from core.demo.progressive import pending_ids, read_plan
    from core.errors import SlideLensError

    plan = read_plan(cohort_dir)
    if plan is None:
        return []
    out = []
    left = pending_ids(cohort_dir, plan)
    if left:
        out.append(f"{len(left)} more slides")
    try:
        if _final_version(cohort_dir, len(plan["ids"])) is None:
            out.append(f"the model trained on all {len(plan['ids'])} slides")
    except SlideLensError as exc:
        out.append(str(exc))
    return out


def fix_command(cohort_dir: Path, tiny: bool = False) -> str:
    """The command that builds (or resumes) the demo cohort in ``cohort_dir``."""
    return f"python -m core firstrun --out {cohort_dir}" + (" --tiny" if tiny else "")


def run_first_run(cohort_dir: Path, tiny: bool = False, seed: int = 0, model: str = "abmil",
                  on_update: Callable[[FirstRunStatus], None] | None = None, progressive: bool = True) -> Cohort:
    """Build whatever of the demo cohort is missing, stage by stage, reporting progress; ``progressive``: a first
    handful of slides first (the status turns ``ready``), then the rest in the background stages."""
    earlier = read_status(cohort_dir)
    measured = {} if earlier is None or earlier.tiny != tiny else {**earlier.measured, **earlier.durations()}
    status = FirstRunStatus(cohort=str(cohort_dir), stages=[StageStatus(n) for n in STAGES], pid=os.getpid(),
                            tiny=tiny, measured=measured)
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

    def ready() -> None:
        status.ready_at = time.time()
        publish()

    def added() -> None:
        status.published += 1
        publish()

    try:
        cohort = _pipeline(cohort_dir, tiny, seed, model, run, ready, added, progressive)
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


def _pipeline(cohort_dir: Path, tiny: bool, seed: int, model: str, run, ready: Callable[[], None],
              added: Callable[[], None], progressive: bool) -> Cohort:
    from core.demo.firstrun_rest import Warmup, add_rest
    from core.demo.plan import build_demo, plan_cohort
    from core.demo.progressive import pending_ids, read_plan, starter_ids
    from core.model.infer import ensure_results
    from core.model.train import train_model
    from core.model.versions import latest_version

    toml = cohort_dir / "cohort.toml"
    # tiny: small slides, but at least two per class so k-fold training has something to hold out
    counts = {"n_wsi": 10, "n_tma": 2, "n_outliers": 1} if tiny else {}
    only = starter_ids(plan_cohort(seed, tiny=tiny, **counts)) if progressive else None
    # the backbone (and its exported graph) gets ready while the slides are drawn, when anything needs features
    warm = Warmup(start=not toml.is_file() or bool(pending_ids(cohort_dir)))
    run("demo", lambda p: build_demo(cohort_dir, seed=seed, tiny=tiny, progress=p, only=only, **counts),
        skip=toml.is_file())
    cohort = load_cohort(toml)
    missing = [i for i in cohort.slide_paths if not (cohort.features / f"{i}.h5").is_file()]
    run("features", lambda p: _extract(cohort, missing, p, warm.get), skip=not missing)
    # a model version already there (an earlier run, or a retrain) is kept: only its missing predictions are made
    version = latest_version(cohort.models)
    first_model = len(cohort.slide_paths) < len(read_plan(cohort_dir)["ids"]) if read_plan(cohort_dir) else False
    run("train", lambda p: train_model(cohort.features, cohort.labels, model=model, out_dir=cohort.models,
                                       progress=p, **({"epochs": 20} if first_model else {})),
        skip=version is not None)
    version = latest_version(cohort.models)
    run("infer", lambda p: ensure_results(cohort, version, progress=p), skip=not _results_missing(cohort, version))
    run("database", lambda p: sync_database(cohort, p), skip=False)
    ready()
    plan = read_plan(cohort_dir)
    run("more", lambda p: add_rest(cohort_dir, p, warm.get, added), skip=not pending_ids(cohort_dir, plan))
    n_all = len(plan["ids"]) if plan else 0

    def final(p: Callable[[float, str], None]) -> None:
        full = load_cohort(toml)
        new = train_model(full.features, full.labels, model=model, out_dir=full.models,
                          progress=lambda f, m: p(0.85 * f, f"training on {n_all} slides · {m}")).name
        ensure_results(full, new, progress=lambda f, m: p(0.85 + 0.13 * f, f"predictions of {new} · {m}"))
        sync_database(full)
        added()

    run("final", final, skip=plan is None or _final_version(cohort_dir, n_all) is not None)
    return load_cohort(toml)


def _extract(cohort: Cohort, ids: list[str], progress: Callable[[float, str], None],
             get_backbone: Callable[[], object] | None = None) -> None:
    """Features of ``ids``, one slide at a time so the message says which ('slide 12 of 54 · ...')."""
    from core.errors import InputError
    from core.model.backbones import create_backbone
    from core.model.features import extract_cohort

    backbone = get_backbone() if get_backbone is not None else create_backbone("efficientnet_lite0")
    failed: dict[str, str] = {}
    for k, image_id in enumerate(ids):
        def sub(frac: float, msg: str, k: int = k) -> None:
            progress((k + min(max(frac, 0.0), 1.0)) / len(ids), f"slide {k + 1} of {len(ids)} · {msg}")

        report = extract_cohort({image_id: cohort.slide_paths[image_id]}, cohort.features, backbone,
                                patch_size=cohort.patch_size, target_mpp=cohort.target_mpp,
                                min_tissue=cohort.min_tissue, default_mpp=cohort.default_mpp,
                                mpp_overrides=cohort.mpp_overrides, cache_dir=cohort.cache_dir, progress=sub)
        failed.update(report.failed)
    if failed:
        first = next(iter(failed.items()))
        raise InputError(f"features failed for {len(failed)} slide(s), e.g. {first[0]}: {first[1]}")


def _results_missing(cohort: Cohort, version: str) -> list[str]:
    """Slides with features but no prediction row or attention file for ``version``."""
    from core.model.infer import ATTENTION_DIR, PREDICTIONS_CSV, read_predictions

    out = cohort.results / version
    done = set(read_predictions(out / PREDICTIONS_CSV)["image_id"].astype(str))
    ids = sorted(p.stem for p in cohort.features.glob("*.h5")) if cohort.features.is_dir() else []
    return [i for i in ids if i not in done or not (out / ATTENTION_DIR / f"{i}.h5").is_file()]


def sync_database(cohort: Cohort, progress: Callable[[float, str], None] | None = None) -> None:
    """Import labels and register model versions and their predictions in the cohort's database (idempotent)."""
    import pandas as pd

    from core.cohort.labels import read_labels
    from core.model.versions import list_versions
    from core.review.store import open_store

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
