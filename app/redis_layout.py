"""Everything fmrec keeps in Redis: the keys, how values are encoded, and the Lua scripts.

    fmrec:{u:<uid>}:profile           hash  age, gender, occupation, zip
    fmrec:{u:<uid>}:ratings           hash  movie id -> "rating:timestamp"
    fmrec:{u:<uid>}:version           int   bumped by every change of the ratings hash
    fmrec:{u:<uid>}:sums:<model_id>   hash  base / hist (packed <f8), n, last, last_time,
                                            ver (the history version hist reflects); TTL
    fmrec:{u:<uid>}:event:<event_id>  str   claim of a rating event (SET NX, `CLAIM_TTL_S`)
    fmrec:changes                     pub/sub  JSON list of user ids whose data changed
    fmrec:changes:{<n>}               sharded pub/sub, the same on a Redis Cluster (a
                                      user's changes go to one of `CHANNELS` channels,
                                      chosen by its slot, spread over the masters)

Every key of a user carries the hash tag `{u:<uid>}`: on a Redis Cluster they share one
slot, so the Lua scripts over them (and the event-id claim) stay single-slot. This layout
replaced `fmrec:user:<uid>...`: a store written before it is read as empty until
`fmrec load-users` runs again (docs/scale-out.md).

One module so that a change of layout is made in one place: `app.store` reads and writes
through these names, `app.online` runs `APPLY_EVENTS`, `app.cluster` routes by these keys,
and the maths of the packed parts (what base and hist mean) stays in `app.user_sums`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.user_sums import Bases, BaseSums, Histories, HistorySums

PREFIX = "fmrec"
CHANGES = f"{PREFIX}:changes"
ALL = "*"  # published instead of user ids when every user may have changed
CHANNELS = 16  # sharded change channels on a Redis Cluster
PROFILE_FIELDS = ("age", "gender", "occupation", "zip")
SUMS_PATTERN = f"{PREFIX}:{{u:*}}:sums:*"  # every model's cached sums (check `is_sums_key`)
VERSION_FIELD = "ver"  # in the sums hash: the history version its hist part reflects
CLAIM_TTL_S = 30 * 86400  # how long an event id is remembered (retries come much sooner)


def user_tag(uid: str) -> str:
    """The start of every key of this user: its hash tag decides its cluster slot."""
    return f"{PREFIX}:{{u:{uid}}}"


def user_key(uid: str) -> str:
    return f"{user_tag(uid)}:profile"


def ratings_key(uid: str) -> str:
    return f"{user_tag(uid)}:ratings"


def version_key(uid: str) -> str:
    return f"{user_tag(uid)}:version"


def sums_key(model_id: str, uid: str) -> str:
    return f"{user_tag(uid)}:sums:{model_id}"


def claim_key(uid: str, event_id: str) -> str:
    """In the user's slot, so an event id is unique per user."""
    return f"{user_tag(uid)}:event:{event_id}"


def is_sums_key(key: bytes) -> bool:
    """A cached-sums key, not a profile, history or claim of a user whose id holds
    ":sums:" (model ids hold no '}', so after a sums key's last '}' comes ":sums:<id>")."""
    return key.rpartition(b"}")[2].startswith(b":sums:")


def change_channel(n: int) -> str:
    """Sharded change channel n of `CHANNELS` (its own hash tag: its own slot)."""
    return f"{CHANGES}:{{{n}}}"


def change_channels() -> list[str]:
    return [change_channel(n) for n in range(CHANNELS)]


@dataclass(frozen=True)
class Rating:
    rating: float
    timestamp: int


def rating_value(rating: float, timestamp: int) -> str:
    """A ratings hash value: "rating:timestamp"."""
    return f"{rating!r}:{timestamp}"


def parse_rating(value: bytes) -> Rating:
    rating, _, stamp = value.partition(b":")
    return Rating(float(rating), int(stamp or 0))


