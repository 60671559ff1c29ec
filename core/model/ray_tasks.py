"""What the Ray workers run for ``extract --ray`` (imported there from this module), and the driver's view of its
backbone actors. Ray itself is never imported here: the driver passes its module in."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import SlideLensError


@dataclass(frozen=True)
class TaskFailure:
    """A slide's own failure, returned (not raised) by a task: our exceptions do not all survive Ray's pickling."""

    reason: str


def failure(exc: Exception) -> TaskFailure:
    """The one-line reason of an exception raised while working on a slide."""
    return TaskFailure(str(exc) if isinstance(exc, SlideLensError) else f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class ReadSpec:
    """How every worker reads a slide's patches (the same settings as the local path)."""

    patch_size: int
    target_mpp: float
    min_tissue: float
    default_mpp: float | None
    cache_dir: str | None


def plan_task(slide_path: str, spec: ReadSpec, mpp: float | None) -> Any:
    """CPU task: the slide's patch plan (``core.model.features.plan_slide``)."""
    from core.model.features import plan_slide

    try:
        return plan_slide(slide_path, patch_size=spec.patch_size, target_mpp=spec.target_mpp,
                          min_tissue=spec.min_tissue, mpp=mpp, default_mpp=spec.default_mpp, cache_dir=spec.cache_dir)
    except Exception as exc:  # noqa: BLE001 (a corrupt slide: reported by the driver, the others go on)
        return failure(exc)


_OPEN: dict[tuple[Any, ...], Any] = {}  # per worker process: the last few slides stay open across batches


def decode_task(slide_path: str, coords: np.ndarray, start: int, stop: int, spec: ReadSpec,
                mpp: float | None) -> np.ndarray | TaskFailure:
    """CPU task: patches ``start:stop`` of the slide as uint8 (n x H x W x 3), or the failure naming the slide."""
    from core.model.features import PatchDataset, read_patch_batch

    key = (slide_path, mpp, spec)
    ds = _OPEN.get(key)
    if ds is None:
        while len(_OPEN) >= 4:
            _OPEN.pop(next(iter(_OPEN)))
        ds = _OPEN[key] = PatchDataset(Path(slide_path), coords, spec.patch_size, spec.target_mpp, mpp,
                                       spec.default_mpp, Path(spec.cache_dir) if spec.cache_dir else None)
    ds.coords = coords
    try:
        return read_patch_batch(ds, start, stop)
    except Exception as exc:  # noqa: BLE001
        _OPEN.pop(key, None)
        return failure(exc)


class Embedder:
    """Actor: the backbone, loaded once and kept for the whole run (on a GPU with autocast and channels-last)."""

    def __init__(self, name: str, weights: str | None, device: str, threads: int | None = None) -> None:
        import torch

        from core.model.backbones import create_backbone

        if device == "cpu":
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        self.backbone = create_backbone(name, weights, device)
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def ping(self) -> str:
        return self.where

    def embed(self, batch: np.ndarray | TaskFailure, tta: str = "none") -> tuple[np.ndarray | TaskFailure, str]:
        """Features (n x dim float32) of a uint8 batch (averaged over ``tta`` views, core/model/tta.py), and where they
        were computed (host:pid)."""
        import torch

        from core.model.backbones import embed
        from core.model.tta import embed_tta

        if isinstance(batch, TaskFailure):  # the read failed: pass it on
            return batch, self.where
        x = torch.from_numpy(batch if batch.flags.writeable else batch.copy())  # objects from the store are read-only
        out = embed(self.backbone, x) if tta == "none" else embed_tta(self.backbone, x, tta)
        return out.numpy(), self.where




class ActorPool:
    """The backbone actors and which of them can take work: an actor whose call failed for the cluster's reasons (its
    node died, it is restarting) gets no batch until a ping answers, so its retries go to the others meanwhile."""

    def __init__(self, ray: Any, actors: list[Any], write: Callable[[str], None]) -> None:
        self.ray, self.actors, self.write = ray, actors, write
        self.up = [True] * len(actors)
        self.where: dict[int, str] = {}
        self.pinging: dict[Any, int] = {}
        self.last_ping = [0.0] * len(actors)
        self.turn = 0
        self.all_down_since: float | None = None

    def pick(self) -> int | None:
        """The next actor that can take a batch (round robin), or None when none can."""
        for _ in range(len(self.actors)):
            a, self.turn = self.turn, (self.turn + 1) % len(self.actors)
            if self.up[a]:
                return a
        return None

    def failed(self, a: int, exc: BaseException) -> None:
        if isinstance(exc, self.ray.exceptions.RayActorError) and self.up[a]:
            self.up[a] = False
            self.write(f"embedder {a} lost ({type(exc).__name__}); its batches go to the others until it is back")
            if not any(self.up):
                self.all_down_since = time.monotonic()

    def served(self, a: int, where: str) -> None:
        if self.where.get(a, where) != where:
            self.write(f"embedder {a} restarted on {where} (was {self.where[a]})")
        self.where[a] = where

    def check(self, now: float) -> None:
        """Ping the actors that are down, every 2 s each."""
        for a, ok in enumerate(self.up):
            if not ok and a not in self.pinging.values() and now - self.last_ping[a] > 2.0:
                self.pinging[self.actors[a].ping.remote()] = a
                self.last_ping[a] = now

    def pings(self) -> list[Any]:
        return list(self.pinging)

    def answered(self, ref: Any) -> bool:
        """Handle a ping's answer; False when ``ref`` is not a ping."""
        a = self.pinging.pop(ref, None)
        if a is None:
            return False
        try:
            self.served(a, self.ray.get(ref))
        except Exception:  # noqa: BLE001 (still down: pinged again later)
            return True
        self.up[a], self.all_down_since = True, None
        self.write(f"embedder {a} is back")
        return True

    def gone_for(self, now: float) -> float:
        """Seconds since the last actor went down, while none is up (0 otherwise)."""
        return 0.0 if self.all_down_since is None else now - self.all_down_since

