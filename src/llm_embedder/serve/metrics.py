"""Prometheus metrics of one server: requests, latency, and the size of every model batch.

Each app owns its own ``CollectorRegistry`` so several apps (tests, benchmarks) never share counters.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "llm_embedder"
BATCH_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TEXT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """The counters and histograms exposed at ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by route and status code.", ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_latency_seconds", "Time from request received to response sent, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.texts = Counter(
            f"{PREFIX}_embedded_texts", "Texts embedded: /v1/embeddings inputs and /v1/search, /v1/augment queries.",
            registry=self.registry,
        )
        self.tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens embedded, of those texts (instructions included).",
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            f"{PREFIX}_batch_requests", "Requests merged into one model batch (dynamic batching).",
            buckets=BATCH_REQUEST_BUCKETS, registry=self.registry,
        )
        self.batch_texts = Histogram(
            f"{PREFIX}_batch_texts", "Texts in one model batch.", buckets=BATCH_TEXT_BUCKETS, registry=self.registry
        )
        self.batch_tokens = Histogram(
            f"{PREFIX}_batch_tokens", "Tokens in one model batch.", buckets=BATCH_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_seconds", "Model time of one batch.", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Requests waiting for the model.", registry=self.registry
        )

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, requests: int, texts: int, tokens: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)
        self.texts.inc(texts)
        self.tokens.inc(tokens)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
