"""Ratings -> relation blocks: one sparse row per distinct user, per movie, per rating.

A rating's feature vector is [user block | item block | context block]. The user block
(id, attributes, the ~100 movies the user rated) is identical for all of a user's
ratings, so it is stored once per user and its side sums are computed once per user per
batch (libFM's relation blocks, Rendle 2013) instead of once per rating.

No leakage: "rated" history and "last movie" come from the `history` ratings only (the
training split), and the last movie is the latest one rated strictly before the event.
A training rating's own movie is in its user's history (and its user among the movie's
raters); a test rating's is not. So that the model cannot learn from a signal that never
exists at test time, each training rating carries `left_out` occurrences
(user.rated=<its movie>, user.rated_stars=<its movie> with its own stars,
item.raters=<its user>) whose side sums are subtracted: the FM then sees exactly "history
without this rating".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from model.data import Dataset, Ratings
from model.features import (
    HISTORY_FIELD,
    STARS_FIELD,
    FeatureMap,
    SparseRows,
    day_of,
    feature_hash,
    session_of,
)


class Block(NamedTuple):
    """A SparseRows block as the tensors `FactorizationMachine.side_sums` takes."""

    row_ids: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_rows: np.int32

    @staticmethod
    def of(rows: SparseRows) -> Block:
        return Block(rows.row_ids(), rows.indices, rows.values, np.int32(rows.n_rows))


class Operand(NamedTuple):
    """A block as the operands of a sparse matrix product: (row, column) of each
    non-zero stacked as the int64 pairs `tf.SparseTensor` takes, values, rows.

    Why not a Block: a block every step reuses (the whole data's users, `Sides`) is
    stacked and converted once; per step, stacking 180,000 pairs and converting them
    cost more than the product itself (docs/accuracy.md).
    """

    where: np.ndarray  # (nnz, 2) int64
    values: np.ndarray  # float32
    n_rows: np.int64

    @staticmethod
    def of(rows: SparseRows) -> Operand:
        where = np.stack([rows.row_ids(), rows.indices], axis=1).astype(np.int64)
        return Operand(where, rows.values, np.int64(rows.n_rows))


class Sides(NamedTuple):
    """Every user and every movie row of a data set, as operands (numpy or tensors):
    what a step reads in place of a batch's distinct ones when batches touch most of
    them (`EncodedRatings.wide_sides`)."""

    users: Operand | None  # None: each batch takes its distinct users
    items: Operand | None


PER_BATCH = Sides(None, None)


class Batch(NamedTuple):
    """One training step's input: the users and items it reads (its distinct ones, or
    every one of the data: `Sides`), contexts, targets."""

    users: Operand
    items: Operand
    contexts: Block
    left_out: Block  # per rating: occurrences to subtract (its own movie in its history)
    row_user: np.ndarray  # int32: which row of `users` each rating reads
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

    def remap(self, columns: np.ndarray) -> EncodedRatings:
        """Every block's indices as positions in `columns` (`SparseRows.remap`)."""
        return EncodedRatings(self.users.remap(columns), self.items.remap(columns),
                              self.contexts.remap(columns), self.left_out.remap(columns),
                              self.row_user, self.row_item, self.y)

    def batch(self, rows: np.ndarray, sides: Sides = PER_BATCH) -> Batch:
        """Ratings `rows` with each distinct user and item encoded once, or read from
        `sides` (this data's whole users or items, built once) where given."""
        users, row_user = _side(self.users, self.row_user[rows], sides.users)
        items, row_item = _side(self.items, self.row_item[rows], sides.items)
        return Batch(users, items, Block.of(self.contexts.take(rows)),
                     Block.of(self.left_out.take(rows)), row_user, row_item, self.y[rows])

    def wide_sides(self, batch_size: int, seed: int = 0) -> Sides:
        """The whole users and items blocks of the sides that a random batch of
        `batch_size` ratings mostly touches (half their non-zeros or more); None for
        the others. On ML-100k a batch of 4,096 reads 96% of the users' non-zeros, so
        computing every user each step costs less than choosing and converting them;
        on a larger data set the per-batch rows win again."""
        rows = np.random.default_rng(seed).permutation(len(self))[:batch_size]

        def wide(block: SparseRows, row_of: np.ndarray) -> Operand | None:
            lengths = block.indptr[1:] - block.indptr[:-1]
            share = lengths[np.unique(row_of[rows])].sum() / max(block.nnz, 1)
            return Operand.of(block) if share >= 0.5 else None

        return Sides(wide(self.users, self.row_user), wide(self.items, self.row_item))


def _side(block: SparseRows, row_of: np.ndarray, whole: Operand | None
          ) -> tuple[Operand, np.ndarray]:
    """(operand, row of each rating in it): `whole` if given, else the distinct rows."""
    if whole is not None:
        return whole, row_of.astype(np.int32)
    distinct, row = np.unique(row_of, return_inverse=True)
    return Operand.of(block.take(distinct)), row.astype(np.int32)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique(values) by sorting: NumPy >= 2.3's hash path is far slower here."""
    ordered = np.sort(values)
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return ordered[first]


