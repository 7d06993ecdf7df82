"""The feature map: stable hashing, encodings, spec round trip, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from model.features import (
    DEFAULT_HASH_CACHE_BYTES,
    HASH_CACHE_ENTRY_BYTES,
    FeatureError,
    FeatureMap,
    FeatureSpec,
    SparseRows,
    SpecError,
    context_payload,
    feature_hash,
    hash_cache_size,
    movielens_spec,
    session_of,
    size_hash_cache,
    with_session,
)

USER = {"id": "196", "age": 49, "gender": "M", "occupation": "writer", "zip": "55105",
        "rated": ["242", "302", "377", "51"]}


def test_hash_is_identical_across_processes_with_different_hash_seeds() -> None:
    code = ("from model.features import feature_hash;"
            "print([feature_hash(k, 18) for k in ('user.id=196', 'item.genres=Comedy', 'x')])")
    outputs = set()
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        outputs.add(out.stdout)
    assert len(outputs) == 1
    assert outputs.pop().strip() == str(
        [feature_hash(k, 18) for k in ("user.id=196", "item.genres=Comedy", "x")])


def test_hash_stays_in_range() -> None:
    assert all(0 <= feature_hash(f"k{n}", 10) < 1024 for n in range(2000))


def test_user_row_has_one_feature_per_field_and_weighted_history() -> None:
    fmap = FeatureMap(movielens_spec(18))
    rows = fmap.encode("user", [USER])
    assert rows.n_rows == 1 and rows.nnz == 5 + 4 + 1  # + the size token of 4 movies
    spec = fmap.spec
    rated = [feature_hash(f"user.rated={m}", 18) for m in USER["rated"]]
    weights = dict(zip(rows.indices.tolist(), rows.values.tolist(), strict=True))
    for index in rated:  # sqrt weighting: 1/sqrt(4)
        assert weights[index] == pytest.approx(0.5)
    zip_field = next(f for f in spec.fields if f.name == "zip")
    assert feature_hash(zip_field.token("55105"), 18) == feature_hash("user.zip=55", 18)


def test_mean_weighting_sums_to_one() -> None:
    fmap = FeatureMap(movielens_spec(18))
    rows = fmap.encode("item", [{"id": "1", "genres": ["Comedy", "Drama", "War"]}])
    genre_values = [v for i, v in zip(rows.indices, rows.values, strict=True)
                    if i != feature_hash("item.id=1", 18)]
    assert sum(genre_values) == pytest.approx(1.0)


def test_numeric_field_scaled_to_training_range_and_clipped() -> None:
    spec = movielens_spec(18).fit_numeric("context", {"time": [100, 200, 300]})
    fmap = FeatureMap(spec)
    rows = fmap.encode("context", [{"time": 150}, {"time": 10**10}, {"time": -5}, {}])
    assert rows.values.tolist() == pytest.approx([0.25, 1.0, 0.0])
    assert np.diff(rows.indptr).tolist() == [1, 1, 1, 0]


def test_missing_and_unknown_values_are_not_errors() -> None:
    fmap = FeatureMap(movielens_spec(18))
    rows = fmap.encode("user", [{"id": "never-seen"}, {}])
    assert np.diff(rows.indptr).tolist() == [1, 0]


@pytest.mark.parametrize(("side", "payload", "field"), [
    ("user", {"rated": "242"}, "user.rated"),
    ("user", {"id": 1.5}, "user.id"),
    ("item", {"genres": [["nested"]]}, "item.genres"),
    ("context", {"time": "yesterday"}, "context.time"),
    ("context", {"time": float("nan")}, "context.time"),
])
def test_malformed_values_raise_naming_the_field(side: str, payload: dict, field: str) -> None:
    with pytest.raises(FeatureError, match=field.replace(".", r"\.")):
        FeatureMap(movielens_spec(18)).encode(side, [payload])  # type: ignore[arg-type]


def test_row_and_column_paths_agree() -> None:
    fmap = FeatureMap(movielens_spec(16))
    payloads = [USER, {"id": "7", "rated": []}, {"id": "8", "age": 30}]
    by_rows = fmap.encode("user", payloads)
    columns = {f.name: [p.get(f.name) for p in payloads] for f in fmap.spec.side_fields("user")}
    by_columns = fmap.encode_columns("user", columns, len(payloads))
    for a, b in zip((by_rows.indptr, by_rows.indices, by_rows.values),
                    (by_columns.indptr, by_columns.indices, by_columns.values), strict=True):
        np.testing.assert_array_equal(a, b)


def test_take_gathers_rows_in_order() -> None:
    rows = FeatureMap(movielens_spec(16)).encode(
        "user", [USER, {"id": "7"}, {"id": "8", "rated": ["1", "2"]}])
    picked = rows.take(np.array([2, 0, 2]))
    dense, full = picked.to_dense(1 << 16), rows.to_dense(1 << 16)
    np.testing.assert_array_equal(dense, full[[2, 0, 2]])


def test_concat_columns_keeps_rows_aligned() -> None:
    a = SparseRows(np.array([0, 1, 1]), np.array([3], np.int32), np.array([1.0], np.float32))
    b = SparseRows(np.array([0, 1, 3]), np.array([4, 5, 6], np.int32), np.ones(3, np.float32))
    both = SparseRows.concat_columns([a, b])
    assert both.indptr.tolist() == [0, 2, 4] and both.indices.tolist() == [3, 4, 5, 6]


def test_spec_round_trips_through_json_with_golden_hashes() -> None:
    spec = movielens_spec(14).fit_numeric("context", {"time": [5, 9]}).with_golden(["user.id=1"])
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec
    again.check_golden()


def test_golden_mismatch_is_refused_with_a_clear_message() -> None:
    raw = json.loads(movielens_spec(14).with_golden(["user.id=1"]).to_json())
    raw["golden"]["user.id=1"] += 1
    spec = FeatureSpec.from_json(json.dumps(raw))
    with pytest.raises(SpecError, match="cannot reproduce"):
        spec.check_golden()


@pytest.mark.parametrize("text", ["{", '{"hash_bits": 10}',
                                  '{"hash_bits": 10, "fields": [{"name": "a", "side": "moon",'
                                  ' "kind": "numeric"}]}',
                                  '{"hash_bits": 10, "fields": [{"name": "a", "side": "user",'
                                  ' "kind": "size", "of": "rated"}]}'])
def test_unreadable_specs_are_refused(text: str) -> None:
    with pytest.raises(SpecError):
        FeatureSpec.from_json(text)


def test_feature_groups_select_fields() -> None:
    assert [f.key for f in movielens_spec(10, "ids").fields] == ["user.id", "item.id"]
    keys = [f.key for f in movielens_spec(10, "ids,implicit").fields]
    assert keys == ["user.id", "item.id", "user.rated"]
    with pytest.raises(SpecError, match="unknown feature groups"):
        movielens_spec(10, "ids,colour")


def test_collision_report_counts_shared_buckets() -> None:
    fmap = FeatureMap(movielens_spec(4))  # 16 buckets: 40 keys must collide
    report = fmap.collision_report(f"user.id={n}" for n in range(40))
    assert report["features"] == 40 and report["buckets_used"] <= 16
    assert report["colliding_features"] >= 40 - 16


def test_remap_gives_positions_and_drops_unknown_columns() -> None:
    rows = SparseRows(np.array([0, 3, 3, 5]), np.array([40, 7, 40, 9, 7], np.int32),
                      np.arange(1, 6, dtype=np.float32))
    columns = np.array([7, 40])
    kept = rows.remap(columns)
    np.testing.assert_array_equal(kept.indptr, [0, 3, 3, 4])
    np.testing.assert_array_equal(kept.indices, [1, 0, 1, 0])
    np.testing.assert_array_equal(kept.values, [1, 2, 3, 5])
    # the compact rows are the full rows restricted to `columns`
    np.testing.assert_array_equal(kept.to_dense(2), rows.to_dense(41)[:, columns])
    everything = rows.remap(np.array([7, 9, 40]))
    np.testing.assert_array_equal(everything.indptr, rows.indptr)
    assert rows.remap(np.zeros(0, np.int64)).nnz == 0


def test_training_contexts_are_the_payloads_the_service_builds(
        small_data: tuple[Any, FeatureSpec]) -> None:
    """encode_ratings' context column == context_payload(user, time, last) per event."""
    from model.blocks import encode_ratings, last_movies

    data, _ = small_data
    spec = movielens_spec(16, "full").fit_numeric(
        "context", {"time": data.train.timestamp.tolist()})
    fmap = FeatureMap(spec)
    events = data.test
    contexts = encode_ratings(fmap, data, events, data.train).contexts
    lasts = last_movies(events, data.train)
    payloads = [context_payload(str(u), int(t), last)
                for u, t, last in zip(events.user, events.timestamp, lasts, strict=True)]
    one_by_one = fmap.encode("context", payloads)
    np.testing.assert_array_equal(contexts.indptr, one_by_one.indptr)
    np.testing.assert_array_equal(contexts.indices, one_by_one.indices)
    assert all(p["session"] == session_of(p["session"].split("@")[0], p["time"])
               for p in payloads)
    assert contexts.nnz > 2 * len(events)  # time, session and most last movies
    assert with_session({"time": 86400 * 3 + 5}, "u1")["session"] == "u1@3"
    assert "session" not in with_session({"time": 5}, None)
    assert with_session({}, "u1") == {}


