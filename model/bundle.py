"""Model bundles: save a trained FM with everything needed to serve it, load and check one.

    bundle/
      saved_model/   TF SavedModel, per head the signatures side_sums, score_pairs, top_n
                     (the rating head's unprefixed, the relevance head's "relevance_...")
      spec.json      feature spec with golden hashes
      catalog.npz    movie ids, titles, genres, years, raters, each head's item side sums
      metrics.json   data set, split, RMSE/MAE, ranking metrics, rating range, config,
                     per head its k, the fields it reads and its index (if any), and the
                     rating head's neighbourhood settings (if it has one)
      neighbours.npz the rating head's neighbourhood (`model.neighbours`): per catalog
                     movie its most similar movies, the correction /predict adds
      ann_<head>.faiss  catalogs of `ann_threshold` movies or more: per head an
                     inner-product index over the item sums (`model.ann`)
      model_id       content hash of the files above; namespaces every cache key

Two heads, two FMs over the same feature map (DESIGN.md section 8): "rating" predicts
stars (/predict, trained with squared error) and "relevance" ranks what a user will watch
(/recommend, trained on implicit feedback: `model.relevance`). A head may read a subset
of the fields; both are served by the same side-sum code.

Serving speaks to the SavedModel only through the three signatures (or their NumPy twins
on the same variables, `model.engine`), so a bundle trained on a GPU serves on a CPU and
the other way round. The query side of a request (user +
context) is a set of side sums; with them, scoring movie j is
w0 + bias(query) + bias(j) + <s_query, s_j> (see `model.fm.item_bias`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from model import ann
from model.blocks import item_payload
from model.engine import Engine, EngineName, make_engine
from model.features import (
    HISTORY_FIELD,
    STARS_FIELD,
    FeatureMap,
    FeatureSpec,
    SparseRows,
    with_session,
)
from model.fm import FactorizationMachine, SideSums, item_bias
from model.manifest import (
    FORMAT_VERSION,
    HEADS,
    BundleError,
    check_bundle,
    content_hash,
)
from model.neighbours import Neighbours, sorted_unique
from model.sums import Sums

SIGNATURES = ("side_sums", "score_pairs", "top_n")


def signature_name(head: str, name: str) -> str:
    """The SavedModel signature of one head: the rating head's keep their plain names."""
    return name if head == "rating" else f"{head}_{name}"


_I32 = tf.TensorSpec([None], tf.int32)
_F32 = tf.TensorSpec([None], tf.float32)


@dataclass(frozen=True)
class HeadModel:
    """A trained head to save: its FM and the field keys it reads."""

    fm: FactorizationMachine
    fields: tuple[str, ...]


class ServingModule(tf.Module):
    """What the SavedModel holds: one module per head (attributes named as the heads)."""

    def __init__(self, heads: dict[str, HeadModule]) -> None:
        super().__init__(name="fmrec")
        self.rating = heads["rating"]
        self.relevance = heads["relevance"]

    def signatures(self) -> dict[str, Any]:
        return {signature_name(h, n): getattr(getattr(self, h), n)
                for h in HEADS for n in SIGNATURES}


