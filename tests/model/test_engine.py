"""The NumPy engine computes what the SavedModel's signatures compute, on the same weights."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from model.bundle import Bundle
from model.engine import NumpyEngine, SavedModelEngine, segment_sum, top_rows
from model.features import SparseRows
from model.sums import Sums
from tests.support.reference import fm_pairwise


@pytest.fixture(scope="module")
def engines(small_bundle_path: Path) -> tuple[Bundle, Bundle]:
    return Bundle(small_bundle_path, "savedmodel"), Bundle(small_bundle_path, "numpy")


def _users(bundle: Bundle) -> list[dict[str, object]]:
    ids = [str(m) for m in bundle.catalog.ids]
    return [{"id": "3", "rated": ids[:7]}, {"id": "nobody"}, {"id": "9", "age": 30,
                                                             "rated": ids[5:40]}]


def test_engines_are_the_named_ones(engines: tuple[Bundle, Bundle]) -> None:
    tf_bundle, np_bundle = engines
    assert isinstance(tf_bundle.engine, SavedModelEngine)
    assert isinstance(np_bundle.engine, NumpyEngine)
    with pytest.raises(ValueError, match="unknown engine"):
        Bundle(tf_bundle.path, "cuda")  # type: ignore[arg-type]


def test_side_sums_and_pairs_agree_with_each_other_and_the_definition(
        engines: tuple[Bundle, Bundle]) -> None:
    tf_bundle, np_bundle = engines
    users = tf_bundle.fmap.encode("user", _users(tf_bundle))
    a, b = tf_bundle.side_sums(users), np_bundle.side_sums(users)
    for x, y in zip((a.L, a.s, a.q), (b.L, b.s, b.q), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    contexts = tf_bundle.fmap.encode("context", [{"time": 8.8e8, "last_movie": "3"}, {},
                                                 {"time": 9e8}])
    pair_row = np.array([0, 0, 1, 2, 2, 2], np.int32)
    items = tf_bundle.catalog.sums.take(np.array([0, 4, 4, 1, 2, 3]))
    got = np_bundle.score_pairs(b, contexts, pair_row, items)
    np.testing.assert_allclose(got, tf_bundle.score_pairs(a, contexts, pair_row, items),
                               rtol=1e-5, atol=1e-5)
    # and the definition, for the first pair: user + context + movie as one row
    fm = tf_bundle.model.rating.fm
    movie = tf_bundle.fmap.encode("item", [tf_bundle.catalog.payload(0)])
    idx = np.concatenate([users.indices[:users.indptr[1]], contexts.indices[:contexts.indptr[1]],
                          movie.indices])
    val = np.concatenate([users.values[:users.indptr[1]], contexts.values[:contexts.indptr[1]],
                          movie.values])
    ref = fm_pairwise(float(fm.w0.numpy()), fm.w.numpy(), fm.V.numpy(), idx, val)
    assert got[0] == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("genres", [False, True])
def test_top_n_agrees_with_exclusions_and_genres(engines: tuple[Bundle, Bundle],
                                                 genres: bool) -> None:
    tf_bundle, np_bundle = engines
    users = tf_bundle.side_sums(tf_bundle.fmap.encode("user", _users(tf_bundle)))
    contexts = tf_bundle.fmap.encode("context", [{"time": 8.8e8}, {}, {"last_movie": "2"}])
    exclude_row = np.array([0, 0, 2], np.int32)
    exclude_item = np.array([1, 2, 0], np.int32)
    catalog = tf_bundle.catalog
    masks = np.array([catalog.mask(catalog.genre_names[:1]) if genres else 0, 0,
                      catalog.mask(catalog.genre_names[1:3]) if genres else 0], np.int64)
    for n in (1, 10, len(catalog)):
        rows_tf, scores_tf = tf_bundle.top_n(users, contexts, exclude_row, exclude_item, masks,
                                             n)
        rows_np, scores_np = np_bundle.top_n(users, contexts, exclude_row, exclude_item, masks,
                                             n)
        finite = np.isfinite(scores_tf)
        np.testing.assert_array_equal(rows_np[finite], rows_tf[finite])
        np.testing.assert_allclose(scores_np[finite], scores_tf[finite], rtol=1e-5, atol=1e-5)
        assert not np.isfinite(scores_np[~finite]).any()


def test_top_rows_breaks_ties_by_the_lower_column() -> None:
    scores = np.array([[1.0, 3.0, 3.0, -np.inf, 3.0, 2.0],
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    rows, values = top_rows(scores, 3)
    assert rows.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert values.tolist() == [[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]
    assert top_rows(scores, 6)[0][0].tolist() == [1, 2, 4, 5, 0, 3]
    assert top_rows(scores, 0)[0].shape == (2, 0)


def test_segment_sum_handles_empty_rows() -> None:
    rows = SparseRows(np.array([0, 0, 2, 2, 3, 3]), np.zeros(3, np.int32),
                      np.array([1.0, 2.0, 4.0], np.float32))
    assert segment_sum(rows.values, rows.indptr).tolist() == [0.0, 3.0, 0.0, 4.0, 0.0]
    assert segment_sum(np.zeros(0, np.float32), np.array([0, 0])).tolist() == [0.0]


@pytest.mark.parametrize("empty_share", [0.0, 0.5])
def test_segment_sum_equals_a_loop_over_rows(empty_share: float) -> None:
    """Both paths (every row non-empty; some empty) against the obvious loop."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 5, 40) * (rng.random(40) >= empty_share)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.normal(size=(indptr[-1], 3)).astype(np.float32)
    expected = np.array([values[a:b].sum(axis=0)
                         for a, b in itertools.pairwise(indptr)])
    np.testing.assert_allclose(segment_sum(values, indptr), expected, rtol=1e-6, atol=1e-6)
    assert segment_sum(values[:0], np.zeros(1, np.int64)).shape == (0, 3)


def test_bundle_round_trip_is_identical_across_engines(engines: tuple[Bundle, Bundle]) -> None:
    tf_bundle, np_bundle = engines
    movies = [{"id": str(m)} for m in tf_bundle.catalog.ids[:30]] + [{"id": "new",
                                                                       "genres": ["War"]}]
    for user in _users(tf_bundle):
        np.testing.assert_allclose(np_bundle.predict(user, movies, {"time": 8.9e8}),
                                   tf_bundle.predict(user, movies, {"time": 8.9e8}),
                                   rtol=1e-5, atol=1e-5)
    assert isinstance(Sums(*np_bundle.engine.side_sums(np_bundle.fmap.encode("user", [{}]))),
                      Sums)
