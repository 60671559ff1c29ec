"""``annotations``: import and export region annotations as QuPath GeoJSON, and list patches inside a class."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotations", help="region annotations: QuPath GeoJSON import/export, patches inside a class")
    asub = p.add_subparsers(dest="annotations_command", metavar="ACTION")
    asub.required = True
    i = asub.add_parser("import", help="import a GeoJSON file (one slide) or a folder of <image_id>.geojson files")
    i.add_argument("path", type=Path)
    i.add_argument("--slide", default=None, help="the slide of a one-slide file (else properties.image_id or the "
                                                  "file name)")
    i.add_argument("--reviewer", required=True, help="who the annotations are recorded as created by")
    i.add_argument("--add-classes", action="store_true", help="add unknown classes to the cohort's list")
    i.add_argument("--refuse-invalid", action="store_true", help="refuse invalid polygons instead of repairing")
    i.add_argument("--masks", action="store_true", help="PATH is a folder of <image_id>.png binary masks (the demo's "
                   "truth/masks): their outlines are imported as --class")
    i.add_argument("--class", dest="cls", default="Tumour", help="class of mask outlines (with --masks)")
    i.add_argument("--downsample", type=float, default=None, help="level-0 pixels per mask pixel (with --masks; "
                   "default: the demo's)")
    i.set_defaults(func=cmd_import)
    e = asub.add_parser("export", help="export annotations as QuPath GeoJSON (one slide to a file, or all to a "
                                       "folder)")
    e.add_argument("--out", type=Path, required=True, help="a .geojson file with --slide, else a folder")
    e.add_argument("--slide", default=None)
    e.set_defaults(func=cmd_export)
    t = asub.add_parser("patches", help="CSV of the patch coordinates (level-0) inside annotations of a class")
    t.add_argument("--class", dest="cls", required=True)
    t.add_argument("--out", type=Path, default=None, help="CSV file (default: stdout)")
    t.set_defaults(func=cmd_patches)
    for q in (i, e, t):
        q.add_argument("--cohort", type=Path, default=None, help="cohort TOML (default: $SLIDELENS_COHORT or demo)")


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from core.cohort.cohort_file import default_cohort_path, load_cohort
    from core.review.queue import open_cohort_store

    cohort = load_cohort(args.cohort or default_cohort_path())
    return cohort, open_cohort_store(cohort)


def slide_dims(cohort: Any, image_id: str) -> tuple[int, int] | None:
    """Level-0 (width, height) of a cohort's slide, or None when it cannot be opened (bounds then go unchecked)."""
    from core.slides.slide import open_slide

    path = cohort.slide_paths.get(image_id)
    if path is None:
        raise InputError(f"slide {image_id!r} is not in the cohort")
    try:
        slide = open_slide(path, cache_dir=cohort.cache_dir)
    except InputError:
        return None
    try:
        return tuple(slide.dimensions)  # type: ignore[return-value]
    finally:
        slide.close()


def import_files(cohort: Any, store: Any, files: list[tuple[Path, str | None]], reviewer: str,
                 add_classes: bool = False, repair: bool = True) -> tuple[int, int, list[str]]:
    """Check every file, then store all their annotations in one transaction (nothing half).
    Returns (annotations imported, detections skipped, warnings)."""
    from core.review.annotations import parse_features, read_geojson_file

    known = list(store.annotation_classes())
    items, skipped, warnings, new = [], 0, [], []
    for path, slide in files:
        doc = read_geojson_file(path)
        rep = parse_features(doc, str(path), known + new, image_id=slide, add_classes=add_classes, repair=repair)
        dims_cache: dict[str, Any] = {}
        for n, f in enumerate(rep.features):
            if f.image_id is None:
                raise InputError(f"{path}: feature {n} names no slide; give --slide")
            if f.image_id not in dims_cache:
                dims_cache[f.image_id] = slide_dims(cohort, f.image_id)
            if dims_cache[f.image_id] is not None:
                from core.review.annotations import check_geometry

                check_geometry(f.geometry, f"{path}: feature {n}", dims_cache[f.image_id], repair)
            items.append((f.image_id, f.geometry, f.cls, f.note))
        skipped += rep.skipped_detections
        warnings += rep.warnings
        new += [c for c in rep.new_classes if c not in new]
    if new:
        store.set_annotation_classes(known + new)
    if items:
        store.add_annotations(items, reviewer, reason="import")
    return len(items), skipped, warnings


