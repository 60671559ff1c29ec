"""A progressive demo: a first handful of slides (one per class, a TMA and an outlier) makes a usable cohort at once;
the rest of the plan is added afterwards, one slide at a time, each fully formed before it becomes visible.

``truth/plan.json`` (written by ``core.demo.plan.build_demo``) says what the whole cohort holds. A slide is added by
drawing it into ``<cohort>/.pending/``, extracting and predicting it there (callbacks), then moving its features into
``features/``, the slide into ``slides/`` and its rows into ``labels.csv`` and ``truth/truth.csv`` (each file
replaced atomically), in that order: a slide the app can see always has its features and predictions, and a label
never names a slide that is not there. An interrupted run resumes with the slides still missing.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from core.atomic import atomic_path
from core.demo.draw import DrawnSlide, draw_slide
from core.demo.plan import LABEL_COLUMNS, OUTLIER_LABEL, PLAN_JSON, TRUTH_COLUMNS, PlannedSlide, label_row, plan_cohort
from core.demo.plan import truth_row as _truth_row

PENDING = ".pending"
Progress = Callable[[float, str], None]


def read_plan(cohort_dir: Path) -> dict[str, Any] | None:
    """The demo's ``truth/plan.json`` (seed, counts, every slide id), or None for a cohort built without one."""
    try:
        data = json.loads((Path(cohort_dir) / PLAN_JSON).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("ids"), list) else None


def planned_slides(plan: dict[str, Any]) -> list[PlannedSlide]:
    """Every slide of the plan, decided again from its seed and counts (deterministic)."""
    return plan_cohort(int(plan["seed"]), plan.get("n_wsi"), plan.get("n_tma"), plan.get("n_outliers"),
                       float(plan.get("noise", 0.08)), bool(plan.get("tiny")), plan.get("classes") or None,
                       foci=plan.get("foci", "large"), tumour_fraction=plan.get("tumour_fraction"))


def starter_ids(planned: Sequence[PlannedSlide]) -> list[str]:
    """The first handful: for each class its smallest correctly labelled whole slide, the smallest TIFF TMA and
    the smallest outlier (small slides: few patches, so the app opens sooner)."""
    def area(p: PlannedSlide) -> int:
        return p.plan.width * p.plan.height

    chosen: list[str] = []
    wsis = sorted((p for p in planned if not p.is_tma and not p.plan.is_outlier), key=area)
    for label in dict.fromkeys(p.true_label for p in planned if p.true_label != OUTLIER_LABEL):
        pick = next((p for p in wsis if p.true_label == label and not p.is_noisy), None) or next(
            (p for p in wsis if p.true_label == label), None)
        if pick is not None:
            chosen.append(pick.plan.image_id)
    tmas = sorted((p for p in planned if p.is_tma), key=lambda p: (p.plan.fmt != "tiff", area(p)))
    outliers = sorted((p for p in planned if p.plan.is_outlier), key=area)
    chosen += [group[0].plan.image_id for group in (tmas, outliers) if group]
    return chosen


def present_ids(cohort_dir: Path) -> set[str]:
    """Ids of the planned slides already in ``slides/``."""
    slides = Path(cohort_dir) / "slides"
    return {p.name.split(".")[0] for p in slides.iterdir() if p.is_file() and not p.name.startswith(".")
            and not p.name.endswith(".part")} if slides.is_dir() else set()


def pending_ids(cohort_dir: Path, plan: dict[str, Any] | None = None) -> list[str]:
    """The planned slides not in the cohort yet (empty for a complete or unplanned cohort)."""
    plan = plan if plan is not None else read_plan(cohort_dir)
    if plan is None:
        return []
    have = present_ids(cohort_dir)
    return [str(i) for i in plan["ids"] if str(i) not in have]


def _rewrite_csv(path: Path, header: Sequence[str], add: Sequence[Sequence[object]]) -> None:
    """``path`` with the rows ``add`` merged in (by first column, sorted), replaced atomically."""
    rows: dict[str, list[str]] = {}
    if path.is_file():
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            rows = {r[0]: r for r in reader if r}
    for r in add:
        rows[str(r[0])] = [str(v) for v in r]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows[k] for k in sorted(rows))


def add_slides(cohort_dir: Path, extract: Callable[[Path, Path, PlannedSlide, Progress], None],
               predict: Callable[[str], None], published: Callable[[str], None] | None = None,
               progress: Progress | None = None, plan: dict[str, Any] | None = None) -> list[str]:
    """Draw, extract, predict and publish every planned slide still missing; returns the ids added.

    ``extract(slide_path, features_path, planned, progress)`` writes the features; ``predict(image_id)`` makes the
    current model's prediction once the features are in ``features/``; ``published(image_id)`` runs after the
    slide and its labels are in place (e.g. to register it in the database). Drawing runs one slide ahead in a
    separate process while the current one is extracted.
    """
    cohort_dir = Path(cohort_dir)
    plan = plan if plan is not None else read_plan(cohort_dir)
    todo_ids = pending_ids(cohort_dir, plan)
    if plan is None or not todo_ids:
        return []
    by_id = {p.plan.image_id: p for p in planned_slides(plan)}
    todo = [by_id[i] for i in todo_ids]
    report = progress or (lambda f, m: None)
    pend = cohort_dir / PENDING
    shutil.rmtree(pend, ignore_errors=True)  # leftovers of an interrupted run are redrawn (deterministic)
    (pend / "slides").mkdir(parents=True)
    (pend / "features").mkdir()
    (cohort_dir / "features").mkdir(exist_ok=True)
    masks = cohort_dir / "truth" / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    added: list[str] = []
    n = len(todo)
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    try:
        futures = [pool.submit(draw_slide, p.plan, pend / "slides", masks) for p in todo]
        for k, (p, fut) in enumerate(zip(todo, futures)):
            image_id = p.plan.image_id

            def sub(frac: float, msg: str, k: int = k, image_id: str = image_id) -> None:
                report((k + 0.05 + 0.9 * min(max(frac, 0.0), 1.0)) / n, f"slide {k + 1} of {n} · {image_id}: {msg}")

            sub(0.0, "drawing")
            drawn: DrawnSlide = fut.result()
            feats = pend / "features" / f"{image_id}.h5"
            extract(drawn.path, feats, p, lambda f, m, sub=sub: sub(f, m.split(": ", 1)[-1]))
            os.replace(feats, cohort_dir / "features" / feats.name)
            predict(image_id)
            os.replace(drawn.path, cohort_dir / "slides" / drawn.path.name)
            _rewrite_csv(cohort_dir / "labels.csv", LABEL_COLUMNS, [label_row(p)])
            _rewrite_csv(cohort_dir / "truth" / "truth.csv", TRUTH_COLUMNS, [_truth_row(p, drawn.tumour_fraction)])
            added.append(image_id)
            if published is not None:
                published(image_id)
            report((k + 1) / n, f"slide {k + 1} of {n} · {image_id} added")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a failure does not wait for every slide to be drawn
    shutil.rmtree(pend, ignore_errors=True)
    return added
