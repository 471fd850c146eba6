"""The repartition record: a validated Event plus where it came from.

Keyed by user id, so one user's events sit in one partition in the order the source
agent forwarded them. The source position travels along so the progress agent can drop
a record forwarded twice (the source hop is at-least-once).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from app.core.events import Event, EventType


@dataclass(frozen=True, slots=True)
class Forwarded:
    event: Event
    source_topic: str
    source_partition: int
    source_offset: int
    record_time_ms: int | None


def encode(item: Forwarded) -> bytes:
    e = item.event
    return orjson.dumps(
        {
            "id": e.event_id,
            "k": str(e.type),
            "ns": e.namespace,
            "u": e.user_id,
            "t": e.event_time.isoformat(),
            "s": e.stat_code,
            "v": e.value,
            "i": e.inc,
            "st": item.source_topic,
            "sp": item.source_partition,
            "so": item.source_offset,
            "ts": item.record_time_ms,
        }
    )


def decode(raw: bytes) -> Forwarded:
    d = orjson.loads(raw)
    event = Event(
        event_id=d["id"],
        type=EventType(d["k"]),
        namespace=d["ns"],
        user_id=d["u"],
        event_time=datetime.fromisoformat(d["t"]),
        stat_code=d["s"],
        value=d["v"],
        inc=d["i"],
    )
    return Forwarded(event, d["st"], d["sp"], d["so"], d["ts"])


# A dead letter carries the original bytes, unless they could not fit in a record of their
# own next to the headers (Faust's producer refuses requests over 1,000,000 bytes): a
# record produced near the broker's limit is then kept truncated, marked with its length.
DEAD_LETTER_MAX_VALUE = 900_000


def dead_letter_value(raw: bytes | None) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, extra headers) of the dead-letter record for a source record's value."""
    value = raw if raw is not None else b""
    if len(value) <= DEAD_LETTER_MAX_VALUE:
        return value, []
    return value[:DEAD_LETTER_MAX_VALUE], [("truncated_from", str(len(value)).encode())]
