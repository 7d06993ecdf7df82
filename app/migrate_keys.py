"""`fmrec migrate-keys`: a store written under the pre-cluster key layout carried over to
the hash-tagged one (app/redis_layout.py), in place, on one Redis, the embedded one or a
cluster:

    fmrec:user:<uid>              -> fmrec:{u:<uid>}:profile   fields missing there only
    fmrec:user:<uid>:ratings      -> fmrec:{u:<uid>}:ratings   per movie, the later rating
    fmrec:user:<uid>:version      -> fmrec:{u:<uid>}:version   bumped
    fmrec:<model_id>:sums:<uid>   -> dropped, with every cached sum (derived; recomputed)
    fmrec:event:<event_id>        -> dropped (an old claim names no user, and the new
                                     layout claims an event id per user)

Merged, not copied: since the upgrade the service may have taken events into the new keys,
or `fmrec load-users` may have run again; a movie rated in both keeps the later timestamp
(ties: the new key's). One script per user writes the new keys in the user's slot; the
old keys are deleted after it. On a cluster old and new keys lie in different slots, so
the two steps are not one atomic step, but the merge is idempotent: a migration cut off
halfway is run again. A user id that itself ends in ":ratings" or ":version" cannot be
told apart in the old layout (which confused them too): such keys are taken as the
ratings or version of the id before the suffix.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from app.redis_layout import PREFIX, ratings_key, user_key, version_key
from app.store import Store

OLD_USER = f"{PREFIX}:user:"
OLD_CLAIMS = f"{PREFIX}:event:*"
OLD_SUMS = f"{PREFIX}:*:sums:*"  # also matches new-layout sums: told apart by `is_old_sums`
CHUNK = 500  # users whose scripts are in flight at once

# KEYS[1..3] the user's new profile, ratings, version; ARGV[1] the number of old profile
# field/value pairs, then those pairs, then the old ratings' movie/value pairs ("r:t").
# Returns the number of old ratings taken (a movie absent from the new hash, or rated
# later in the old one). The version is bumped: sums cached from the new keys are stale.
MIGRATE_USER = """
local n = tonumber(ARGV[1])
for i = 2, 1 + 2 * n, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
local function stamp(value)
  return tonumber(string.match(value, ':(%-?%d+)$')) or 0
end
local taken = 0
for i = 2 + 2 * n, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[2], ARGV[i])
  if not current or stamp(ARGV[i + 1]) > stamp(current) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    taken = taken + 1
  end
end
redis.call('INCR', KEYS[3])
return taken
"""


@dataclass
class Migrated:
    """What a migration did, for its one JSON line."""

    users: int = 0
    ratings_taken: int = 0  # old ratings written into the new hashes
    ratings_kept: int = 0  # old ratings dropped: the new hash had the movie, rated later
    old_keys_deleted: int = 0
    old_sums_dropped: int = 0
    old_claims_dropped: int = 0
    cached_sums_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def old_user_keys(keys: list[bytes]) -> dict[str, dict[str, bytes]]:
    """Old-layout keys grouped by user: uid -> {"profile"|"ratings"|"version": key}."""
    users: dict[str, dict[str, bytes]] = defaultdict(dict)
    start = len(OLD_USER)
    for key in keys:
        rest = key.decode()[start:]
        for kind in ("ratings", "version"):
            if rest.endswith(f":{kind}"):
                users[rest[:-len(kind) - 1]][kind] = key
                break
        else:
            users[rest]["profile"] = key
    return dict(users)


def is_old_sums(key: bytes) -> bool:
    """`fmrec:<model_id>:sums:<uid>`, not a new-layout key nor an old user key (whose id
    may hold ":sums:")."""
    return not key.startswith(f"{PREFIX}:{{u:".encode()) and not key.startswith(
        OLD_USER.encode())


async def _scan(client: Any, pattern: str) -> list[bytes]:
    return [key async for key in client.scan_iter(match=pattern, count=1000)]


async def _unlink(client: Any, keys: list[bytes]) -> int:
    for start in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start:start + 1000]:  # keys of many slots: one by one
            pipe.execute_command("UNLINK", key)
        await pipe.execute()
    return len(keys)


async def _migrate_user(store: Store, uid: str, old: dict[str, bytes],
                        done: Migrated) -> None:
    client = store.raw_client
    profile = await client.hgetall(old["profile"]) if "profile" in old else {}
    ratings = await client.hgetall(old["ratings"]) if "ratings" in old else {}
    args = [len(profile), *(x for kv in profile.items() for x in kv),
            *(x for kv in ratings.items() for x in kv)]
    taken = int(await store.run_script(MIGRATE_USER, [user_key(uid), ratings_key(uid),
                                                      version_key(uid)], args))
    done.ratings_taken += taken
    done.ratings_kept += len(ratings) - taken
    done.old_keys_deleted += await _unlink(client, list(old.values()))
    done.users += 1


async def migrate(store: Store, progress: Callable[[int], None] | None = None) -> Migrated:
    """Carry every old-layout user over (CHUNK at a time), then drop old claims, old
    sums and every cached sum (a merged history or profile makes them stale)."""
    done = Migrated()
    client = store.raw_client
    users = old_user_keys(await _scan(client, f"{OLD_USER}*"))
    uids = sorted(users)
    for start in range(0, len(uids), CHUNK):
        chunk = uids[start:start + CHUNK]
        await asyncio.gather(*(_migrate_user(store, uid, users[uid], done) for uid in chunk))
        if progress is not None:
            progress(len(chunk))
    done.old_claims_dropped = await _unlink(client, await _scan(client, OLD_CLAIMS))
    done.old_sums_dropped = await _unlink(
        client, [k for k in await _scan(client, OLD_SUMS) if is_old_sums(k)])
    done.cached_sums_dropped = await store.drop_cached_sums()
    return done