@pytest.fixture
def hash_cache() -> Iterator[None]:
    """A fresh cache of the default size, restored after the test."""
    size_hash_cache(DEFAULT_HASH_CACHE_BYTES)
    yield
    size_hash_cache(DEFAULT_HASH_CACHE_BYTES)


def test_new_users_and_sessions_do_not_grow_the_hash_cache(hash_cache: None) -> None:
    """Every request of a new user brings a new user id and a new session: keys that are
    never seen again. They are hashed, not cached (the issue: 2 entries per request)."""
    fmap = FeatureMap(movielens_spec(hash_bits=18))
    fmap.encode("user", [{"id": "warm", "age": 30}])
    fmap.encode("context", [with_session({"time": 890_000_000}, "warm")])
    before = hash_cache_size()
    for n in range(2000):
        uid = f"new-user-{n}"
        fmap.encode("user", [{"id": uid, "age": 30}])
        fmap.encode("context", [with_session({"time": 890_000_000 + n * 86400}, uid)])
    assert hash_cache_size() == before
    # the same buckets as the cached path
    assert fmap.encode("user", [{"id": "new-user-7"}]).indices[0] == feature_hash(
        "user.id=new-user-7", 18)


def test_the_hash_cache_is_bounded_by_bytes(hash_cache: None) -> None:
    """Keys callers can vary at will (rated movies, inline movie ids) are cached, within
    the byte budget (FMREC_HASH_CACHE_BYTES)."""
    size_hash_cache(100 * HASH_CACHE_ENTRY_BYTES)
    fmap = FeatureMap(movielens_spec(hash_bits=18))
    for n in range(50):
        fmap.encode("user", [{"rated": [f"movie-{n}-{m}" for m in range(100)]}])
        assert hash_cache_size() <= 100
    assert hash_cache_size() == 100


