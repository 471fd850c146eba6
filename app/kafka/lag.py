"""Kafka consumer lag per assigned partition (the dashboard's lag panel, the lag alert).

Lag = the partition's highwater (log end offset) minus the group's committed offset
(Faust loads it on assignment and advances it on each commit; it commits the next
offset to read, and the progress agent acks only after the flush holding a record
committed, so this counts records not yet durably applied). A partition the group never
committed counts from offset 0 (the log start while nothing was deleted by retention).
Updated by a Faust timer every few seconds from values the consumer already holds — no
broker round trip, nothing on the per-record path. Revoked partitions lose their series.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from prometheus_client import Gauge

from app.kafka.faust_internals import committed_offsets
from app.observability.metrics import PREFIX

log = logging.getLogger(__name__)

LAG = Gauge(
    f"{PREFIX}_kafka_consumer_lag",
    "Records in an assigned partition not yet committed by this worker "
    "(highwater minus committed offset)",
    ["topic", "partition"],
)
_exported: set[tuple[str, str]] = set()


def update_lag(consumer: Any) -> None:
    """Set the gauge for every assigned partition; drop series of revoked ones."""
    global _exported
    committed = committed_offsets(consumer)
    seen: set[tuple[str, str]] = set()
    for tp in consumer.assignment():
        try:
            highwater = consumer.highwater(tp)
        except Exception as exc:  # rebalancing: partition no longer ours
            log.debug("lag unavailable", extra={"topic": tp.topic, "error": str(exc)[:200]})
            continue
        if highwater is None:  # nothing fetched yet
            continue
        done = committed.get(tp) or 0
        labels = (tp.topic, str(tp.partition))
        LAG.labels(*labels).set(max(0, highwater - done))
        seen.add(labels)
    for labels in _exported - seen:
        LAG.remove(*labels)
    _exported = seen


def track_lag(app: faust.App, interval: float = 5.0) -> None:
    """Attach the periodic update to the worker's app."""

    @app.timer(interval=interval)  # type: ignore[untyped-decorator]
    async def consumer_lag() -> None:
        update_lag(app.consumer)
