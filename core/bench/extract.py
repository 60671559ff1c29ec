"""``bench extract``: end-to-end patches/s of feature extraction vs the backbone's own forward throughput.

Both are measured in the same run, alternating, on the same batches: the model alone on random uint8 patches, and
the full loop (DataLoader workers reading patches from the slide while the model runs). Their ratio shows whether
reading and tiling hide behind the model (target >= 0.85). A full ``extract_slide`` (tissue mask, tiling, writing)
is timed too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.bench._util import write_json
from core.errors import InputError

DEFAULT_SLIDE = Path("/work/shared/data/slides/CMU-1-Small-Region.svs")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extraction patches/s end to end vs the backbone alone")
    p.add_argument("--slide", type=Path, default=None, help=f"slide to read (default {DEFAULT_SLIDE})")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--patches", type=int, default=256, help="patches per timed pass (grid coords cycled if fewer)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--prefetch", type=int, default=4, help="batches prefetched per worker")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the model")
    p.add_argument("--repeat", type=int, default=3, help="timed passes of each kind (alternating)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                   help="instead: slides/s and patches/s of extract through a Ray cluster (auto: a one-node cluster "
                        "here) against the local path, on the same slides and backbone")
    p.add_argument("--ray-slides", type=int, default=3, help="with --ray: copies of the slide in the cohort")
    p.set_defaults(func=cmd_bench_extract)


def _model_pass(backbone: Any, batches: list[torch.Tensor]) -> float:
    from core.model.backbones import embed

    t = time.perf_counter()
    for b in batches:
        embed(backbone, b)
    if backbone.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _loop_pass(backbone: Any, dataset: Any, batch_size: int, workers: int, prefetch: int) -> float:
    from core.model.backbones import embed
    from core.model.features import patch_loader

    t = time.perf_counter()  # includes starting the workers, as every slide does
    loader = patch_loader(dataset, batch_size, workers, pin_memory=backbone.device.startswith("cuda"),
                          prefetch_factor=prefetch)
    for batch, errors in loader:
        if any(errors):
            raise InputError(f"{dataset.slide_path}: {next(e for e in errors if e)}")
        embed(backbone, batch)
    if backbone.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def run_bench(slide_path: Path, backbone_name: str = "efficientnet_lite0", weights: Path | None = None,
              patch: int = 256, mpp: float = 0.5, patches: int = 256, batch_size: int = 32, workers: int = 2,
              prefetch: int = 4, repeat: int = 3, device: str = "auto") -> dict[str, Any]:
    """Measure model-only and end-to-end patches/s (medians over ``repeat`` alternating passes) and their ratio."""
    from core.model.backbones import autocast_dtype, create_backbone
    from core.model.feature_files import read_features
    from core.model.features import PatchDataset, extract_slide
    from core.slides.slide import open_slide
    from core.slides.tiling import patch_grid

    backbone = create_backbone(backbone_name, weights, device)
    slide = open_slide(slide_path)
    grid = patch_grid(slide, patch_size=patch, target_mpp=mpp, min_tissue=0.0)
    if len(grid) == 0:
        raise InputError(f"{slide_path}: no {patch}px patches at {mpp} mpp fit on this slide")
    coords = np.resize(grid.coords, (patches, 2))  # cycle the grid to the requested count
    dataset = PatchDataset(slide_path, coords, patch, mpp)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (min(batch_size, patches - i), patch, patch, 3), dtype=torch.uint8,
                             generator=gen) for i in range(0, patches, batch_size)]
    _model_pass(backbone, batches[:1])  # warm-up: allocator, cudnn autotune, first-call overheads
    _loop_pass(backbone, PatchDataset(slide_path, coords[:batch_size], patch, mpp), batch_size, 0, prefetch)
    model_s, loop_s = [], []
    for _ in range(repeat):
        model_s.append(_model_pass(backbone, batches))
        loop_s.append(_loop_pass(backbone, dataset, batch_size, workers, prefetch))
    model_pps = patches / statistics.median(model_s)
    loop_pps = patches / statistics.median(loop_s)
    with tempfile.TemporaryDirectory() as tmp:  # one whole real slide: mask, grid, read, embed, write
        t = time.perf_counter()
        out = extract_slide(slide_path, Path(tmp) / "bench.h5", backbone, patch_size=patch, target_mpp=mpp,
                            batch_size=batch_size, num_workers=workers, prefetch_factor=prefetch)
        full_s = time.perf_counter() - t
        n_full = len(read_features(out))
    return {
        "benchmark": "extract",
        "slide": str(slide_path), "backbone": backbone.name, "weights": backbone.weights or "random",
        "device": backbone.device, "torch_threads": torch.get_num_threads(),
        "autocast": str(autocast_dtype(backbone.device)),
        "patch_size": patch, "target_mpp": mpp, "patches_per_pass": patches, "batch_size": batch_size,
        "workers": workers, "prefetch_factor": prefetch, "repeat": repeat,
        "model_only_patches_per_s": round(model_pps, 2),
        "end_to_end_patches_per_s": round(loop_pps, 2),
        "ratio": round(loop_pps / model_pps, 3),
        "target_ratio": 0.85,
        "model_only_pass_s": [round(s, 3) for s in model_s],
        "end_to_end_pass_s": [round(s, 3) for s in loop_s],
        "full_extract_slide": {"patches": n_full, "seconds": round(full_s, 3),
                               "patches_per_s": round(n_full / full_s, 2) if full_s > 0 else None},
    }


def cmd_bench_extract(args: argparse.Namespace) -> int:
    slide = args.slide or DEFAULT_SLIDE
    if not slide.is_file():
        raise InputError(f"{slide}: slide not found (give --slide PATH)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ray is not None:
        write_json(run_ray_bench(slide, args.ray, args.ray_slides, args.backbone, args.weights, args.patch, args.mpp,
                                 args.batch_size, args.workers), args.json)
        return 0
    result = run_bench(slide, args.backbone, args.weights, args.patch, args.mpp, args.patches, args.batch_size,
                       args.workers, args.prefetch, args.repeat, args.device)
    write_json(result, args.json)
    return 0


def run_ray_bench(slide_path: Path, address: str = "auto", copies: int = 3, backbone_name: str = "efficientnet_lite0",
                  weights: Path | None = None, patch: int = 256, mpp: float = 0.5, batch_size: int = 32,
                  workers: int = 2) -> dict[str, Any]:
    """The same cohort (``copies`` links to one slide) extracted locally, then through the Ray cluster at
    ``address`` (after a one-slide warm-up run that starts the workers); their patches/s and ratio (target >= 0.85).
    Both timings include making the backbone (locally; in the cluster's actors) and writing the files."""
    from core.model.backbones import create_backbone
    from core.model.features import extract_cohort
    from core.model.ray_runner import connect, extract_on_ray, shutdown

    kw = {"patch_size": patch, "target_mpp": mpp, "min_tissue": 0.0, "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        slides = {}
        for i in range(copies):
            slides[f"b{i}"] = Path(tmp) / f"b{i}{slide_path.suffix}"
            slides[f"b{i}"].symlink_to(slide_path.resolve())
        t = time.perf_counter()
        local = extract_cohort(slides, Path(tmp) / "local", create_backbone(backbone_name, weights, "auto"),
                               num_workers=workers, **kw)
        local_s = time.perf_counter() - t
        t = time.perf_counter()
        cluster = connect(address)
        connect_s = time.perf_counter() - t
        try:
            t = time.perf_counter()
            extract_on_ray({"b0": slides["b0"]}, Path(tmp) / "warm", backbone=backbone_name, weights=weights,
                           log=lambda m: None, **kw)
            warm_s = time.perf_counter() - t
            ray = extract_on_ray(slides, Path(tmp) / "ray", backbone=backbone_name, weights=weights,
                                 log=lambda m: None, **kw)
        finally:
            shutdown()
    if local.failed or ray.failed:
        raise InputError(f"{slide_path}: extraction failed ({local.failed or ray.failed})")
    patches = ray.patches
    return {
        "benchmark": "extract-ray", "slide": str(slide_path), "slides": copies, "patches": patches,
        "backbone": backbone_name, "patch_size": patch, "target_mpp": mpp, "batch_size": batch_size,
        "local_workers": workers, "cluster": cluster, "connect_s": round(connect_s, 2),
        "warmup_one_slide_s": round(warm_s, 2),
        "local_s": round(local_s, 2), "ray_s": round(ray.seconds, 2),
        "local_patches_per_s": round(patches / local_s, 2), "ray_patches_per_s": round(patches / ray.seconds, 2),
        "ratio": round(local_s / ray.seconds, 3), "target_ratio": 0.85,
    }
