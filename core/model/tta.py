"""Test-time augmentation of patch features: each patch's features averaged over its flips and rotations.

``flips`` = the patch and its mirror image (2 views); ``dihedral`` = the 4 rotations of the patch and of its mirror
image (8 views). The mode is stored in the features file (attribute ``tta``) and is part of the features' identity:
a model trained on TTA features only accepts TTA features of the same mode (the backbone name read back is
``<backbone>+tta-<mode>``), so plain and augmented features are never mixed silently.
"""

from __future__ import annotations

import torch

from core.errors import InputError

TTA_MODES = {"none": 1, "flips": 2, "dihedral": 8}


def check_mode(mode: str | None) -> str:
    """The mode name (``None`` -> ``"none"``); ``InputError`` for an unknown one."""
    mode = mode or "none"
    if mode not in TTA_MODES:
        raise InputError(f"test-time augmentation {mode!r}: choose {', '.join(TTA_MODES)}")
    return mode


def feature_identity(backbone: str, mode: str | None) -> str:
    """The backbone name a features file reads back as: ``backbone`` plain, ``backbone+tta-<mode>`` with TTA."""
    mode = check_mode(mode)
    suffix = f"+tta-{mode}"
    return backbone if mode == "none" or backbone.endswith(suffix) else backbone + suffix


def views(batch: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The augmented copies of an ``N x H x W x 3`` uint8 batch (the batch itself first)."""
    mode = check_mode(mode)
    h, w = 1, 2  # axes of N x H x W x C
    if mode == "none":
        return [batch]
    if mode == "flips":
        return [batch, torch.flip(batch, dims=(w,))]
    if batch.shape[h] != batch.shape[w]:
        raise InputError(f"dihedral test-time augmentation needs square patches, got {tuple(batch.shape[1:3])}")
    out = []
    for mirrored in (batch, torch.flip(batch, dims=(w,))):
        out += [torch.rot90(mirrored, k, dims=(h, w)) for k in range(4)]
    return out


def pairwise_sum(parts: list[torch.Tensor]) -> torch.Tensor:
    """Sum of equally shaped tensors added pairwise: for 2 or 8 equal views, sum / count is exactly the view."""
    parts = list(parts)
    while len(parts) > 1:
        nxt = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def embed_tta(backbone: object, batch: torch.Tensor, mode: str) -> torch.Tensor:
    """Features (N x dim, float32, CPU) of a uint8 batch averaged over its ``mode`` views, one forward pass each."""
    from core.model.backbones import embed

    vs = views(batch, mode)
    feats = [embed(backbone, v.contiguous()) for v in vs]  # type: ignore[arg-type]
    return pairwise_sum(feats) / len(feats)
