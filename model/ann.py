"""Approximate top-N over large catalogs: a maximum-inner-product index per head.

For a fixed query side (user + context) with side sums (L_Q, a, q_Q), the FM score of
movie i is

    score(i) = [w0 + L_Q + (|a|^2 - q_Q)/2] + <a, s_i> + [L_i + (|s_i|^2 - q_i)/2]

so the ranking of the catalog is that of <[a, 1], [s_i, b_i]> with b_i the item bias
(`model.fm.item_bias`): maximum-inner-product search. An inverted-file index (faiss
IVF-Flat, inner product) clusters the vectors [s_i, b_i] into lists and scans, per query,
the lists whose centroids score best: a share of the catalog instead of all of it. The
caller re-scores the best M exactly with its engine, so every number it answers is the
exact score and only the choice of candidates is approximate.

Why not a graph (HNSW, which this index replaced): with the inner product as its metric,
a few large-norm movies collect nearly all the links, and the others are never reached:
97% of the rating head's points of a 100k catalog had no incoming link, and its recall@10
stayed at 0.82 whatever the search breadth. Every movie of an inverted file sits in some
list, so scanning more lists always finds more (docs/ann.md).

The index holds each distinct vector once. Movies known only by their attributes (no
trained id) share one vector per combination of attributes (the synthetic 1M-movie
catalog of bench/ann.py has 188,331 distinct vectors); a point found stands for all its
movies, exact ties of each other.

The index depends on the catalog's item sums only, never on users: online updates
change the query side, so the index lives as long as the bundle.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

LIBRARY = f"faiss {faiss.__version__}"
DEFAULT_THRESHOLD = 200_000  # catalogs with at least this many movies get an index
LISTS_PER_SQRT = 4  # lists: 4 sqrt(points), faiss's usual rule


class AnnIndexError(ValueError):
    """An index file that does not match its catalog (or is not an index at all)."""


class SumsLike(Protocol):
    @property
    def L(self) -> np.ndarray: ...

    @property
    def s(self) -> np.ndarray: ...

    @property
    def q(self) -> np.ndarray: ...


def index_file(head: str) -> str:
    """The bundle file of a head's index."""
    return f"ann_{head}.faiss"


def item_vectors(items: SumsLike) -> np.ndarray:
    """[s_i, b_i] per movie, b_i = L_i + (|s_i|^2 - q_i)/2 (float32, C order)."""
    s = np.asarray(items.s, np.float32)
    bias = items.L + 0.5 * (np.einsum("ij,ij->i", s, s) - items.q)
    return np.ascontiguousarray(np.hstack([s, bias.astype(np.float32)[:, None]]))


def query_vectors(a: np.ndarray) -> np.ndarray:
    """[a, 1] per query, a = the query side's s (user + context)."""
    a = np.asarray(a, np.float32)
    return np.ascontiguousarray(np.hstack([a, np.ones((len(a), 1), np.float32)]))


def distinct(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points, order, starts): the distinct rows of `vectors` in a fixed order, and the
    rows equal to point p, ascending: order[starts[p]:starts[p + 1]]."""
    keys = np.ascontiguousarray(vectors).view(
        np.dtype((np.void, vectors.dtype.itemsize * vectors.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(inverse.ravel(), kind="stable")
    starts = np.searchsorted(inverse.ravel()[order], np.arange(len(first) + 1))
    return vectors[first], order, starts


@dataclass(frozen=True)
class CatalogIndex:
    """A head's inverted file over the catalog's distinct item vectors, and the movies
    behind each of its points."""

    ivf: faiss.IndexIVFFlat
    order: np.ndarray  # catalog rows grouped by point
    starts: np.ndarray  # point p: order[starts[p]:starts[p + 1]]

    @property
    def points(self) -> int:
        return int(self.ivf.ntotal)

    def search(self, a: np.ndarray, m: int, probe_share: float) -> np.ndarray:
        """The (about) m best points per query, best first; -1 pads a short answer.
        `probe_share`: the share of the lists scanned (at least one). One thread: a
        request's search is small, and the service's workers are the parallelism."""
        params = faiss.SearchParametersIVF()
        params.nprobe = max(1, min(self.ivf.nlist, math.ceil(probe_share * self.ivf.nlist)))
        with faiss_threads(1):
            _, points = self.ivf.search(query_vectors(a), m, params=params)
        return points

    def members(self, points: np.ndarray) -> np.ndarray:
        """The catalog rows of these points (-1 entries skipped), point after point."""
        points = points[points >= 0]
        first = self.starts[points]
        counts = self.starts[points + 1] - first
        shift = np.repeat(first - (np.cumsum(counts) - counts), counts)
        return self.order[shift + np.arange(int(counts.sum()))]


def build(items: SumsLike) -> CatalogIndex:
    """An IVF-Flat inner-product index over the catalog's distinct item vectors (k-means
    lists, faiss's threads and fixed seed)."""
    points, order, starts = distinct(item_vectors(items))
    lists = max(1, min(len(points), round(LISTS_PER_SQRT * math.sqrt(len(points)))))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(points.shape[1]), points.shape[1], lists,
                             faiss.METRIC_INNER_PRODUCT)
    ivf.cp.min_points_per_centroid = 1  # small catalogs: no "too few points" warning
    ivf.train(points)
    ivf.add(points)
    return CatalogIndex(ivf, order, starts)


