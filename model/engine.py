"""Two engines for the bundle's three signatures (side_sums, score_pairs, top_n).

`SavedModelEngine` calls the SavedModel's signatures: TensorFlow places them on a GPU
when one is visible, which is what a large catalog and big batches want. `NumpyEngine`
computes the same numbers in NumPy from the SavedModel's own variables: a signature call
has a fixed TensorFlow overhead on CPU, many times what the same small computation costs
in NumPy (docs/benchmarks.md), and a request usually is that small. "auto" takes NumPy
unless a GPU is visible. Both are tested against each other and against the pairwise definition.

Rankings: by score, ties by the lower catalog row (what tf.math.top_k does).
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import tensorflow as tf

from model.features import SparseRows
from model.sums import Sums

EngineName = Literal["auto", "savedmodel", "numpy"]


class Engine(Protocol):
    name: str

    def side_sums(self, rows: SparseRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def score_pairs(self, query: Sums, contexts: SparseRows, pair_row: np.ndarray,
                    items: Sums) -> np.ndarray: ...

    def top_n(self, query: Sums, contexts: SparseRows, exclude_row: np.ndarray,
              exclude_item: np.ndarray, genre_mask: np.ndarray, n: int
              ) -> tuple[np.ndarray, np.ndarray]: ...


class SavedModelEngine:
    """The signatures of one head of a loaded SavedModel, NumPy in and out."""

    name = "savedmodel"

    def __init__(self, model: tf.Module, head: str = "rating") -> None:
        prefix = "" if head == "rating" else f"{head}_"
        self.signatures = {n: model.signatures[prefix + n]
                           for n in ("side_sums", "score_pairs", "top_n")}

    def side_sums(self, rows: SparseRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.signatures["side_sums"](
            row_ids=tf.constant(rows.row_ids()), indices=tf.constant(rows.indices),
            values=tf.constant(rows.values), n_rows=tf.constant(rows.n_rows, tf.int32))
        return out["L"].numpy(), out["s"].numpy(), out["q"].numpy()

    @staticmethod
    def _query_args(query: Sums, contexts: SparseRows) -> dict[str, tf.Tensor]:
        return {"L": tf.constant(query.L, tf.float32), "s": tf.constant(query.s, tf.float32),
                "q": tf.constant(query.q, tf.float32),
                "ctx_rows": tf.constant(contexts.row_ids()),
                "ctx_indices": tf.constant(contexts.indices),
                "ctx_values": tf.constant(contexts.values)}

    def score_pairs(self, query: Sums, contexts: SparseRows, pair_row: np.ndarray,
                    items: Sums) -> np.ndarray:
        out = self.signatures["score_pairs"](
            **self._query_args(query, contexts), pair_row=tf.constant(pair_row, tf.int32),
            item_L=tf.constant(items.L, tf.float32), item_s=tf.constant(items.s, tf.float32),
            item_q=tf.constant(items.q, tf.float32))
        return np.asarray(out["score"].numpy())

    def top_n(self, query: Sums, contexts: SparseRows, exclude_row: np.ndarray,
              exclude_item: np.ndarray, genre_mask: np.ndarray, n: int
              ) -> tuple[np.ndarray, np.ndarray]:
        out = self.signatures["top_n"](
            **self._query_args(query, contexts),
            exclude_row=tf.constant(exclude_row, tf.int32),
            exclude_item=tf.constant(exclude_item, tf.int32),
            genre_mask=tf.constant(genre_mask, tf.int64), n=tf.constant(n, tf.int32))
        return out["items"].numpy(), out["scores"].numpy()


def segment_sum(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Sum of values[indptr[r]:indptr[r+1]] for every row r (empty rows give 0)."""
    n_rows = len(indptr) - 1
    nonempty = indptr[1:] > indptr[:-1]
    if nonempty.all():  # the common case of serving: one reduceat, nothing to scatter
        return np.add.reduceat(values, indptr[:-1], axis=0) if n_rows else \
            np.zeros((0, *values.shape[1:]), dtype=values.dtype)
    out = np.zeros((n_rows, *values.shape[1:]), dtype=values.dtype)
    if nonempty.any():
        rows = np.flatnonzero(nonempty)
        out[rows] = np.add.reduceat(values, indptr[rows], axis=0)
    return out