class HeadModule(tf.Module):
    """One head in the SavedModel: the FM, the catalog's item sums, three signatures."""

    def __init__(self, name: str, fm: FactorizationMachine, items: SideSums,
                 genre_bits: np.ndarray):
        super().__init__(name=name)
        self.fm = fm
        k = fm.k
        self.item_s = tf.Variable(items.s, trainable=False, name="item_s")
        self.item_bias = tf.Variable(item_bias(items), trainable=False, name="item_bias")
        self.item_genres = tf.Variable(genre_bits, dtype=tf.int64, trainable=False)
        query = (_F32, tf.TensorSpec([None, k], tf.float32), _F32, _I32, _I32, _F32)
        self.side_sums = tf.function(self._side_sums, input_signature=(_I32, _I32, _F32,
                                     tf.TensorSpec([], tf.int32)))
        self.score_pairs = tf.function(self._score_pairs, input_signature=(
            *query, _I32, _F32, tf.TensorSpec([None, k], tf.float32), _F32))
        self.top_n = tf.function(self._top_n, input_signature=(
            *query, _I32, _I32, tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32)))

    def _side_sums(self, row_ids: tf.Tensor, indices: tf.Tensor, values: tf.Tensor,
                   n_rows: tf.Tensor) -> dict[str, tf.Tensor]:
        sums = self.fm.side_sums(row_ids, indices, values, n_rows)
        return {"L": sums.L, "s": sums.s, "q": sums.q}

    def _query(self, L: tf.Tensor, s: tf.Tensor, q: tf.Tensor, ctx_rows: tf.Tensor,
               ctx_indices: tf.Tensor, ctx_values: tf.Tensor) -> SideSums:
        """User sums of each request plus the side sums of its context row."""
        ctx = self.fm.side_sums(ctx_rows, ctx_indices, ctx_values, tf.shape(L)[0])
        return SideSums(L, s, q) + ctx

    def _score_pairs(self, L: tf.Tensor, s: tf.Tensor, q: tf.Tensor, ctx_rows: tf.Tensor,
                     ctx_indices: tf.Tensor, ctx_values: tf.Tensor, pair_row: tf.Tensor,
                     item_L: tf.Tensor, item_s: tf.Tensor, item_q: tf.Tensor
                     ) -> dict[str, tf.Tensor]:
        """Score of each (request row, item sums) pair."""
        query = self._query(L, s, q, ctx_rows, ctx_indices, ctx_values).gather(pair_row)
        return {"score": self.fm.score(query + SideSums(item_L, item_s, item_q))}

    def _genre_filter(self, scores: tf.Tensor, genre_mask: tf.Tensor) -> tf.Tensor:
        """-inf for movies outside a request's genres (mask 0: no filter for that request).

        Only run when some request filters: on a large catalog it is a sizeable part of top_n.
        """
        wanted = tf.bitwise.bitwise_and(genre_mask[:, None], self.item_genres[None, :])
        allowed = tf.logical_or(genre_mask[:, None] == 0, wanted != 0)
        return tf.where(allowed, scores, -np.inf)

    def _top_n(self, L: tf.Tensor, s: tf.Tensor, q: tf.Tensor, ctx_rows: tf.Tensor,
               ctx_indices: tf.Tensor, ctx_values: tf.Tensor, exclude_row: tf.Tensor,
               exclude_item: tf.Tensor, genre_mask: tf.Tensor, n: tf.Tensor
               ) -> dict[str, tf.Tensor]:
        """Best n catalog items per request: one matmul, exclusions and genre filter, top-k.

        Excluded or filtered items score -inf; callers drop those from short lists.
        """
        query = self._query(L, s, q, ctx_rows, ctx_indices, ctx_values)
        query_bias = self.fm.w0 + query.L + 0.5 * (
            tf.reduce_sum(tf.square(query.s), axis=1) - query.q)
        scores = tf.matmul(query.s, self.item_s, transpose_b=True)
        scores += query_bias[:, None] + self.item_bias[None, :]
        scores = tf.cond(tf.reduce_any(genre_mask != 0),
                         lambda: self._genre_filter(scores, genre_mask), lambda: scores)
        pairs = tf.stack([exclude_row, exclude_item], axis=1)
        scores = tf.tensor_scatter_nd_update(
            scores, pairs, tf.fill(tf.shape(exclude_row), tf.constant(-np.inf, tf.float32)))
        top = tf.math.top_k(scores, k=tf.minimum(n, tf.shape(scores)[1]))
        return {"items": top.indices, "scores": top.values}