def test_a_cached_hash_costs_at_most_its_estimate(hash_cache: None) -> None:
    """HASH_CACHE_ENTRY_BYTES is an upper bound of what one cached key really holds (keys
    as long as ids allow), measured by the allocator's own count."""
    keys = [f"user.rated={n:064d}" for n in range(20_000)]  # built before measuring
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            feature_hash(key, 18)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert hash_cache_size() == len(keys)
    assert used / len(keys) <= HASH_CACHE_ENTRY_BYTES


@pytest.mark.parametrize(("n", "token"), [(0, None), (1, "0"), (2, "1"), (3, "1"), (4, "2"),
                                          (7, "2"), (8, "3"), (15, "3"), (16, None),
                                          (400, None)])
def test_history_size_is_one_log2_token_for_short_histories(n: int, token: str | None
                                                            ) -> None:
    """The size field reads "rated": a history of 1, 2-3, 4-7, 8-15 movies gets one token
    of weight 1; none for no history or one of HISTORY_SIZE_BELOW (16) or more."""
    spec = movielens_spec(16, "ids,implicit,history_size")
    size_field = spec.fields[-1]
    rows = FeatureMap(spec.only(["user.history_size"])).encode(
        "user", [{"id": "1", "rated": [str(m) for m in range(n)]}])
    want = [] if token is None else [feature_hash(f"user.history_size={token}", 16)]
    assert rows.indices.tolist() == want and rows.values.tolist() == [1.0] * len(want)
    assert size_field.size_value(n) == token
    full = FeatureMap(spec).encode("user", [{"id": "1", "rated": [str(m) for m in range(n)]}])
    assert full.nnz == 1 + n + len(want)  # id, the movies, the size token


