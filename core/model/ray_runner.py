"""Scale-out on a Ray cluster: ``extract`` (and, in ``core/model/ray_jobs.py``, ``infer`` and ``convert``) with ``--ray``.

Ray is imported here only, and only when a command is given ``--ray [auto|ADDRESS]`` (or a cohort sets
``[compute] ray``). Extraction runs as a pipeline: the driver (this process) plans each slide in a CPU task (open,
tissue mask, patch grid), CPU tasks read and decode batches of patches anywhere in the cluster, long-lived
``Embedder`` actors hold the backbone (one per GPU with ``num_gpus=1``, autocast and channels-last; one CPU actor per
node otherwise) and the driver gathers each slide's features and writes them atomically (``write_features``: a temp
file, then a rename), so a features file either is complete or does not exist.

Failures of the cluster (a worker process or a node dies, an object is lost) are retried on another worker: a batch
is resubmitted up to ``retries`` times and every retry is reported. A slide that fails for its own reasons (a corrupt
file) is reported once, by name, and the others go on. Slides must be on storage that every node sees, at the same
path (so must the cohort's ``.cache`` for converted images and a ``--weights`` file).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError, SlideLensError
from core.model.feature_files import FEATURES_SUFFIX
from core.model.features import ExtractReport
from core.model.ray_tasks import ActorPool, Embedder, ReadSpec, TaskFailure, decode_task, plan_task

AUTO = "auto"
Log = Callable[[str], None]
Progress = Callable[[float, str], None]


def ray_module() -> Any:
    """The ``ray`` package; InputError (one line) when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise InputError("--ray: the 'ray' package is not installed (pip install -r requirements.txt)") from exc
    return ray


def connect(address: str = AUTO, num_cpus: int | None = None) -> str:
    """Join the Ray cluster at ``address`` (``auto``: the cluster this machine joined with ``ray start``, or, if there
    is none, a private one-node cluster for this process with ``num_cpus``). Returns one line describing it."""
    ray = ray_module()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage to outside hosts
    started = ""
    if not ray.is_initialized():
        root = Path(__file__).resolve().parents[2]  # workers import ``core`` from the same path on every node
        env = None if Path.cwd().resolve() == root else {"env_vars": {"PYTHONPATH": str(root)}}
        kw: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False, "runtime_env": env}
        try:
            if address == AUTO:
                try:
                    ray.init(address="auto", **kw)
                except ConnectionError:
                    ray.init(num_cpus=num_cpus, include_dashboard=False, **kw)
                    started = " (no running cluster found: started a one-node cluster for this run)"
            else:
                ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"--ray {address}: cannot join the Ray cluster ({first})") from exc
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return (f"Ray cluster: {nodes} node(s), {int(res.get('CPU', 0))} CPU(s), {int(res.get('GPU', 0))} GPU(s)"
            f"{started}")


def shutdown() -> None:
    """Leave the cluster (a private one-node cluster started by ``connect`` stops with it)."""
    ray = ray_module()
    if ray.is_initialized():
        ray.shutdown()


def alive_nodes() -> int:
    return max(1, sum(1 for n in ray_module().nodes() if n.get("Alive")))


def slide_error(exc: BaseException) -> str | None:
    """The one-line reason when ``exc`` is the slide's own failure (raised by our code in a task); None when the
    cluster failed (a worker or node died, an object was lost), which is worth a retry elsewhere."""
    ray = ray_module()
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, SlideLensError):
            return str(cause)
        if cause is not None and not isinstance(cause, ray.exceptions.RayError):
            return f"{type(cause).__name__}: {cause}"
    return None


