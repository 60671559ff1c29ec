"""``bench mil``: forward time (median of repeats) and peak memory of each MIL head per bag size.

Each (model, size) runs in a fresh child process so memory figures are not hidden by the allocator's cache:
on CPU the peak is the resident-set growth during the first (cold) forward pass, sampled every 2 ms; on CUDA it
is ``torch.cuda.max_memory_allocated`` above what was allocated before the call. Time is the median of the
following warm calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from core.bench._util import write_json


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Context manager sampling the process RSS; ``peak`` is the largest growth seen (bytes)."""

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak_abs = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_abs = max(self.peak_abs, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak_abs = max(self.peak_abs, _rss())
        self.peak = self.peak_abs - self.base


def measure(name: str, n: int, dim: int, n_classes: int, device: str, repeat: int) -> dict[str, Any]:
    """One (model, bag size) measurement in this process."""
    import torch

    from core.model.mil import create_model

    torch.manual_seed(0)
    model = create_model(name, dim, n_classes).to(device).eval()
    x = torch.randn(n, dim, device=device)
    cuda = device.startswith("cuda")

    def call() -> None:
        with torch.inference_mode():
            out = model(x)
            if out.attention.shape[0] != n:
                raise RuntimeError(f"{name}: {out.attention.shape[0]} attention values for {n} patches")
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        with _PeakRSS() as m:
            call()
        peak = m.peak
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"model": name, "patches": n, "dim": dim, "device": device, "threads": torch.get_num_threads(),
            "repeats": repeat, "median_ms": round(med * 1000, 2), "min_ms": round(min(times) * 1000, 2),
            "peak_mem_mib": round(peak / 2**20, 1), "input_mib": round(n * dim * 4 / 2**20, 1),
            "patches_per_s": round(n / med)}


def bench_mil(sizes: list[int], models: list[str], dim: int = 1024, n_classes: int = 5, device: str = "cpu",
              repeat: int = 3, threads: int | None = None, progress: Any = None) -> list[dict[str, Any]]:
    """Measure every (model, size) in its own child process; one row per pair."""
    rows = []
    for name in models:
        for n in sizes:
            reps = repeat if n <= 10_000 else max(1, min(repeat, 2))
            cmd = [sys.executable, "-m", "core.bench.mil", "--child", name, str(n), str(dim), str(n_classes), device,
                   str(reps)]
            env = dict(os.environ)
            if threads:
                env["OMP_NUM_THREADS"] = str(threads)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
                row = {"model": name, "patches": n, "dim": dim, "device": device, "error": tail,
                       "returncode": proc.returncode}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mil", help="MIL forward time and peak memory per model and bag size")
    p.add_argument("--sizes", default="1000,10000,50000,100000", help="comma-separated bag sizes")
    p.add_argument("--models", default="abmil,transmil,dsmil")
    p.add_argument("--dim", type=int, default=1024, help="feature dimension of the random bags")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per bag (2 at most above 10k patches)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="write the result here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from core.errors import InputError

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("bench mil: --device cuda but no CUDA device is visible")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    def show(row: dict[str, Any]) -> None:
        if "error" in row:
            print(f"{row['model']:>9} {row['patches']:>7} patches: FAILED {row['error']}", flush=True)
        else:
            print(f"{row['model']:>9} {row['patches']:>7} patches: {row['median_ms']:>10.1f} ms  "
                  f"peak {row['peak_mem_mib']:>8.1f} MiB", flush=True)

    rows = bench_mil(sizes, models, args.dim, device=args.device, repeat=args.repeat, threads=args.threads,
                     progress=show)
    write_json({"benchmark": "mil", "results": rows}, args.json)
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    _name, _size, _dim, _c, _dev, _rep = sys.argv[2:8]
    print(json.dumps(measure(_name, int(_size), int(_dim), int(_c), _dev, int(_rep))))
