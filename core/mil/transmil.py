"""TransMIL (Shao et al., 2021): Nystrom self-attention over patch tokens, a PPEG position encoder and a CLS token.

Attention per patch is the CLS row of the last layer's Nystrom attention, computed from the same forward pass
(never a second run): NystromAttention pads the sequence at the FRONT to a multiple of its landmark count, and
PPEG needs a square token grid (filled by repeating the first tokens at the end), so only the columns of the real
patch tokens are kept: ``[pad + 1, pad + 1 + N)``.
"""

from __future__ import annotations

import math

import torch
from nystrom_attention import NystromAttention
from torch import Tensor, nn

from core.mil.base import MILModel, MILOutput


class TransLayer(nn.Module):
    """Pre-norm residual Nystrom attention; can return the CLS row of its attention matrix."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim=dim, dim_head=dim // 8, heads=8, num_landmarks=dim // 2,
                                     pinv_iterations=6, residual=True, dropout=dropout)

    def forward(self, x: Tensor, cls_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        if not cls_attention:
            return x + self.attn(self.norm(x)), None
        n = x.shape[1]  # sequence length before the attention's own padding
        out, (attn1, attn2_inv, attn3) = self.attn(self.norm(x), return_attn_matrices=True)
        m = self.attn.num_landmarks
        pad = (m - n % m) % m  # zero tokens NystromAttention put in front; the CLS token sits right after them
        # CLS row only: [B, h, m] @ [B, h, m, m] @ [B, h, m, n+pad] -> [B, h, n+pad]; never the full n x n matrix
        row = (attn1[:, :, pad, :].unsqueeze(2) @ attn2_inv @ attn3).squeeze(2)
        return x + out, row.mean(dim=1)[:, pad:]  # [B, n]: heads averaged, padding dropped, CLS first


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
    """TransMIL with a CLS token; attention ``[N]`` is the CLS row of the last layer (real patches only)."""

    name = "transmil"

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        if hidden % 16:
            raise ValueError(f"transmil: hidden={hidden} must be a multiple of 16 (8 heads, landmarks = hidden/2)")
        self.in_dim, self.n_classes = in_dim, n_classes
        self.fc1 = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.layer1 = TransLayer(hidden, dropout)
        self.ppeg = PPEG(hidden)
        self.layer2 = TransLayer(hidden, dropout)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, features: Tensor) -> MILOutput:
        x = self._as_bag(features)  # [N, D]
        n = x.shape[0]
        h = self.fc1(x)[None]  # [1, N, H]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        if extra:  # fill the square grid by repeating the first tokens (wrapping for tiny bags)
            idx = torch.arange(extra, device=h.device) % n
            h = torch.cat([h, h[:, idx]], dim=1)  # [1, side*side, H]
        h = torch.cat([self.cls_token.to(h.dtype), h], dim=1)  # [1, 1 + side*side, H]
        h, _ = self.layer1(h)
        h = self.ppeg(h, side)
        h, row = self.layer2(h, cls_attention=True)  # row: [1, 1 + side*side]
        embedding = self.norm(h)[0, 0]  # [H], the CLS token
        logits = self.fc2(embedding)  # [C]
        attention = row[0, 1:1 + n]  # [N], the real patch tokens in input order
        if attention.shape[0] != n:
            raise RuntimeError(f"transmil: attention has {attention.shape[0]} values for {n} patches")
        return MILOutput(logits=logits, probs=torch.softmax(logits, dim=0), attention=attention, embedding=embedding)