@dataclass(frozen=True)
class Catalog:
    """Movies the model can rank, with their precomputed item side sums."""

    ids: np.ndarray  # str
    titles: np.ndarray  # str
    genres: list[list[str]]
    years: np.ndarray  # int32, 0 = unknown
    sums: Sums
    genre_names: list[str]
    raters: Sequence[Sequence[str]]  # training users who rated each movie ("raters" feature)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {i: n for n, i in enumerate(self.ids.tolist())})

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, movie_id: str) -> int | None:
        return self.index.get(movie_id)  # type: ignore[attr-defined]

    def rows(self, movie_ids: Sequence[str]) -> np.ndarray:
        """The catalog row of each id, -1 for one not in the catalog."""
        index = self.index  # type: ignore[attr-defined]
        return np.fromiter((index.get(m, -1) for m in movie_ids), np.int64, len(movie_ids))

    def genre_bits(self) -> np.ndarray:
        """Per movie, a bit per genre (position in `genre_names`): the top_n filter."""
        pos = {g: n for n, g in enumerate(self.genre_names)}
        return np.array([sum(1 << pos[g] for g in gs) for gs in self.genres], dtype=np.int64)

    def mask(self, genres: list[str]) -> int:
        """The genre filter of a request; unknown genre names raise KeyError."""
        pos = {g.lower(): n for n, g in enumerate(self.genre_names)}
        return sum(1 << pos[g.lower()] for g in genres)

    def payload(self, row: int) -> dict[str, Any]:
        year = int(self.years[row])
        return item_payload(str(self.ids[row]), {
            "title": str(self.titles[row]), "genres": self.genres[row],
            "year": year or None}, list(self.raters[row]))


def item_sums(fm: FactorizationMachine, fmap: FeatureMap, ids: list[str],
              items: dict[str, dict[str, Any]]) -> Sums:
    """Every movie's item side sums under one head (encoded with the head's fields)."""
    rows = fmap.encode("item", [item_payload(i, items[i]) for i in ids])
    sums = fm.side_sums(tf.constant(rows.row_ids()), tf.constant(rows.indices),
                        tf.constant(rows.values), tf.constant(rows.n_rows, tf.int32))
    return Sums(sums.L.numpy(), sums.s.numpy(), sums.q.numpy())


def build_catalog(fm: FactorizationMachine, fmap: FeatureMap,
                  items: dict[str, dict[str, Any]]) -> Catalog:
    """Encode every movie once and precompute its (rating head's) item side sums."""
    ids = sorted(items)
    genre_names = sorted({g for m in items.values() for g in m.get("genres") or []})
    if len(genre_names) > 63:
        raise BundleError(f"{len(genre_names)} genres; the genre filter holds at most 63")
    return Catalog(
        np.array(ids, dtype=str), np.array([items[i].get("title") or "" for i in ids], dtype=str),
        [list(items[i].get("genres") or []) for i in ids],
        np.array([items[i].get("year") or 0 for i in ids], dtype=np.int32),
        item_sums(fm, fmap, ids, items), genre_names,
        [list(items[i].get("raters") or []) for i in ids],
    )


