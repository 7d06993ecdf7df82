"""Payload dicts -> sparse rows, one block per side (user / item / context).

This is the only hashing code in fmrec: training, evaluation, the bundle and the service
all call `FeatureMap.encode`, so a payload gets the same features everywhere.

A feature is `side.field=value` hashed with BLAKE2b (stable and seedless, unlike Python's
`hash()`) into `2**hash_bits` buckets. Numeric fields hash `side.field` and carry a value
scaled to [0, 1] by the range seen in training (clipped outside it, so a timestamp from
2026 cannot blow up a linear term). Multi-valued fields (genres, rated movies) give each
value the weight 1/n ("mean") or 1/sqrt(n) ("sqrt"). A "graded" field is a multi field
whose values carry a number: [value, number] pairs, each the feature `side.field=value`
with (number - centre) times that weight, the centre fitted on training (the user's
stars: how a user rated, not only what). A "size" field reads another field's
list and emits one categorical token for its length (log2 buckets, short lists only): how
much a user has rated, which `app.user_sums` adds from the history count in O(1).

Collisions: two features that hash to one bucket share parameters (the hashing trick).
The FM treats every feature *occurrence* as its own term, so rows may repeat an index and
side sums stay additive, which is what lets /ratings update a user in O(k).
`collision_report` counts how many distinct features share buckets in a data set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np

Side = Literal["user", "item", "context"]
Kind = Literal["categorical", "multi", "graded", "numeric", "size"]
KINDS = ("categorical", "multi", "graded", "numeric", "size")
SIDES: tuple[Side, ...] = ("user", "item", "context")
HISTORY_FIELD = "rated"  # the user's rated movies: the field every history path reads
STARS_FIELD = "rated_stars"  # their stars: [movie, stars] pairs, parallel to HISTORY_FIELD


class FeatureError(ValueError):
    """A payload that cannot be encoded (wrong type for a field); names the field."""


class SpecError(ValueError):
    """A feature spec that this code cannot reproduce or does not understand."""


def _blake_bucket(key: str, hash_bits: int) -> int:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << hash_bits) - 1)


# Memory of one cached key (the key string, the int, the LRU's link and dict slot), an
# upper estimate: tracemalloc counts ~170 bytes for a 75-character key (tests/model/test_features).
HASH_CACHE_ENTRY_BYTES = 400
DEFAULT_HASH_CACHE_BYTES = 16 << 20
_cached_bucket = lru_cache(maxsize=DEFAULT_HASH_CACHE_BYTES // HASH_CACHE_ENTRY_BYTES)(
    _blake_bucket)
# Keys unique to one user or one user-day: callers make new ones at will (every new user,
# every session), so caching them only grows the cache and evicts the useful entries.
UNCACHED_FIELDS = frozenset({"user.id", "context.session"})


def size_hash_cache(max_bytes: int) -> None:
    """Bound the cache of `feature_hash` to about `max_bytes` (FMREC_HASH_CACHE_BYTES)."""
    global _cached_bucket
    _cached_bucket = lru_cache(maxsize=max_bytes // HASH_CACHE_ENTRY_BYTES)(_blake_bucket)


def hash_cache_size() -> int:
    """Keys cached now."""
    return _cached_bucket.cache_info().currsize


def feature_hash(key: str, hash_bits: int, cache: bool = True) -> int:
    """Stable bucket of a feature key: same on every machine, process and Python version.

    Cached (most keys repeat: catalog movies, genres, ages) in an LRU of bounded size."""
    return _cached_bucket(key, hash_bits) if cache else _blake_bucket(key, hash_bits)


def session_of(user_id: str, timestamp: float) -> str:
    """The context feature "session": the user and the UTC day of the event.

    A per-user-per-day bias and factor (timeSVD++'s day-specific user effect): people
    rate a whole sitting higher or lower. It helps wherever the model has seen the user
    on that day (offline evaluation, backfills); on a new day it is a feature the model
    never trained, so it adds nothing and the score falls back to the rest.
    """
    return f"{user_id}@{int(timestamp // 86400)}"


def day_of(timestamp: float) -> int:
    """The context feature "day": the UTC day of the event, shared by every user.

    A per-day bias and factor (myFM's date column): what the whole site rated that day.
    Like the session it helps only on days the model trained on.
    """
    return int(timestamp // 86400)


def context_payload(user_id: str | None, timestamp: float, last_movie: str | None
                    ) -> dict[str, Any]:
    """The context payload the feature map reads, as training builds it for every rating."""
    out: dict[str, Any] = {"time": timestamp, "day": day_of(timestamp)}
    if last_movie is not None:
        out["last_movie"] = last_movie
    if user_id is not None:
        out["session"] = session_of(user_id, timestamp)
    return out


def with_session(context: Mapping[str, Any], user_id: str | None) -> dict[str, Any]:
    """`context` plus the session and day `context_payload` derives from its time (unless
    it has them)."""
    if "time" not in context:
        return dict(context)
    out = {"day": day_of(context["time"]), **context}
    if "session" not in out and user_id is not None:
        out["session"] = session_of(user_id, context["time"])
    return out


@dataclass(frozen=True)
class Field:
    """One payload key of one side and how it becomes features."""

    name: str
    side: Side
    kind: Kind
    prefix: int = 0  # categorical: keep only the first `prefix` characters (zip codes)
    weighting: Literal["mean", "sqrt"] = "mean"  # multi, graded: weight of each of n values
    centre: float = 0.0  # graded: a number's value is (number - centre) times the weight
    low: float = 0.0  # numeric: training range, mapped to [0, 1]
    high: float = 1.0
    of: str = ""  # size: the multi field whose list length this field encodes
    below: int = 0  # size: lists this long or longer emit no token

    @property
    def key(self) -> str:
        return f"{self.side}.{self.name}"

    @property
    def source(self) -> str:
        """The payload key this field reads (a size field reads another field's list)."""
        return self.of or self.name

    def size_value(self, n: int) -> str | None:
        """A size field's value for a list of n: its log2 bucket ("0": 1, "1": 2-3,
        "2": 4-7, ...), None for an empty list or one of `below` or more."""
        return None if n <= 0 or n >= self.below else str(int(n).bit_length() - 1)

    def token(self, value: Any) -> str:
        """The hashed key of one categorical value of this field."""
        text = str(value)
        if self.prefix:
            text = text[: self.prefix]
        return f"{self.key}={text}"


@dataclass(frozen=True)
class SparseRows:
    """A block of sparse rows in CSR form; `indices` may repeat within a row."""

    indptr: np.ndarray  # int64, n_rows + 1
    indices: np.ndarray  # int32
    values: np.ndarray  # float32

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def row_ids(self) -> np.ndarray:
        """Row number of every non-zero (the segment ids of a segment sum)."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int32), np.diff(self.indptr))

    def take(self, rows: np.ndarray) -> SparseRows:
        """The rows `rows` (in that order) as a new block, without a Python loop."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        gather = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return SparseRows(indptr, self.indices[gather], self.values[gather])

    def remap(self, columns: np.ndarray) -> SparseRows:
        """Indices replaced by their position in the sorted `columns`; others dropped.

        The trainer works on the few thousand columns its data uses instead of all
        2**hash_bits buckets. A dropped index is one the model never trained, which the
        exported model holds at zero, so dropping it changes no score.
        """
        position = np.minimum(np.searchsorted(columns, self.indices), max(len(columns) - 1, 0))
        known = (columns[position] == self.indices) if len(columns) else np.zeros(self.nnz, bool)
        if known.all():
            return SparseRows(self.indptr, position.astype(np.int32), self.values)
        indptr = np.zeros_like(self.indptr)
        np.cumsum(np.bincount(self.row_ids()[known], minlength=self.n_rows), out=indptr[1:])
        return SparseRows(indptr, position[known].astype(np.int32), self.values[known])

    def to_dense(self, n_features: int) -> np.ndarray:
        """Dense matrix with repeated indices added up (for tests and the dense baseline)."""
        dense = np.zeros((self.n_rows, n_features), dtype=np.float32)
        np.add.at(dense, (self.row_ids(), self.indices), self.values)
        return dense

    @staticmethod
    def concat_columns(blocks: Sequence[SparseRows]) -> SparseRows:
        """Row-wise union of blocks with equal row counts (row r = all blocks' row r)."""
        n_rows = blocks[0].n_rows
        rows = np.concatenate([b.row_ids() for b in blocks])
        order = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=n_rows)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.concatenate([b.indices for b in blocks])[order]
        values = np.concatenate([b.values for b in blocks])[order]
        return SparseRows(indptr, indices, values)


@dataclass(frozen=True)
class FeatureSpec:
    """Fields and hash size: everything needed to rebuild the feature map.

    The latent size k is not here: it is a property of each head (its FM, and its entry
    in the bundle's metrics.json), and two heads may differ in it.

    Saved in the bundle as JSON with golden hashes; `check_golden` refuses a spec whose
    hashes this code does not reproduce (a changed hash function would silently scramble
    every feature otherwise).
    """

    fields: tuple[Field, ...]
    hash_bits: int = 18
    golden: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """A graded user field grades the history: the service keeps both in one sum per
        user with one weight per history size (`app.user_sums.combine`), so it needs the
        history field, weighted alike."""
        history = next((f for f in self.fields if f.side == "user" and f.name == HISTORY_FIELD
                        and f.kind == "multi"), None)
        for f in self.fields:
            if f.kind == "graded" and (f.side != "user" or f.name != STARS_FIELD
                                       or history is None
                                       or history.weighting != f.weighting):
                raise SpecError(f"feature spec field {f.key!r}: a graded field is the user's "
                                f"{STARS_FIELD!r}, next to {HISTORY_FIELD!r} weighted alike "
                                "(feature group 'stars' needs 'implicit')")

    @property
    def n_features(self) -> int:
        return 1 << self.hash_bits

    def side_fields(self, side: Side) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.side == side)

    def only(self, keys: Iterable[str]) -> FeatureSpec:
        """The fields whose keys are in `keys` (a head that reads part of the features)."""
        wanted = set(keys)
        return replace(self, fields=tuple(f for f in self.fields if f.key in wanted))

    def rating_fields(self) -> FeatureSpec:
        """What the rating head reads: every field but the history size. That token is
        for the relevance head's new users; the rating head is worse with it (ML-100k
        ua RMSE 0.9021 against 0.9011, docs/accuracy.md)."""
        return replace(self, fields=tuple(f for f in self.fields if f.kind != "size"))

    def with_golden(self, keys: Iterable[str]) -> FeatureSpec:
        return replace(self, golden={k: feature_hash(k, self.hash_bits) for k in keys})

    def check_golden(self) -> None:
        for key, expected in self.golden.items():
            got = feature_hash(key, self.hash_bits)
            if got != expected:
                raise SpecError(
                    f"feature spec mismatch: {key!r} hashes to {got} here but to {expected} "
                    "in the bundle; this code cannot reproduce the model's features"
                )

    def fit_centres(self, centre: float) -> FeatureSpec:
        """Every graded field measured from `centre` (the training ratings' mean)."""
        return replace(self, fields=tuple(replace(f, centre=float(centre))
                                          if f.kind == "graded" else f for f in self.fields))

    def fit_numeric(self, side: Side, columns: Mapping[str, Sequence[Any]]) -> FeatureSpec:
        """Record the training range of each numeric field of `side`."""
        fields = []
        for f in self.fields:
            if f.side == side and f.kind == "numeric" and f.name in columns:
                data = np.array([v for v in columns[f.name] if v is not None], dtype=np.float64)
                if len(data):
                    f = replace(f, low=float(data.min()), high=float(data.max()))
            fields.append(f)
        return replace(self, fields=tuple(fields))

    def to_json(self) -> str:
        return json.dumps(
            {"hash_bits": self.hash_bits, "fields": [asdict(f) for f in self.fields],
             "golden": self.golden},
            indent=2,
        )

    @staticmethod
    def from_json(text: str) -> FeatureSpec:
        try:
            raw = json.loads(text)
            fields = tuple(Field(**f) for f in raw["fields"])
            spec = FeatureSpec(fields, int(raw["hash_bits"]), dict(raw.get("golden", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"unreadable feature spec: {exc}") from exc
        for f in spec.fields:
            if f.side not in SIDES or f.kind not in KINDS:
                raise SpecError(f"feature spec field {f.key!r}: unknown side or kind")
            if f.kind == "size" and (not f.of or f.below < 2):
                raise SpecError(f"feature spec field {f.key!r}: a size field needs 'of' "
                                "and 'below' >= 2")
            if f.kind == "graded" and not np.isfinite(f.centre):
                raise SpecError(f"feature spec field {f.key!r}: its centre must be finite")
        return spec


#: A history this short gets a token for its size (`Field.size_value`): what a new user
#: sends inline. The relevance head learns from it how to rank for a handful of movies
#: (`model.relevance.new_user_queries`), where a 1/sqrt(n) sum alone is a weak query.
HISTORY_SIZE_BELOW = 16


def movielens_spec(hash_bits: int = 18, features: str = "full") -> FeatureSpec:
    """Every feature group (features="full"), ids only ("ids"), or "ids,GROUP,...".

    The source article's set is ids,implicit,time,last; fmrec adds user and movie
    attributes and "raters" (the users who rated a movie: the item-side mirror of the
    user's rated movies), "session" (`session_of`) and "history_size" (a short history's
    size, read from "rated"). Field names are the payload keys:
    user {id, age, gender, occupation, zip, rated, rated_stars}, movie {id, genres, year,
    raters}, context {time, last_movie, session, day} (session and day derived from the
    user id and time). "stars" (the user's stars of the movies in "rated", read by the
    rating head) is in "full"; "day" (`day_of`) is opt-in.
    """
    ids = (Field("id", "user", "categorical"), Field("id", "item", "categorical"))
    groups: dict[str, tuple[Field, ...]] = {
        "implicit": (Field("rated", "user", "multi", weighting="sqrt"),),
        "stars": (Field(STARS_FIELD, "user", "graded", weighting="sqrt"),),
        "time": (Field("time", "context", "numeric"),),
        "last": (Field("last_movie", "context", "categorical"),),
        "user_attrs": (
            Field("age", "user", "categorical"),
            Field("gender", "user", "categorical"),
            Field("occupation", "user", "categorical"),
            Field("zip", "user", "categorical", prefix=2),
        ),
        "item_attrs": (Field("genres", "item", "multi"), Field("year", "item", "categorical")),
        "raters": (Field("raters", "item", "multi", weighting="sqrt"),),
        "session": (Field("session", "context", "categorical"),),
        "history_size": (Field("history_size", "user", "size", of="rated",
                               below=HISTORY_SIZE_BELOW),),
        "day": (Field("day", "context", "categorical"),),
    }
    chosen = ([g for g in groups if g not in OPTIONAL_GROUPS] if features == "full"
              else [g for g in features.split(",") if g != "ids"])
    unknown = [g for g in chosen if g not in groups]
    if unknown:
        raise SpecError(f"unknown feature groups {unknown}; choose from ids, {', '.join(groups)}")
    fields = ids + tuple(f for g in chosen for f in groups[g])
    return FeatureSpec(fields, hash_bits)


FEATURE_GROUPS = ("implicit", "stars", "time", "last", "user_attrs", "item_attrs", "raters",
                  "session", "history_size")
# groups that "full" leaves out: measured not to pay on ML-100k (docs/accuracy.md)
OPTIONAL_GROUPS = ("day",)


class FeatureMap:
    """Encodes payloads of one side into `SparseRows` according to a `FeatureSpec`."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec

    def encode(self, side: Side, payloads: Sequence[Mapping[str, Any]]) -> SparseRows:
        """Row-wise entry point (the HTTP path): one payload dict per row."""
        columns = {f.source: [p.get(f.source) for p in payloads]
                   for f in self.spec.side_fields(side)}
        return self.encode_columns(side, columns, len(payloads))

    def encode_columns(
        self, side: Side, columns: Mapping[str, Sequence[Any]], n_rows: int
    ) -> SparseRows:
        """Column-wise entry point (the bulk path): each field's values for all rows.

        Missing fields or None values add no feature. Each distinct value is hashed once.
        """
        blocks = [
            self.encode_field(f, columns[f.source], n_rows)
            for f in self.spec.side_fields(side)
            if f.source in columns
        ]
        if not blocks:
            return SparseRows(np.zeros(n_rows + 1, np.int64), np.zeros(0, np.int32),
                              np.zeros(0, np.float32))
        return SparseRows.concat_columns(blocks)

    def encode_field(self, f: Field, column: Sequence[Any], n_rows: int) -> SparseRows:
        """One field's block: `column` holds its source's value for each row."""
        if len(column) != n_rows:
            raise FeatureError(f"{f.side}.{f.name}: {len(column)} values for {n_rows} rows")
        if f.kind == "numeric":
            return self._numeric(f, column)
        if f.kind == "graded":
            return self._graded(f, column)
        if f.kind == "size":
            column = [None if v is None else f.size_value(_length(f, v)) for v in column]
        if f.kind in ("categorical", "size"):
            lists: Sequence[Any] = [() if v is None else (v,) for v in column]
        else:
            lists = [() if v is None else v for v in column]
            for v in lists:
                if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, np.ndarray)):
                    raise FeatureError(f"{f.side}.{f.name}: expected a list, got {v!r}")
        lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=n_rows)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        flat = [x for v in lists for x in v]
        for x in flat:
            if not isinstance(x, (str, int, np.integer)) or isinstance(x, bool):
                raise FeatureError(f"{f.side}.{f.name}: expected strings or integers, got {x!r}")
        cache = f.key not in UNCACHED_FIELDS
        tokens = {x: feature_hash(f.token(x), self.spec.hash_bits, cache) for x in set(flat)}
        indices = np.fromiter((tokens[x] for x in flat), dtype=np.int32, count=len(flat))
        if f.kind != "multi":
            values = np.ones(len(flat), dtype=np.float32)
        else:
            per_row = np.maximum(lengths, 1).astype(np.float32)
            weight = 1.0 / (per_row if f.weighting == "mean" else np.sqrt(per_row))
            values = np.repeat(weight, lengths)
        return SparseRows(indptr, indices, values)

    def size_rows(self) -> SparseRows | None:
        """Row n: the user's history-size token for a history of n movies (empty where it
        has none), n < the field's `below`; None if the spec has no size field. What
        `app.user_sums.combine` adds to a user's sums, as side sums (`Head.size_sums`)."""
        field = next((f for f in self.spec.side_fields("user") if f.kind == "size"), None)
        if field is None:
            return None
        return self.encode_field(field, [[""] * n for n in range(field.below)], field.below)

    def _graded(self, f: Field, column: Sequence[Any]) -> SparseRows:
        """[value, number] pairs per row: the values as a multi field (same hashing and
        1/n or 1/sqrt(n) weights), each weight times (number - centre); a number of None
        is the centre (the entry counts in n, adds nothing)."""
        pairs = [[] if v is None else _pairs(f, v) for v in column]
        rows = self.encode_field(replace(f, kind="multi"), [[t for t, _ in p] for p in pairs],
                                 len(column))
        numbers = np.array([f.centre if n is None else n for p in pairs for _, n in p],
                           dtype=np.float64)
        return SparseRows(rows.indptr, rows.indices,
                          ((numbers - f.centre) * rows.values).astype(np.float32))

    def _numeric(self, f: Field, column: Sequence[Any]) -> SparseRows:
        present = np.array([v is not None for v in column], dtype=bool)
        try:
            raw = np.array([v for v in column if v is not None], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise FeatureError(f"{f.side}.{f.name}: expected numbers ({exc})") from None
        if not np.all(np.isfinite(raw)):
            raise FeatureError(f"{f.side}.{f.name}: NaN or infinite value")
        span = f.high - f.low if f.high > f.low else 1.0
        values = np.clip((raw - f.low) / span, 0.0, 1.0).astype(np.float32)
        indptr = np.zeros(len(column) + 1, dtype=np.int64)
        np.cumsum(present, out=indptr[1:])
        index = feature_hash(f.key, self.spec.hash_bits)
        return SparseRows(indptr, np.full(len(values), index, dtype=np.int32), values)

    def collision_report(self, tokens: Iterable[str]) -> dict[str, int]:
        """How many distinct feature keys share a bucket with another key."""
        keys = set(tokens)
        buckets = np.fromiter((feature_hash(k, self.spec.hash_bits) for k in keys), np.int64)
        _, counts = np.unique(buckets, return_counts=True)
        return {
            "features": len(keys),
            "buckets_used": len(counts),
            "colliding_features": int(counts[counts > 1].sum()),
        }

    def tokens(self, side: Side, payloads: Iterable[Mapping[str, Any]]) -> set[str]:
        """All distinct feature keys a side's payloads produce (for collision_report)."""
        out: set[str] = set()
        for p in payloads:
            for f in self.spec.side_fields(side):
                value = p.get(f.source)
                if value is None:
                    continue
                if f.kind == "numeric":
                    out.add(f.key)
                elif f.kind == "size":
                    size = f.size_value(_length(f, value))
                    if size is not None:
                        out.add(f.token(size))
                elif f.kind == "categorical":
                    out.add(f.token(value))
                elif f.kind == "graded":
                    out.update(f.token(t) for t, _ in _pairs(f, value))
                else:
                    out.update(f.token(x) for x in value)
        return out


def _pairs(f: Field, value: Any) -> list[tuple[Any, float | None]]:
    """A graded field's [value, number] pairs, checked (the values are checked as a multi
    field's when encoded)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise FeatureError(f"{f.side}.{f.name}: expected a list, got {value!r}")
    out = []
    for pair in value:
        if (isinstance(pair, (str, bytes)) or not isinstance(pair, (Sequence, np.ndarray))
                or len(pair) != 2):
            raise FeatureError(f"{f.side}.{f.name}: expected [value, number] pairs, got "
                               f"{pair!r}")
        number = pair[1]
        if number is not None and (isinstance(number, bool)
                                   or not isinstance(number, (int, float, np.number))
                                   or not np.isfinite(number)):
            raise FeatureError(f"{f.side}.{f.name}: expected a finite number, got {number!r}")
        out.append((pair[0], None if number is None else float(number)))
    return out


def _length(f: Field, value: Any) -> int:
    """The length of the list a size field reads (its source field checks the items)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise FeatureError(f"{f.side}.{f.source}: expected a list, got {value!r}")
    return len(value)