class StoredRatings(Mapping[str, Rating]):
    """A ratings hash as read, each value parsed when asked for: /recommend needs only
    which movies were rated, and parsing every value was a quarter of its CPU."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Mapping[bytes, bytes]) -> None:
        self._raw = raw

    def __getitem__(self, movie: str) -> Rating:
        return parse_rating(self._raw[movie.encode()])

    def __contains__(self, movie: object) -> bool:
        return isinstance(movie, str) and movie.encode() in self._raw

    def __iter__(self) -> Iterator[str]:
        return (movie.decode() for movie in self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"StoredRatings({dict(self)!r})"

    def text_bytes(self) -> int:
        """Characters of the raw keys and values held (for a memory estimate)."""
        return sum(len(movie) + len(value) for movie, value in self._raw.items())


def cached_version(fields: Mapping[bytes, bytes]) -> bytes:
    """The history version a sums hash's hist part reflects, as stored (b"0": none)."""
    return fields.get(VERSION_FIELD.encode(), b"0")


def changes_message(uids: Sequence[str]) -> str:
    return json.dumps(list(uids))


def changed_users(data: bytes | str) -> list[str]:
    """User ids of one changes message (a JSON list); anything else means everyone."""
    try:
        uids = json.loads(data)
    except ValueError:
        return [ALL]
    return [str(u) for u in uids] if isinstance(uids, list) else [ALL]


# --- Lua scripts (atomic in Redis; run through `Store.run_script`)

# KEYS[1..] one user's profile, ratings and version; ARGV[1] the number of profile field/
# value pairs, then those pairs, then the ratings' pairs. A user is never half-written.
# (`fmrec load-users` on a cluster, where a MULTI/EXEC cannot span users' slots.)
LOAD_USER = """
local function hset(key, first, last)  -- in slices: unpack() has a stack limit
  for pos = first, last, 1000 do
    redis.call('HSET', key, unpack(ARGV, pos, math.min(pos + 999, last)))
  end
end
local n = tonumber(ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('INCR', KEYS[3])
hset(KEYS[1], 2, 1 + 2 * n)
hset(KEYS[2], 2 + 2 * n, #ARGV)
return 1
"""


# KEYS[1] sums hash, KEYS[2] the user's history version; ARGV[1] TTL, ARGV[2] the version
# the history part was computed at ('' = take it as current), ARGV[3..] its field/value
# pairs. Refused (0) when an event changed the history since: it must not be undone.
WRITE_HISTORY = """
local current = redis.call('GET', KEYS[2]) or '0'
if ARGV[2] ~= '' and ARGV[2] ~= current then
  return 0
end
redis.call('HSET', KEYS[1], 'ver', current, unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


# Per event i: KEYS[4i-3] its claim, KEYS[4i-2] the user's ratings hash, KEYS[4i-1] the
# user's history version, KEYS[4i] the model's sums hash. ARGV[1] sums TTL, ARGV[2] claim
# TTL, ARGV[4i-1 .. 4i+2]: movie, "rating:timestamp", timestamp, its packed <f8 row.
# Returns {accepted, duplicates, stale}. Nothing in it can fail on checked input.
APPLY_EVENTS = """
local sums_ttl, claim_ttl, starred = ARGV[1], ARGV[2], ARGV[3] == '1'
local accepted, duplicates, stale = 0, 0, 0

