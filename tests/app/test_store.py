"""User sums kept as parts (profile + raw history sums) and the Redis store holding them."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import uvloop

from app.redis_layout import (
    StoredRatings,
    base_fields,
    history_fields,
    parse_fields,
    rating_value,
    sums_key,
)
from app.settings import Settings
from app.store import Rating, Store, StoreUnavailable, user_records
from app.user_sums import BaseSums, HistorySums, combine, history_weighting
from model.blocks import user_histories, user_payload
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureMap, FeatureSpec, SparseRows, movielens_spec
from model.fm import FactorizationMachine
from model.sums import Sums
from tests.support.api_client import service_settings
from tests.support.redis_server import RedisServer


def _parts(side_sums: Callable[[SparseRows], Sums], fmap: FeatureMap, payload: dict[str, Any]
           ) -> tuple[BaseSums, HistorySums]:
    """The two parts as the scorer computes them: the profile row, one row per movie (the
    history field alone: `Head.history_rows`)."""
    profile = {k: v for k, v in payload.items() if k != "rated"}
    rated = list(payload.get("rated") or [])
    base = BaseSums.of_row(side_sums(fmap.encode("user", [profile])), 0)
    movies = side_sums(FeatureMap(fmap.spec.only(["user.rated"])).encode(
        "user", [{"rated": [m]} for m in rated]))
    return base, HistorySums.of_rows(movies, 0, len(rated), None)


def test_parts_combine_to_the_full_user_row(
        small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    histories = user_histories(data.train)
    weighting = history_weighting(small_bundle.spec)
    assert weighting == "sqrt"
    payloads = [user_payload(u, data.users[u], histories.get(u, [])) for u in ("1", "2", "77")]
    payloads += [{"id": "x", "rated": []}, {"rated": ["1"]}, {"age": 30, "rated": ["5", "5"]},
                 {"id": "y", "rated": [str(m) for m in range(1, 16)]}]
    assert small_bundle.heads["relevance"].size_sums is not None  # a size token: tested
    assert small_bundle.heads["rating"].size_sums is None  # the rating head reads none
    for head, payload in itertools.product(small_bundle.heads.values(), payloads):
        base, history = _parts(head.side_sums, head.fmap, payload)
        L, s, q = combine(base, history, weighting, head.size_sums)
        full = head.side_sums(head.fmap.encode("user", [payload]))
        np.testing.assert_allclose(L, full.L[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s, full.s[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(q, full.q[0], rtol=1e-5, atol=1e-5)


def _random_side_sums(spec: FeatureSpec, fm_seed: int, w_seed: int
                      ) -> Callable[[SparseRows], Sums]:
    """Side sums under an FM with large random parameters (w too), so a wrong power of g
    or a missing term could not hide in small numbers."""
    fm = FactorizationMachine(spec.n_features, 6, init_std=0.5, seed=fm_seed)
    fm.w.assign(np.random.default_rng(w_seed).normal(0, 1, spec.n_features).astype(np.float32))

    def side_sums(rows: SparseRows) -> Sums:
        out = fm.side_sums(tf.constant(rows.row_ids()), tf.constant(rows.indices),
                           tf.constant(rows.values), tf.constant(rows.n_rows, tf.int32))
        return Sums(out.L.numpy(), out.s.numpy(), out.q.numpy())

    return side_sums


@pytest.mark.parametrize("weighting", ["mean", "sqrt"])
def test_combine_for_both_weightings(weighting: str) -> None:
    """Large random parameters, so a wrong power of g could not hide in small numbers."""
    base_spec = movielens_spec(hash_bits=12)
    spec = replace(base_spec, fields=tuple(
        replace(f, weighting=weighting) if f.name in ("rated", "rated_stars") else f
        for f in base_spec.fields))
    side_sums = _random_side_sums(spec, fm_seed=3, w_seed=0)
    fmap = FeatureMap(spec)
    payload = {"id": "7", "gender": "F", "zip": "10001",
               "rated": [str(m) for m in range(1, 40, 3)]}
    base, history = _parts(side_sums, fmap, payload)
    L, s, q = combine(base, history, history_weighting(spec))
    without_size = FeatureMap(spec.only(f.key for f in spec.fields if f.kind != "size"))
    full = side_sums(without_size.encode("user", [payload]))
    np.testing.assert_allclose([L, q], [full.L[0], full.q[0]], rtol=1e-5)
    np.testing.assert_allclose(s, full.s[0], rtol=1e-5, atol=1e-6)
    g = 1 / 13 if weighting == "mean" else 1 / np.sqrt(13)
    assert abs(L - (base.L0 + g * history.C)) < 1e-9


@pytest.mark.parametrize("n", [0, 1, 2, 5, 8, 15, 16, 17, 40])
def test_combine_adds_the_history_size_token_of_short_histories(n: int) -> None:
    """A history of n movies adds its size token's w, v, |v|^2 (`Head.size_sums` row n)
    below 16 and nothing from 16 on: the parts combine to the full row either way, so a
    user whose history crosses 16 through /ratings is scored as if sent inline."""
    spec = movielens_spec(hash_bits=12, features="ids,implicit,user_attrs,history_size")
    side_sums = _random_side_sums(spec, fm_seed=4, w_seed=1)
    fmap = FeatureMap(spec)
    size_rows = fmap.size_rows()
    assert size_rows is not None
    size = side_sums(size_rows)
    payload = {"id": "7", "gender": "F", "rated": [str(m) for m in range(n)]}
    base, history = _parts(side_sums, fmap, payload)
    L, s, q = combine(base, history, history_weighting(spec), size)
    full = side_sums(fmap.encode("user", [payload]))
    np.testing.assert_allclose([L, q], [full.L[0], full.q[0]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s, full.s[0], rtol=1e-5, atol=1e-5)
    without = combine(base, history, history_weighting(spec))
    assert (abs(without[0] - L) > 1e-3) == (0 < n < 16)  # the token is there exactly then


def test_no_history_field_means_everything_is_base() -> None:
    spec = movielens_spec(hash_bits=10, features="user_attrs")
    assert history_weighting(spec) is None
    base = BaseSums(1.0, np.ones(3), 2.0)
    history = HistorySums(5.0, np.ones(3), 7.0, 4)
    L, s, q = combine(base, history, None)
    assert (L, q) == (1.0, 2.0) and s.tolist() == [1.0, 1.0, 1.0]


def test_stored_ratings_parse_on_demand_as_the_hash_says() -> None:
    raw = {b"10": rating_value(4.0, 100).encode(), b"7": rating_value(0.5, 3).encode(),
           b"x": b"2.5"}  # written without a timestamp: time 0
    ratings = StoredRatings(raw)
    assert list(ratings) == ["10", "7", "x"] and len(ratings) == 3
    assert ratings["7"] == Rating(0.5, 3) and ratings["x"] == Rating(2.5, 0)
    assert "10" in ratings and "11" not in ratings and 10 not in ratings
    assert ratings == {"10": Rating(4.0, 100), "7": Rating(0.5, 3), "x": Rating(2.5, 0)}
    with pytest.raises(KeyError):
        ratings["11"]


def test_parts_survive_the_redis_encoding() -> None:
    """Two heads of different k packed one after the other come back head by head."""
    base = (BaseSums(0.25, np.array([1.5, -2.0, 1e-9]), 3.125),
            BaseSums(-7.0, np.array([0.5, 4.0]), 0.75))
    history = (HistorySums(-1.0, np.array([0.1, 0.2, 0.3]), 4.5, 17, "242", 881250949),
               HistorySums(2.0, np.array([-0.4, 0.8]), 1.5, 17, "242", 881250949))
    fields = {k.encode(): v if isinstance(v, bytes) else str(v).encode()
              for k, v in {**base_fields(base), **history_fields(history)}.items()}
    got_base, got_history = parse_fields(fields, widths=(3, 2))
    assert got_base is not None and got_history is not None
    assert [(b.L0, b.q0, b.s0.tolist()) for b in got_base] == [
        (0.25, 3.125, [1.5, -2.0, 1e-9]), (-7.0, 0.75, [0.5, 4.0])]
    for got, want in zip(got_history, history, strict=True):
        assert got == replace(want, A=got.A)
        assert got.A.tolist() == want.A.tolist()
    assert parse_fields(fields, widths=(3, 3)) == (None, None)  # another model's layout
    assert parse_fields({b"base": fields[b"base"], b"hist": b"short"}, widths=(3, 2))[1] is None
    assert parse_fields({}, widths=(3, 2)) == (None, None)


# --- the store on a real redis-server ------------------------------------------------------


@pytest.fixture
def settings(redis_server: RedisServer, tmp_path: Path) -> Settings:
    return service_settings(bundle=tmp_path, redis_url=redis_server.url, cache_ttl_s=100,
                    redis_retry_s=0.5)


@pytest.mark.anyio
async def test_profiles_histories_and_cached_sums(
        settings: Settings, redis_server: RedisServer) -> None:
    store = Store.open(settings)
    try:
        profiles = {"1": {"age": 24, "zip": "55105", "title": "ignored"}, "3": {"gender": "M"}}
        records = list(user_records(profiles, ["1", "2", "a:sums:b", "1"],
                                    ["10", "10", "10", "11"], [4.0, 1.0, 2.0, 3.5],
                                    [100, 150, 5, 200]))
        assert [uid for uid, _, _ in records] == ["1", "2", "a:sums:b", "3"]
        assert await store.load_users(records, chunk=3) == 4
        record = await store.read_user("m1", "1", widths=(2,), with_ratings=True)
        assert record.profile == {"age": "24", "zip": "55105"}
        assert record.ratings == {"10": Rating(4.0, 100), "11": Rating(3.5, 200)}
        assert record.base is None and record.history is None and record.known
        assert (await store.read_user("m1", "3", widths=(2,), with_ratings=False)).ratings is None
        unknown = await store.read_user("m1", "nobody", widths=(2,), with_ratings=True)
        assert not unknown.known

        base = (BaseSums(1.0, np.array([2.0, 3.0]), 4.0),)
        history = (HistorySums(5.0, np.array([6.0, 7.0]), 8.0, 2, "11", 200),)
        await store.write_sums("m1", "1", base, history)
        cached = await store.read_user("m1", "1", widths=(2,), with_ratings=False)
        assert cached.base is not None and cached.history is not None
        assert cached.base[0].s0.tolist() == [2.0, 3.0]
        assert cached.history[0].last_movie == "11"
        assert 0 < redis_server.client().ttl(sums_key("m1", "1")) <= 100
        other_model = await store.read_user("m2", "1", widths=(2,), with_ratings=False)
        assert other_model.base is None and other_model.history is None  # namespaced

        await store.write_sums("m1", "a:sums:b", base, None)
        await store.load_users(records[:1])  # new histories: cached sums go
        assert (await store.read_user("m1", "1", widths=(2,), with_ratings=False)).base is None
        weird = await store.read_user("m1", "a:sums:b", widths=(2,), with_ratings=True)
        assert weird.ratings == {"10": Rating(2.0, 5)}  # its history is primary data: kept
        assert weird.base is None
    finally:
        await store.close()


@pytest.mark.anyio
async def test_failures_raise_store_unavailable_back_off_and_recover(
        settings: Settings, redis_server: RedisServer) -> None:
    errors: list[Exception] = []
    store = Store.open(settings, on_error=errors.append)
    try:
        assert await store.ping() and store.status == "ok"
        redis_server.kill()
        with pytest.raises(StoreUnavailable):
            await store.read_user("m", "1", widths=(2,), with_ratings=False)
        assert len(errors) == 1 and store.status == "degraded"
        with pytest.raises(StoreUnavailable, match="not retried yet"):
            await store.read_ratings("1")
        assert len(errors) == 1  # skipped, not tried again
        assert not await store.ping()
        redis_server.start()
        assert await store.ping() and store.status == "ok"
        assert (await store.read_user("m", "1", widths=(2,), with_ratings=True)).ratings == {}
    finally:
        await store.close()


def test_a_socket_closed_under_uvloop_is_a_store_failure(
        settings: Settings, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
        ) -> None:
    """uvicorn runs on uvloop, which raises RuntimeError (not OSError) when redis-py writes
    to a socket whose Redis just died (seen when a cluster master was killed mid-replay):
    a StoreUnavailable (503 / scored without the store), never a 500. The socket is closed
    for real, under the pooled connection, on a real uvloop loop. uvloop 0.23 lets
    redis-py notice the closed socket and reconnect instead: then the read succeeds, and
    the RuntimeError, which can no longer be caused for real, is raised by the client."""

    async def scenario() -> None:
        store = Store.open(settings)
        try:
            assert await store.ping()
            (connection,) = store.raw_client.connection_pool._available_connections
            connection._writer.transport.abort()
            await asyncio.sleep(0)
            try:
                answered = dict(await store.read_ratings("1"))
            except StoreUnavailable as exc:
                assert "RuntimeError" in str(exc)
                assert store.status == "degraded"
            else:  # reconnected: the failure as older uvloop raised it, from the client
                assert answered == {}

                async def closed(key: str) -> Any:
                    raise RuntimeError("unable to perform operation on <TCPTransport "
                                       "closed=True>; the handler is closed")

                store.raw_client.hgetall = closed
                with pytest.raises(StoreUnavailable, match="RuntimeError"):
                    await store.read_ratings("1")
                assert store.status == "degraded"
                del store.raw_client.hgetall
            assert await store.ping() and dict(await store.read_ratings("1")) == {}
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="fmrec"):
        uvloop.run(scenario())
    assert "redis client raised" not in caplog.text  # a known failure: counted, not logged


@pytest.mark.anyio
async def test_an_odd_exception_of_the_client_is_a_store_failure_and_logged(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """redis-py can trip over a connection another task has just closed (an AttributeError
    on its writer, seen once when a cluster master was killed): a race that cannot be
    caused on demand, so the client's call raises it here."""
    store = Store.open(settings)

    async def tripped(key: str) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    try:
        monkeypatch.setattr(store.raw_client, "hgetall", tripped)
        with caplog.at_level(logging.WARNING, logger="fmrec"), pytest.raises(
                StoreUnavailable, match="AttributeError"):
            await store.read_ratings("1")
        assert "redis client raised AttributeError" in caplog.text
        assert store.status == "degraded"
    finally:
        await store.close()