def save_bundle(path: str | Path, heads: dict[str, HeadModel], spec: FeatureSpec,
                items: dict[str, dict[str, Any]], metrics: dict[str, Any],
                ann_threshold: int = ann.DEFAULT_THRESHOLD,
                neighbours: Neighbours | None = None) -> str:
    """Write a bundle atomically (to a temp dir, then rename); returns its model id.

    A catalog of `ann_threshold` movies or more (0: never) also gets each head's
    approximate top-N index. `neighbours`' rows are rows of the catalog (sorted ids).
    """
    target = Path(path)
    if set(heads) != set(HEADS):
        raise BundleError(f"a bundle needs the heads {', '.join(HEADS)}; got {sorted(heads)}")
    catalog = build_catalog(heads["rating"].fm, FeatureMap(spec.only(heads["rating"].fields)),
                            items)
    ids = catalog.ids.tolist()
    sums = {h: item_sums(m.fm, FeatureMap(spec.only(m.fields)), ids, items)
            for h, m in heads.items()}
    spec = spec.with_golden(
        [f.token(v) for f in spec.fields for v in ("1", "x")] + [f.key for f in spec.fields])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=target.parent))
    try:
        module = ServingModule({h: HeadModule(h, m.fm, SideSums(*(tf.constant(a) for a in (
            sums[h].L, sums[h].s, sums[h].q))), catalog.genre_bits()) for h, m in heads.items()})
        tf.saved_model.save(module, str(tmp / "saved_model"), signatures=module.signatures())
        (tmp / "spec.json").write_text(spec.to_json())
        head_arrays = {f"{h}_{a}": getattr(sums[h], a) for h in HEADS if h != "rating"
                       for a in ("L", "s", "q")}
        np.savez(tmp / "catalog.npz", ids=catalog.ids, titles=catalog.titles,
                 genres=np.array(["|".join(g) for g in catalog.genres], dtype=str),
                 years=catalog.years, L=catalog.sums.L, s=catalog.sums.s, q=catalog.sums.q,
                 genre_names=np.array(catalog.genre_names, dtype=str),
                 raters=np.array([u for r in catalog.raters for u in r], dtype=str),
                 raters_ptr=np.cumsum([0] + [len(r) for r in catalog.raters]),
                 **head_arrays)
        described = {h: {**metrics.get("heads", {}).get(h, {}), "k": m.fm.k,
                         "fields": list(m.fields)} for h, m in heads.items()}
        for h in HEADS:  # an index is declared only where this export built one
            described[h].pop("ann", None)
            if 0 < ann_threshold <= len(catalog):
                described[h]["ann"] = ann.write(sums[h], tmp, h)
        meta = {"format_version": FORMAT_VERSION, **metrics, "heads": described}
        meta.pop("neighbours", None)  # declared only where this export writes them
        if neighbours is not None:
            np.savez(tmp / "neighbours.npz", rows=neighbours.rows, sims=neighbours.sims)
            meta["neighbours"] = {"k": neighbours.k, "lam": neighbours.lam,
                                  "alpha": neighbours.alpha}
        (tmp / "metrics.json").write_text(json.dumps(meta, indent=2, default=float))
        model_id = content_hash(tmp)
        (tmp / "model_id").write_text(model_id + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_id


class Head:
    """One FM of a loaded bundle: the fields it reads, its engine, its catalog item sums.

    Rows given to `side_sums` must be encoded with this head's `fmap`.
    """

    def __init__(self, name: str, fmap: FeatureMap, k: int, engine: Engine,
                 items: Sums, index: ann.CatalogIndex | None = None) -> None:
        self.name = name
        self.fmap = fmap
        self.k = k
        self.engine = engine
        self.items = items
        self.ann = index  # approximate top-N over `items` (large catalogs only)
        self.history_fmap = FeatureMap(fmap.spec.only(
            f.key for f in fmap.spec.side_fields("user")
            if f.name in (HISTORY_FIELD, STARS_FIELD)))
        self.reads_stars = any(f.name == STARS_FIELD for f in self.history_fmap.spec.fields)
        size_rows = fmap.size_rows()
        self.size_sums = None if size_rows is None else self.side_sums(size_rows)

    def side_sums(self, rows: SparseRows) -> Sums:
        return Sums(*self.engine.side_sums(rows))

    def history_rows(self, movies: Sequence[str],
                     stars: Sequence[float | None] | None = None) -> SparseRows:
        """One row per movie: what a rated movie adds to a user's raw history sums, the
        "user.rated" feature with weight 1 and, if the head reads them, its stars
        ("user.rated_stars" with stars - centre; unknown stars: the centre, nothing).
        Not `fmap.encode`: that would add the size token of a one-movie history to each."""
        given = [None] * len(movies) if stars is None else stars
        return self.history_fmap.encode("user", [
            {HISTORY_FIELD: [m], STARS_FIELD: [[m, s]]}
            for m, s in zip(movies, given, strict=True)])

    def score_pairs(self, query: Sums, contexts: SparseRows, pair_row: np.ndarray,
                    items: Sums) -> np.ndarray:
        """Unclipped scores of (query row, item) pairs."""
        return self.engine.score_pairs(query, contexts, pair_row, items)

    def top_n(self, query: Sums, contexts: SparseRows, exclude_row: np.ndarray,
              exclude_item: np.ndarray, genre_mask: np.ndarray, n: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """(catalog rows, unclipped scores), each (n_queries, n); excluded rows score -inf."""
        return self.engine.top_n(query, contexts, exclude_row, exclude_item, genre_mask, n)

    def query(self, user: dict[str, Any], context: dict[str, Any]) -> tuple[Sums, SparseRows]:
        """(user side sums, encoded context) of one user payload and context payload."""
        return (self.side_sums(self.fmap.encode("user", [user])),
                self.fmap.encode("context", [context]))


def check_catalog(root: Path, catalog: Catalog, k: int) -> None:
    """catalog.npz's arrays agree with each other and with k, and its sums are finite."""
    n = len(catalog.ids)
    shapes = {"ids": catalog.ids.shape, "titles": catalog.titles.shape,
              "genres": (len(catalog.genres),), "years": catalog.years.shape,
              "raters": (len(catalog.raters),), "L": catalog.sums.L.shape,
              "s": catalog.sums.s.shape, "q": catalog.sums.q.shape}
    expected = {name: (n, k) if name == "s" else (n,) for name in shapes}
    wrong = [f"{name} {shape}" for name, shape in shapes.items() if shape != expected[name]]
    if wrong or n == 0:
        raise BundleError(f"bundle {root}: catalog arrays disagree (expected {n} movies, "
                          f"k {k}; got " + ", ".join(wrong or ["no movies"]) + ")")
    kinds = {"ids": "U", "titles": "U", "years": "iu", "L": "f", "s": "f", "q": "f"}
    arrays = {"ids": catalog.ids, "titles": catalog.titles, "years": catalog.years,
              "L": catalog.sums.L, "s": catalog.sums.s, "q": catalog.sums.q}
    for name, kind in kinds.items():
        if arrays[name].dtype.kind not in kind:
            raise BundleError(f"bundle {root}: catalog {name} has dtype {arrays[name].dtype}")
    if len(set(catalog.ids.tolist())) != n:
        raise BundleError(f"bundle {root}: catalog movie ids are not unique")
    for name in ("L", "s", "q"):
        if not np.isfinite(arrays[name]).all():
            raise BundleError(f"bundle {root}: catalog sums {name} are not all finite")
    known = set(catalog.genre_names)
    if len(known) > 63 or any(not known.issuperset(g) for g in catalog.genres):
        raise BundleError(f"bundle {root}: catalog genres outside its genre_names (or "
                          "more than 63)")


class Bundle:
    """A loaded, checked bundle: feature map, heads (SavedModel signatures), catalog, metadata.

    `side_sums`, `score_pairs`, `top_n`, `fmap` and `k` are the rating head's; every
    head is in `heads`.
    """

    def __init__(self, path: str | Path, engine: EngineName = "auto") -> None:
        root = Path(path)
        self.path = root
        manifest = check_bundle(root)
        self.model_id, self.metrics, self.spec = manifest.model_id, manifest.metrics, manifest.spec
        self.rating_range = tuple(self.metrics.get("rating_range", (1.0, 5.0)))
        try:
            self.model = tf.saved_model.load(str(root / "saved_model"))
            with np.load(root / "catalog.npz") as z:
                self.catalog = Catalog(
                    z["ids"], z["titles"], [g.split("|") if g else [] for g in z["genres"]],
                    z["years"], Sums(z["L"], z["s"], z["q"]), z["genre_names"].tolist(),
                    [r.tolist() for r in np.split(z["raters"], z["raters_ptr"][1:-1])])
                sums = {h: Sums(*(z[a if h == "rating" else f"{h}_{a}"] for a in "Lsq"))
                        for h in HEADS}
        except Exception as exc:
            raise BundleError(f"bundle {root}: cannot load ({type(exc).__name__}: {exc})") from exc
        self.heads = {h: self._head(h, sums[h], engine) for h in HEADS}
        rating = self.heads["rating"]
        self.fmap, self.k, self.engine = rating.fmap, rating.k, rating.engine
        self.widths = tuple(h.k for h in self.heads.values())  # cached parts' layout
        check_catalog(root, self.catalog, self.k)  # and the rating head's sums
        self.neighbours = self._neighbours()
        # what a residual reads besides the user's and the movie's s (`residuals`): the
        # rating head's w0 and every catalog movie's own terms, as the SavedModel stores them
        saved = self.model.rating
        self._w0 = float(np.asarray(saved.fm.w0.numpy()).reshape(-1)[0])
        self._item_bias = saved.item_bias.numpy().astype(np.float64)

    check = staticmethod(check_bundle)  # Bundle.check(path): the files, without TensorFlow

    def _neighbours(self) -> Neighbours | None:
        """The rating head's neighbourhood, checked against the catalog; None if the
        bundle has none."""
        described = self.metrics.get("neighbours")
        if described is None:
            return None
        root, n = self.path, len(self.catalog)
        try:
            with np.load(root / "neighbours.npz") as z:
                rows, sims = z["rows"], z["sims"]
            found = Neighbours(rows.astype(np.int32), sims.astype(np.float32),
                               int(described["k"]), float(described["lam"]),
                               float(described["alpha"]))
        except Exception as exc:
            raise BundleError(f"bundle {root}: cannot load its neighbours "
                              f"({type(exc).__name__}: {exc})") from None
        if (rows.ndim != 2 or rows.shape != sims.shape or len(rows) != n
                or rows.dtype.kind not in "iu" or sims.dtype.kind != "f"
                or ((rows < -1) | (rows >= n)).any() or not np.isfinite(sims).all()
                or (sims < 0).any() or found.k < 1 or not found.lam > 0
                or not np.isfinite(found.alpha)):
            raise BundleError(f"bundle {root}: neighbours disagree with its {n} movies "
                              "(rows within the catalog, finite similarities >= 0, k >= 1, "
                              "lam > 0)")
        return found

    def _head(self, name: str, items: Sums, engine: EngineName) -> Head:
        """Head `name`, checked: its signatures exist and every width of it agrees."""
        root = self.path
        described = self.metrics["heads"][name]  # its shape checked by check_metrics
        for sig in SIGNATURES:
            if signature_name(name, sig) not in self.model.signatures:
                raise BundleError(f"bundle {root}: SavedModel has no "
                                  f"{signature_name(name, sig)!r} signature")
        widths = {"metrics.json": int(described["k"]), "catalog": items.s.shape[-1],
                  "SavedModel": self.model.signatures[signature_name(name, "side_sums")
                                                      ].structured_outputs["s"].shape[-1]}
        if len(set(widths.values())) != 1:  # scoring would fail, or mix up numbers, later
            raise BundleError(f"bundle {root}: inconsistent k of head {name} (" + ", ".join(
                f"{where} {k}" for where, k in widths.items()) + ")")
        n = len(self.catalog.ids)
        arrays = (items.L, items.s, items.q)
        if name != "rating" and (  # the rating head's: check_catalog, with the catalog
                [a.shape for a in arrays] != [(n,), (n, widths["catalog"]), (n,)]
                or any(a.dtype.kind != "f" or not np.isfinite(a).all() for a in arrays)):
            raise BundleError(f"bundle {root}: catalog sums of head {name}: arrays disagree "
                              f"with its {n} movies or are not all finite floats")
        fmap = FeatureMap(self.spec.only(described["fields"]))
        try:
            index = ann.read(root, name, described.get("ann"), items)
        except ann.AnnIndexError as exc:
            raise BundleError(f"bundle {root}: index of head {name}: {exc}") from None
        return Head(name, fmap, widths["catalog"], make_engine(self.model, name, engine), items,
                    index)

    # --- the rating head's three signatures, numpy in and out, through its engine ------

    def side_sums(self, rows: SparseRows) -> Sums:
        return self.heads["rating"].side_sums(rows)

    def score_pairs(self, query: Sums, contexts: SparseRows, pair_row: np.ndarray,
                    items: Sums) -> np.ndarray:
        """Unclipped scores of (query row, item) pairs."""
        return self.heads["rating"].score_pairs(query, contexts, pair_row, items)

    def top_n(self, query: Sums, contexts: SparseRows, exclude_row: np.ndarray,
              exclude_item: np.ndarray, genre_mask: np.ndarray, n: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """(catalog rows, unclipped scores), each (n_queries, n); excluded rows score -inf."""
        return self.heads["rating"].top_n(query, contexts, exclude_row, exclude_item,
                                          genre_mask, n)

    # --- offline prediction: the reference the service must agree with -------------------

    def clip(self, scores: np.ndarray) -> np.ndarray:
        return np.clip(scores, *self.rating_range)

    def item_sums(self, movies: list[dict[str, Any]], head: str = "rating") -> Sums:
        """Catalog sums for known ids sent without attributes; the rest encoded inline."""
        h = self.heads[head]
        rows = [self.catalog.row(str(m["id"])) if set(m) <= {"id"} else None for m in movies]
        sums = h.items.take(np.array([r or 0 for r in rows], dtype=np.int64))
        inline = [n for n, r in enumerate(rows) if r is None]
        if inline:
            encoded = h.side_sums(h.fmap.encode("item", [movies[n] for n in inline]))
            sums.L[inline], sums.s[inline], sums.q[inline] = encoded.L, encoded.s, encoded.q
        return sums

    def scores(self, user: dict[str, Any], movies: list[dict[str, Any]],
               context: dict[str, Any] | None = None, head: str = "rating") -> np.ndarray:
        """Unclipped scores of one head for one user (payload with history) and movies.

        The context's session is derived from the user id and time, as the service does.
        """
        h = self.heads[head]
        query, contexts = h.query(user, with_session(context or {}, user.get("id")))
        pair_row = np.zeros(len(movies), dtype=np.int32)
        return h.score_pairs(query, contexts, pair_row, self.item_sums(movies, head))

    def predict(self, user: dict[str, Any], movies: list[dict[str, Any]],
                context: dict[str, Any] | None = None) -> np.ndarray:
        """Clipped ratings of one user (payload with history) for several movies: the
        rating head's scores plus its neighbourhood's correction."""
        return self.clip(self.scores(user, movies, context)
                         + self.neighbour_correction(user, movies))

    def neighbour_correction(self, user: dict[str, Any], movies: list[dict[str, Any]]
                             ) -> np.ndarray:
        """The neighbourhood's correction of `movies` (payloads; a catalog id sent alone
        is its catalog movie) for one user payload, from its starred history (zeros
        without neighbours)."""
        if self.neighbours is None:
            return np.zeros(len(movies))
        h = self.heads["rating"]
        pairs = user.get(STARS_FIELD) or []
        found = [self.catalog.row(str(m["id"])) if set(m) <= {"id"} else None for m in movies]
        return self.neighbour_term(
            h.side_sums(h.fmap.encode("user", [user])), [str(m) for m, _ in pairs],
            [s for _, s in pairs], np.array([-1 if r is None else r for r in found]))

    def neighbour_term(self, query: Sums, rated: Sequence[str],
                       stars: Sequence[float | None] | None, rows: np.ndarray) -> np.ndarray:
        """The neighbourhood's correction of catalog rows `rows` (-1: a movie outside the
        catalog, 0) for one user: `query` its rating-head sums (no context), `rated` and
        `stars` its history. A rated movie without stars, or outside the catalog, has no
        residual and is no neighbour."""
        residuals = self.residuals(query, rated, stars)
        if self.neighbours is None or residuals is None:
            return np.zeros(len(rows))
        return self.neighbours.term(rows, *residuals)

    def residuals(self, query: Sums, rated: Sequence[str],
                  stars: Sequence[float | None] | None
                  ) -> tuple[np.ndarray, np.ndarray] | None:
        """(catalog rows, stars - the rating head's score from the user's and the movie's
        sums alone) of the user's starred catalog movies, by row (a movie rated twice:
        its last stars); None if there are none."""
        if stars is None or len(rated) != len(stars):
            return None
        rows = self.catalog.rows(rated)
        values = np.array(list(stars), dtype=np.float64)  # unknown stars (None): NaN
        keep = (rows >= 0) & ~np.isnan(values)
        if not keep.any():
            return None
        rows, values = sorted_unique(rows[keep], values[keep])
        # the score of a user and catalog movie j without context, w0 + bias(user) +
        # <s_user, s_j> + bias(j) (`model.fm.item_bias`), in NumPy whatever the engine:
        # a SavedModel call would cost /predict another 0.4 ms for this
        s = query.s[0].astype(np.float64)
        fm = (self._w0 + float(query.L[0]) + 0.5 * (s @ s - float(query.q[0]))
              + self.heads["rating"].items.s[rows] @ s + self._item_bias[rows])
        return rows, values - fm

    def warm_up(self) -> None:
        """Run every signature once so the first real request is not the slow one."""
        for h in self.heads.values():
            user, ctx = h.query({"id": "warm-up"}, {})
            h.score_pairs(user, ctx, np.zeros(1, np.int32), h.items.take(np.zeros(1, int)))
            h.top_n(user, ctx, np.zeros(0, np.int32), np.zeros(0, np.int32),
                    np.zeros(1, np.int64), min(10, len(self.catalog)))
