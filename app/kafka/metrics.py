"""Kafka-mode metrics, registered in the same registry as app.observability.metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from app.observability.metrics import PREFIX

READY = Gauge(
    f"{PREFIX}_kafka_ready",
    "1 while the worker holds an assignment and processes it; 0 while starting, "
    "rebalancing or recovering positions",
)
REDELIVERED = Counter(
    f"{PREFIX}_kafka_redelivered_total",
    "Records already applied (stored positions) and dropped",
    ["hop"],
)
LATE = Counter(
    f"{PREFIX}_kafka_late_values_total",
    "Statistic values older than one already applied for the user and stat; dropped",
)
