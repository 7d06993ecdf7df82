"""The store on a real 3-master Redis Cluster: `fmrec load-users`'s writes (one script
per user, pipelined), its progress, dropping cached sums across masters; and the pure
parts of cluster support (seed URLs, slot groups, change channels, the key layout)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from app import cluster
from app.cli import main
from app.online import slot_groups
from app.redis_layout import (
    CHANNELS,
    change_channel,
    change_channels,
    claim_key,
    is_sums_key,
    ratings_key,
    sums_key,
    user_key,
    version_key,
)
from app.schemas import RatingEvent
from app.settings import Settings
from app.store import Rating, Store, load_dataset_users, load_progress
from model.blocks import user_histories
from model.data import Dataset
from model.data.synthetic import synthetic
from model.features import FeatureSpec
from tests.support.api_client import service_settings
from tests.support.online_reference import stored_history
from tests.support.redis_cluster import RedisCluster3

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster3]:
    started = RedisCluster3(tmp_path, appendonly=False).start()
    yield started
    started.stop()


async def test_load_users_into_a_cluster_with_progress(
        redis_cluster: RedisCluster3, small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    settings = service_settings(redis_url=redis_cluster.url, redis_cluster=True)
    admin = redis_cluster.client()
    weird = "x}:sums:m"  # its profile key looks like a sums key up to its last '}'
    admin.hset(user_key(weird), "age", "30")
    admin.hset(sums_key("m1", "1"), "base", b"x")
    admin.hset(sums_key("m2", weird), "base", b"x")
    lines = io.StringIO()
    with load_progress(data, lines) as advance:
        users = await load_dataset_users(settings, data, advance)
    expected_users = set(data.users) | set(data.train.user.astype(str))
    assert users == len(expected_users)
    assert lines.getvalue().splitlines()[-1] == f"load-users: {users}/{users} users"
    histories = user_histories(data.train)
    by_master = [0, 0, 0]
    for uid in expected_users:
        stored = stored_history(admin, uid)
        train = data.train
        rows = train.user.astype(str) == uid
        assert stored == {str(m): Rating(float(r), int(t)) for m, r, t in zip(
            train.item[rows], train.rating[rows], train.timestamp[rows], strict=True)}
        assert sorted(stored) == sorted(histories.get(uid, []))
        profile = {k.decode(): v.decode() for k, v in admin.hgetall(user_key(uid)).items()}
        assert profile == {k: str(v) for k, v in data.users.get(uid, {}).items()
                           if v is not None}
        assert int(admin.get(version_key(uid))) >= 1
        by_master[redis_cluster.node_of(ratings_key(uid))] += 1
    assert all(by_master), by_master  # the users really are spread over the masters
    assert not admin.exists(sums_key("m1", "1"), sums_key("m2", weird))  # cached: dropped
    assert admin.hgetall(user_key(weird)) == {b"age": b"30"}  # not a sums key: kept


async def test_store_reads_and_write_backs_on_a_cluster(redis_cluster: RedisCluster3) -> None:
    settings = service_settings(redis_url=redis_cluster.url, redis_cluster=True)
    store = Store.open(settings)
    try:
        await store.load_users([("7", {"age": 30}, {"5": Rating(4.0, 100)})])
        record = await store.read_user("m", "7", widths=(2,), with_ratings=True)
        assert record.profile == {"age": "30"} and record.ratings == {"5": Rating(4.0, 100)}
        assert record.version == 1
        assert await store.ping() and store.status == "ok"
    finally:
        await store.close()


def test_cli_load_users_into_a_cluster(
        redis_cluster: RedisCluster3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`fmrec load-users --redis-cluster`: the flag reaches the settings (not through the
    environment), and the cluster's URL without it is a one-line error, nothing written."""
    monkeypatch.delenv("FMREC_REDIS_CLUSTER", raising=False)
    tiny = ["--synthetic", "3000", "--hash-bits", "12"]
    bundle = tmp_path / "tiny"
    assert main(["train", *tiny, "--epochs", "1", "--k", "4", "--out", str(bundle),
                 "--quiet"]) == 0
    capsys.readouterr()
    admin = redis_cluster.client()
    load = ["load-users", "--bundle", str(bundle), *tiny, "--redis-url", redis_cluster.url]
    assert main(load) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmrec: error: bad setting: FMREC_REDIS_URL names several hosts")
    assert "FMREC_REDIS_CLUSTER=true" in err and "FMREC_:" not in err, err
    assert len(err.splitlines()) == 1 and admin.dbsize() == 0
    assert main([*load, "--redis-cluster"]) == 0
    assert "FMREC_REDIS_CLUSTER" not in os.environ
    report = json.loads(capsys.readouterr().out)
    data, _ = synthetic(3000, hash_bits=12)
    assert report["users"] == len(set(data.users) | set(data.train.user))
    some = str(data.train.user[0])
    assert stored_history(admin, some) == {
        str(m): Rating(float(r), int(t)) for u, m, r, t in zip(
            data.train.user, data.train.item, data.train.rating, data.train.timestamp,
            strict=True) if str(u) == some}


