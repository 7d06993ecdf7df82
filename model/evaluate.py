"""Accuracy metrics: RMSE and MAE of ratings; P, recall, NDCG, MAP, coverage of rankings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from model.blocks import encode_ratings, user_histories, user_payload, user_stars
from model.bundle import Bundle
from model.data import Dataset
from model.sums import Sums


def rmse_mae(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Root mean squared and mean absolute error of predictions against true ratings."""
    if len(pred) != len(truth) or len(pred) == 0:
        raise ValueError(f"need equal, non-zero lengths; got {len(pred)} and {len(truth)}")
    err = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


def precision_recall_at_n(
    ranked: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], n: int
) -> tuple[float, float]:
    """Mean precision@n and recall@n over users that have at least one relevant movie."""
    precisions, recalls = [], []
    for user, items in relevant.items():
        if not items:
            continue
        hits = len(set(list(ranked.get(user, []))[:n]) & items)
        precisions.append(hits / n)
        recalls.append(hits / len(items))
    if not precisions:
        raise ValueError("no user has a relevant movie")
    return float(np.mean(precisions)), float(np.mean(recalls))


def ranking_metrics(ranked: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]],
                    n: int, popularity_rank: Mapping[str, int] | None = None,
                    catalog_size: int | None = None) -> dict[str, float]:
    """Top-n metrics averaged over users with at least one relevant movie.

    precision = hits / n; recall = hits / |relevant|; NDCG with binary gains and the
    ideal list of min(|relevant|, n) hits; MAP@n = mean over users of sum_k P@k rel_k /
    min(|relevant|, n). `coverage`: distinct recommended movies / `catalog_size`;
    `popularity_rank`: mean rank by training popularity (1 = most rated) of what is
    recommended, the lower the more a list leans on blockbusters.
    """
    discount = 1.0 / np.log2(np.arange(2, n + 2))
    rows: list[tuple[float, float, float, float]] = []
    shown: set[str] = set()
    ranks: list[int] = []
    for user, items in relevant.items():
        if not items:
            continue
        top = list(ranked.get(user, []))[:n]
        shown.update(top)
        if popularity_rank is not None:
            ranks += [popularity_rank[m] for m in top if m in popularity_rank]
        hits = np.array([m in items for m in top] + [False] * (n - len(top)), dtype=float)
        ideal = min(len(items), n)
        precision_at = np.cumsum(hits) / np.arange(1, n + 1)
        rows.append((hits.sum() / n, hits.sum() / len(items),
                     float(hits @ discount) / float(discount[:ideal].sum()),
                     float(precision_at @ hits) / ideal))
    if not rows:
        raise ValueError("no user has a relevant movie")
    p, r, ndcg, map_ = (float(x) for x in np.mean(rows, axis=0))
    out = {"precision": p, "recall": r, "ndcg": ndcg, "map": map_, "users": float(len(rows))}
    if catalog_size:
        out["coverage"] = len(shown) / catalog_size
    if popularity_rank is not None and ranks:
        out["popularity_rank"] = float(np.mean(ranks))
    return out


def ranking_summary(ranked: Mapping[str, Sequence[str]], data: Dataset, n: int = 10
                    ) -> dict[str, dict[str, float]]:
    """`ranking_metrics` of top-n lists against the test split: "all" counts every test
    movie of a user as relevant (what they went on to watch), "good" those rated >= 4."""
    relevant: dict[str, set[str]] = {}
    good: dict[str, set[str]] = {}
    for u, m, r in zip(data.test.user.tolist(), data.test.item.tolist(),
                       data.test.rating.tolist(), strict=True):
        relevant.setdefault(str(u), set()).add(str(m))
        if r >= 4:
            good.setdefault(str(u), set()).add(str(m))
    counts: dict[str, int] = {}
    for m in data.train.item.tolist():
        counts[str(m)] = counts.get(str(m), 0) + 1
    popularity = {m: r for r, m in enumerate(sorted(counts, key=lambda m: -counts[m]), 1)}
    return {name: ranking_metrics(ranked, sets, n, popularity, len(data.items))
            for name, sets in (("all", relevant), ("good", good))}


def rank_bundle(bundle: Bundle, data: Dataset, head: str = "relevance", n: int = 10,
                batch: int = 256) -> dict[str, list[str]]:
    """Each test user's top-n unrated catalog movies from one head, through the same
    engine calls as /recommend; the context is the user's last training rating
    (`model.relevance.query_contexts`), which a request can send to get the same list."""
    from model.relevance import query_contexts  # relevance imports this module

    h = bundle.heads[head]
    catalog = bundle.catalog
    rated = user_histories(data.train)
    contexts = query_contexts(data.train)
    users = sorted({str(u) for u in data.test.user.tolist()})
    out: dict[str, list[str]] = {}
    for start in range(0, len(users), batch):
        part = users[start:start + batch]
        query = h.side_sums(h.fmap.encode("user", [
            user_payload(u, data.users.get(u, {}), rated.get(u, [])) for u in part]))
        ctx = h.fmap.encode("context", [contexts.get(u, {}) for u in part])
        excluded = [[r for r in map(catalog.row, rated.get(u, [])) if r is not None]
                    for u in part]
        exclude_row = np.repeat(np.arange(len(part)), [len(e) for e in excluded])
        exclude_item = np.array([r for e in excluded for r in e], dtype=np.int32)
        rows, scores = h.top_n(query, ctx, exclude_row.astype(np.int32), exclude_item,
                               np.zeros(len(part), np.int64), n)
        for u, r, sc in zip(part, rows, scores, strict=True):
            out[u] = [str(catalog.ids[i]) for i, x in zip(r, sc, strict=True) if np.isfinite(x)]
    return out


def evaluate_bundle(bundle: Bundle, data: Dataset) -> dict[str, float]:
    """RMSE/MAE of a saved bundle on `data.test`, scored through its SavedModel signatures.

    Histories and last movies come from `data.train`, exactly as in training.
    """
    enc = encode_ratings(bundle.fmap, data, data.test, data.train)
    users, items = bundle.side_sums(enc.users), bundle.side_sums(enc.items)
    scores = bundle.score_pairs(users.take(enc.row_user), enc.contexts,
                                np.arange(len(enc), dtype=np.int32), items.take(enc.row_item))
    if bundle.neighbours is not None:
        scores = scores + neighbour_terms(bundle, data, enc.row_user, users)
    rmse, mae = rmse_mae(bundle.clip(scores), enc.y)
    return {"rmse": rmse, "mae": mae, "ratings": float(len(enc))}


def neighbour_terms(bundle: Bundle, data: Dataset, row_user: np.ndarray, users: Sums
                    ) -> np.ndarray:
    """Per test rating, the rating head's neighbourhood correction, each user's history
    being their training ratings (what /predict reads from the store); `row_user` and
    `users` as `encode_ratings` orders the test split's users."""
    rated, stars = user_histories(data.train), user_stars(data.train)
    rows = bundle.catalog.rows(data.test.item.astype(str).tolist())
    out = np.zeros(len(row_user))
    for n, uid in enumerate(np.unique(data.test.user.astype(str)).tolist()):
        mine = np.flatnonzero(row_user == n)
        out[mine] = bundle.neighbour_term(users.take(np.array([n])), rated.get(uid, []),
                                          stars.get(uid, []), rows[mine])
    return out
