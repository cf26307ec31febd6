"""The speech server's Prometheus metrics (prometheus-client), one registry per server.

Queue depth (sentences waiting for a batch), rows per batched generate, speech request latency (received
to last byte sent), time to first audio (received to the first audio chunk made), requests in flight, and
every HTTP request counted by endpoint and status. A registry of its own per server, not the library's
global one: several servers in one process (tests) do not clash.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: a short sentence streamed on a GPU (tens of ms) to a paragraph on 2 CPU cores (minutes).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
ROW_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge(
            "xtts_ft_queue_depth", "Sentences waiting for a batched generate", registry=self.registry
        )
        self.batch_rows = Histogram(
            "xtts_ft_batch_rows", "Rows (sentences) per batched generate", buckets=ROW_BUCKETS, registry=self.registry
        )
        self.request_seconds = Histogram(
            "xtts_ft_speech_request_seconds",
            "POST /v1/audio/speech, from the request received to its last byte sent",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_audio_seconds = Histogram(
            "xtts_ft_time_to_first_audio_seconds",
            "POST /v1/audio/speech, from the request received to its first audio made",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("xtts_ft_requests_in_flight", "HTTP requests being answered", registry=self.registry)
        self.requests = Counter(
            "xtts_ft_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """The queue depth read from the scheduler each time the metrics are scraped."""
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST
