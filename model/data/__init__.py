"""Rating data sets in one shape, whatever file format they came from.

A `Dataset` holds user and movie attributes (payload dicts, the same keys the HTTP API
takes) and two `Ratings` tables, train and test. Readers and the synthetic generator
both produce it, so training code never knows where data came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DataError(ValueError):
    """Missing, malformed or unsupported data; the message names the file and line."""


@dataclass(frozen=True)
class Ratings:
    """Parallel columns of rating events; ids are strings."""

    user: np.ndarray  # object (str)
    item: np.ndarray  # object (str)
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.rating)

    def subset(self, rows: np.ndarray) -> Ratings:
        return Ratings(self.user[rows], self.item[rows], self.rating[rows], self.timestamp[rows])


@dataclass(frozen=True)
class Dataset:
    """Attributes of users and movies plus a train/test split of ratings."""

    name: str
    users: dict[str, dict[str, Any]]
    items: dict[str, dict[str, Any]]
    train: Ratings
    test: Ratings
    rating_range: tuple[float, float] = (1.0, 5.0)
    info: dict[str, Any] = field(default_factory=dict)


def random_split(ratings: Ratings, test_fraction: float, seed: int) -> tuple[Ratings, Ratings]:
    """Seeded random holdout (for formats that ship no predefined split)."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(ratings))
    n_test = max(1, round(len(ratings) * test_fraction))
    return ratings.subset(np.sort(order[n_test:])), ratings.subset(np.sort(order[:n_test]))
