"""``infer --ray`` and ``convert --ray``: the same per-slide functions as the local path, spread over a Ray cluster.

Inference: long-lived ``Predictor`` actors (one per GPU with ``num_gpus=1``, else one per node) load the model once
and run ``core.model.infer.infer_one`` per slide (the attention file is written atomically by the worker, so the results
folder must be on storage every node sees); the driver merges the rows into ``predictions.csv`` now and then.
Conversion: ``core.cohort.convert.convert_cohort`` with a ``RayExecutor``, one Ray task per image (Ray reruns a task whose
node died; the pyramid is written as ``*.part`` and renamed, into the cohort's ``.cache``, on shared storage).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.model.ray_runner import AUTO, Log, Progress, alive_nodes, connect, ray_module, short, slide_error
from core.model.ray_tasks import TaskFailure, failure


class Predictor:
    """Actor: one loaded model (a version folder on shared storage) predicting slide after slide."""

    def __init__(self, model_dir: str, device: str, mc_samples: int = 0) -> None:
        from core.model.infer import load_model

        self.loaded = load_model(model_dir, device=device, mc_samples=mc_samples)
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def predict(self, image_id: str, features_path: str, out_dir: str) -> tuple[Any, str]:
        """The slide's predictions row (its attention file written), and where it ran."""
        from core.model.infer import infer_one

        try:
            return infer_one(self.loaded, image_id, features_path, out_dir), self.where
        except Exception as exc:  # noqa: BLE001 (the slide's own failure: reported by name, the others go on)
            return failure(exc), self.where


@dataclass
class RayInferReport:
    """What ``infer_on_ray`` did, and the predictions of the requested slides."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retries: list[str] = field(default_factory=list)
    predictions: Any = None


def infer_on_ray(loaded: Any, features_dir: str | Path, out_dir: str | Path, image_ids: Iterable[str] | None = None,
                 *, address: str | None = None, force: bool = False, device: str = AUTO, retries: int = 3,
                 log: Log | None = None, progress: Progress | None = None, bars: bool = False) -> RayInferReport:
    """``core.model.infer.infer_features`` on a Ray cluster (joined here when ``address`` is given and there is work)."""
    from core.model.infer import pending_slides

    plan = pending_slides(loaded, features_dir, out_dir, image_ids, force)
    report = RayInferReport(skipped=[i for i in plan.wanted if i not in set(plan.todo)])
    existing, out_dir = plan.existing, Path(out_dir)
    say = log or (lambda m: print(m, file=sys.stderr))
    if plan.todo:
        if address is not None:
            say(connect(address))
        existing = _predict(loaded, plan, out_dir, device, retries, say, progress, bars, report)
    report.predictions = existing[existing["image_id"].astype(str).isin(plan.wanted)].reset_index(drop=True)
    if progress is not None:
        progress(1.0, f"{len(report.written)} slide(s) computed on the cluster, {len(report.skipped)} cached")
    return report


def _predict(loaded: Any, plan: Any, out_dir: Path, device: str, retries: int, say: Log,
             progress: Progress | None, bars: bool, report: RayInferReport) -> Any:
    from tqdm import tqdm

    from core.model.infer import flush_predictions

    ray = ray_module()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    dev = ("cuda" if gpus else "cpu") if device == AUTO else device
    opts = {"num_gpus": 1, "num_cpus": 1} if dev.startswith("cuda") else {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
    n_actors = max(1, gpus) if dev.startswith("cuda") else min(alive_nodes(), len(plan.todo))
    cls = ray.remote(Predictor).options(max_restarts=-1, max_task_retries=0, **opts)
    actors = [cls.remote(str(loaded.path), dev, loaded.mc_samples) for _ in range(n_actors)]
    queue = deque((i, 0) for i in plan.todo)
    inflight: dict[Any, tuple[str, int]] = {}
    existing, rows, last_flush, turn = plan.existing, [], time.monotonic(), 0
    bar = tqdm(total=len(plan.todo), unit="slide", desc="infer", file=sys.stderr, disable=None if bars else True)
    write = (lambda m: tqdm.write(m, file=sys.stderr)) if bars else say
    try:
        while queue or inflight:
            while queue and len(inflight) < 2 * n_actors:
                image_id, attempt = queue.popleft()
                ref = actors[turn % n_actors].predict.remote(image_id, str(plan.available[image_id]), str(out_dir))
                inflight[ref] = (image_id, attempt)
                turn += 1
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                image_id, attempt = inflight.pop(ref)
                try:
                    row, _where = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 (the slide's fault, or the cluster's: retried)
                    reason = slide_error(exc)
                    if reason is None and attempt < retries:
                        line = f"retry {attempt + 1}/{retries}: {image_id}: lost ({short(exc)}); resubmitted elsewhere"
                        report.retries.append(line)
                        write(line)
                        queue.appendleft((image_id, attempt + 1))
                        turn += 1
                        continue
                    report.failed[image_id] = reason or f"gave up after {retries} retries: {short(exc)}"
                    write(f"error: {image_id}: {report.failed[image_id]}")
                else:
                    if isinstance(row, TaskFailure):
                        report.failed[image_id] = row.reason
                        write(f"error: {image_id}: {row.reason}")
                    else:
                        rows.append(row)
                        report.written.append(image_id)
                bar.update(1)
                if progress is not None:
                    progress(min(0.999, bar.n / len(plan.todo)), f"{image_id} ({bar.n}/{len(plan.todo)})")
            if rows and (time.monotonic() - last_flush > 20 or not (queue or inflight)):
                existing, rows, last_flush = flush_predictions(existing, rows, out_dir), [], time.monotonic()
    finally:
        if rows:  # never lose finished slides' rows, even when interrupted
            existing = flush_predictions(existing, rows, out_dir)
        bar.close()
        for actor in actors:
            ray.kill(actor)
    return existing


# ---------------------------------------------------------------------------------------------------------------------
# Conversion


def _call(init: Callable[..., Any] | None, initargs: tuple, fn: Callable[..., Any], args: tuple) -> Any:
    if init is not None:
        init(*initargs)
    return fn(*args)


class RayExecutor(Executor):
    """A ``concurrent.futures`` executor whose calls are Ray tasks (rerun up to ``max_retries`` times elsewhere when
    their worker or node dies). ``initializer(*initargs)`` runs before each call, in the worker."""

    def __init__(self, initializer: Callable[..., Any] | None = None, initargs: tuple = (), num_cpus: float = 1,
                 max_retries: int = 3) -> None:
        self._init, self._initargs = initializer, initargs
        self._remote = ray_module().remote(_call).options(num_cpus=num_cpus, max_retries=max_retries)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if kwargs:
            raise TypeError("RayExecutor.submit takes positional arguments only")
        return self._remote.remote(self._init, self._initargs, fn, args).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to stop: the tasks belong to the cluster (``core.model.ray_runner.shutdown`` leaves it)."""


def convert_on_ray(cohort: Any, ids: list[str] | None = None, on_done: Any = None,
                   on_start: Callable[[int], None] | None = None) -> Any:
    """``core.cohort.convert.convert_cohort`` with one Ray task per image, as many at once as the cluster has CPUs."""
    from core.cohort.convert import _init_worker, convert_cohort

    cpus = max(1, int(ray_module().cluster_resources().get("CPU", 1)))
    return convert_cohort(cohort, workers=cpus, ids=ids, on_done=on_done, on_start=on_start,
                          executor=RayExecutor(_init_worker, (1,)))