class faiss_threads:
    """faiss's OpenMP threads set for a block, restored after."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.before = 1

    def __enter__(self) -> None:
        self.before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        faiss.omp_set_num_threads(self.before)


def write(items: SumsLike, folder: Path, head: str) -> dict[str, Any]:
    """Build a head's index into the bundle folder; returns what metrics.json says of it."""
    started = time.perf_counter()
    index = build(items)
    seconds = time.perf_counter() - started
    faiss.write_index(index.ivf, str(folder / index_file(head)))
    return {"file": index_file(head), "library": LIBRARY,
            "kind": "ivf-flat-inner-product-distinct", "points": index.points,
            "lists": int(index.ivf.nlist), "build_seconds": round(seconds, 3)}


def read(root: Path, head: str, declared: Any, items: SumsLike) -> CatalogIndex | None:
    """The index metrics.json declares for a head (None when it declares none), checked
    against the catalog's sums. Raises AnnIndexError for a missing, undeclared, unreadable
    or mismatched index."""
    path = root / index_file(head)
    if declared is None:
        if path.exists():
            raise AnnIndexError(f"{path.name} is present but metrics.json declares no index")
        return None
    if not isinstance(declared, dict) or declared.get("file") != path.name:
        raise AnnIndexError(f"metrics.json must declare the index as {{\"file\": "
                          f"\"{path.name}\", ...}}, not {declared!r}")
    if not path.is_file():
        raise AnnIndexError(f"{path.name} is missing")
    return load(path, items)


def load(path: Path, items: SumsLike) -> CatalogIndex:
    """Read a head's index and check it holds exactly this catalog's distinct item vectors
    (so an index of another catalog, or of other sums, is refused rather than serving the
    wrong movies). Raises AnnIndexError."""
    try:
        ivf = faiss.read_index(str(path))
    except RuntimeError as exc:  # faiss reports unreadable files as RuntimeError
        raise AnnIndexError(f"{path.name} is not a readable index ({first_line(exc)})") from None
    expected, order, starts = distinct(item_vectors(items))
    if not isinstance(ivf, faiss.IndexIVFFlat) or ivf.metric_type != (
            faiss.METRIC_INNER_PRODUCT):
        raise AnnIndexError(f"{path.name} is not an IVF-Flat inner-product index (an index "
                            "written by an older fmrec: export the bundle again)")
    if (ivf.ntotal, ivf.d) != expected.shape:
        raise AnnIndexError(
            f"{path.name} holds {ivf.ntotal} vectors of width {ivf.d}, the catalog "
            f"{expected.shape[0]} distinct ones of width {expected.shape[1]}")
    ivf.make_direct_map()  # stored vectors by id, to compare
    stored = ivf.reconstruct_n(0, ivf.ntotal)
    if not np.allclose(stored, expected, rtol=1e-5, atol=1e-6):
        raise AnnIndexError(f"{path.name} does not hold this catalog's item vectors")
    return CatalogIndex(ivf, order, starts)


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
