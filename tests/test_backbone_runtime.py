"""The default backbone through ONNX Runtime gives the features of eager PyTorch (and so the same model results);
its exported graph is cached; any failure falls back to PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.model.backbones import create_backbone, embed
from core.model.onnx_backbone import export_path, onnx_available

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime / onnx not installed")
SVS = Path("/work/shared/data/slides/CMU-1-Small-Region.svs")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SLIDELENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SLIDELENS_RUNTIME", raising=False)
    return tmp_path / "cache"


def _patches() -> torch.Tensor:
    """Real tissue where the sample slide is available, else noise, at the demo's 256 px patch size."""
    rng = np.random.default_rng(0)
    out = rng.integers(0, 256, (6, 256, 256, 3), dtype=np.uint8)
    if SVS.is_file():
        from core.slides.slide import open_slide

        slide = open_slide(SVS)
        w, h = slide.dimensions
        for i in range(3):
            out[i] = np.asarray(slide.read_region((w * (i + 1) // 5, h // 3), 0, (256, 256)).convert("RGB"))
    return torch.from_numpy(out)


def test_onnx_runtime_gives_the_same_features_and_predictions(cache: Path) -> None:
    fast = create_backbone(device="cpu")
    ref = create_backbone(device="cpu", runtime="torch")
    assert fast.runtime == "onnxruntime" and ref.runtime == "torch"
    x = _patches()
    a, b = embed(fast, x), embed(ref, x)
    assert a.shape == b.shape == (len(x), 1280) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert embed(fast, x[:1]).shape == (1, 1280)  # the batch size is free (a slide's last, short batch)
    # the MIL model's result is the same on either set of features
    from core.model.mil import create_model

    torch.manual_seed(0)
    model = create_model("abmil", in_dim=1280, n_classes=5).eval()
    with torch.inference_mode():
        oa, ob = model(a), model(b)
    torch.testing.assert_close(oa.probs, ob.probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(oa.attention, ob.attention, rtol=0, atol=1e-5)
    assert export_path(fast, (256, 256)).is_file()


def test_exported_graph_is_reused_and_a_failed_export_falls_back(cache: Path, monkeypatch) -> None:
    import core.model.onnx_backbone as ob

    first = create_backbone(device="cpu")
    x = _patches()[:2]
    embed(first, x)
    path = export_path(first, (256, 256))
    stamp = path.stat().st_mtime_ns
    embed(create_backbone(device="cpu"), x)
    assert path.stat().st_mtime_ns == stamp  # a second backbone (a later run) does not export again

    def broken(*_a, **_k):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(ob, "export", broken)
    fallback = create_backbone(device="cpu")
    out = embed(fallback, torch.zeros((2, 96, 96, 3), dtype=torch.uint8))  # a size not exported yet
    ref = embed(create_backbone(device="cpu", runtime="torch"), torch.zeros((2, 96, 96, 3), dtype=torch.uint8))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_runtime_choice(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.errors import InputError
    from core.model.onnx_backbone import choose_runtime

    assert choose_runtime("auto", "efficientnet_lite0", None, "cpu") == "onnxruntime"
    assert choose_runtime("auto", "efficientnet_lite0", "my.pt", "cpu") == "torch"  # untested weights: PyTorch
    assert choose_runtime("auto", "test_resnet", None, "cpu") == "torch"
    assert choose_runtime("auto", "efficientnet_lite0", None, "cuda") == "torch"
    monkeypatch.setenv("SLIDELENS_RUNTIME", "torch")
    assert choose_runtime("auto", "efficientnet_lite0", None, "cpu") == "torch"
    with pytest.raises(InputError, match="runtime 'tpu'"):
        choose_runtime("tpu", "efficientnet_lite0", None, "cpu")
