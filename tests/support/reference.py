"""Slow, obvious references the fast code is tested against."""

from __future__ import annotations

import numpy as np


def fm_pairwise(w0: float, w: np.ndarray, V: np.ndarray, indices: np.ndarray,
                values: np.ndarray) -> float:
    """The FM by its definition: every pair of feature occurrences, O(p^2 k)."""
    y = float(w0)
    for a in range(len(indices)):
        y += float(w[indices[a]] * values[a])
        for b in range(a + 1, len(indices)):
            y += float(V[indices[a]] @ V[indices[b]]) * float(values[a] * values[b])
    return y
