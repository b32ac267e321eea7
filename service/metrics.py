"""Prometheus metrics of one gateway (its own registry, so that apps in one process stay apart).

Labels are few and bounded: model, format, stage, state. Never a job, seed or user."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.images = Counter(
            "thorax_images_generated_total",
            "Images generated and committed to storage",
            ["model"],
            registry=r,
        )
        self.inference = Histogram(
            "thorax_inference_seconds",
            "Seconds per backend call (one batch)",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.encoding = Histogram(
            "thorax_encoding_seconds",
            "Seconds encoding one batch into tar members",
            ["format"],
            buckets=_SECONDS,
            registry=r,
        )
        self.upload = Histogram(
            "thorax_upload_seconds",
            "Seconds from a shard's first byte to its commit",
            buckets=_SECONDS,
            registry=r,
        )
        self.shards = Counter("thorax_shards_committed_total", "Shards committed to storage", registry=r)
        self.jobs = Gauge("thorax_jobs", "Jobs known to this gateway by state", ["state"], registry=r)
        self.queue_depth = Gauge("thorax_queue_depth", "Jobs waiting for a worker", registry=r)
        self.errors = Counter(
            "thorax_errors_total", "Errors by stage (storage, backend, job, request)", ["stage"], registry=r
        )
        self.requests = Counter(
            "thorax_http_requests_total",
            "HTTP requests by method and status class",
            ["method", "status"],
            registry=r,
        )
