"""Agreement between two readers of the same slides: Cohen's kappa, overall and per pair of reviewers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any


def cohens_kappa(pairs: Iterable[tuple[str, str]]) -> float | None:
    """Cohen's kappa of (first read, second read) label pairs: (p_o - p_e) / (1 - p_e).

    None when there is no pair; 1.0 when both readers always agree on one single class (p_e = 1).
    """
    pairs = list(pairs)
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in set(first) | set(second)) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def agreement_table(reads: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per pair of readers (first, second): slides read twice, percent agreement and kappa; an 'all' row first.

    ``reads``: submitted second reads with ``first_by``, ``first_label``, ``second_by``, ``second_label``.
    """
    done = [r for r in reads if r.get("second_label") is not None and r.get("first_label") is not None]
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in done:
        groups.setdefault((str(r["first_by"]), str(r["second_by"])), []).append(
            (str(r["first_label"]), str(r["second_label"])))
    rows = []
    everything = [(str(r["first_label"]), str(r["second_label"])) for r in done]
    for (a, b), pairs in [(("all", "all"), everything), *sorted(groups.items())]:
        if not pairs:
            continue
        rows.append({"first reader": a, "second reader": b, "slides read twice": len(pairs),
                     "agreement": sum(x == y for x, y in pairs) / len(pairs), "kappa": cohens_kappa(pairs)})
    return rows
