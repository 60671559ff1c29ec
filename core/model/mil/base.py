"""The output type and base class shared by every MIL head.

A MIL head maps one bag of patch features ``[N, D]`` to slide logits and per-patch attention in the order of the
input rows (the order of ``coords``), plus the slide embedding the outlier score is computed from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class MILOutput:
    """One slide's result: ``logits [C]``, ``probs [C]``, ``attention [N]`` or ``[N, C]``, ``embedding [E]``.

    ``aux_logits`` holds extra logits some heads train on (DSMIL's max-instance scores); ``None`` otherwise.
    """

    logits: Tensor
    probs: Tensor
    attention: Tensor
    embedding: Tensor
    aux_logits: Tensor | None = None


class MILModel(nn.Module):
    """Base class: shape checking of the input bag and the default training loss."""

    name: str = "mil"
    in_dim: int
    n_classes: int

    def _as_bag(self, features: Tensor) -> Tensor:
        """Accept ``[N, D]`` or ``[1, N, D]``; return ``[N, D]`` or raise ``ValueError`` with a readable message."""
        if features.dim() == 3:
            if features.shape[0] != 1:
                raise ValueError(f"{self.name}: one bag at a time, got a batch of {features.shape[0]} bags")
            features = features[0]
        if features.dim() != 2:
            raise ValueError(f"{self.name}: expected features [N, D], got shape {tuple(features.shape)}")
        n, d = features.shape
        if n == 0:
            raise ValueError(f"{self.name}: the bag is empty (0 patches)")
        if d != self.in_dim:
            raise ValueError(f"{self.name}: features have dimension {d}, the model expects {self.in_dim}")
        return features

    uses_input_norm = False  # heads that standardise their inputs set this and implement set_input_norm

    def fit_input_norm(self, features: Tensor) -> None:
        """Learn input statistics from the training patches ``[M, D]`` before training (default: nothing)."""

    def set_input_norm(self, mean: Tensor, std: Tensor) -> None:
        """Standardise inputs with these per-dimension statistics (default: nothing)."""

    def loss(self, out: MILOutput, target: Tensor) -> Tensor:
        """Cross-entropy of the slide logits against the class index ``target`` (a 0-d long tensor)."""
        return F.cross_entropy(out.logits[None], target.view(1))

    def forward(self, features: Tensor) -> MILOutput:  # pragma: no cover - abstract
        raise NotImplementedError
