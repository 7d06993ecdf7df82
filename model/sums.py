"""`Sums`: side sums as NumPy arrays, what serving computes with (the engine, the bundle,
the service's user sums); `model.fm.SideSums` is the TensorFlow twin used in training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sums:
    """Side sums as numpy arrays: L (n,), s (n, k), q (n,)."""

    L: np.ndarray
    s: np.ndarray
    q: np.ndarray

    def __len__(self) -> int:
        return len(self.L)

    def __add__(self, other: Sums) -> Sums:
        return Sums(self.L + other.L, self.s + other.s, self.q + other.q)

    def take(self, rows: np.ndarray) -> Sums:
        return Sums(self.L[rows], self.s[rows], self.q[rows])

    @staticmethod
    def concat(parts: list[Sums]) -> Sums:
        return Sums(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("L", "s", "q")))
