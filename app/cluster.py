"""Redis Cluster: how fmrec connects to one and spreads its change messages over it.

Convention (redis-py's): `FMREC_REDIS_CLUSTER=true` and `FMREC_REDIS_URL` naming one or
more nodes of the cluster, `redis://[user:password@]h1:7000[,h2:7001...]/0` (`rediss://`
for TLS): what `RedisCluster.from_url` takes, with extra seed nodes comma-separated in
case the first is down. The client learns the slot map from any seed.

Change messages (`app.near_cache`) go over sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis
>= 7.0): a plain PUBLISH on a cluster is copied to every node, which is what sharded
channels avoid. A user's changes go to one of `CHANNELS` channels chosen by its slot
(`fmrec:changes:{<n>}`, each living in its own slot, so spread over the masters); every
worker subscribes to all of them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

PREFIX = "fmrec"
CHANNELS = 16


def seed_urls(url: str) -> list[str]:
    """One URL per node named in a cluster URL (`redis://a:1,b:2/0` -> two URLs)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    prefix = f"{userinfo}@" if userinfo else ""
    return [urlunsplit(parts._replace(netloc=prefix + host.strip()))
            for host in hosts.split(",") if host.strip()]


def open_cluster(url: str, **options: Any) -> RedisCluster:
    """A RedisCluster client from a cluster URL; the other seeds are startup nodes.

    Slots whose master is down fail alone (`require_full_coverage=False`): users on the
    other masters keep being served.
    """
    first, *others = seed_urls(url)
    nodes = []
    for other in others:
        parts = urlsplit(other)
        nodes.append(ClusterNode(parts.hostname or "localhost", parts.port or 6379))
    if nodes:
        parts = urlsplit(first)
        options["startup_nodes"] = [ClusterNode(parts.hostname or "localhost",
                                                parts.port or 6379), *nodes]
    return RedisCluster.from_url(first, require_full_coverage=False, **options)


def slot(key: str) -> int:
    """The cluster slot of a key (its hash tag's, when it has one)."""
    return int(key_slot(key.encode()))


def channel(n: int) -> str:
    return f"{PREFIX}:changes:{{{n}}}"


def all_channels() -> list[str]:
    return [channel(n) for n in range(CHANNELS)]


def messages(uids_with_slots: Iterable[tuple[str, int]], everyone: bool
             ) -> dict[str, str]:
    """channel -> JSON list of the changed users it carries (`everyone`: all channels
    carry the message for every user, `["*"]`)."""
    if everyone:
        return {name: json.dumps(["*"]) for name in all_channels()}
    grouped: defaultdict[str, list[str]] = defaultdict(list)
    for uid, user_slot in uids_with_slots:
        grouped[channel(user_slot % CHANNELS)].append(uid)
    return {name: json.dumps(uids) for name, uids in grouped.items()}
