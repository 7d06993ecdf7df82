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


def temporal_split(ratings: Ratings, cutoff: int | None, test_fraction: float
                   ) -> tuple[Ratings, Ratings, int]:
    """Train on the ratings before `cutoff` (unix seconds), test on those at or after it:
    what a live service faces, predicting what comes after the model was trained.
    Without a cutoff it is the time from which `test_fraction` of the ratings are held
    out (ratings sharing that second all go to test). Returns (train, test, cutoff)."""
    if cutoff is None:
        if not 0.0 < test_fraction < 1.0:
            raise DataError(f"test fraction must be in (0, 1), got {test_fraction}")
        times = np.sort(ratings.timestamp)
        cutoff = int(times[len(times) - max(1, round(len(times) * test_fraction))])
    after = ratings.timestamp >= cutoff
    if after.all() or not after.any():
        first, last = int(ratings.timestamp.min()), int(ratings.timestamp.max())
        empty = "training" if after.all() else "test"
        raise DataError(f"temporal cutoff {cutoff} leaves no {empty} ratings: the ratings "
                        f"span {first}..{last}")
    return ratings.subset(np.flatnonzero(~after)), ratings.subset(np.flatnonzero(after)), cutoff