def test_seed_urls_keep_the_credentials_for_every_node() -> None:
    assert cluster.seed_urls("redis://u:p@a:1,b:2/0") == ["redis://u:p@a:1/0",
                                                         "redis://u:p@b:2/0"]
    assert cluster.seed_urls("rediss://a:1") == ["rediss://a:1"]


def test_cluster_settings_and_their_errors() -> None:
    settings = Settings(redis_url="redis://:secret@a:1,b:2/0", redis_cluster=True)
    assert settings.store_description() == "redis cluster redis://:***@a:1,b:2/0"
    with pytest.raises(ValidationError, match="FMREC_REDIS_CLUSTER=true"):
        Settings(redis_url="redis://a:1,b:2/0")
    with pytest.raises(ValidationError, match="over TCP"):
        Settings(redis_url="unix:///tmp/r.sock", redis_cluster=True)


def test_every_key_of_a_user_shares_its_slot() -> None:
    for uid in ("1", "a:b", "x}:y", "{z}"):
        slots = {cluster.slot(k) for k in (
            user_key(uid), ratings_key(uid), version_key(uid), sums_key("m", uid),
            claim_key(uid, "e1"))}
        assert len(slots) == 1, uid
    assert len({cluster.slot(user_key(str(u))) for u in range(50)}) > 40  # spread


def test_sums_keys_are_told_from_a_users_other_keys() -> None:
    for uid in ("1", "x}:sums:m", "a:sums:b"):
        assert is_sums_key(sums_key("m1", uid).encode())
        for key in (user_key(uid), ratings_key(uid), version_key(uid)):
            assert not is_sums_key(key.encode()), key


def test_a_batch_is_split_by_slot_in_order_on_a_cluster_only() -> None:
    events = [RatingEvent(event_id=f"e{n}", user_id=str(u), movie_id="1", rating=3.0,
                          timestamp=n) for n, u in enumerate([1, 2, 1, 3, 2, 1])]
    assert slot_groups(events, by_slot=False) == [[0, 1, 2, 3, 4, 5]]
    groups = slot_groups(events, by_slot=True)
    assert sorted(n for group in groups for n in group) == list(range(6))
    for group in groups:
        assert group == sorted(group)
        assert len({cluster.slot(user_key(events[n].user_id)) for n in group}) == 1
    assert [0, 2, 5] in groups  # user 1's events, in their order, in one script
    assert slot_groups([], by_slot=True) == slot_groups([], by_slot=False) == []


def test_change_messages_go_to_the_users_channel() -> None:
    sent = cluster.messages([("1", 5), ("2", 5 + CHANNELS), ("3", 6)], False)
    assert sent == {change_channel(5): '["1", "2"]', change_channel(6): '["3"]'}
    everyone = cluster.messages([], True)
    assert set(everyone) == set(change_channels())
    assert len({cluster.slot(c) for c in change_channels()}) == CHANNELS
