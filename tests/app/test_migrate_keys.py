"""`fmrec migrate-keys` on a real redis-server (and, through
tests/app/test_cluster_suites_online.py, on a 3-master cluster): a store written under the
pre-cluster layout, partly overtaken by new-layout writes, comes out as the merge a plain
dict computation gives; old keys, old claims and every cached sum are gone; other keys
and new claims stay; a second run changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.cli import main
from app.migrate_keys import old_user_keys
from app.redis_layout import claim_key, ratings_key, sums_key, user_key, version_key
from tests.support.online_reference import stored_history
from tests.support.redis_server import RedisServer, free_port

# Old layout (before the hash tags): uid -> profile, ratings, version
OLD: dict[str, dict[str, Any]] = {
    "1": {"profile": {"age": "30", "gender": "M"},
          "ratings": {"10": "4.0:100", "11": "3.0:200", "13": "1.0:300"}, "version": "5"},
    "2": {"profile": {}, "ratings": {"10": "1.0:500"}, "version": "1"},
    "a:b": {"profile": {"occupation": "writer"}, "ratings": {"7": "2.5:10"}, "version": None},
    "x:sums:y": {"profile": {"zip": "12345"}, "ratings": {}, "version": None},
}
# What the service wrote into the new layout since the upgrade
NEW: dict[str, dict[str, Any]] = {
    "1": {"profile": {"age": "31"}, "ratings": {"11": "5.0:300", "12": "2.0:50",
                                                "13": "4.0:300"}, "version": 2},
    "2": {"profile": {}, "ratings": {"10": "5.0:400"}, "version": 7},
}


def merged(uid: str) -> tuple[dict[str, str], dict[str, str]]:
    """The slow obvious reference: new profile fields win; per movie the later timestamp
    wins, a tie keeps the new rating."""
    old, new = OLD[uid], NEW.get(uid, {"profile": {}, "ratings": {}})
    profile = {**old["profile"], **new["profile"]}
    ratings = dict(new["ratings"])
    for movie, value in old["ratings"].items():
        if movie not in ratings or int(value.split(":")[1]) > int(
                ratings[movie].split(":")[1]):
            ratings[movie] = value
    return profile, ratings


def write_old_and_new(redis: Any) -> None:
    for uid, user in OLD.items():
        if user["profile"]:
            redis.hset(f"fmrec:user:{uid}", mapping=user["profile"])
        if user["ratings"]:
            redis.hset(f"fmrec:user:{uid}:ratings", mapping=user["ratings"])
        if user["version"]:
            redis.set(f"fmrec:user:{uid}:version", user["version"])
    for uid, user in NEW.items():
        if user["profile"]:
            redis.hset(user_key(uid), mapping=user["profile"])
        redis.hset(ratings_key(uid), mapping=user["ratings"])
        redis.set(version_key(uid), user["version"])
    redis.hset("fmrec:m0del:sums:1", "n", 3)  # old cached sums
    redis.hset(sums_key("m0del", "1"), "n", 2)  # new cached sums, stale after the merge
    redis.set("fmrec:event:u.test:1", "1")  # old claim
    redis.set(claim_key("1", "u.test:2"), "1")  # new claim
    redis.set("other:key", "kept")


def migrate(capsys: pytest.CaptureFixture[str], url: str) -> dict[str, Any]:
    assert main(["migrate-keys", "--redis-url", url]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_old_layout_is_merged_into_the_hash_tagged_one(
        redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    redis = redis_server.client()
    write_old_and_new(redis)
    done = migrate(capsys, redis_server.url)
    taken = sum(1 for uid in OLD for movie, value in OLD[uid]["ratings"].items()
                if merged(uid)[1][movie] == value and NEW.get(uid, {"ratings": {}})[
                    "ratings"].get(movie) != value)
    assert done["users"] == len(OLD) and done["ratings_taken"] == taken
    assert done["ratings_taken"] + done["ratings_kept"] == sum(
        len(u["ratings"]) for u in OLD.values())
    assert (done["old_sums_dropped"], done["old_claims_dropped"]) == (1, 1)
    assert done["cached_sums_dropped"] == 1
    for uid in OLD:
        profile, ratings = merged(uid)
        assert {k.decode(): v.decode() for k, v in redis.hgetall(user_key(uid)).items()
                } == profile
        assert {k.decode(): v.decode() for k, v in redis.hgetall(ratings_key(uid)).items()
                } == ratings
        history = stored_history(redis, uid)  # as the service reads it
        assert {m: f"{r.rating!r}:{r.timestamp}" for m, r in history.items()} == ratings
        before = NEW.get(uid, {"version": 0})["version"]
        assert int(redis.get(version_key(uid))) == before + 1  # cached hist parts: stale
    assert not list(redis.scan_iter(match="fmrec:user:*"))
    assert not list(redis.scan_iter(match="fmrec:event:*"))
    assert sorted(redis.scan_iter(match="fmrec:*:sums:*")) == [  # a user's, not sums
        b"fmrec:{u:x:sums:y}:profile", b"fmrec:{u:x:sums:y}:version"]
    assert redis.get(claim_key("1", "u.test:2")) == b"1"
    assert redis.get("other:key") == b"kept"

    keys_before = sorted(redis.scan_iter(match="*"))
    versions = [redis.get(version_key(uid)) for uid in OLD]
    again = migrate(capsys, redis_server.url)
    assert again["users"] == 0 and again["ratings_taken"] == 0
    assert sorted(redis.scan_iter(match="*")) == keys_before
    assert [redis.get(version_key(uid)) for uid in OLD] == versions


def test_old_keys_are_grouped_by_user_whatever_their_ids_hold() -> None:
    keys = [b"fmrec:user:1", b"fmrec:user:1:ratings", b"fmrec:user:1:version",
            b"fmrec:user:a:b", b"fmrec:user:a:b:ratings", b"fmrec:user:x:sums:y"]
    assert old_user_keys(keys) == {
        "1": {"profile": b"fmrec:user:1", "ratings": b"fmrec:user:1:ratings",
              "version": b"fmrec:user:1:version"},
        "a:b": {"profile": b"fmrec:user:a:b", "ratings": b"fmrec:user:a:b:ratings"},
        "x:sums:y": {"profile": b"fmrec:user:x:sums:y"}}


def test_an_unreachable_store_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["migrate-keys", "--redis-url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fmrec: error: cannot migrate"), err