class NumpyEngine:
    """The same three computations in NumPy, on one head's variables in the SavedModel."""

    name = "numpy"

    def __init__(self, model: tf.Module) -> None:
        """`model`: the head's module (`bundle.HeadModule`), e.g. `saved.relevance`."""
        fm = model.fm
        self.w0 = np.float32(fm.w0.numpy())
        self.w = fm.w.numpy()
        self.V = fm.V.numpy()
        self.v_sq = np.square(self.V).sum(axis=1)  # |v_i|^2, once
        self.item_s = model.item_s.numpy()
        self.item_bias = model.item_bias.numpy()
        self.item_genres = model.item_genres.numpy()

    def side_sums(self, rows: SparseRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx, x = rows.indices, rows.values
        return (segment_sum(self.w[idx] * x, rows.indptr),
                segment_sum(self.V[idx] * x[:, None], rows.indptr),
                segment_sum(self.v_sq[idx] * np.square(x), rows.indptr))

    def _query(self, query: Sums, contexts: SparseRows
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if contexts.nnz == 0:  # a head that reads no context field (the relevance head)
            return query.L, query.s, query.q
        L, s, q = self.side_sums(contexts)
        return query.L + L, query.s + s, query.q + q

    def score_pairs(self, query: Sums, contexts: SparseRows, pair_row: np.ndarray,
                    items: Sums) -> np.ndarray:
        L, s, q = self._query(query, contexts)
        s_pair = s[pair_row] + items.s
        out = self.w0 + L[pair_row] + items.L + 0.5 * (
            np.einsum("ij,ij->i", s_pair, s_pair) - (q[pair_row] + items.q))
        return out.astype(np.float32)

    def top_n(self, query: Sums, contexts: SparseRows, exclude_row: np.ndarray,
              exclude_item: np.ndarray, genre_mask: np.ndarray, n: int
              ) -> tuple[np.ndarray, np.ndarray]:
        L, s, q = self._query(query, contexts)
        bias = self.w0 + L + 0.5 * (np.einsum("ij,ij->i", s, s) - q)
        # catalog x k times k x queries, then transposed: OpenBLAS reads the catalog once
        # either way, but this orientation ran 35-40% faster (100k movies, 6 queries)
        scores = np.ascontiguousarray((self.item_s @ s.astype(np.float32).T).T)
        scores += bias.astype(np.float32)[:, None]
        scores += self.item_bias[None, :]
        return rank(scores, self.item_genres, exclude_row, exclude_item, genre_mask, n)


def rank(scores: np.ndarray, item_genres: np.ndarray, exclude_row: np.ndarray,
         exclude_item: np.ndarray, genre_mask: np.ndarray, n: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """The ranking every NumPy path shares (a catalog's top_n, a candidate list's top n):
    per query row of `scores` (modified in place), columns excluded ((exclude_row,
    exclude_item) pairs) or outside the row's genres (`genre_mask` & `item_genres`; mask 0:
    no filter) score -inf, then the n best columns, ties by the lower column. The SavedModel's
    top_n signature (`model.bundle.HeadModule`) is the same computation in TensorFlow."""
    if np.any(genre_mask != 0):
        wanted = (genre_mask[:, None] & item_genres[None, :]) != 0
        scores[~(wanted | (genre_mask[:, None] == 0))] = -np.inf
    scores[exclude_row, exclude_item] = -np.inf
    return top_rows(scores, min(n, scores.shape[1]))


def top_rows(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the n best columns by score, ties by the lower column (as tf top_k)."""
    rows = np.empty((len(scores), n), dtype=np.int32)
    if n == 0:
        return rows, np.zeros((len(scores), 0), np.float32)
    # the n-th largest score of each row; everything above it is in, ties fill up by column
    kth = -np.partition(-scores, n - 1, axis=1)[:, n - 1]
    for r, (row, t) in enumerate(zip(scores, kth, strict=True)):
        above = np.flatnonzero(row > t)
        picked = np.concatenate([above, np.flatnonzero(row == t)[: n - len(above)]])
        rows[r] = picked[np.lexsort((picked, -row[picked]))]
    return rows, np.take_along_axis(scores, rows, axis=1)


def gpu_visible() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def make_engine(model: tf.Module, head: str = "rating", name: EngineName = "auto") -> Engine:
    """Head `head`'s engine; "auto": the SavedModel's signatures on a GPU, else NumPy."""
    if name == "savedmodel" or (name == "auto" and gpu_visible()):
        return SavedModelEngine(model, head)
    if name in ("numpy", "auto"):
        return NumpyEngine(getattr(model, head))
    raise ValueError(f"unknown engine {name!r}; choose auto, savedmodel or numpy")
