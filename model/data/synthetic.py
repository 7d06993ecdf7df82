"""A planted Factorization Machine: MovieLens-shaped data of any size with a known truth.

Users get MovieLens-like attributes, movies get genres and years, each user rates a
Zipf-skewed sample of movies over time, and every rating is the planted FM's output for
the *same* features fmrec trains on (through the real feature map), plus Gaussian noise,
turned into 1-5 stars by thresholds placed so that the stars are spread like ML-100k's
(the demo then answers ratings a user recognises, not scores around 6). Given the planted
output t, a rating is star j with probability P(theta_{j-1} < t + noise <= theta_j), so no
model can beat the RMSE of E[stars | t]: `info["floor_rmse"]` on the test split, the floor
the tests check against. No download needed, so demos and CI run on it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from model.batch_sums import batch_scores
from model.blocks import EncodedRatings, encode_ratings
from model.data import Dataset, Ratings, random_split
from model.features import FEATURE_GROUPS, FeatureMap, FeatureSpec, movielens_spec
from model.fm import FactorizationMachine

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


def synthetic_catalog(n_items: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Movies "1".."n_items" with attributes drawn as `synthetic` draws them (1-3 genres,
    a year), in whole-array draws rather than `synthetic`'s per-movie ones: a million
    movies (bench/ann.py) in about 1 GiB and a few times less time."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 4, size=n_items)
    drawn = rng.integers(0, len(GENRES), size=(n_items, 3))
    years = rng.integers(1930, 1999, size=n_items)
    names = np.array(GENRES, dtype=object)
    return {str(i): {"title": f"Movie {i} ({year})",
                     "genres": sorted(set(names[row[:c]].tolist())), "year": year}
            for i, row, c, year in zip(range(1, n_items + 1), drawn, counts.tolist(),
                                       years.tolist(), strict=True)}


# share of 1, 2, 3, 4 and 5 stars in ML-100k's u.data
STAR_SHARES = np.array([6110, 11370, 27145, 34174, 21201]) / 100_000


def star_thresholds(latent: np.ndarray) -> np.ndarray:
    """The 4 cut points between stars that give `latent` scores ML-100k's star shares."""
    return np.quantile(latent, np.cumsum(STAR_SHARES)[:-1])


def to_stars(latent: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """1 + the number of thresholds below each score: integer stars 1..5."""
    return (1 + np.searchsorted(thresholds, latent)).astype(np.float32)


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x), by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): NumPy has no erf."""
    z = np.abs(x) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
                + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-z * z)
    return 0.5 * (1.0 + np.sign(x) * erf)


def star_moments(truth: np.ndarray, noise: float, thresholds: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """E[stars | t] and Var[stars | t] when stars = to_stars(t + N(0, noise^2))."""
    cdf = normal_cdf((thresholds[None, :] - truth[:, None]) / noise)
    below = np.concatenate([np.zeros((len(truth), 1)), cdf, np.ones((len(truth), 1))], 1)
    p = np.diff(below, axis=1)  # P(star j | t), j = 1..5
    stars = np.arange(1, 6)
    mean = p @ stars
    return mean, p @ stars**2 - mean**2


# every group but "session" (random timestamps make most user-days unique, so a planted
# session effect would be noise no model can learn for the test split) and "stars" (the
# stars are what the planted model makes)
PLANTED_FEATURES = ",".join(g for g in FEATURE_GROUPS if g not in ("session", "stars"))


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
    """`synthetic`, and its training split encoded as `encode_ratings(FeatureMap(
    spec.rating_fields()), data, data.train, data.train)` gives it (what the rating head
    reads, and what the ratings are planted with): planting the ratings encodes it anyway, and a
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
    fmap = FeatureMap(spec.rating_fields())
    encoded, truths, latents = [], [], []
    for part in (train, test):
        enc = encode_ratings(fmap, data, part, train)
        truths.append(batch_scores(planted, enc.batch(np.arange(len(enc)))).numpy())
        latents.append(truths[-1] + rng.normal(0.0, noise, len(enc)))
        encoded.append(enc)
    thresholds = star_thresholds(np.concatenate(latents))
    for part, latent in zip((train, test), latents, strict=True):
        part.rating[:] = to_stars(latent, thresholds)
    _, variance = star_moments(truths[1], noise, thresholds)
    # the planted FM itself, affinely rescaled to stars (an FM can express that exactly):
    # what a model that recovered it scores, as `noise` was before the ratings were stars
    slope, intercept = np.polyfit(truths[0], train.rating, 1) if len(train) > 1 else (1, 0)
    planted_rmse = np.sqrt(np.mean((np.clip(intercept + slope * truths[1], 1, 5)
                                    - test.rating) ** 2)) if len(test) else 0.0
    info = {"noise": noise, "planted_k": k, "seed": seed,
            "thresholds": [round(float(t), 6) for t in thresholds],
            "floor_rmse": round(float(np.sqrt(variance.mean())), 6) if len(variance) else 0.0,
            "planted_rmse": round(float(planted_rmse), 6)}
    return (replace(data, info=info), spec,
            replace(encoded[0], y=train.rating.astype(np.float32)))
