"""Bulk conversion of a cohort's images into cached pyramids (``python -m core convert``).

Parallel (one process per worker, each with its share of libvips' threads), resumable (pyramids already in the
cache are skipped; a killed run leaves only ``*.part`` files, removed by the next run) and tolerant: a bad file
is reported in one line and the others go on. The viewer converts a single slide on first view instead
(``ensure_slide``), with a progress bar.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from core.cohort.cohort_file import Cohort
from core.errors import SlideLensError
from core.slides.image_headers import CONVERT, read_header
from core.slides.pyramid import ProgressFn, ensure_pyramid, has_pyramid, remove_stale_parts
from core.slides.slide import PLAIN_IMAGE_SUFFIXES

DoneFn = Callable[[str, str | None], None]  # (image_id, error line or None) after each slide


@dataclass
class ConvertReport:
    """What a bulk conversion did: converted ids, ids already converted, and one error line per failed id."""

    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    gigapixels: float = 0.0  # converted in this run


def ensure_slide(path: Path, cache_dir: Path, mpp: float | None = None, progress: ProgressFn | None = None) -> Path:
    """The slide's pyramid, converted now if needed (``SlideError`` naming the file if it cannot be)."""
    header = read_header(path)  # a bad header fails here, before libvips starts
    return ensure_pyramid(path, cache_dir, progress, mpp=mpp if mpp is not None else header.mpp)


def _init_worker(threads: int) -> None:
    import pyvips

    pyvips.concurrency_set(max(1, threads))


def _convert_one(path: str, cache_dir: str, mpp: float | None) -> tuple[str | None, float]:
    """In a worker: convert one image; (error line or None, megapixels)."""
    try:
        header = read_header(Path(path))
        ensure_pyramid(Path(path), Path(cache_dir), mpp=mpp if mpp is not None else header.mpp)
        return None, header.megapixels
    except SlideLensError as exc:
        return str(exc), 0.0
    except Exception as exc:  # noqa: BLE001 (one bad file must not stop the batch)
        return f"{path}: conversion failed ({type(exc).__name__}: {exc})", 0.0


def convert_cohort(cohort: Cohort, workers: int = 1, ids: list[str] | None = None, on_done: DoneFn | None = None,
                   on_start: Callable[[int], None] | None = None, executor: Executor | None = None) -> ConvertReport:
    """Convert every image of ``cohort`` (or ``ids``) that has no cached pyramid yet; ``on_start(count)`` once the
    images to convert are known, ``on_done(image_id, error)`` after each. ``executor`` runs the conversions instead
    of local processes (``core.model.ray_jobs.RayExecutor``: on a Ray cluster), ``workers`` at a time."""
    report = ConvertReport()
    pyramids = cohort.cache_dir / "pyramids"
    remove_stale_parts(pyramids)
    chosen = {i: p for i, p in cohort.slide_paths.items() if ids is None or i in ids}
    todo: dict[str, Path] = {}
    unreadable = {i: f"slide {i!r} is not in cohort {cohort.name!r}" for i in sorted(set(ids or []) - set(chosen))}
    for image_id, path in chosen.items():
        try:
            route = CONVERT if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES else read_header(path).route
        except SlideLensError as exc:  # e.g. a TIFF with an unsupported compression: say so, go on
            unreadable[image_id] = str(exc)
            continue
        if route != CONVERT:
            continue  # read by OpenSlide or directly: nothing to convert
        if has_pyramid(path, cohort.cache_dir):
            report.skipped.append(image_id)
        else:
            todo[image_id] = path
    workers = max(1, min(workers, len(todo) or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    done = on_done or (lambda i, e: None)

    def record(image_id: str, error: str | None, mpx: float) -> None:
        if error is None:
            report.converted.append(image_id)
            report.gigapixels += mpx / 1000
        else:
            report.failed[image_id] = error
        done(image_id, error)

    if on_start is not None:
        on_start(len(todo) + len(unreadable))
    for image_id, error in unreadable.items():
        record(image_id, error, 0.0)
    if workers == 1 and executor is None:
        _init_worker(threads)
        for image_id, path in todo.items():
            record(image_id, *_convert_one(str(path), str(cohort.cache_dir), cohort.mpp_for(image_id)))
        return report
    ctx = multiprocessing.get_context("spawn")  # libvips runs threads: never fork it
    with executor or ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        pending: dict[Future, str] = {}
        queue = list(todo.items())
        while queue or pending:
            while queue and len(pending) < workers * 2:
                image_id, path = queue.pop(0)
                fut = pool.submit(_convert_one, str(path), str(cohort.cache_dir), cohort.mpp_for(image_id))
                pending[fut] = image_id
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                image_id = pending.pop(fut)
                try:
                    error, mpx = fut.result()
                except Exception as exc:  # noqa: BLE001 (a worker died: e.g. killed for memory)
                    error, mpx = f"{todo[image_id]}: conversion failed (worker died: {type(exc).__name__})", 0.0
                record(image_id, error, mpx)
    return report
