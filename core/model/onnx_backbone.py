"""The default backbone through ONNX Runtime on the CPU: the same features as eager PyTorch, 2-3x the patches/s.

Profiled on two cores (efficientnet_lite0, 256 px patches, batch 64): channels-last and bfloat16 autocast gain little
(bfloat16 also moves features by ~4 %), torch.compile costs minutes of compiling on a first run; ONNX Runtime runs
the exported graph about 2.8x faster with features equal to 1e-5. The graph is exported once per input size and kept
in ``$SLIDELENS_CACHE/onnx`` (default ``~/.cache/slidelens/onnx``), keyed by a hash of the weights. Anything going
wrong (no onnxruntime/onnx, a failed export) falls back to PyTorch, which gives the same features.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Any

import torch

RUNTIMES = ("auto", "torch", "onnxruntime")
_LOCK = threading.Lock()


def onnx_available() -> bool:
    """True when ONNX Runtime (to run) and onnx (to export) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def choose_runtime(runtime: str, name: str, weights: object, device: str) -> str:
    """The runtime a backbone uses: ONNX Runtime for the default backbone on the CPU when installed ("auto")."""
    from core.errors import InputError
    from core.model.backbones import DEFAULT_BACKBONE

    if runtime not in RUNTIMES:
        raise InputError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    runtime = os.environ.get("SLIDELENS_RUNTIME") or runtime
    if runtime == "torch" or not device.startswith("cpu") or not onnx_available():
        return "torch"
    if runtime == "auto" and (name != DEFAULT_BACKBONE or weights is not None):
        return "torch"  # only the network whose exported graph is tested equal (tests/test_backbone_runtime.py)
    return "onnxruntime"


def cache_dir() -> Path:
    """Where exported graphs are kept."""
    base = os.environ.get("SLIDELENS_CACHE") or Path.home() / ".cache" / "slidelens"
    return Path(base) / "onnx"


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256(f"{torch.__version__}|{type(module).__name__}".encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def export_path(backbone: Any, size: tuple[int, int]) -> Path:
    """The cached graph of ``backbone`` for inputs of ``size`` (H, W)."""
    return cache_dir() / f"{backbone.name}-{_weights_hash(backbone.module)}-{size[0]}x{size[1]}.onnx"


def export(backbone: Any, size: tuple[int, int]) -> Path:
    """Export ``backbone.module`` for N x 3 x H x W float inputs (N dynamic) unless already cached; atomic."""
    path = export_path(backbone, size)
    if path.is_file():
        return path
    import warnings

    from core.atomic import atomic_path

    dummy = torch.zeros((2, 3, *size))
    with atomic_path(path, prefix=f".{path.stem}.") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about the TorchScript exporter
        torch.onnx.export(backbone.module, (dummy,), str(tmp), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    return path


def session(backbone: Any, size: tuple[int, int]) -> Any:
    """The ONNX Runtime session for ``size`` inputs (exported and opened on first use), or None if that failed."""
    with _LOCK:
        if size in backbone._sessions:
            return backbone._sessions[size]
        sess = None
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = max(1, torch.get_num_threads())
            so.inter_op_num_threads = 1
            # no spin-waiting between batches: on two cores shared with patch reading or a drawing process, spinning
            # threads burnt the CPU the others needed (37 vs 32 patches/s beside one busy core; same speed when idle)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.log_severity_level = 3
            sess = ort.InferenceSession(str(export(backbone, size)), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 (any failure: PyTorch gives the same features)
            print(f"ONNX Runtime unavailable for {backbone.name} ({type(exc).__name__}: {exc}); using PyTorch",
                  file=sys.stderr)
        backbone._sessions[size] = sess
        return sess


def run_onnx(backbone: Any, x: torch.Tensor) -> torch.Tensor | None:
    """Features of a preprocessed N x 3 x H x W batch through ONNX Runtime, or None to fall back to PyTorch."""
    sess = session(backbone, (int(x.shape[-2]), int(x.shape[-1])))
    if sess is None:
        return None
    out = sess.run(None, {"x": x.detach().cpu().float().contiguous().numpy()})[0]
    return torch.from_numpy(out).float()
