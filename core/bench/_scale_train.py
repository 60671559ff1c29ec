"""``bench scale`` part ``train``: ABMIL training on a features folder larger than memory.

A generated folder of float16 features (default 500 slides x 8,000 patches x 1,024 dimensions, about 8 GB) is
trained on in a child process with the default bag cache: its peak RSS must stay within 3 GB. Seconds per epoch of
the streamed path are compared, on a subset that fits, with the same training holding every bag in memory (page
cache warm for both): target at most 1.3x.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ("A", "B", "C", "D", "E")


def make_features(folder: Path, n_slides: int, patches: int, dim: int, seed: int = 0,
                  progress: Any = None) -> Path:
    """Write ``n_slides`` float16 features files (a weak class signal in a few patches) and ``labels.csv``; files
    already there are kept, so a second run reuses them. Memory: one slide at a time."""
    from core.model.feature_files import FeatureBag, write_features

    feats = folder / "features"
    feats.mkdir(parents=True, exist_ok=True)
    rows = ["image_id,label"]
    for k in range(n_slides):
        image_id, label = f"s{k:04d}", CLASSES[k % len(CLASSES)]
        rows.append(f"{image_id},{label}")
        path = feats / f"{image_id}.h5"
        if not path.is_file():
            rng = np.random.default_rng(seed * 100_003 + k)
            x = rng.standard_normal((patches, dim), dtype=np.float32)
            x[: patches // 20, k % len(CLASSES)] += 3.0  # 5% 'tumour' patches along the class's direction
            side = int(np.ceil(np.sqrt(patches)))
            coords = np.stack([np.arange(patches) % side, np.arange(patches) // side], 1).astype(np.int64) * 256
            write_features(path, FeatureBag(x, coords, 256, 0.5, "bench-random"), dtype="float16")
        if progress is not None:
            progress(k + 1, n_slides)
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in its own process: train (``mode`` full) or time epochs (``mode`` epochs); reports peak RSS."""
    import torch

    from core.model.train import DEFAULTS, TrainSettings, fit, train_model
    from core.model.train_data import bag_cache, load_bags, set_bag_cache

    torch.set_num_threads(args.get("threads") or torch.get_num_threads())
    folder = Path(args["folder"])
    if args.get("cache_mb") is not None:
        set_bag_cache(int(args["cache_mb"] * 2**20))
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if args["mode"] == "full":
        train_model(folder / "features", folder / "labels.csv", model="abmil", out_dir=Path(args["out"]),
                    folds=2, epochs=args["epochs"], seed=0)
        out["seconds"] = round(time.perf_counter() - t0, 2)
    else:
        ids = [f"s{k:04d}" for k in range(args["n"])]
        bags, _ = load_bags(folder / "features", ids)
        y = np.array([k % len(CLASSES) for k in range(len(bags))])
        if args.get("warm"):
            for b in bags:
                b.rows(None)  # every bag into the cache: the in-memory baseline
        s = TrainSettings(model="abmil", lr=DEFAULTS["abmil"]["lr"], model_kwargs=dict(DEFAULTS["abmil"]["model_kwargs"]))
        stamps = [time.perf_counter()]
        fit(bags, y, len(CLASSES), s, "cpu", 0, epochs=args["epochs"],
            progress=lambda frac: stamps.append(time.perf_counter()))
        out["epoch_seconds"] = [round(b - a, 3) for a, b in zip(stamps, stamps[1:], strict=False)]
        out["cache_hits"], out["cache_misses"] = bag_cache().hits, bag_cache().misses
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _run_child(args: dict[str, Any]) -> dict[str, Any]:
    code = ("import json, sys; from core.bench._scale_train import _child; "
            "print('RESULT ' + json.dumps(_child(json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"bench child failed ({proc.returncode}): {proc.stderr[-1500:]}")


def bench_train(work: Path, n_slides: int = 500, patches: int = 8000, dim: int = 1024, subset: int = 100,
                epochs: int = 2, threads: int | None = None) -> dict[str, Any]:
    """The figures of part ``train`` (see the module docstring)."""
    from tqdm import tqdm

    work.mkdir(parents=True, exist_ok=True)
    folder = work / "features_bench"
    with tqdm(total=n_slides, unit="slide", desc="features", file=sys.stderr) as bar:
        make_features(folder, n_slides, patches, dim, progress=lambda k, n: bar.update(1))
    disk = sum(p.stat().st_size for p in (folder / "features").glob("*.h5"))
    # page cache warm for both: read every file once
    for p in sorted((folder / "features").glob("*.h5")):
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass
    base = {"folder": str(folder), "threads": threads, "epochs": epochs}
    mem = _run_child({**base, "mode": "epochs", "n": subset, "cache_mb": 1 << 20, "warm": True})
    stream = _run_child({**base, "mode": "epochs", "n": subset, "cache_mb": 64})
    full = _run_child({**base, "mode": "full", "epochs": 1, "out": str(work / "models_bench")})
    med = float(np.median(stream["epoch_seconds"])) / float(np.median(mem["epoch_seconds"]))
    return {
        "features": {"slides": n_slides, "patches_per_slide": patches, "dim": dim, "dtype": "float16",
                     "disk_gb": round(disk / 1e9, 2), "float32_in_memory_gb": round(n_slides * patches * dim * 4 / 1e9, 2)},
        "full_training_streamed": {**full, "folds": 2, "epochs": 1, "target_peak_rss_mib": 3072,
                                   "meets_target": full["peak_rss_mib"] <= 3072},
        "epoch_in_memory": {**mem, "slides": subset},
        "epoch_streamed": {**stream, "slides": subset, "cache_mb": 64},
        "epoch_ratio_streamed_vs_memory": round(med, 3),
        "meets_ratio_target": med <= 1.3,
    }
