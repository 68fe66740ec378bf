"""What ``GET /metrics`` tells Prometheus: requests, latencies, photos, failures by reason, model
batches.

prometheus_client writes the text format and the histograms; it also sums the counts of
several server processes (``serve.workers``): the serving command gives them one folder for their
counters (``PROMETHEUS_MULTIPROC_DIR``), and a scrape answered by any one of them counts them all.
Without that folder each server keeps its own registry, so several servers in one process (the
tests) do not share counts.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from jianmu.verdict import RETAKE

MULTIPROCESS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
ROUTES = ("/", "/healthz", "/metrics", "/v1/models", "/v1/{model}/identify", "/docs")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# No "_created" series beside every counter: they double the text and say nothing here.
disable_created_metrics()


class ServiceMetrics:
    """The counters and histograms of one server (or, with several processes, of all of them)."""

    def __init__(self) -> None:
        self.shared = bool(os.environ.get(MULTIPROCESS_FOLDER))
        self.registry = CollectorRegistry()
        # Shared across processes: the values live in the folder's files, not in a registry.
        owner = None if self.shared else self.registry
        self.requests = Counter(
            "jianmu_requests", "HTTP requests answered, by route and status code",
            ["route", "code"], registry=owner,
        )  # fmt: skip
        self.latency = Histogram(
            "jianmu_request_seconds", "Time from a request's start to its answer, by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=owner,
        )  # fmt: skip
        self.faults = Counter(
            "jianmu_request_faults",
            "Requests refused or cut off, by reason (unauthorized, too_large, malformed, "
            "timeout, disconnected, bad_request, not_multipart, unknown_model)",
            ["reason"], registry=owner,
        )  # fmt: skip
        self.photos = Counter(
            "jianmu_photos", "Photos judged, by model and status (ok, retake, failed)",
            ["model", "status"], registry=owner,
        )  # fmt: skip
        self.photo_failures = Counter(
            "jianmu_photo_failures", "Photos that could not be read, by model and reason",
            ["model", "reason"], registry=owner,
        )  # fmt: skip
        self.batch_photos = Histogram(
            "jianmu_batch_photos", "Photos per model run (micro-batches of concurrent requests)",
            ["model"], buckets=BATCH_BUCKETS, registry=owner,
        )  # fmt: skip
        self.model_seconds = Histogram(
            "jianmu_model_seconds", "Time of one model run", ["model"],
            buckets=LATENCY_BUCKETS, registry=owner,
        )  # fmt: skip
        self.in_flight = Gauge(
            "jianmu_requests_in_flight", "Requests being answered", registry=owner,
            multiprocess_mode="livesum",
        )  # fmt: skip

    def request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)

    def fault(self, reason: str) -> None:
        self.faults.labels(reason).inc()

    def photo(self, model: str, status: str) -> None:
        """One photo's outcome: ``ok``, ``retake``, or a reason it could not be read."""
        if status in ("ok", RETAKE):
            self.photos.labels(model, status).inc()
            return
        self.photos.labels(model, "failed").inc()
        # "too large (144000000 pixels)" -> "too large": the figures would make a label per photo
        self.photo_failures.labels(model, status.split(" (", 1)[0]).inc()

    def batch(self, model: str, photos: int, seconds: float) -> None:
        self.batch_photos.labels(model).observe(photos)
        self.model_seconds.labels(model).observe(seconds)

    def text(self) -> bytes:
        """The exposition text of every counter."""
        if not self.shared:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


def route_of(path: str) -> str:
    """The route a request path belongs to (its label: one per route, not per URL)."""
    if path in ROUTES:
        return path
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "v1" and parts[3] == "identify":
        return "/v1/{model}/identify"
    return "other"
