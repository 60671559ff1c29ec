"""Test-time augmentation: views, exactness on a symmetric patch, the mode stored and never mixed silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.model.backbones import create_backbone, embed
from core.model.feature_files import FeatureBag, read_feature_info, read_features, write_features
from core.model.features import extract_cohort, extract_slide
from core.model.infer import check_bag
from core.model.train_data import load_bags
from core.model.tta import embed_tta, feature_identity, views
from tests.conftest import SVS

PATCH, FEW_MPP = 224, 2.0


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_backbone("test_efficientnet", device="cpu")


def symmetric_patch(size: int = 32) -> torch.Tensor:
    """A 1 x H x W x 3 uint8 patch unchanged by every flip and rotation (a function of sorted |dx|, |dy|)."""
    d = np.abs(2 * np.arange(size) - (size - 1))
    dx, dy = np.meshgrid(d, d)
    lo, hi = np.minimum(dx, dy), np.maximum(dx, dy)
    rgb = np.stack([(hi * 7) % 256, (lo * 13 + hi) % 256, (lo * hi) % 256], axis=-1).astype(np.uint8)
    return torch.from_numpy(rgb)[None]


def test_views_are_the_flips_and_rotations() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    assert len(views(x, "none")) == 1 and len(views(x, "flips")) == 2
    eight = views(x, "dihedral")
    assert len(eight) == 8 and len({v.numpy().tobytes() for v in eight}) == 8  # all different on a random patch
    assert torch.equal(eight[0], x) and torch.equal(torch.flip(views(x, "flips")[1], dims=(2,)), x)
    sym = symmetric_patch(8)
    assert all(torch.equal(v, sym) for v in views(sym, "dihedral"))
    with pytest.raises(InputError, match="test-time augmentation 'spin'"):
        views(x, "spin")


def test_tta_features_of_a_symmetric_patch_equal_the_plain_ones(tiny) -> None:
    sym = symmetric_patch(32)
    with torch.inference_mode():
        plain = embed(tiny, sym)
        for mode in ("flips", "dihedral"):
            torch.testing.assert_close(embed_tta(tiny, sym, mode), plain, rtol=1e-5, atol=1e-6)
        rng = np.random.default_rng(1)
        odd = torch.from_numpy(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
        assert not torch.allclose(embed_tta(tiny, odd, "dihedral"), embed(tiny, odd), atol=1e-4)  # could fail


def test_tta_mode_is_stored_and_never_mixed_silently(tmp_path: Path, tiny) -> None:
    kw = {"patch_size": PATCH, "target_mpp": FEW_MPP, "batch_size": 8, "num_workers": 0}
    plain = extract_slide(SVS, tmp_path / "plain" / "a.h5", tiny, **kw)
    flips = extract_slide(SVS, tmp_path / "flips" / "a.h5", tiny, tta="flips", **kw)
    info = read_feature_info(flips)
    assert info.backbone == "test_efficientnet+tta-flips" and read_feature_info(plain).backbone == "test_efficientnet"
    a, b = read_features(plain), read_features(flips)
    assert b.attrs["tta"] == "flips" and "tta" not in a.attrs
    np.testing.assert_array_equal(a.coords, b.coords)
    assert not np.allclose(a.features, b.features)
    # a folder of plain features is not topped up with TTA features (and the other way round)
    report = extract_cohort({"a": SVS}, tmp_path / "plain", tiny, tta="dihedral", **kw)
    assert "holds test_efficientnet features, not test_efficientnet+tta-dihedral" in report.failed["a"]
    # training refuses a mix; a model trained on plain features refuses TTA features
    write_features(tmp_path / "mix" / "p.h5", a)
    write_features(tmp_path / "mix" / "f.h5", b)
    with pytest.raises(InputError, match="backbone 'test_efficientnet\\+tta-flips'"):
        load_bags(tmp_path / "mix", ["p", "f"])
    assert read_features(tmp_path / "mix" / "f.h5").backbone == "test_efficientnet+tta-flips"  # not doubled

    class Loaded:
        version, feature_dim, backbone = "v001-abmil", a.dim, "test_efficientnet"

    with pytest.raises(InputError, match="backbone 'test_efficientnet\\+tta-flips' but model v001-abmil"):
        check_bag(Loaded(), FeatureBag(b.features, b.coords, backbone=b.backbone, path=flips))  # type: ignore[arg-type]
    assert feature_identity("x", "none") == "x" and feature_identity("x+tta-flips", "flips") == "x+tta-flips"
