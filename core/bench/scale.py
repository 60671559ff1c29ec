"""``bench scale``: SlideLens at UBC-OCEAN's size (538 PNGs, 550 GB, up to about 5 gigapixels a slide).

Parts, chosen with ``--parts`` (default: all); each is a function ``part(args, work) -> dict`` in ``PARTS`` and
writes its own section of the JSON. ``train``, ``pages`` and ``overlay`` live in ``_scale_train.py``,
``_scale_pages.py`` and ``_scale_overlay.py`` (see their docstrings); this module holds these two:

- ``convert``: a PNG of ``--convert-size`` (default 50,000 x 40,000 = 2 gigapixels) generated streaming by libvips,
  converted by ``core.slides.pyramid.convert_image`` in a subprocess (peak RSS, wall time) against libvips'
  own command line (``vips tiffsave ... --tile --pyramid --compression jpeg --Q 90``, when a ``vips`` binary is on
  the PATH: Debian's ``libvips-tools``) and the same operation through pyvips in a subprocess (the wheel's
  libvips), on the same file in the same run. Then the old whole-decode converter's peak on a ``--old-size``
  (16,384 x 16,384 = 268 Mpx) PNG, for the record, with the streaming converter's on the same file.
- ``init``: ``cohort init`` on ``--init-count`` (500) generated PNGs with UBC-OCEAN's train.csv and thumbnails:
  seconds in-process and from the command line (imports included), and that nothing was converted. The old
  ``cohort init`` converted every PNG: its time is estimated from the old converter's speed on a few of them.

Targets: streaming conversion peak RSS <= 1 GiB and wall <= 1.3x libvips' command line; init < 30 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.bench._util import REPO, write_json

TARGET_RSS_BYTES = 1 << 30
TARGET_RATIO = 1.3
TARGET_INIT_S = 30.0
VIPS_ARGS = ["--tile", "--pyramid", "--compression", "jpeg", "--Q", "90", "--tile-width", "256", "--tile-height", "256"]

# the generated image: smooth stain-like fields (perlin noise, upsampled) over a repeated fine texture
_GENERATE = """
import sys, pyvips
w, h, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
k = 32
low = pyvips.Image.perlin(w // k + 2, h // k + 2, cell_size=24, seed=int(sys.argv[4]))
low = ((low + 1) * 127).cast("uchar").copy_memory().resize(k, kernel="linear").crop(0, 0, w, h)
tex = pyvips.Image.perlin(512, 512, cell_size=16, seed=3)
tex = ((tex + 1) * 20).cast("uchar").copy_memory().replicate(w // 512 + 1, h // 512 + 1).crop(0, 0, w, h)
lut = pyvips.Image.identity().cast("float")
lut = (240 - lut * 0.35).bandjoin([200 - lut * 0.6, 230 - lut * 0.25]).cast("uchar")
img = (low + tex).cast("uchar").maplut(lut).copy(interpretation="srgb")
img.pngsave(out, compression=1, filter="none")
"""
_OURS = "import sys; from pathlib import Path; from core.slides.pyramid import convert_image; " \
        "convert_image(Path(sys.argv[1]), Path(sys.argv[2]))"
_OLD = "import sys; from pathlib import Path; from core.slides.pyramid import build_pyramid_whole_decode; " \
       "build_pyramid_whole_decode(Path(sys.argv[1]), Path(sys.argv[2]))"
_PYVIPS = "import sys, pyvips; pyvips.Image.new_from_file(sys.argv[1], access='sequential').tiffsave(sys.argv[2], " \
          "tile=True, pyramid=True, compression='jpeg', Q=90, tile_width=256, tile_height=256, bigtiff=True)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="UBC-OCEAN scale: conversion, cohort init, training, pages, overlay (JSON)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts ({', '.join(PARTS)})")
    p.add_argument("--convert-size", default="50000x40000", help="WxH of the generated PNG to convert")
    p.add_argument("--old-size", default="16384x16384", help="WxH for the old whole-decode converter ('0' skips it)")
    p.add_argument("--repeat", type=int, default=1, help="conversions of the big PNG per method (median reported)")
    p.add_argument("--init-count", type=int, default=500, help="generated PNGs for cohort init")
    p.add_argument("--train-slides", type=int, default=500, help="part train: generated features files")
    p.add_argument("--pages-slides", type=int, default=1000, help="part pages: slides of the generated cohort")
    p.add_argument("--overlay-patches", type=int, default=100_000, help="part overlay: patches on the slide")
    p.add_argument("--work", type=Path, default=None, help="folder for generated files (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--json", dest="out", help="also write the result here")
    p.set_defaults(func=run)


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def measured(cmd: list[str], cwd: Path = REPO) -> dict[str, Any]:
    """Run ``cmd``; its wall seconds and peak RSS. The peak is the child's own ``VmHWM``, polled every 20 ms
    (``wait4``'s ``ru_maxrss`` would include this process's memory, which a fork starts from). Raises on failure."""
    peak_kib = 0
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-300:]
            raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}): {tail}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(peak_kib / 1024, 1)}


def generate_png(path: Path, width: int, height: int, seed: int = 1) -> float:
    """Write a ``width`` x ``height`` PNG streaming (libvips, in a subprocess); returns seconds."""
    return measured([sys.executable, "-c", _GENERATE, str(width), str(height), str(path), str(seed)])["wall_s"]


def _versions() -> dict[str, Any]:
    import pyvips

    out: dict[str, Any] = {"pyvips": pyvips.__version__,
                           "libvips_wheel": f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"}
    vips = shutil.which("vips")
    if vips:
        out["vips_cli"] = subprocess.run([vips, "--version"], capture_output=True, text=True).stdout.strip()
        out["vips_cli_path"] = vips
    return out


def part_convert(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    w, h = _size(args.convert_size)
    src = work / f"big_{w}x{h}.png"
    res: dict[str, Any] = {"width": w, "height": h, "gigapixels": round(w * h / 1e9, 3), **_versions()}
    res["generate_s"] = generate_png(src, w, h)
    res["png_bytes"] = src.stat().st_size
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "pyvips_same_operation": []}
    cmds = {"ours": [sys.executable, "-c", _OURS, str(src), str(work / "ours.tiff")],
            "pyvips_same_operation": [sys.executable, "-c", _PYVIPS, str(src), str(work / "pyvips_same_operation.tiff")]}
    if res.get("vips_cli_path"):
        runs["vips_cli_run"] = []
        cmds["vips_cli_run"] = [res["vips_cli_path"], "tiffsave", str(src), str(work / "vips_cli_run.tiff"),
                                *VIPS_ARGS, "--bigtiff"]
    names = list(cmds)
    for rep in range(max(1, args.repeat)):  # interleaved, the order rotated: a busy machine slows all alike
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            run = measured(cmds[name])
            out = work / f"{name}.tiff"
            run["tiff_bytes"] = out.stat().st_size
            if name == "ours" and rep == 0:
                from core.slides.slide import open_slide

                slide = open_slide(out, validate=True)
                res["levels"], res["dimensions_ok"] = slide.level_count, slide.dimensions == (w, h)
                slide.close()
            out.unlink()
            runs[name].append(run)
    for name, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        res[name] = {"wall_s": round(statistics.median(walls), 2), "walls_s": walls,
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in rs), "tiff_bytes": rs[0]["tiff_bytes"]}
    ref_name = "vips_cli_run" if "vips_cli_run" in res else "pyvips_same_operation"
    res["reference"] = ref_name
    res["ratio_to_reference"] = round(res["ours"]["wall_s"] / res[ref_name]["wall_s"], 3)
    res["ratio_to_pyvips_same_operation"] = round(res["ours"]["wall_s"] / res["pyvips_same_operation"]["wall_s"], 3)
    res["meets_target_rss"] = res["ours"]["peak_rss_mib"] * (1 << 20) <= TARGET_RSS_BYTES
    res["meets_target_ratio"] = res["ratio_to_reference"] <= TARGET_RATIO
    src.unlink()
    if args.old_size not in ("0", ""):
        ow, oh = _size(args.old_size)
        old_src = work / f"old_{ow}x{oh}.png"
        old = {"width": ow, "height": oh, "megapixels": round(ow * oh / 1e6, 1),
               "generate_s": generate_png(old_src, ow, oh, seed=2)}
        old["whole_decode"] = measured([sys.executable, "-c", _OLD, str(old_src), str(work / "old.tiff")])
        old["streaming"] = measured([sys.executable, "-c", _OURS, str(old_src), str(work / "new.tiff")])
        res["old_path"] = old
        for p in (old_src, work / "old.tiff", work / "new.tiff"):
            p.unlink(missing_ok=True)
    return res


def _make_ubc_folder(root: Path, count: int) -> tuple[Path, Path, float]:
    """``count`` PNGs (whole slides and TMA-like cores of 1-6 Mpx), their thumbnails and train.csv; megapixels."""
    import random

    import pyvips

    images, thumbs = root / "train_images", root / "train_thumbnails"
    images.mkdir(parents=True)
    thumbs.mkdir()
    rng = random.Random(0)
    base = pyvips.Image.perlin(3200, 2400, cell_size=64, seed=5)
    base = ((base + 1) * 110 + 20).cast("uchar").copy_memory()
    rows, mpx = ["image_id,label,image_width,image_height,is_tma"], 0.0
    for i in range(count):
        tma = i % 10 == 0
        w, h = (rng.randint(900, 1400),) * 2 if tma else (rng.randint(1500, 3200), rng.randint(1000, 2400))
        x, y = rng.randint(0, 3200 - w), rng.randint(0, 2400 - h)
        tile = base.crop(x, y, w, h)
        img = (255 - tile).bandjoin([tile, 240 - tile // 4]).copy(interpretation="srgb")
        image_id = str(1000 + i)
        img.pngsave(str(images / f"{image_id}.png"), compression=1, filter="none")
        img.thumbnail_image(200).pngsave(str(thumbs / f"{image_id}_thumbnail.png"))
        rows.append(f"{image_id},{rng.choice(['CC', 'EC', 'HGSC', 'LGSC', 'MC'])},{w},{h},{tma}")
        mpx += w * h / 1e6
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return images, root / "train.csv", mpx


def part_init(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from core.cohort.cohort_init import init_cohort

    root = work / "ubc"
    t0 = time.perf_counter()
    images, labels, mpx = _make_ubc_folder(root, args.init_count)
    res: dict[str, Any] = {"images": args.init_count, "megapixels": round(mpx, 1),
                           "generate_s": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    rep, cohort = init_cohort(root / "study" / "cohort.toml", images, labels)
    res["init_in_process_s"] = round(time.perf_counter() - t0, 2)
    res["written"] = cohort is not None
    res["to_convert"] = len(rep.to_convert)
    res["warnings"] = len(rep.warnings)
    cli = [sys.executable, "-m", "core", "cohort", "init", "--slides", str(images), "--labels", str(labels), "--out",
           str(root / "cli" / "cohort.toml")]
    res["init_cli_s"] = measured(cli)["wall_s"]
    res["converted_anything"] = any((root / d / ".cache").exists() for d in ("study", "cli"))
    # the old cohort init converted every PNG: time the old converter on a few and scale by megapixels
    sample = sorted(images.glob("*.png"))[:5]
    t0 = time.perf_counter()
    sample_mpx = 0.0
    from core.slides.image_headers import read_header
    from core.slides.pyramid import build_pyramid_whole_decode

    for path in sample:
        build_pyramid_whole_decode(path, work / "old_init" / f"{path.stem}.tiff")
        sample_mpx += read_header(path).megapixels
    res["old_init_estimate_s"] = round((time.perf_counter() - t0) / sample_mpx * mpx, 1)
    res["meets_target"] = res["init_in_process_s"] < TARGET_INIT_S and not res["converted_anything"]
    res["meets_target_cli"] = res["init_cli_s"] < TARGET_INIT_S
    return res


def part_train(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from core.bench._scale_train import bench_train

    return bench_train(work, n_slides=args.train_slides)


def part_pages(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from core.bench._scale_pages import bench_pages

    return bench_pages(work, n=args.pages_slides)


def part_overlay(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from core.bench._scale_overlay import bench_overlay

    return bench_overlay(n=args.overlay_patches)


PARTS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "convert": part_convert, "init": part_init, "train": part_train, "pages": part_pages, "overlay": part_overlay}


def run(args: argparse.Namespace) -> int:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        from core.errors import InputError

        raise InputError(f"unknown part(s) {', '.join(unknown)} (known: {', '.join(PARTS)})")
    work = args.work or Path(tempfile.mkdtemp(prefix="slidelens-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"bench": "scale", "parts": parts, "load_average_at_start": round(os.getloadavg()[0], 2)}
    try:
        for name in parts:
            part_dir = work / name
            part_dir.mkdir(exist_ok=True)
            t0 = time.perf_counter()
            result[name] = PARTS[name](args, part_dir)
            result[name]["part_wall_s"] = round(time.perf_counter() - t0, 1)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    write_json(result, args.out)
    return 0