local function add(a, b)  -- elementwise sum of two packed <f8 vectors
  local out = {}
  for pos = 1, #a, 8 do
    out[#out + 1] = struct.pack('<d', struct.unpack('<d', a, pos) + struct.unpack('<d', b, pos))
  end
  return table.concat(out)
end

local function later(ts, movie, last_ts, last)  -- (ts, movie) after (last_ts, last)?
  if not last then return true end
  if ts ~= last_ts then return ts > last_ts end
  for pos = 1, math.min(#movie, #last) do  -- equal times: the larger id, byte by byte
    local x, y = movie:byte(pos), last:byte(pos)  -- (not by the server's locale)
    if x ~= y then return x > y end
  end
  return #movie > #last
end

for i = 1, #KEYS / 4 do
  local claim, ratings, version, sums = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  local movie, value, ts, row = ARGV[4*i], ARGV[4*i+1], tonumber(ARGV[4*i+2]), ARGV[4*i+3]
  if not redis.call('SET', claim, '1', 'NX', 'EX', claim_ttl) then
    duplicates = duplicates + 1
  else
    accepted = accepted + 1
    local old = redis.call('HGET', ratings, movie)
    if old and (tonumber(string.match(old, ':(%d+)$')) or 0) > ts then
      stale = stale + 1
    else
      redis.call('HSET', ratings, movie, value)
      local now = redis.call('INCR', version)
      local h = redis.call('HMGET', sums, 'hist', 'n', 'last', 'last_time', 'ver')
      local hist, n, last, last_time = h[1], tonumber(h[2]), h[3], tonumber(h[4]) or 0
      local restarred = starred and old and string.match(old, '^(.-):')
                        ~= string.match(value, '^(.-):')
      if restarred then  -- its row changed (not O(k) here): the next read recomputes it
        redis.call('HDEL', sums, 'hist', 'n', 'last', 'last_time', 'ver')
      elseif hist and n and #hist == #row and tonumber(h[5] or '0') == now - 1 then
        if not old then
          hist, n = add(hist, row), n + 1
        end
        if later(ts, movie, last_time, last) then
          last, last_time = movie, ts
        end
        redis.call('HSET', sums, 'hist', hist, 'n', n, 'last', last, 'last_time', last_time,
                   'ver', now)
        redis.call('EXPIRE', sums, sums_ttl)
      end
    end
  end
end
return {accepted, duplicates, stale}
"""


# --- the sums hash: little-endian float64, so a Lua script (struct '<d') can update it:
# per head [L0, q0, s0...] ("base") and [C, B, A...] ("hist"), heads one after the other


def base_fields(bases: Bases) -> dict[str, bytes]:
    return {"base": b"".join(struct.pack(f"<{2 + len(b.s0)}d", b.L0, b.q0, *b.s0)
                             for b in bases)}


def history_fields(histories: Histories) -> dict[str, bytes | str | int]:
    first = histories[0]  # count and latest movie are the same for every head
    fields: dict[str, bytes | str | int] = {
        "hist": b"".join(struct.pack(f"<{2 + len(h.A)}d", h.C, h.B, *h.A) for h in histories),
        "n": first.n, "last_time": first.last_time}
    if first.last_movie is not None:
        fields["last"] = first.last_movie
    return fields


def _split(raw: bytes | None, widths: Sequence[int]) -> list[np.ndarray] | None:
    """Per head (k given by `widths`), its packed [x, y, vector...]; None if malformed."""
    if raw is None or len(raw) != 8 * sum(k + 2 for k in widths):
        return None
    floats = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    return np.split(floats, np.cumsum([k + 2 for k in widths])[:-1])


def parse_fields(fields: Mapping[bytes, bytes], widths: Sequence[int]
                 ) -> tuple[Bases | None, Histories | None]:
    """The cached parts in a sums hash; a part that is absent or malformed is None (a miss)."""
    bases = histories = None
    packed = _split(fields.get(b"base"), widths)
    if packed is not None:
        bases = tuple(BaseSums(float(p[0]), p[2:], float(p[1])) for p in packed)
    packed = _split(fields.get(b"hist"), widths)
    if packed is not None:
        try:
            n = int(fields[b"n"])
            last_time = int(fields.get(b"last_time", b"0"))
        except (KeyError, ValueError):
            return bases, None
        raw_last = fields.get(b"last")
        last = raw_last.decode() if raw_last is not None else None
        histories = tuple(HistorySums(float(p[0]), p[2:], float(p[1]), n, last, last_time)
                          for p in packed)
    return bases, histories
