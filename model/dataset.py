"""Ratings -> relation blocks: one sparse row per distinct user, per movie, per rating.

A rating's feature vector is [user block | item block | context block]. The user block
(id, attributes, the ~100 movies the user rated) is identical for all of a user's
ratings, so it is stored once per user and its side sums are computed once per user per
batch (libFM's relation blocks, Rendle 2013) instead of once per rating.

No leakage: "rated" history and "last movie" come from the `history` ratings only (the
training split), and the last movie is the latest one rated strictly before the event.
A training rating's own movie is in its user's history; a test rating's is not. So that
the model cannot learn from a signal that never exists at test time, each training
rating carries a `left_out` occurrence (user.rated=<its movie>) whose side sums are
subtracted: the FM then sees exactly "history without this movie".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from model.data import Dataset, Ratings
from model.features import FeatureMap, SparseRows, feature_hash


class Block(NamedTuple):
    """A SparseRows block as the tensors `FactorizationMachine.side_sums` takes."""

    row_ids: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_rows: np.int32

    @staticmethod
    def of(rows: SparseRows) -> Block:
        return Block(rows.row_ids(), rows.indices, rows.values, np.int32(rows.n_rows))


class Batch(NamedTuple):
    """One training step's input: distinct users and items, contexts, targets."""

    users: Block
    items: Block
    contexts: Block
    left_out: Block  # per rating: occurrences to subtract (its own movie in its history)
    row_user: np.ndarray  # int32: which user row each rating uses
    row_item: np.ndarray
    y: np.ndarray  # float32


@dataclass(frozen=True)
class EncodedRatings:
    """Ratings as relation blocks plus, per rating, the index of its user and item row."""

    users: SparseRows
    items: SparseRows
    contexts: SparseRows
    left_out: SparseRows
    row_user: np.ndarray  # int64
    row_item: np.ndarray
    y: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nnz_per_rating(self) -> float:
        """Average non-zeros of the full feature vector of one rating."""
        user_nnz = np.diff(self.users.indptr)[self.row_user].mean()
        item_nnz = np.diff(self.items.indptr)[self.row_item].mean()
        return float(user_nnz + item_nnz + self.contexts.nnz / max(len(self), 1))

    def subset(self, rows: np.ndarray) -> EncodedRatings:
        """Some ratings, sharing the user and item blocks."""
        return EncodedRatings(self.users, self.items, self.contexts.take(rows),
                              self.left_out.take(rows), self.row_user[rows],
                              self.row_item[rows], self.y[rows])

    def batch(self, rows: np.ndarray) -> Batch:
        """Rows `rows` with each distinct user and item encoded once."""
        users, row_user = np.unique(self.row_user[rows], return_inverse=True)
        items, row_item = np.unique(self.row_item[rows], return_inverse=True)
        return Batch(
            Block.of(self.users.take(users)), Block.of(self.items.take(items)),
            Block.of(self.contexts.take(rows)), Block.of(self.left_out.take(rows)),
            row_user.astype(np.int32), row_item.astype(np.int32), self.y[rows],
        )


def user_histories(history: Ratings) -> dict[str, list[str]]:
    """Movies each user rated, in time order."""
    order = np.argsort(history.timestamp, kind="stable")
    rated: dict[str, list[str]] = defaultdict(list)
    for u, i in zip(history.user[order], history.item[order], strict=True):
        rated[u].append(i)
    return rated


def last_movies(events: Ratings, history: Ratings) -> list[str | None]:
    """For each event, the user's latest movie in `history` rated strictly before it."""
    codes = {u: n for n, u in enumerate(set(history.user) | set(events.user))}
    h_user = np.fromiter((codes[u] for u in history.user), np.int64, len(history))
    e_user = np.fromiter((codes[u] for u in events.user), np.int64, len(events))
    # one sortable key per (user, time): user in the high bits, timestamp in the low 33
    h_key = (h_user << 33) | np.clip(history.timestamp, 0, (1 << 33) - 1)
    e_key = (e_user << 33) | np.clip(events.timestamp, 0, (1 << 33) - 1)
    order = np.argsort(h_key, kind="stable")
    prev = np.searchsorted(h_key[order], e_key, side="left") - 1
    found = prev >= 0
    found[found] = h_user[order][prev[found]] == e_user[found]
    items = history.item[order]
    return [items[p] if ok else None for p, ok in zip(prev, found, strict=True)]


def user_payload(user_id: str, attrs: dict[str, Any], rated: list[str]) -> dict[str, Any]:
    """The user payload the feature map reads: id, attributes and rated movies."""
    return {"id": user_id, **attrs, "rated": rated}


def item_payload(item_id: str, attrs: dict[str, Any]) -> dict[str, Any]:
    return {"id": item_id, **attrs}


def own_movie_occurrences(fmap: FeatureMap, events: Ratings,
                          rated: dict[str, list[str]]) -> SparseRows:
    """Per event, the "rated" occurrence of its own movie if its user's history holds it."""
    field = next((f for f in fmap.spec.fields if f.key == "user.rated"), None)
    n = len(events)
    if field is None:
        return SparseRows(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    seen = {u: set(movies) for u, movies in rated.items()}
    present = np.array([i in seen.get(u, ()) for u, i in zip(events.user, events.item,
                                                            strict=True)], dtype=bool)
    n_rated = np.array([len(seen.get(u, ())) for u in events.user[present]], dtype=np.float32)
    weight = 1.0 / (n_rated if field.weighting == "mean" else np.sqrt(n_rated))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(present, out=indptr[1:])
    indices = np.array([feature_hash(field.token(i), fmap.spec.hash_bits)
                        for i in events.item[present]], dtype=np.int32)
    return SparseRows(indptr, indices, weight.astype(np.float32))


def encode_ratings(
    fmap: FeatureMap, data: Dataset, events: Ratings, history: Ratings
) -> EncodedRatings:
    """Encode `events` with user histories and last movies taken from `history`."""
    user_ids, row_user = np.unique(events.user.astype(str), return_inverse=True)
    item_ids, row_item = np.unique(events.item.astype(str), return_inverse=True)
    rated = user_histories(history)
    users = fmap.encode("user", [
        user_payload(u, data.users.get(u, {}), rated.get(u, [])) for u in user_ids
    ])
    items = fmap.encode("item", [item_payload(i, data.items.get(i, {})) for i in item_ids])
    contexts = fmap.encode_columns(
        "context",
        {"time": events.timestamp.tolist(), "last_movie": last_movies(events, history)},
        len(events),
    )
    left_out = own_movie_occurrences(fmap, events, rated)
    return EncodedRatings(users, items, contexts, left_out, row_user.astype(np.int64),
                          row_item.astype(np.int64), events.rating.astype(np.float32))