def cmd_import(args: argparse.Namespace) -> int:
    cohort, store = _open(args)
    path: Path = args.path
    if args.masks:
        return _import_masks(cohort, store, args)
    if path.is_dir():
        files = [(p, p.stem) for p in sorted(path.glob("*.geojson")) + sorted(path.glob("*.json"))]
        if not files:
            raise InputError(f"{path}: no .geojson files in this folder")
    else:
        slide = args.slide
        if slide is None and path.stem in cohort.slide_paths:
            slide = path.stem
        files = [(path, slide)]
    n, skipped, warnings = import_files(cohort, store, files, args.reviewer, args.add_classes,
                                        not args.refuse_invalid)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"imported {n} annotation(s)" + (f"; skipped {skipped} detection(s)" if skipped else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.review.annotations import feature_collection

    _cohort, store = _open(args)
    if args.slide is not None:
        anns = store.annotations(args.slide)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(feature_collection(anns), indent=1))
        print(f"wrote {len(anns)} annotation(s) of {args.slide} to {args.out}")
        return 0
    by: dict[str, list[Any]] = {}
    for a in store.annotations():
        by.setdefault(a.image_id, []).append(a)
    args.out.mkdir(parents=True, exist_ok=True)
    for image_id, anns in by.items():
        (args.out / f"{image_id}.geojson").write_text(json.dumps(feature_collection(anns), indent=1))
    print(f"wrote {sum(map(len, by.values()))} annotation(s) of {len(by)} slide(s) to {args.out}/")
    return 0


def read_patch_grid(cohort: Any, image_id: str) -> tuple[np.ndarray, int] | None:
    """(coords N x 2 level-0 top-left, patch_size_level0) from the slide's features file (None if not extracted)."""
    path = Path(cohort.features) / f"{image_id}.h5"
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["coords"], dtype=np.int64), int(f.attrs["patch_size_level0"])
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not a readable features file ({exc})") from exc


def cmd_patches(args: argparse.Namespace) -> int:
    from core.review.annotation_metrics import class_region, patches_inside

    cohort, store = _open(args)
    known = {c.lower() for c in store.annotation_classes()}
    if args.cls.lower() not in known:
        raise InputError(f"class {args.cls!r} is not an annotation class of this cohort "
                         f"(known: {', '.join(store.annotation_classes())})")
    by: dict[str, list[Any]] = {}
    for a in store.annotations():
        by.setdefault(a.image_id, []).append(a)
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115 - stdout is not closed
    try:
        w = csv.writer(out)
        w.writerow(["image_id", "x", "y", "patch_size_level0", "class"])
        n = 0
        for image_id, anns in sorted(by.items()):
            region = class_region(anns, args.cls)
            grid = None if region is None else read_patch_grid(cohort, image_id)
            if grid is None:
                continue
            coords, size = grid
            for x, y in coords[patches_inside(coords, size, region)]:
                w.writerow([image_id, int(x), int(y), size, args.cls])
                n += 1
    finally:
        if args.out:
            out.close()
    print(f"{n} patch(es) inside {args.cls} annotations" + (f" written to {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0


def _import_masks(cohort: Any, store: Any, args: argparse.Namespace) -> int:
    """Outline each <image_id>.png mask of a folder and store the outlines as one class (all or nothing)."""
    from PIL import Image

    from core.demo.draw import MASK_DS
    from core.review.annotations import mask_polygons

    if not args.path.is_dir():
        raise InputError(f"{args.path}: not a folder of masks")
    cls = {c.lower(): c for c in store.annotation_classes()}.get(args.cls.lower())
    if cls is None:
        raise InputError(f"class {args.cls!r} is not an annotation class of this cohort "
                         f"(known: {', '.join(store.annotation_classes())})")
    ds = float(args.downsample or MASK_DS)
    items = []
    for p in sorted(args.path.glob("*.png")):
        if p.stem not in cohort.slide_paths:
            continue
        try:
            mask = np.asarray(Image.open(p).convert("L")) > 127
        except OSError as exc:
            raise InputError(f"{p}: not a readable mask image ({exc}); nothing imported") from exc
        items += [(p.stem, g, cls, "from mask") for g in mask_polygons(mask, ds, min_area_px=4 * ds * ds)]
    if items:
        store.add_annotations(items, args.reviewer, reason="import masks")
    print(f"imported {len(items)} {cls} outline(s) from {args.path}")
    return 0
