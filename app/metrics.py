"""Prometheus metrics of one app instance (its own registry, so apps in tests do not clash).

With several uvicorn workers each process counts for itself; scrape each or run one
worker per container (the usual Kubernetes layout).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.latency = Histogram("fmrec_request_seconds", "HTTP request latency by route",
                                 ["route", "method", "status"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.queue_seconds = Histogram("fmrec_queue_seconds",
                                       "time a request waited for its model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("fmrec_batch_size", "requests per model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_full = Counter("fmrec_queue_full", "requests refused with 503: queue full",
                                  registry=r)
        self.cache_hits = Counter("fmrec_cache_hits", "user sums found in the cache",
                                  registry=r)
        self.cache_misses = Counter("fmrec_cache_misses",
                                    "user sums computed (not cached or cache not usable)",
                                    registry=r)
        self.unknown_movies = Counter(
            "fmrec_unknown_movies", "movies scored that are neither in the catalog nor "
            "described inline (answered with known: false)", registry=r)
        self.redis_errors = Counter("fmrec_redis_errors", "failed Redis calls", registry=r)
        self.degraded = Counter("fmrec_degraded_requests",
                                "requests answered without the store", registry=r)
        self.model_info = Gauge("fmrec_model_loaded", "1 for the model id being served",
                                ["model_id"], registry=r)
        self.reloads = Counter("fmrec_reloads", "hot reloads by outcome", ["outcome"],
                               registry=r)
        self.reload_failing = Gauge("fmrec_last_reload_failed",
                                    "1 while the latest reload attempt has failed", registry=r)
        self.rating_events = Counter(
            "fmrec_rating_events", "POST /ratings events: accepted (new event id), duplicate "
            "(id seen before), refused (invalid batch, or store down: nothing written)",
            ["outcome"], registry=r)

    def observe_batch(self, size: int, queue_seconds: list[float]) -> None:
        self.batch_size.observe(size)
        for seconds in queue_seconds:
            self.queue_seconds.observe(seconds)

    def serving(self, model_id: str, previous: str | None = None) -> None:
        if previous is not None and previous != model_id:
            self.model_info.remove(previous)
        self.model_info.labels(model_id=model_id).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