def used_columns(*parts: EncodedRatings) -> np.ndarray:
    """Sorted hashed indices that occur anywhere in `parts` (left-outs are among them)."""
    blocks = [b.indices for p in parts for b in (p.users, p.items, p.contexts)]
    return sorted_unique(np.concatenate(blocks))


def user_histories(history: Ratings) -> dict[str, list[str]]:
    """Movies each user rated, in time order."""
    return _group(history.user, history.item, history.timestamp)


def user_stars(history: Ratings) -> dict[str, list[float]]:
    """Stars of each user's rated movies, in the order of `user_histories`."""
    return _group(history.user, history.rating.astype(np.float64), history.timestamp)


def item_raters(history: Ratings) -> dict[str, list[str]]:
    """Users who rated each movie, in time order."""
    return _group(history.item, history.user, history.timestamp)


def _group(owners: np.ndarray, members: np.ndarray, times: np.ndarray) -> dict[str, list[Any]]:
    order = np.argsort(times, kind="stable")
    groups: dict[str, list[Any]] = defaultdict(list)
    for owner, member in zip(owners[order], members[order].tolist(), strict=True):
        groups[owner].append(member)
    return groups


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


def sessions(users: np.ndarray, timestamps: np.ndarray) -> list[str]:
    """`session_of` each event (the column form of `context_payload`)."""
    return [session_of(str(u), t)
            for u, t in zip(users.tolist(), timestamps.tolist(), strict=True)]


def user_payload(user_id: str, attrs: dict[str, Any], rated: list[str],
                 stars: list[float] | None = None) -> dict[str, Any]:
    """The user payload the feature map reads: id, attributes, rated movies and, given,
    their stars."""
    payload = {"id": user_id, **attrs, HISTORY_FIELD: rated}
    if stars is not None:
        payload[STARS_FIELD] = [[m, r] for m, r in zip(rated, stars, strict=True)]
    return payload


def item_payload(item_id: str, attrs: dict[str, Any],
                 raters: list[str] | None = None) -> dict[str, Any]:
    """The movie payload the feature map reads: id, attributes and, in training, raters."""
    payload = {"id": item_id, **attrs}
    if raters is not None:
        payload["raters"] = raters
    return payload


def own_occurrences(fmap: FeatureMap, key: str, owners: np.ndarray, members: np.ndarray,
                    groups: dict[str, list[str]], numbers: np.ndarray | None = None
                    ) -> SparseRows:
    """Per event, the occurrence of `key`=member in the owner's group, if the group holds it.

    user.rated: owner = the user, member = the event's movie; item.raters: owner = the
    movie, member = the event's user; user.rated_stars (a graded field): as user.rated,
    with the event's own stars (`numbers`) as its number.
    """
    field = next((f for f in fmap.spec.fields if f.key == key), None)
    n = len(owners)
    if field is None:
        return SparseRows(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    seen = {o: set(group) for o, group in groups.items()}
    present = np.array([m in seen.get(o, ()) for o, m in zip(owners, members, strict=True)],
                       dtype=bool)
    size = np.array([len(seen[o]) for o in owners[present]], dtype=np.float64)
    weight = 1.0 / (size if field.weighting == "mean" else np.sqrt(size))
    if field.kind == "graded":
        assert numbers is not None, "a graded field's own occurrence needs its number"
        weight = (numbers[present].astype(np.float64) - field.centre) * weight
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(present, out=indptr[1:])
    indices = np.array([feature_hash(field.token(m), fmap.spec.hash_bits)
                        for m in members[present]], dtype=np.int32)
    return SparseRows(indptr, indices, weight.astype(np.float32))


def encode_ratings(
    fmap: FeatureMap, data: Dataset, events: Ratings, history: Ratings
) -> EncodedRatings:
    """Encode `events` with user histories and last movies taken from `history`."""
    user_ids, row_user = np.unique(events.user.astype(str), return_inverse=True)
    item_ids, row_item = np.unique(events.item.astype(str), return_inverse=True)
    rated, raters = user_histories(history), item_raters(history)
    stars = user_stars(history)
    users = fmap.encode("user", [
        user_payload(u, data.users.get(u, {}), rated.get(u, []), stars.get(u, []))
        for u in user_ids
    ])
    items = fmap.encode("item", [
        item_payload(i, data.items.get(i, {}), raters.get(i, [])) for i in item_ids
    ])
    contexts = fmap.encode_columns(
        "context",
        {"time": events.timestamp.tolist(), "last_movie": last_movies(events, history),
         "session": sessions(events.user, events.timestamp),
         "day": [day_of(t) for t in events.timestamp.tolist()]},
        len(events),
    )
    left_out = SparseRows.concat_columns([
        own_occurrences(fmap, "user.rated", events.user, events.item, rated),
        own_occurrences(fmap, f"user.{STARS_FIELD}", events.user, events.item, rated,
                        events.rating),
        own_occurrences(fmap, "item.raters", events.item, events.user, raters),
    ])
    return EncodedRatings(users, items, contexts, left_out, row_user.astype(np.int64),
                          row_item.astype(np.int64), events.rating.astype(np.float32))
