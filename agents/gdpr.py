"""GDPR agent: account deletions from `{namespace}.iam.account.v1.gdprRequestDataDeletionResponse`.

Each record (the proto-JSON shape of SPEC §1.1) erases the user through the same code as
the gRPC service (tables/gdpr.py): buffered updates dropped, flushes in flight waited
for, rows deleted in one transaction. Only then does the agent move on, so Faust acks
the record — and commits its offset — after the deletion is durable. A database outage
is waited out (the record is retried, never skipped); a record that cannot be decoded
or names no user goes to `<topic>.dlq` with a reason header; another namespace is
skipped. A redelivered deletion deletes nothing more.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from app.core.events import InvalidEvent, validate_identity
from app.kafka.faust_app import RAW
from app.kafka.topics import Topics, dlq_topic
from app.observability import metrics
from tables.buffer import Flusher
from tables.db import backoff_delay, is_transient
from tables.gdpr import count_invalid, count_skipped, erase_user

log = logging.getLogger(__name__)
SOURCE = "kafka"


@dataclass(frozen=True, slots=True)
class Deletion:
    user_id: str
    namespace: str


def _text(obj: dict[str, Any], camel: str, snake: str, name: str) -> str:
    value = obj.get(camel, obj.get(snake))
    if value is None:
        return ""
    if not isinstance(value, str):  # wrong type: dead-lettered, never coerced (SPEC §2)
        raise InvalidEvent("wrong_type", f"{name} must be a string")
    return value


def decode_deletion(raw: bytes | None) -> Deletion:
    """Proto-JSON of GdprRequestDataDeletionResponse -> Deletion, in SPEC §2 order."""
    if not raw:
        raise InvalidEvent("nil_message", "message cannot be nil")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("undecodable", f"cannot decode JSON: {exc}") from None
    if not isinstance(obj, dict) or not obj:
        raise InvalidEvent("nil_message", "message cannot be nil")
    payload = obj.get("payload") or {}
    inner = (
        payload.get("deletionGDPR", payload.get("deletion_gdpr"))
        if isinstance(payload, dict)
        else None
    )
    inner = inner if isinstance(inner, dict) else {}
    user_id = _text(inner, "userId", "user_id", "userId") or _text(
        obj, "userId", "user_id", "userId"
    )
    validate_identity(user_id)
    if "\x00" in user_id:
        raise InvalidEvent("invalid_user_id", "userId contains invalid characters")
    namespace = _text(obj, "namespace", "namespace", "namespace") or _text(
        inner, "namespace", "namespace", "namespace"
    )
    return Deletion(user_id, namespace)


def make_gdpr_agent(
    app: faust.App,
    topics: Topics,
    flusher: Flusher,
    namespace: str,
    resweep_after: float | None = None,
) -> None:
    """Attach the GDPR agent; `flusher` is the progress pipeline's (its buffer is dropped).
    `resweep_after`: delete once more after that long (updates buffered by other workers)."""
    # declared internal: Faust creates them when missing (local development; on AGS the
    # topic exists and is left as it is), so the agent never subscribes to nothing
    source = app.topic(topics.gdpr, partitions=1, internal=True, **RAW)
    dlq = app.topic(dlq_topic(topics.gdpr), partitions=1, internal=True, **RAW)

    async def dead_letter(
        message: faust.types.Message, raw: bytes | None, reason: str, error: str
    ) -> None:
        metrics.DEAD_LETTERED.labels("kafka", reason).inc()
        await dlq.send(
            key=message.key,
            value=raw if raw is not None else b"",
            headers=[
                ("reason", reason.encode()),
                ("error", error.encode()[:500]),
                ("source_topic", topics.gdpr.encode()),
                ("source_partition", str(message.partition).encode()),
                ("source_offset", str(message.offset).encode()),
            ],
        )

    async def erase(deletion: Deletion, message: faust.types.Message, raw: bytes | None) -> None:
        attempt = 0
        while True:
            try:
                await erase_user(
                    flusher, deletion.user_id, namespace, source=SOURCE, resweep_after=resweep_after
                )
                return
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("GDPR deletion failed; record dead-lettered")
                    await dead_letter(message, raw, "deletion_failed", str(exc)[:300])
                    return
                attempt += 1
                delay = backoff_delay(attempt)
                log.warning(
                    "GDPR deletion failed, retrying",
                    extra={
                        "attempt": attempt,
                        "retry_in_ms": int(delay * 1000),
                        "error": str(exc)[:300],
                    },
                )
                await asyncio.sleep(delay)

    async def gdpr(stream: faust.StreamT[bytes]) -> None:
        async for record in stream.events():
            message, raw = record.message, record.value
            try:
                deletion = decode_deletion(raw)
            except InvalidEvent as exc:
                count_invalid(SOURCE)
                metrics.FAILED.labels(exc.reason).inc()
                await dead_letter(message, raw, exc.reason, exc.message)
                continue
            if deletion.namespace != namespace:
                count_skipped(SOURCE)
                metrics.SKIPPED.labels("namespace").inc()
                continue
            await erase(deletion, message, raw)

    app.agent(source, name="gdpr", concurrency=1)(gdpr)
