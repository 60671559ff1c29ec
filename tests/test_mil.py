"""MIL heads: one attention value per patch in input order, valid probabilities, determinism, gradients."""

from __future__ import annotations

import pytest
import torch

from core.model.mil import MILOutput, create_model, list_models
from core.model.mil.transmil import TransLayer

SIZES = [1, 7, 257, 1000]  # 257 and 1000 need Nystrom padding; 7 and 257 need the PPEG square fill
D, C = 24, 3


@pytest.mark.parametrize("name", ["abmil", "transmil", "dsmil"])
@pytest.mark.parametrize("n", SIZES)
def test_attention_has_one_value_per_patch(name: str, n: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, D, C).eval()
    out = model(torch.randn(n, D))
    assert isinstance(out, MILOutput)
    assert out.logits.shape == (C,) and out.probs.shape == (C,)
    torch.testing.assert_close(out.probs.sum(), torch.tensor(1.0))
    assert out.attention.shape[0] == n
    assert out.attention.shape == ((n, C) if name == "dsmil" else (n,))
    assert torch.isfinite(out.attention).all() and out.embedding.dim() == 1


@pytest.mark.parametrize("name", ["abmil", "dsmil"])
def test_softmax_attention_sums_to_one_over_patches(name: str) -> None:
    out = create_model(name, D, C).eval()(torch.randn(50, D))
    torch.testing.assert_close(out.attention.sum(dim=0), torch.ones_like(out.attention.sum(dim=0)))


def test_abmil_attention_follows_patch_order() -> None:
    """Permuting the patches permutes the attention the same way and leaves the logits unchanged."""
    model = create_model("abmil", D, C).eval()
    x = torch.randn(40, D)
    perm = torch.randperm(40)
    a, b = model(x), model(x[perm])
    torch.testing.assert_close(b.attention, a.attention[perm])
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-5)


def test_abmil_multi_branch_gives_per_class_attention() -> None:
    out = create_model("abmil", D, C, multi_branch=True).eval()(torch.randn(9, D))
    assert out.attention.shape == (9, C)


@pytest.mark.parametrize("n_tokens", [2, 50, 257, 300])
def test_transmil_cls_row_equals_full_nystrom_attention_row(n_tokens: int) -> None:
    """The cheap CLS row equals that row of the full (padded) Nystrom attention matrix, padding removed."""
    torch.manual_seed(1)
    layer = TransLayer(64, dropout=0.0).eval()
    x = torch.randn(1, n_tokens, 64)
    _, row = layer(x, cls_attention=True)
    _, full = layer.attn(layer.norm(x), return_attn=True)  # [1, heads, n+pad, n+pad]
    pad = full.shape[-1] - n_tokens
    expected = full[:, :, pad, pad:].mean(dim=1)
    assert row.shape == (1, n_tokens)
    torch.testing.assert_close(row, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["last", "first", "mean", "rollout"])
@pytest.mark.parametrize("n", [1, 7, 257, 300])
def test_transmil_attention_modes_give_one_value_per_patch(mode: str, n: int) -> None:
    """Every mode keeps only the real patches (Nystrom front padding and PPEG fillers removed); the CLS row of
    one layer is a probability row, so the patches' share is positive and at most 1."""
    torch.manual_seed(2)
    model = create_model("transmil", D, C, hidden=64, attention_mode=mode).eval()
    out = model(torch.randn(n, D))
    assert out.attention.shape == (n,)
    assert torch.isfinite(out.attention).all()
    assert 0 < float(out.attention.detach().sum()) <= 1.0 + 1e-4


def test_transmil_last_mode_is_the_last_layers_cls_row_with_fillers_folded_back() -> None:
    """For 7 patches the 3x3 grid repeats patches 0 and 1: each gets the mean of its own and its copy's weight
    (a sum would double the repeated patches' attention and bias the ranking towards the first patches)."""
    torch.manual_seed(3)
    model = create_model("transmil", D, C, hidden=64).eval()
    x = torch.randn(7, D)
    rows = []
    inner = model.layer2.forward_with_factors

    def spy(h: torch.Tensor, cls_attention: bool = True):  # noqa: ANN202 - records the layer's CLS row
        res = inner(h, cls_attention)
        rows.append(res[1])
        return res

    model.layer2.forward_with_factors = spy  # type: ignore[method-assign]
    out = model(x)
    row = rows[0][0, 1:]  # [9]: 7 patches then copies of patches 0 and 1
    expected = row[:7].clone()
    expected[:2] = (expected[:2] + row[7:]) / 2
    torch.testing.assert_close(out.attention, expected)


