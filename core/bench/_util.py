"""Shared helpers for benchmarks: timing statistics, JSON output, machine description."""

from __future__ import annotations

import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/mean/min/max in milliseconds of samples given in seconds."""
    ms = sorted(s * 1000 for s in samples)
    if not ms:
        return {}

    def pct(p: float) -> float:
        k = min(len(ms) - 1, max(0, round(p / 100 * (len(ms) - 1))))
        return round(ms[k], 3)

    return {"n": len(ms), "p50_ms": pct(50), "p95_ms": pct(95), "mean_ms": round(statistics.fmean(ms), 3),
            "min_ms": round(ms[0], 3), "max_ms": round(ms[-1], 3)}


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_json(result: dict[str, Any], out: str | Path | None) -> None:
    """Print the result and, if ``out`` is given, write it there."""
    result = {"machine": machine(), **result}
    text = json.dumps(result, indent=2, default=str)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(cohort_toml: Path, port: int) -> subprocess.Popen:
    """``streamlit run app.py`` on ``port`` serving ``cohort_toml`` (stop it with ``stop_app``)."""
    env = {**os.environ, "SLIDELENS_COHORT": str(cohort_toml)}
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_for_http(port: int, url: str, timeout: float = 60) -> None:
    """Wait until ``GET url`` on ``port`` answers 200; ``RuntimeError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", url)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.25)
    raise RuntimeError(f"the app did not serve {url} on port {port} within {timeout:.0f} s")