def short(exc: BaseException) -> str:
    """``ErrorType: first line`` of a Ray error, for the log."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------------------------
# The driver.


@dataclass
class RayExtractReport(ExtractReport):
    """``ExtractReport`` plus the retries the run made (one line each) and its patch count and wall time."""

    retries: list[str] = field(default_factory=list)
    patches: int = 0
    seconds: float = 0.0


@dataclass
class _Slide:
    image_id: str
    path: Path
    plan: Any = None
    coords_ref: Any = None
    feats: np.ndarray | None = None
    left: set[int] = field(default_factory=set)
    chunks: int = 0
    started: float = 0.0
    dead: bool = False


def _stale_temps(out_dir: Path, image_id: str) -> list[Path]:
    return list(out_dir.glob(f".{image_id}.*{FEATURES_SUFFIX}.tmp"))


def extract_on_ray(slides: dict[str, Path], out_dir: str | Path, *, backbone: str = "efficientnet_lite0",
                   weights: str | Path | None = None, device: str = "auto", patch_size: int = 256,
                   target_mpp: float = 0.5, min_tissue: float = 0.25, mpp_overrides: dict[str, float] | None = None,
                   default_mpp: float | None = None, batch_size: int = 64, cache_dir: str | Path | None = None,
                   overwrite: bool = False, dtype: str = "float32", tta: str = "none", retries: int = 3,
                   log: Log | None = None,
                   progress: Progress | None = None, bars: bool = False,
                   cpu_threads: int | None = None, actor_wait_s: float = 900.0) -> RayExtractReport:
    """Extract every slide into ``out_dir/<image_id>.h5`` on the connected Ray cluster (``connect`` first).

    Same files as ``core.model.features.extract_cohort`` (same plan, batches and backbone); finished slides are skipped."""
    from core.model.backbones import create_backbone
    from core.model.features import done_features, write_slide_features
    from core.model.tta import check_mode, feature_identity

    ray = ray_module()
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda m: print(m, file=sys.stderr))
    report = RayExtractReport()
    tta = check_mode(tta)
    probe = create_backbone(backbone, weights, "cpu")  # bad names or weights fail here, as one line
    dim, source = probe.dim, probe.weights
    del probe
    todo: list[str] = []
    for image_id in sorted(slides):
        if not overwrite and done_features(out_dir / f"{image_id}{FEATURES_SUFFIX}", feature_identity(backbone, tta)):
            report.skipped.append(image_id)
        else:
            todo.append(image_id)
            for tmp in _stale_temps(out_dir, image_id):  # left by a run that was killed while writing
                tmp.unlink(missing_ok=True)
    if not todo:
        return report

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    dev = ("cuda" if gpus else "cpu") if device == AUTO else device
    nodes: list[str] = []
    if dev.startswith("cuda"):
        opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        n_actors = max(1, gpus)
    else:  # one CPU actor per node, reserving no CPU slot: decode tasks and the model share the node's cores, as
        # the local path's DataLoader workers and model do; pinned softly (a restart may go to another node)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
        opts = {"num_cpus": 0}
        n_actors = max(1, len(nodes))
    actor_cls = ray.remote(Embedder)
    actors = []
    for i in range(n_actors):
        pin = {"scheduling_strategy": NodeAffinitySchedulingStrategy(nodes[i], soft=True)} if nodes else {}
        actors.append(actor_cls.options(max_restarts=-1, max_task_retries=0, **opts, **pin).remote(
            backbone, str(weights) if weights else None, dev, cpu_threads))
    plan_fn = ray.remote(plan_task).options(num_cpus=1, max_retries=0)
    decode_fn = ray.remote(decode_task).options(num_cpus=1, max_retries=0)
    spec = ReadSpec(patch_size, target_mpp, min_tissue, default_mpp, str(cache_dir) if cache_dir else None)
    mpps = mpp_overrides or {}

    from tqdm import tqdm

    show = None if bars else True  # bars on a terminal only; the log lines go to stderr either way
    sbar = tqdm(total=len(todo), unit="slide", desc="slides", file=sys.stderr, disable=show, position=0)
    pbar = tqdm(total=0, unit="patch", desc="patches", file=sys.stderr, disable=show, position=1)
    write = (lambda m: tqdm.write(m, file=sys.stderr)) if bars else say

    state = {i: _Slide(i, Path(slides[i])) for i in todo}
    to_plan = deque(todo)
    plans: dict[Any, tuple[str, int]] = {}
    batches: deque[tuple[str, int, int]] = deque()  # (image_id, chunk, attempt)
    inflight: dict[Any, tuple[str, int, int, int]] = {}  # ref -> (image_id, chunk, attempt, actor)
    pool = ActorPool(ray, actors, write)
    retried_at: set[tuple[str, int]] = set()
    window, max_inflight = max(3, cpus), max(4, 2 * cpus + 2 * n_actors)
    finished = 0

    def active() -> int:
        return sum(1 for s in state.values() if s.plan is not None and s.left and not s.dead)

    def retry(what: str, image_id: str, attempt: int, exc: BaseException) -> bool:
        if attempt >= retries:
            fail(image_id, f"gave up after {retries} retries: {short(exc)}")
            return False
        if (image_id, attempt) not in retried_at:
            retried_at.add((image_id, attempt))
            line = f"retry {attempt + 1}/{retries}: {image_id}: {what} lost ({short(exc)}); resubmitted elsewhere"
            report.retries.append(line)
            write(line)
        return True

    def fail(image_id: str, reason: str) -> None:
        nonlocal finished
        s = state[image_id]
        if s.dead:
            return
        s.dead, s.feats = True, None
        report.failed[image_id] = reason
        write(f"error: {image_id}: {reason}")
        finished += 1
        sbar.update(1)

    def done(s: _Slide) -> None:
        nonlocal finished
        try:
            write_slide_features(out_dir / f"{s.image_id}{FEATURES_SUFFIX}", s.path, s.plan, s.feats, backbone=backbone,
                                 weights=source, patch_size=patch_size, target_mpp=target_mpp,
                                 min_tissue=min_tissue, dtype=dtype, tta=tta)
        except SlideLensError as exc:
            fail(s.image_id, str(exc))
            return
        n, secs = len(s.plan.coords), time.perf_counter() - s.started
        report.written.append(s.image_id)
        report.patches += n
        s.feats = None
        finished += 1
        sbar.update(1)
        write(f"done {s.image_id}: {n} patches in {secs:.1f} s ({n / secs if secs > 0 else 0:.1f} patches/s)")

    try:
        while finished < len(todo):
            while to_plan and len(plans) + active() < window:
                image_id = to_plan.popleft()
                ref = plan_fn.remote(str(state[image_id].path), spec, mpps.get(image_id))
                plans[ref] = (image_id, 0)
            while batches and len(inflight) < max_inflight and (a := pool.pick()) is not None:
                image_id, k, attempt = batches.popleft()
                s = state[image_id]
                if s.dead:
                    continue
                start = k * batch_size
                stop = min(start + batch_size, len(s.plan.coords))
                patches = decode_fn.remote(str(s.path), s.coords_ref, start, stop, spec, mpps.get(image_id))
                inflight[actors[a].embed.remote(patches, tta)] = (image_id, k, attempt, a)
            pool.check(time.monotonic())
            refs = list(plans) + list(inflight) + pool.pings()
            if not refs:  # every actor is down and no ping is out yet: wait for one to come back
                time.sleep(0.5)
                if pool.gone_for(time.monotonic()) > actor_wait_s:
                    break
                continue
            ready, rest = ray.wait(refs, num_returns=1, timeout=1.0)
            if ready and rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                if pool.answered(ref):
                    continue
                if ref in plans:
                    image_id, attempt = plans.pop(ref)
                    s = state[image_id]
                    try:
                        s.plan = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 (classified: the slide's fault or the cluster's)
                        reason = slide_error(exc)
                        if reason is not None:
                            fail(image_id, reason)
                        elif retry("plan", image_id, attempt, exc):
                            plans[plan_fn.remote(str(s.path), spec, mpps.get(image_id))] = (image_id, attempt + 1)
                        continue
                    if isinstance(s.plan, TaskFailure):
                        fail(image_id, s.plan.reason)
                        continue
                    n = len(s.plan.coords)
                    s.feats, s.started = np.zeros((n, dim), np.float32), time.perf_counter()
                    pbar.total += n
                    pbar.refresh()
                    if n == 0:
                        done(s)
                        continue
                    s.coords_ref = ray.put(np.ascontiguousarray(s.plan.coords))
                    s.chunks = (n + batch_size - 1) // batch_size
                    s.left = set(range(s.chunks))
                    batches.extend((image_id, k, 0) for k in sorted(s.left))
                    continue
                image_id, k, attempt, a = inflight.pop(ref)
                s = state[image_id]
                try:
                    feats, where = ray.get(ref)
                except Exception as exc:  # noqa: BLE001
                    if s.dead:
                        continue
                    reason = slide_error(exc)
                    if reason is not None:
                        fail(image_id, reason)
                    elif retry(f"batch {k}", image_id, attempt, exc):
                        pool.failed(a, exc)
                        batches.appendleft((image_id, k, attempt + 1))
                    continue
                pool.served(a, where)
                if isinstance(feats, TaskFailure):
                    fail(image_id, feats.reason)
                if s.dead or k not in s.left:
                    continue
                start = k * batch_size
                s.feats[start:start + len(feats)] = feats
                s.left.discard(k)
                pbar.update(len(feats))
                if progress is not None:
                    part = sum(1 - len(x.left) / x.chunks for x in state.values() if x.left and x.chunks and not x.dead)
                    progress(min(0.999, (finished + part) / len(todo)), f"{image_id}: {len(s.left)} batch(es) left")
                if not s.left:
                    done(s)
            if pool.gone_for(time.monotonic()) > actor_wait_s:
                break
        for image_id in todo:  # never end quietly with a slide left undone
            if not state[image_id].dead and image_id not in report.written:
                fail(image_id, f"no backbone actor could run for {actor_wait_s:.0f} s (not enough resources left in "
                               "the cluster?)")
    finally:
        sbar.close()
        pbar.close()
        for actor in actors:
            ray.kill(actor)
    for image_id in todo:  # a worker killed while writing leaves nothing that passes as done: clean up
        for tmp in _stale_temps(out_dir, image_id):
            tmp.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - t_start
    if progress is not None:
        progress(1.0, f"{len(report.written)} slide(s) extracted on the cluster")
    return report
