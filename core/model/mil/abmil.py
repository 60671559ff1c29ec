"""Gated-attention MIL (Ilse et al., 2018): attention-weighted mean of projected patch features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.model.mil.base import MILModel, MILOutput


class ABMIL(MILModel):
    """Gated attention pooling; ``branches=n_classes`` gives one attention map per class (``[N, C]``)."""

    name = "abmil"

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256, attn_dim: int = 128,
                 dropout: float = 0.25, multi_branch: bool = False) -> None:
        super().__init__()
        self.in_dim, self.n_classes, self.multi_branch = in_dim, n_classes, multi_branch
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_a = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.attn_b = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        n_branches = n_classes if multi_branch else 1
        self.attn_c = nn.Linear(attn_dim, n_branches)
        if multi_branch:
            # one linear classifier per class on its own attention-pooled embedding
            self.classifiers = nn.ModuleList([nn.Linear(hidden, 1) for _ in range(n_classes)])
        else:
            self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, features: Tensor) -> MILOutput:
        x = self._as_bag(features)  # [N, D]
        h = self.fc(x)  # [N, H]
        scores = self.attn_c(self.attn_a(h) * self.attn_b(h))  # [N, B]
        attn = torch.softmax(scores, dim=0)  # [N, B], sums to 1 over patches
        pooled = attn.transpose(0, 1) @ h  # [B, H]
        if self.multi_branch:
            logits = torch.cat([clf(pooled[c]) for c, clf in enumerate(self.classifiers)])  # [C]
            embedding = pooled.reshape(-1)  # [C*H]
            attention = attn  # [N, C]
        else:
            logits = self.classifier(pooled[0])  # [C]
            embedding = pooled[0]  # [H]
            attention = attn[:, 0]  # [N]
        assert logits.shape == (self.n_classes,), f"abmil: logits shape {tuple(logits.shape)}"
        return MILOutput(logits=logits, probs=torch.softmax(logits, dim=0), attention=attention, embedding=embedding)