def test_size_rows_hold_each_short_history_size_token() -> None:
    fmap = FeatureMap(movielens_spec(16, "ids,implicit,history_size"))
    rows = fmap.size_rows()
    assert rows is not None and rows.n_rows == 16
    for n in range(16):
        one = fmap.encode("user", [{"rated": ["x"] * n}])
        history = FeatureMap(fmap.spec.only(["user.rated"])).encode("user", [{"rated": ["x"] * n}])
        size_only = set(one.indices.tolist()) - set(history.indices.tolist())
        assert rows.take(np.array([n])).indices.tolist() == sorted(size_only)
    assert FeatureMap(movielens_spec(16, "ids,implicit")).size_rows() is None


def test_history_size_of_a_non_list_is_refused_naming_the_field() -> None:
    fmap = FeatureMap(movielens_spec(16, "ids,history_size"))
    with pytest.raises(FeatureError, match=r"user\.rated: expected a list"):
        fmap.encode("user", [{"rated": "242"}])


def test_graded_field_weights_each_movie_by_its_stars_from_the_centre() -> None:
    """user.rated_stars=j carries (stars_j - centre) / sqrt(n), n the list's length; a
    star of None is the centre: it counts in n and adds nothing."""
    spec = movielens_spec(18, "ids,implicit,stars").fit_centres(3.5)
    pairs = [["242", 5], ["302", 2.0], ["377", None], ["51", 3.5]]
    rows = FeatureMap(spec).encode("user", [{"rated_stars": pairs}, {"rated_stars": []}])
    assert rows.n_rows == 2 and list(np.diff(rows.indptr)) == [4, 0]
    expected = {feature_hash(f"user.rated_stars={m}", 18): (0.0 if s is None else s - 3.5) / 2
                for m, s in pairs}
    got = dict(zip(rows.indices.tolist(), rows.values.tolist(), strict=True))
    assert got == pytest.approx(expected)
    assert FeatureMap(spec).tokens("user", [{"rated_stars": pairs}]) == {
        f"user.rated_stars={m}" for m, _ in pairs}


@pytest.mark.parametrize("value", ["5", [["242"]], [[None, 4]], [["242", "four"]],
                                   [["242", float("nan")]], [["242", True]]])
def test_malformed_stars_are_refused_naming_the_field(value: Any) -> None:
    fmap = FeatureMap(movielens_spec(18, "ids,implicit,stars"))
    with pytest.raises(FeatureError, match=r"user\.rated_stars"):
        fmap.encode("user", [{"rated_stars": value}])


def test_stars_need_the_history_field_weighted_alike() -> None:
    with pytest.raises(SpecError, match="needs 'implicit'"):
        movielens_spec(10, "ids,stars")
    spec = movielens_spec(10, "ids,implicit,stars").fit_centres(3.25)
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec and again.fields[-1].centre == 3.25
    text = spec.to_json().replace('"weighting": "sqrt"', '"weighting": "mean"', 1)
    with pytest.raises(SpecError, match="weighted alike"):
        FeatureSpec.from_json(text)
