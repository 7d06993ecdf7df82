"""A planted Factorization Machine: MovieLens-shaped data of any size with a known truth.

Users get MovieLens-like attributes, movies get genres and years, each user rates a
Zipf-skewed sample of movies over time, and every rating is the planted FM's output for
the *same* features fmrec trains on (through the real feature map), plus Gaussian noise.
A model that learns the planted FM reaches a test RMSE near `noise`: the floor the tests
check against. No download needed, so demos and CI run on it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from model.data import Dataset, Ratings, random_split
from model.dataset import EncodedRatings, encode_ratings
from model.features import FEATURE_GROUPS, FeatureMap, FeatureSpec, movielens_spec
from model.fm import FactorizationMachine
from model.train import batch_scores

GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western")
OCCUPATIONS = ("student", "engineer", "educator", "writer", "artist", "other", "retired")
START = 883_000_000  # late 1997, like ML-100k


def _attributes(rng: np.random.Generator, n_users: int, n_items: int
                ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    users = {
        str(u): {"age": int(rng.integers(15, 70)), "gender": str(rng.choice(["M", "F"])),
                 "occupation": str(rng.choice(OCCUPATIONS)),
                 "zip": f"{int(rng.integers(0, 99999)):05d}"}
        for u in range(1, n_users + 1)
    }
    items = {}
    for i in range(1, n_items + 1):
        genres = sorted({str(g) for g in rng.choice(GENRES, size=int(rng.integers(1, 4)))})
        year = int(rng.integers(1930, 1999))
        items[str(i)] = {"title": f"Movie {i} ({year})", "genres": genres, "year": year}
    return users, items


# every group but "session": random timestamps make most user-days unique, so a planted
# session effect would be noise no model can learn for the test split
PLANTED_FEATURES = ",".join(g for g in FEATURE_GROUPS if g != "session")


def synthetic(n_ratings: int = 100_000, n_users: int | None = None, n_items: int | None = None,
              k: int = 8, noise: float = 0.3, seed: int = 0, hash_bits: int = 18,
              test_fraction: float = 0.1) -> tuple[Dataset, FeatureSpec]:
    """A data set from a planted FM and the feature spec it was planted with."""
    data, spec, _ = synthetic_encoded(n_ratings, n_users, n_items, k, noise, seed, hash_bits,
                                      test_fraction)
    return data, spec


def synthetic_encoded(n_ratings: int = 100_000, n_users: int | None = None,
                      n_items: int | None = None, k: int = 8, noise: float = 0.3, seed: int = 0,
                      hash_bits: int = 18, test_fraction: float = 0.1
                      ) -> tuple[Dataset, FeatureSpec, EncodedRatings]:
    """`synthetic`, and its training split encoded as `encode_ratings(FeatureMap(spec),
    data, data.train, data.train)` gives it: planting the ratings encodes it anyway, and a
    caller that trains at once (bench.train at 10M ratings) saves encoding it again."""
    rng = np.random.default_rng(seed)
    n_users = n_users or max(20, int(np.sqrt(n_ratings) * 3))
    n_items = n_items or max(20, int(np.sqrt(n_ratings) * 5))
    users, items = _attributes(rng, n_users, n_items)
    # distinct (user, movie) pairs, users and movies Zipf-skewed like real data
    u_pop = 1.0 / np.arange(1, n_users + 1) ** 0.5
    i_pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    n_ratings = min(n_ratings, n_users * n_items // 2)
    drawn = np.zeros(0, dtype=np.int64)
    while len(drawn) < n_ratings:
        u = rng.choice(n_users, size=n_ratings, p=u_pop / u_pop.sum())
        i = rng.choice(n_items, size=n_ratings, p=i_pop / i_pop.sum())
        # sorted distinct pairs; not np.unique, whose hash path (NumPy >= 2.3) is ~100x
        # slower than a sort on millions of distinct values (a minute at 10M ratings)
        pooled = np.sort(np.concatenate([drawn, u * n_items + i]))
        drawn = pooled[np.concatenate([[True], pooled[1:] != pooled[:-1]])]
    pairs = rng.permutation(drawn)[:n_ratings]
    ratings = Ratings(
        (pairs // n_items + 1).astype(str).astype(object),
        (pairs % n_items + 1).astype(str).astype(object),
        np.zeros(n_ratings, np.float32),
        START + rng.integers(0, 200 * 86400, size=n_ratings),
    )
    train, test = random_split(ratings, test_fraction, seed)
    spec = movielens_spec(hash_bits, PLANTED_FEATURES).fit_numeric(
        "context", {"time": train.timestamp.tolist()})
    planted = FactorizationMachine(spec.n_features, k, init_std=0.15, bias=3.5, seed=seed + 1)
    planted.w.assign(rng.normal(0.0, 0.25, spec.n_features).astype(np.float32))
    data = Dataset("synthetic", users, items, train, test, (1.0, 5.0))
    fmap = FeatureMap(spec)
    encoded = []
    for part in (train, test):
        enc = encode_ratings(fmap, data, part, train)
        truth = batch_scores(planted, enc.batch(np.arange(len(enc)))).numpy()
        part.rating[:] = truth + rng.normal(0.0, noise, len(truth))
        encoded.append(replace(enc, y=part.rating.astype(np.float32)))
    low = float(min(train.rating.min(), test.rating.min()))
    high = float(max(train.rating.max(), test.rating.max()))
    info = {"noise": noise, "planted_k": k, "seed": seed}
    return replace(data, rating_range=(low, high), info=info), spec, encoded[0]
