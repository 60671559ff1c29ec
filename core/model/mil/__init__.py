"""MIL heads behind one factory: ``create_model(name, in_dim, n_classes, **kw) -> MILModel``.

Every model maps ``features [N, D]`` to ``MILOutput(logits [C], probs [C], attention [N] or [N, C],
embedding [E])``, attention in the order of the input rows (the order of ``coords``).
"""

from __future__ import annotations

from typing import Any

from core.model.mil.abmil import ABMIL
from core.model.mil.base import MILModel, MILOutput
from core.model.mil.dsmil import DSMIL
from core.model.mil.transmil import TransMIL

MODELS: dict[str, type[MILModel]] = {"abmil": ABMIL, "transmil": TransMIL, "dsmil": DSMIL}

__all__ = ["MODELS", "MILModel", "MILOutput", "create_model", "list_models"]


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(MODELS)


def create_model(name: str, in_dim: int, n_classes: int, **kw: Any) -> MILModel:
    """Build the MIL head called ``name`` for ``in_dim``-dimensional features and ``n_classes`` classes."""
    try:
        cls = MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown MIL model {name!r} (known: {', '.join(list_models())})") from None
    if in_dim < 1 or n_classes < 2:
        raise ValueError(f"{name}: need in_dim >= 1 and n_classes >= 2, got {in_dim} and {n_classes}")
    return cls(in_dim, n_classes, **kw)
