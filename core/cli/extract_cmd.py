"""``extract``: patch features for a folder of slides (or a cohort), one ``<image_id>.h5`` per slide."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.cohort.settings import load_settings
from core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract patch features of every slide (skips slides already done)")
    p.add_argument("--slides", type=Path, default=None, help="folder of slides (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="folder for the <image_id>.h5 feature files")
    p.add_argument("--cohort", type=Path, default=None,
                   help="cohort.toml: its slides, features folder, patch settings and mpp overrides")
    p.add_argument("--backbone", default=None, help="timm model name (default efficientnet_lite0, ImageNet weights)")
    p.add_argument("--weights", type=Path, default=None, help="local weights: .safetensors or a torch state dict")
    p.add_argument("--mpp", type=float, default=None, help="target microns per pixel of the patches (default 0.5)")
    p.add_argument("--patch", type=int, default=None, help="patch side in pixels at the target mpp (default 256)")
    p.add_argument("--min-tissue", type=float, default=None, help="minimum tissue fraction of a patch")
    p.add_argument("--default-mpp", type=float, default=None, help="mpp for slides whose file carries none")
    p.add_argument("--batch-size", type=int, default=None, help="patches per forward pass")
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes reading patches")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--overwrite", action="store_true", help="redo slides that already have a features file")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="stored feature type: float16 halves the files (training streams them either way)")
    p.add_argument("--tta", choices=("none", "flips", "dihedral"), default="none",
                   help="test-time augmentation: average each patch's features over its 2 flips or 8 flips and "
                        "rotations (stored in the file; a model only takes features of its own mode)")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                   help="spread the slides over a Ray cluster (auto: the one this machine joined, else a one-node "
                        "cluster; ADDRESS: host:port of its head); slides must be on storage every node sees")
    p.set_defaults(func=cmd_extract)


def cmd_extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.model.backbones import create_backbone
    from core.model.features import extract_cohort
    from core.slides.slide import find_slides

    s = load_settings()
    patch, mpp, min_tissue = s.patch_size, s.target_mpp, s.min_tissue
    default_mpp, overrides, cache_dir = s.default_mpp, {}, s.resolved_cache_dir
    if args.cohort is not None:
        if args.slides is not None:
            raise InputError("give either --cohort or --slides/--out, not both")
        from core.cohort.cohort_file import load_cohort

        cohort = load_cohort(args.cohort)
        slides, out = cohort.slide_paths, args.out or cohort.features
        patch, mpp, min_tissue = cohort.patch_size, cohort.target_mpp, cohort.min_tissue
        default_mpp, overrides, cache_dir = cohort.default_mpp, dict(cohort.slide_mpps), cohort.cache_dir
    else:
        if args.slides is None or args.out is None:
            raise InputError("give --slides DIR and --out FEATDIR (or --cohort cohort.toml)")
        if not args.slides.is_dir():
            raise InputError(f"{args.slides}: slides folder not found")
        slides, out = find_slides(args.slides), args.out
    if not slides:
        raise InputError(f"{args.cohort or args.slides}: no slides found")
    patch = args.patch or patch
    mpp = args.mpp or mpp
    min_tissue = min_tissue if args.min_tissue is None else args.min_tissue
    default_mpp = args.default_mpp if args.default_mpp is not None else default_mpp
    if args.ray is not None:
        if args.tta != "none":
            raise InputError("extract: --tta is not available with --ray yet; extract TTA features without --ray")
        return _extract_on_ray(args, slides, out, s.backbone, patch=patch, mpp=mpp, min_tissue=min_tissue,
                               default_mpp=default_mpp, overrides=overrides, cache_dir=cache_dir,
                               batch_size=args.batch_size or s.batch_size)

    backbone = create_backbone(args.backbone or s.backbone, args.weights, args.device or s.device)
    print(f"backbone {backbone.name} ({backbone.dim}-d, weights: {backbone.weights or 'random init'}) on "
          f"{backbone.device}; {len(slides)} slides; {patch}px patches at {mpp} mpp"
          f"{'' if args.tta == 'none' else f', TTA {args.tta}'} -> {out}", file=sys.stderr)
    with tqdm(total=len(slides), unit="slide", bar_format="{l_bar}{bar}| {n:.2f}/{total} [{elapsed}<{remaining}]",
              file=sys.stderr) as bar:

        def progress(frac: float, msg: str) -> None:
            bar.n = round(frac * len(slides), 3)
            bar.set_description_str(msg[-60:], refresh=False)
            bar.refresh()

        report = extract_cohort(slides, out, backbone, patch_size=patch, target_mpp=mpp, min_tissue=min_tissue,
                                mpp_overrides=overrides, default_mpp=default_mpp,
                                batch_size=args.batch_size or s.batch_size,
                                num_workers=s.num_workers if args.workers is None else args.workers,
                                cache_dir=cache_dir, overwrite=args.overwrite, progress=progress,
                                dtype=args.dtype, tta=args.tta)
    print(f"extracted {len(report.written)}, already done {len(report.skipped)}, failed {len(report.failed)}",
          file=sys.stderr)
    for image_id, reason in report.failed.items():
        print(f"error: {image_id}: {reason}", file=sys.stderr)
    return 2 if report.failed else 0


def _extract_on_ray(args: argparse.Namespace, slides: dict[str, Path], out: Path, default_backbone: str,
                    **kw: Any) -> int:
    """``extract --ray``: the same files through a Ray cluster (core/model/ray_runner.py), with a summary."""
    from core.model.ray_runner import connect, extract_on_ray, shutdown

    print(connect(args.ray), file=sys.stderr)
    print(f"{len(slides)} slides; {kw['patch']}px patches at {kw['mpp']} mpp -> {out}", file=sys.stderr)
    try:
        report = extract_on_ray(slides, out, backbone=args.backbone or default_backbone, weights=args.weights,
                                device=args.device or "auto", patch_size=kw["patch"], target_mpp=kw["mpp"],
                                min_tissue=kw["min_tissue"], mpp_overrides=kw["overrides"],
                                default_mpp=kw["default_mpp"], batch_size=kw["batch_size"],
                                cache_dir=kw["cache_dir"], overwrite=args.overwrite, dtype=args.dtype, tta=args.tta,
                                bars=True)
    finally:
        shutdown()
    rate = f" ({report.patches / report.seconds:.1f} patches/s)" if report.seconds > 0 and report.patches else ""
    print(f"extracted {len(report.written)}, already done {len(report.skipped)}, failed {len(report.failed)}, "
          f"retried {len(report.retries)} time(s) after worker failures; {report.patches} patches in "
          f"{report.seconds:.0f} s{rate}", file=sys.stderr)
    for image_id, reason in report.failed.items():
        print(f"error: {image_id}: {reason}", file=sys.stderr)
    return 2 if report.failed else 0
