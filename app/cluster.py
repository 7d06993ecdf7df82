"""Redis Cluster: how fmrec connects to one and spreads its change messages over it.

Convention (redis-py's): `FMREC_REDIS_CLUSTER=true` and `FMREC_REDIS_URL` naming one or
more nodes of the cluster, `redis://[user:password@]h1:7000[,h2:7001...]/0` (`rediss://`
for TLS): what `RedisCluster.from_url` takes, with extra seed nodes comma-separated in
case the first is down. The client learns the slot map from any seed.

Change messages (`app.near_cache`) go over sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis
>= 7.0): a plain PUBLISH on a cluster is copied to every node, which is what sharded
channels avoid. A user's changes go to one of `CHANNELS` channels chosen by its slot
(`redis_layout.change_channel`, each living in its own slot, so spread over the masters);
every worker subscribes to all of them.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from app.redis_layout import ALL, CHANNELS, change_channel, change_channels, changes_message


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


def messages(uids_with_slots: Iterable[tuple[str, int]], everyone: bool
             ) -> dict[str, str]:
    """channel -> JSON list of the changed users it carries (`everyone`: all channels
    carry the message for every user, `["*"]`)."""
    if everyone:
        return {name: changes_message([ALL]) for name in change_channels()}
    grouped: defaultdict[str, list[str]] = defaultdict(list)
    for uid, user_slot in uids_with_slots:
        grouped[change_channel(user_slot % CHANNELS)].append(uid)
    return {name: changes_message(uids) for name, uids in grouped.items()}


async def follow_sharded(pubsub: ClusterPubSub, on_message: Callable[[bytes], None],
                         closing: Callable[[], bool]) -> None:
    """Hand every message of a cluster subscription to `on_message` as it arrives; raise
    when any master's connection breaks or one of its channels moves (resharding): the
    caller subscribes again.

    One reader per master, side by side: redis-py's `get_sharded_message` asks the masters
    one after the other, each for its whole timeout, which delays a message by up to
    (masters - 1) timeouts.
    """
    async def follow(node: PubSub) -> None:
        while not closing():
            message = await node.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "sunsubscribe":
                raise RedisConnectionError("a change channel moved to another master")
            if kind == "smessage":
                on_message(message["data"])

    tasks = [asyncio.create_task(follow(node))
             for node in list(pubsub.node_pubsub_mapping.values())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
