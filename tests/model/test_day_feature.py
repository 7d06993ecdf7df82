"""The opt-in "day" context feature: training and the service derive the same day."""

from __future__ import annotations

from typing import Any

import numpy as np

from model.blocks import encode_ratings, last_movies
from model.features import (
    FEATURE_GROUPS,
    FeatureMap,
    FeatureSpec,
    context_payload,
    day_of,
    feature_hash,
    movielens_spec,
    with_session,
)


def test_day_is_the_utc_day_shared_by_every_user() -> None:
    assert day_of(86400 * 3 + 5) == 3 == day_of(86400 * 4 - 1)
    assert with_session({"time": 86400 * 3 + 5}, "u1") == {
        "time": 86400 * 3 + 5, "day": 3, "session": "u1@3"}
    assert with_session({"time": 86400 * 3 + 5}, None)["day"] == 3
    assert with_session({"time": 5, "day": 9}, "u")["day"] == 9  # a given day is kept
    assert context_payload("u1", 86400 * 3, None)["day"] == 3


def test_day_is_opt_in() -> None:
    full = {f.key for f in movielens_spec(16).fields}
    assert "context.day" not in full and "context.session" in full
    spec = movielens_spec(16, ",".join(["ids", *FEATURE_GROUPS, "day"]))
    assert {f.key for f in spec.fields} == full | {"context.day"}


def test_training_day_features_are_the_payloads_the_service_builds(
        small_data: tuple[Any, FeatureSpec]) -> None:
    data, _ = small_data
    spec = movielens_spec(16, "ids,day")
    fmap = FeatureMap(spec)
    events = data.test
    contexts = encode_ratings(fmap, data, events, data.train).contexts
    lasts = last_movies(events, data.train)
    one_by_one = fmap.encode("context", [
        context_payload(str(u), int(t), last)
        for u, t, last in zip(events.user, events.timestamp, lasts, strict=True)])
    np.testing.assert_array_equal(contexts.indptr, one_by_one.indptr)
    np.testing.assert_array_equal(contexts.indices, one_by_one.indices)
    assert contexts.nnz == len(events)  # one day per rating, nothing else
    first = int(events.timestamp[0]) // 86400
    assert contexts.indices[0] == feature_hash(f"context.day={first}", 16)
