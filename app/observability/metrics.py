"""Prometheus metrics (contract §7). Module-level so every adapter records into one registry."""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PREFIX = "challenge_event_handler"

EVENTS = Counter(f"{PREFIX}_events_total", "Events received", ["source"])
PROCESSED = Counter(f"{PREFIX}_events_processed_total", "Events accepted into the buffer")
FAILED = Counter(f"{PREFIX}_events_failed_total", "Events refused or not written", ["reason"])
SKIPPED = Counter(f"{PREFIX}_events_skipped_total", "Events accepted but not applied", ["reason"])
EVENT_TIME_FALLBACK = Counter(
    f"{PREFIX}_event_time_fallback_total",
    "Event times passed over for the next source (contract §1.3): before EVENT_TIME_MIN "
    "(too_old), later than receipt + EVENT_TIME_MAX_SKEW (too_new), or not RFC 3339 "
    "(unreadable); one per time passed over",
    ["reason"],
)
DUPLICATES = Counter(f"{PREFIX}_events_duplicate_total", "Redelivered event ids applied once")
DEAD_LETTERED = Counter(
    f"{PREFIX}_dead_lettered_total", "Events or rows sent to a dead-letter sink", ["sink", "reason"]
)
DROPPED_ROWS = Counter(
    f"{PREFIX}_rows_dropped_total",
    "Buffered updates not written: no row (ASSIGNMENT_MODE=required) or guarded "
    "(inactive, claimed, stale period, already counted)",
    ["reason"],
)
PROCESSING = Histogram(
    f"{PREFIX}_event_processing_duration_seconds",
    "Time from receiving an event to buffering it (durable acks add the flush)",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BUFFER_SIZE = Gauge(
    f"{PREFIX}_buffer_size",
    "Pending (user, goal) entries in the buffer",
    multiprocess_mode="livesum",  # GRPC_WORKERS: the sum over live worker processes
)
FLUSH_DURATION = Histogram(
    f"{PREFIX}_flush_duration_seconds",
    "Time to write one flush, retries included",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DB_BATCH_SIZE = Histogram(
    f"{PREFIX}_db_batch_size",
    "Rows per flush",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000),
)
ROWS_CARRIED = Counter(
    f"{PREFIX}_rows_carried_total",
    "Buffered updates carried to the next flush because another transaction held their "
    "user's row (counted again each flush they stay held)",
)
DB_ROUND_TRIPS = Counter(
    f"{PREFIX}_db_statements_total",
    "SQL statements the flushes sent (BEGIN and COMMIT included), committed flushes only",
)
FLUSH_RETRIES = Counter(
    f"{PREFIX}_flush_retries_total", "Flush attempts that failed and were retried"
)
GRPC_REQUESTS = Counter(f"{PREFIX}_grpc_requests_total", "gRPC calls handled", ["method", "code"])
GRPC_DURATION = Histogram(
    f"{PREFIX}_grpc_request_duration_seconds",
    "gRPC call latency",
    ["method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GRPC_SHED = Counter(
    f"{PREFIX}_grpc_shed_total",
    "gRPC calls refused before any work because the server is overloaded",
    ["reason"],
)
GRPC_IN_FLIGHT = Gauge(
    f"{PREFIX}_grpc_in_flight_requests", "gRPC calls being handled", multiprocess_mode="livesum"
)

# Goal-completed events (docs/completions.md); the gauges are set by the publisher from
# the outbox, not per event.
COMPLETIONS = Counter(
    f"{PREFIX}_completions_total",
    "Goal-completed events per sink: published (accepted by the sink) or failed (an "
    "attempt the sink refused; retried with backoff)",
    ["sink", "outcome"],
)
COMPLETION_OUTBOX_DEPTH = Gauge(
    f"{PREFIX}_completion_outbox_depth",
    "Completions not yet published to every configured sink",
    multiprocess_mode="max",
)
COMPLETION_OLDEST_UNPUBLISHED = Gauge(
    f"{PREFIX}_completion_oldest_unpublished_seconds",
    "Age of the oldest completion not yet published to every sink (0: none)",
    multiprocess_mode="max",
)


def multiprocess() -> bool:
    """GRPC_WORKERS' mode: values live in shared files, gauges cannot read a callback."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


def serve_metrics(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on its own thread (prometheus-client's server)."""
    start_http_server(port, addr=addr)
