"""DSMIL (Li et al., 2021): an instance classifier picks each class's critical patch; every patch is then
weighted by its similarity to that critical patch, giving per-class attention ``[N, C]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model.mil.base import MILModel, MILOutput


class DSMIL(MILModel):
    """Dual-stream MIL; logits are the mean of the bag stream and the max-instance stream."""

    name = "dsmil"

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256, q_dim: int = 128,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.instance = nn.Linear(hidden, n_classes)  # instance stream
        self.q = nn.Sequential(nn.Linear(hidden, q_dim), nn.Tanh())
        self.v = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.fcc = nn.Conv1d(n_classes, n_classes, kernel_size=hidden)  # one weight row per class

    def forward(self, features: Tensor) -> MILOutput:
        x = self._as_bag(features)  # [N, D]
        h = self.fc(x)  # [N, H]
        inst = self.instance(h)  # [N, C] instance logits
        crit = inst.argmax(dim=0)  # [C] index of each class's critical patch
        q = self.q(h)  # [N, Q]
        q_crit = q[crit]  # [C, Q]
        attn = torch.softmax(q @ q_crit.T / math.sqrt(q.shape[1]), dim=0)  # [N, C], each column sums to 1
        bag = attn.T @ self.v(h)  # [C, H]
        bag_logits = self.fcc(bag[None])[0, :, 0]  # [C]
        max_logits = inst.max(dim=0).values  # [C]
        logits = 0.5 * (bag_logits + max_logits)  # [C]
        return MILOutput(logits=logits, probs=torch.softmax(logits, dim=0), attention=attn,
                         embedding=bag.reshape(-1), aux_logits=torch.stack([bag_logits, max_logits]))

    def loss(self, out: MILOutput, target: Tensor) -> Tensor:
        """Half bag-stream and half max-instance cross-entropy, as in the paper."""
        assert out.aux_logits is not None
        return F.cross_entropy(out.aux_logits, target.view(1).expand(2))