def test_transmil_input_norm_makes_it_invariant_to_feature_scale_and_offset() -> None:
    torch.manual_seed(4)
    a = create_model("transmil", D, C, hidden=64).eval()
    b = create_model("transmil", D, C, hidden=64).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(500, D)
    a.fit_input_norm(x)
    b.fit_input_norm(x * 3.0 + 5.0)
    bag = x[:40]
    oa, ob = a(bag), b(bag * 3.0 + 5.0)
    torch.testing.assert_close(ob.logits, oa.logits, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(ob.attention, oa.attention, rtol=1e-3, atol=1e-5)
    assert "feat_mean" in a.state_dict() and float(a.feat_std.min()) > 0


@pytest.mark.parametrize("name", ["abmil", "transmil", "dsmil"])
def test_eval_mode_is_deterministic(name: str) -> None:
    model = create_model(name, D, C).eval()
    x = torch.randn(123, D)
    a, b = model(x), model(x)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.attention, b.attention)


@pytest.mark.parametrize("name", ["abmil", "transmil", "dsmil"])
def test_gradient_reaches_every_trainable_layer_input(name: str) -> None:
    model = create_model(name, D, C).train()
    x = torch.randn(30, D)
    loss = model.loss(model(x), torch.tensor(1))
    loss.backward()
    first = next(p for n, p in model.named_parameters() if n.startswith("fc"))
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert sum(p.grad is not None for p in model.parameters()) >= len(list(model.parameters())) - 1


@pytest.mark.parametrize("name", ["abmil", "transmil", "dsmil"])
def test_shape_errors_are_readable(name: str) -> None:
    model = create_model(name, D, C)
    with pytest.raises(ValueError, match="dimension 5"):
        model(torch.randn(4, 5))
    with pytest.raises(ValueError, match="empty"):
        model(torch.randn(0, D))


def test_factory_rejects_unknown_names() -> None:
    assert list_models() == ["abmil", "dsmil", "transmil"]
    with pytest.raises(ValueError, match="unknown MIL model"):
        create_model("clam", D, C)


def test_transmil_first_mode_does_not_favour_patches_repeated_as_fillers() -> None:
    """Identical patches get identical first-layer attention wherever they sit, including the ones the PPEG
    square fill repeats (18 patches -> 5x5 grid, patches 0..6 repeated)."""
    torch.manual_seed(6)
    model = create_model("transmil", D, C, hidden=64, attention_mode="first").eval()
    x = torch.randn(1, D).repeat(18, 1)
    att = model(x).attention.detach()
    torch.testing.assert_close(att[:7], att[7:14], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("n", [1, 7, 257])
def test_transmil_gated_pooling_weighs_each_real_patch_once(n: int) -> None:
    """Gated pooling: one weight per real patch (the PPEG fillers left out), summing to 1, and the slide embedding
    is the weighted mean of the patch tokens (so the attention shown is what the prediction used)."""
    torch.manual_seed(7)
    model = create_model("transmil", D, C, hidden=64, pooling="gated").eval()
    tokens = []
    norm = model.norm.forward
    model.norm.forward = lambda h: tokens.append(norm(h)) or tokens[-1]  # type: ignore[method-assign]
    out = model(torch.randn(n, D))
    assert out.attention.shape == (n,)
    assert float(out.attention.detach().min()) > 0
    torch.testing.assert_close(out.attention.sum(), torch.tensor(1.0))
    torch.testing.assert_close(out.embedding, out.attention @ tokens[0][0, 1:1 + n])
    torch.testing.assert_close(out.logits, model.fc2(out.embedding))


def test_transmil_pooling_defaults_to_cls_for_saved_models_and_rejects_unknown() -> None:
    """A model.json from before the option (no ``pooling``) still builds the CLS model its weights fit."""
    cls_model = create_model("transmil", D, C, hidden=64)
    assert cls_model.pooling == "cls" and not any(k.startswith("pool_") for k in cls_model.state_dict())
    gated = create_model("transmil", D, C, hidden=64, pooling="gated")
    with pytest.raises(RuntimeError, match="pool_"):
        cls_model.load_state_dict(gated.state_dict())
    with pytest.raises(ValueError, match="pooling 'mean'"):
        create_model("transmil", D, C, hidden=64, pooling="mean")
