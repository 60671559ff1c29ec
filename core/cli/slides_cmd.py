"""``info`` and ``patches``: look at one slide from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cohort.settings import load_settings
from core.slides.slide import open_slide
from core.slides.tiling import draw_grid, patch_grid, tissue_mask


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a slide's size, levels, mpp, vendor and associated images")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--mpp", type=float, default=None, help="override the slide's mpp")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("patches", help="count tissue patches on the grid; optionally save a picture of it")
    p.add_argument("path", type=Path)
    p.add_argument("--mpp", type=float, default=None, help="target mpp of the patches (default from settings)")
    p.add_argument("--patch", type=int, default=None, help="patch side in pixels at the target mpp")
    p.add_argument("--slide-mpp", type=float, default=None, help="override the slide's own mpp")
    p.add_argument("--min-tissue", type=float, default=None, help="minimum tissue fraction of a patch")
    p.add_argument("--png", type=Path, default=None, help="save the thumbnail with the grid drawn on it")
    p.set_defaults(func=cmd_patches)


def cmd_info(args: argparse.Namespace) -> int:
    settings = load_settings()
    slide = open_slide(args.path, mpp=args.mpp, cache_dir=settings.resolved_cache_dir)
    info = slide.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"file:              {info['path']}")
    print(f"size:              {info['width']} x {info['height']}")
    print(f"levels:            {info['level_count']}")
    for i, (d, ds) in enumerate(zip(info["level_dimensions"], info["level_downsamples"])):
        print(f"  level {i}:         {d[0]} x {d[1]} (downsample {ds:g})")
    print(f"mpp:               {info['mpp'] if info['mpp'] is not None else 'unknown'}")
    print(f"objective power:   {info['objective_power'] if info['objective_power'] is not None else 'unknown'}")
    print(f"vendor:            {info['vendor']}")
    print(f"associated images: {', '.join(info['associated_images']) or 'none'}")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    s = load_settings()
    slide = open_slide(args.path, mpp=args.slide_mpp, cache_dir=s.resolved_cache_dir)
    mask = tissue_mask(slide, s.thumbnail_size)
    grid = patch_grid(slide, patch_size=args.patch or s.patch_size, target_mpp=args.mpp or s.target_mpp,
                      min_tissue=s.min_tissue if args.min_tissue is None else args.min_tissue,
                      default_mpp=s.default_mpp, mask=mask)
    print(f"{len(grid)} tissue patches of {grid.patch_size}px at {grid.target_mpp} mpp "
          f"({grid.patch_size_level0}px at level 0); tissue covers {mask.fraction:.1%} of the slide")
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        draw_grid(slide, grid, mask=mask).save(args.png)
        print(f"saved {args.png}")
    return 0
