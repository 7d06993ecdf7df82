"""model.explain: per-feature contributions add up to the FM's pairwise definition."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from model.bundle import Bundle, Catalog
from model.explain import (
    FMParams,
    contributions,
    explain_row,
    grouped,
    history_contributions,
    known_features,
    row_terms,
    top_columns,
)
from model.features import FeatureMap, feature_hash, movielens_spec, with_session
from model.sums import Sums
from tests.support.reference import fm_pairwise

USER = {"id": "7", "age": 31, "gender": "F", "occupation": "writer", "zip": "94110",
        "rated": ["1", "5", "9", "12", "40"],
        "rated_stars": [["1", 5], ["5", 2], ["9", None], ["12", 4], ["40", 1]]}
CONTEXT = with_session({"time": 885_000_000, "last_movie": "5"}, "7")


def _random_params(rng: np.random.Generator, p: int = 40, k: int = 5) -> FMParams:
    return FMParams(float(rng.normal()), rng.normal(size=p), rng.normal(size=(p, k)))


def test_contributions_add_up_to_the_pairwise_fm() -> None:
    rng = np.random.default_rng(3)
    for trial in range(20):
        params = _random_params(rng)
        nnz = int(rng.integers(1, 15))
        indices = rng.integers(0, 8 if trial % 2 else 40, size=nnz)  # odd trials: repeats
        x = rng.uniform(-1, 2, size=nnz)
        c = contributions(params, indices, x)
        assert c.shape == (nnz,)
        assert params.w0 + c.sum() == pytest.approx(
            fm_pairwise(params.w0, params.w, params.V, indices, x), abs=1e-9, rel=1e-9)


def test_one_feature_alone_contributes_its_linear_term() -> None:
    params = _random_params(np.random.default_rng(0))
    assert contributions(params, np.array([3]), np.array([0.5]))[0] == pytest.approx(
        0.5 * float(params.w[3]))


def _bundle_params(bundle: Bundle) -> FMParams:
    return FMParams.of(bundle.model.rating.fm)


def _full_terms(bundle: Bundle, user: dict[str, Any], item_row: int) -> list[Any]:
    fmap = bundle.fmap
    return (row_terms(fmap, "user", user) + row_terms(fmap, "context", CONTEXT)
            + row_terms(fmap, "item", bundle.catalog.payload(item_row)))


def test_row_terms_are_what_the_feature_map_encodes(small_bundle: Bundle) -> None:
    fmap = small_bundle.fmap
    for side, payload in (("user", USER), ("context", CONTEXT),
                          ("item", small_bundle.catalog.payload(4))):
        terms = row_terms(fmap, side, payload)
        encoded = fmap.encode(side, [payload])
        assert sorted((t.index, t.x) for t in terms) == sorted(
            zip(encoded.indices.tolist(), encoded.values.tolist(), strict=True))
        for t in terms:  # each term's bucket is its own token's
            assert feature_hash(t.token, fmap.spec.hash_bits) == t.index


def test_explained_score_is_the_served_score(small_bundle: Bundle) -> None:
    params = _bundle_params(small_bundle)
    fmap = small_bundle.fmap
    for row in (0, 17, 101):
        explained = explain_row(params, _full_terms(small_bundle, USER, row))
        indices = np.array([t.index for t in explained.terms])
        x = np.array([t.x for t in explained.terms])
        assert explained.score == pytest.approx(
            fm_pairwise(params.w0, params.w, params.V, indices, x), abs=1e-6)
        served = small_bundle.score_pairs(
            small_bundle.side_sums(fmap.encode("user", [USER])), fmap.encode("context", [CONTEXT]),
            np.zeros(1, np.int32), small_bundle.catalog.sums.take(np.array([row])))
        assert explained.score == pytest.approx(float(served[0]), abs=1e-5)


def test_history_contributions_equal_each_items_explanation(small_bundle: Bundle) -> None:
    params = _bundle_params(small_bundle)
    fmap = small_bundle.fmap
    user_terms = row_terms(fmap, "user", USER) + row_terms(fmap, "context", CONTEXT)
    history = ("user.rated", "user.rated_stars")
    rated = [t for t in user_terms if t.field in history]
    assert {t.field for t in rated} == set(history)  # the bundle reads the stars
    a = sum(params.V[t.index].astype(np.float64) * t.x for t in user_terms)
    rows = np.array([3, 50, 77, 120])
    batched = history_contributions(params, np.array([t.x for t in rated]), a,
                                    np.array([t.index for t in rated]),
                                    small_bundle.catalog.sums.s[rows])
    assert batched.shape == (len(rows), len(rated))
    for n, row in enumerate(rows.tolist()):
        explained = explain_row(params, _full_terms(small_bundle, USER, row))
        per_item = [c for t, c in zip(explained.terms, explained.contributions, strict=True)
                    if t.field in history]
        np.testing.assert_allclose(batched[n], per_item, rtol=1e-5, atol=1e-6)


def test_top_columns_breaks_ties_by_column() -> None:
    values = np.array([[0.1, 0.5, 0.5, -1.0], [2.0, -3.0, 0.0, 1.0]])
    assert top_columns(values, 2).tolist() == [[1, 2], [0, 3]]


def _tiny_catalog(n: int) -> Catalog:
    ids = np.array([str(i) for i in range(1, n + 1)])
    k = 2
    return Catalog(ids, np.array([f"Film {i}" for i in ids]), [["Drama"]] * n,
                   np.full(n, 1990, np.int32),
                   Sums(np.zeros(n, np.float32), np.zeros((n, k), np.float32),
                        np.zeros(n, np.float32)),
                   ["Drama"], [["u1", "u2"]] * n)


def test_shared_buckets_name_the_other_known_features() -> None:
    """With 2**5 buckets, most of the catalog's features collide: each entry must list
    exactly the other known keys of its bucket (checked against hashing every key)."""
    spec = movielens_spec(hash_bits=5)
    fmap = FeatureMap(spec)
    catalog = _tiny_catalog(12)
    known = known_features(fmap, catalog)
    everything = {f"{side}={m}" for side in ("item.id", "user.rated", "context.last_movie")
                  for m in catalog.ids.tolist()}
    everything |= {"item.genres=Drama", "item.year=1990", "user.id=u1", "user.id=u2",
                   "item.raters=u1", "item.raters=u2", "context.time"}
    params = _random_params(np.random.default_rng(1), p=spec.n_features, k=2)
    user = {"id": "u1", "rated": ["3", "4"], "age": 40}
    terms = row_terms(fmap, "user", user) + row_terms(fmap, "item", catalog.payload(2))
    groups = grouped(explain_row(params, terms), fmap, catalog, known)
    seen_shared = 0
    for group in groups:
        for entry in group["features"]:
            bucket = feature_hash(entry["feature"], 5)
            row_keys = {t.token for t in terms}
            others = sorted(k for k in everything | row_keys
                            if k != entry["feature"] and feature_hash(k, 5) == bucket)
            if others:
                seen_shared += 1
                assert entry["shared_bucket"] == {"features": len(others) + 1,
                                                  "others": others[:5]}
            else:
                assert "shared_bucket" not in entry
    assert seen_shared > 0


def test_groups_label_movies_and_users_and_add_up(small_bundle: Bundle) -> None:
    params = _bundle_params(small_bundle)
    catalog = small_bundle.catalog
    explained = explain_row(params, _full_terms(small_bundle, USER, 8))
    groups = grouped(explained, small_bundle.fmap, catalog, {})
    by_field = {g["field"]: g for g in groups}
    assert {e["value"] for e in by_field["user.rated"]["features"]} == {
        str(catalog.titles[catalog.row(m)]) for m in USER["rated"]}
    assert by_field["item.id"]["features"][0]["value"] == str(catalog.titles[8])
    assert by_field["user.id"]["features"][0]["value"] == "user 7"
    assert by_field["context.last_movie"]["features"][0]["value"] == str(
        catalog.titles[catalog.row("5")])
    for g in groups:
        assert g["contribution"] == pytest.approx(sum(e["contribution"] for e in g["features"]))
    assert explained.bias + sum(g["contribution"] for g in groups) == pytest.approx(
        explained.score, abs=1e-9)
    assert [abs(g["contribution"]) for g in groups] == sorted(
        (abs(g["contribution"]) for g in groups), reverse=True)


def test_the_history_size_is_one_term_labelled_by_its_range(small_bundle: Bundle) -> None:
    """The relevance head reads the size of a short history: USER's 5 movies are one
    "user.history_size=2" term of weight 1, shown as "4-7 rated", and the split still adds
    up to the head's served score."""
    head = small_bundle.heads["relevance"]
    params = FMParams.of(small_bundle.model.relevance.fm)
    terms = (row_terms(head.fmap, "user", USER) + row_terms(head.fmap, "context", CONTEXT)
             + row_terms(head.fmap, "item", small_bundle.catalog.payload(8)))
    encoded = head.fmap.encode("user", [USER])
    user_terms = [t for t in terms if t.field.startswith("user.")]
    assert sorted((t.index, t.x) for t in user_terms) == sorted(
        zip(encoded.indices.tolist(), encoded.values.tolist(), strict=True))
    size = [t for t in terms if t.field == "user.history_size"]
    assert [(t.value, t.token, t.x) for t in size] == [("2", "user.history_size=2", 1.0)]
    explained = explain_row(params, terms)
    groups = {g["field"]: g for g in grouped(explained, head.fmap, small_bundle.catalog, {})}
    assert groups["user.history_size"]["features"][0]["value"] == "4-7 rated"
    served = head.score_pairs(head.side_sums(encoded), head.fmap.encode("context", [CONTEXT]),
                              np.zeros(1, np.int32), head.items.take(np.array([8])))
    assert explained.score == pytest.approx(float(served[0]), abs=1e-5)
