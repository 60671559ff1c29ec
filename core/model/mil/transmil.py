"""TransMIL (Shao et al., 2021): Nystrom self-attention over patch tokens, a PPEG position encoder and a CLS token.

``pooling`` picks how the slide is read from the tokens after the two layers:

- ``"cls"`` (the paper, and every model saved before this option): the CLS token; attention as below.
- ``"gated"`` (the training default): gated attention pooling (Ilse et al., 2018) over the contextualised patch
  tokens, so a patch's attention is its pooling weight (a softmax over the real patches, summing to 1). On demo
  cohorts with large tumour regions the CLS row covered only part of the tumour once a few patches decided
  (attention AUROC 0.75-0.90); the pooling weights cover it more evenly (README, "Measured figures").

With ``pooling="cls"``, attention per patch comes from the CLS row of the Nystrom attention, computed from the same
forward pass (never a second run) and never as a full ``n x n`` matrix: NystromAttention pads the sequence at the
FRONT to a multiple of its landmark count, and PPEG needs a square token grid (filled by repeating the first tokens
at the end), so only the columns of the patch tokens are kept (``[pad + 1, pad + 1 + N)``) and each patch gets the
mean of its own and its filler copies' weights (a sum would double the repeated patches and bias the ranking towards
them).
``attention_mode`` picks which layers form it:

- ``"last"``: the CLS row of the last layer (heads averaged);
- ``"first"``: the CLS row of the first layer (before PPEG mixes neighbouring tokens);
- ``"mean"``: the mean of both layers' CLS rows;
- ``"rollout"``: attention rollout (Abnar & Zuidema, 2020) over both layers, each ``0.5 A + 0.5 I`` for the
  residual path: ``r = cls2 (0.5 A1 + 0.5 I)`` with ``cls2`` the last layer's CLS row of ``0.5 A2 + 0.5 I``.
"""

from __future__ import annotations

import math

import torch
from nystrom_attention import NystromAttention
from torch import Tensor, nn

from core.model.mil.base import MILModel, MILOutput

ATTENTION_MODES = ("last", "first", "mean", "rollout")
POOLINGS = ("cls", "gated")
Mats = tuple[Tensor, Tensor, Tensor, int]  # attn1 [B,h,n+pad,m], attn2_inv [B,h,m,m], attn3 [B,h,m,n+pad], pad


def row_times_attention(r: Tensor, mats: Mats) -> Tensor:
    """``r @ A`` (heads averaged) for a row ``r [B, n]`` over the real tokens, A the layer's Nystrom attention.

    Cost ``O(n m)``: ``(r @ attn1) @ attn2_inv @ attn3``; returns ``[B, n]`` without the front padding.
    """
    attn1, attn2_inv, attn3, pad = mats
    full = nn.functional.pad(r, (pad, 0))[:, None, None, :]  # [B, 1, 1, n+pad], zero weight on the padding
    out = (full.to(attn1.dtype) @ attn1 @ attn2_inv @ attn3).squeeze(2)  # [B, h, n+pad]
    return out.mean(dim=1)[:, pad:]  # [B, n]


class TransLayer(nn.Module):
    """Pre-norm residual Nystrom attention; can return the CLS row of its attention (and its factors)."""

    def __init__(self, dim: int, dropout: float, landmarks: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim=dim, dim_head=dim // 8, heads=8, num_landmarks=landmarks or dim // 2,
                                     pinv_iterations=6, residual=True, dropout=dropout)

    def forward(self, x: Tensor, cls_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``(x + attn(norm(x)), CLS row [B, n] or None)``; the row is heads-averaged, padding dropped, CLS first."""
        out, row, _ = self.forward_with_factors(x, cls_attention)
        return out, row

    def forward_with_factors(self, x: Tensor, cls_attention: bool = True
                             ) -> tuple[Tensor, Tensor | None, Mats | None]:
        """Like ``forward``, also returning the attention's Nystrom factors for ``row_times_attention``."""
        if not cls_attention:
            return x + self.attn(self.norm(x)), None, None
        n = x.shape[1]  # sequence length before the attention's own padding
        out, (attn1, attn2_inv, attn3) = self.attn(self.norm(x), return_attn_matrices=True)
        m = self.attn.num_landmarks
        pad = (m - n % m) % m  # zero tokens NystromAttention put in front; the CLS token sits right after them
        # CLS row only: [B, h, m] @ [B, h, m, m] @ [B, h, m, n+pad] -> [B, h, n+pad]; never the full n x n matrix
        row = (attn1[:, :, pad, :].unsqueeze(2) @ attn2_inv @ attn3).squeeze(2)
        return x + out, row.mean(dim=1)[:, pad:], (attn1, attn2_inv, attn3, pad)


class PPEG(nn.Module):
    """Pyramid position encoding: depth-wise 7/5/3 convolutions over the square grid of patch tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, side: int) -> Tensor:
        b, n, c = x.shape  # [B, 1 + side*side, C]
        if n != 1 + side * side:
            raise ValueError(f"PPEG: expected {1 + side * side} tokens for a {side}x{side} grid, got {n}")
        cls_token, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).reshape(b, c, side, side)  # [B, C, side, side]
        grid = grid + self.proj7(grid) + self.proj5(grid) + self.proj3(grid)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)  # [B, 1 + side*side, C]


class TransMIL(MILModel):
    """TransMIL; attention ``[N]``: the gated pooling weights (``pooling="gated"``) or the CLS rows over the real
    patches (``pooling="cls"``, ``attention_mode``)."""

    name = "transmil"

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 512, dropout: float = 0.1,
                 landmarks: int | None = None, attention_mode: str = "last", pooling: str = "cls") -> None:
        super().__init__()
        if hidden % 16:
            raise ValueError(f"transmil: hidden={hidden} must be a multiple of 16 (8 heads, landmarks = hidden/2)")
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(f"transmil: attention_mode {attention_mode!r} not in {ATTENTION_MODES}")
        if pooling not in POOLINGS:
            raise ValueError(f"transmil: pooling {pooling!r} not in {POOLINGS}")
        self.in_dim, self.n_classes, self.attention_mode, self.pooling = in_dim, n_classes, attention_mode, pooling
        # per-feature standardisation of the input, set from the training patches (saved with the weights)
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        self.fc1 = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.layer1 = TransLayer(hidden, dropout, landmarks)
        self.ppeg = PPEG(hidden)
        self.layer2 = TransLayer(hidden, dropout, landmarks)
        self.norm = nn.LayerNorm(hidden)
        if pooling == "gated":  # gated attention pooling (Ilse et al., 2018) over the contextualised patch tokens
            self.pool_a = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.Tanh())
            self.pool_b = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.Sigmoid())
            self.pool_c = nn.Linear(hidden // 2, 1)
        self.fc2 = nn.Linear(hidden, n_classes)

    uses_input_norm = True

    @torch.no_grad()
    def fit_input_norm(self, features: Tensor) -> None:
        """Standardise inputs with the mean and standard deviation of the training patches ``[M, D]``."""
        x = features.to(self.feat_mean.device, torch.float32)
        self.set_input_norm(x.mean(dim=0), x.std(dim=0) if len(x) > 1 else torch.ones_like(self.feat_std))

    @torch.no_grad()
    def set_input_norm(self, mean: Tensor, std: Tensor) -> None:
        """Standardise inputs with these per-dimension statistics (training computes them streamed over the bags)."""
        self.feat_mean.copy_(mean.to(self.feat_mean))
        self.feat_std.copy_(std.to(self.feat_std).clamp_min(1e-6))

    def forward(self, features: Tensor) -> MILOutput:
        x = self._as_bag(features)  # [N, D]
        x = (x - self.feat_mean.to(x.dtype)) / self.feat_std.to(x.dtype)  # [N, D], standardised
        n = x.shape[0]
        h = self.fc1(x)[None]  # [1, N, H]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        fill = torch.arange(extra, device=h.device) % n  # patch index of each filler token
        if extra:  # fill the square grid by repeating the first tokens (wrapping for tiny bags)
            h = torch.cat([h, h[:, fill]], dim=1)  # [1, side*side, H]
        h = torch.cat([self.cls_token.to(h.dtype), h], dim=1)  # [1, 1 + side*side, H]
        mode = self.attention_mode
        gated = self.pooling == "gated"
        h, row1, mats1 = self.layer1.forward_with_factors(h, cls_attention=mode != "last" and not gated)
        h = self.ppeg(h, side)
        h, row2, _ = self.layer2.forward_with_factors(h, cls_attention=not gated)  # row2: [1, 1 + side*side]
        if gated:  # the real patch tokens only (the filler copies would count their patches twice)
            tokens = self.norm(h)[0, 1:1 + n]  # [N, H]
            weights = torch.softmax(self.pool_c(self.pool_a(tokens) * self.pool_b(tokens))[:, 0], dim=0)  # [N]
            embedding = weights @ tokens  # [H]
            logits = self.fc2(embedding)
            return MILOutput(logits=logits, probs=torch.softmax(logits, dim=0), attention=weights,
                             embedding=embedding)
        embedding = self.norm(h)[0, 0]  # [H], the CLS token
        logits = self.fc2(embedding)  # [C]
        if mode == "first":
            row = row1
        elif mode == "mean":
            row = (row1 + row2) / 2
        elif mode == "rollout":
            r2 = 0.5 * row2
            r2[:, 0] += 0.5  # the residual path: CLS keeps its own token
            row = 0.5 * row_times_attention(r2, mats1) + 0.5 * r2
        else:
            row = row2
        tokens = row[0, 1:]  # [side*side]: the patches, then the filler copies
        if extra:  # a patch and its filler copies are the same token: report the mean of their CLS weights
            counts = torch.ones(n, dtype=tokens.dtype, device=tokens.device).index_add(
                0, fill, torch.ones(extra, dtype=tokens.dtype, device=tokens.device))
            attention = tokens[:n].index_add(0, fill, tokens[n:]) / counts  # [N], input order
        else:
            attention = tokens
        if attention.shape[0] != n:
            raise RuntimeError(f"transmil: attention has {attention.shape[0]} values for {n} patches")
        return MILOutput(logits=logits, probs=torch.softmax(logits, dim=0), attention=attention, embedding=embedding)
