"""GDPR agent: account deletions from `{namespace}.iam.account.v1.gdprRequestDataDeletionResponse`.

Each record (the proto-JSON shape of docs/contract.md §1.1) erases the user through the
same code as the gRPC service (tables/gdpr.py): buffered updates dropped, flushes in
flight waited for, rows deleted in one transaction. Only then does the agent move on, so
Faust acks the record — and commits its offset — after the deletion is durable. A
database outage is waited out (the record is retried, never skipped); a record that
cannot be decoded or names no user goes to `<topic>.dlq` with a reason header; another
namespace is skipped. A redelivered deletion deletes nothing more.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)

from app.core.deletions import Deletion, deletion_from_json
from app.core.events import InvalidEvent
from app.kafka.faust_app import RAW, exit_for_redelivery
from app.kafka.topics import Topics, dlq_topic
from app.observability import metrics
from tables.db import is_transient
from tables.flusher import Flusher
from tables.gdpr import count_invalid, count_skipped, erase_user

log = logging.getLogger(__name__)
SOURCE = "kafka"
DEAD_LETTER_ATTEMPTS = 15  # with the backoff, about a minute


def _log_retry(state: Any) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "GDPR deletion (or its dead letter) failed, retrying",
        extra={"attempt": state.attempt_number, "error": str(error)[:300]},
    )


class GdprAgent:
    """Decodes, filters the namespace, erases; dead-letters what cannot be erased."""

    def __init__(
        self,
        app: faust.App,
        topics: Topics,
        flusher: Flusher,
        namespace: str,
    ):
        self.flusher = flusher
        self.namespace = namespace
        self.topic_name = topics.gdpr
        # declared internal: Faust creates them when missing (local development; on AGS
        # the topic exists and is left as it is), so the agent never subscribes to nothing
        self.source = app.topic(topics.gdpr, partitions=1, internal=True, **RAW)
        self.dlq = app.topic(dlq_topic(topics.gdpr), partitions=1, internal=True, **RAW)

    async def handle(self, record: faust.EventT[bytes]) -> None:
        message, raw = record.message, record.value
        try:
            deletion = deletion_from_json(raw)
        except InvalidEvent as exc:
            count_invalid(SOURCE)
            metrics.FAILED.labels(exc.reason).inc()
            await self.dead_letter(message, raw, exc.reason, exc.message)
            return
        if deletion.namespace != self.namespace:
            count_skipped(SOURCE)
            metrics.SKIPPED.labels("namespace").inc()
            return
        try:
            await self.erase(deletion)
        except Exception as exc:  # not transient: a bug or a refusal; never stall
            log.exception("GDPR deletion failed; record dead-lettered")
            await self.dead_letter(message, raw, "deletion_failed", str(exc)[:300])

    async def erase(self, deletion: Deletion) -> None:
        """Erase, waiting out database outages for as long as they last."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential(multiplier=0.05, max=5.0),
            stop=stop_never,
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                await erase_user(
                    self.flusher,
                    deletion.user_id,
                    self.namespace,
                    source=SOURCE,
                )

    async def dead_letter(
        self, message: faust.types.Message, raw: bytes | None, reason: str, error: str
    ) -> None:
        """On the broker before the record is acked (a deletion must not vanish): retried,
        and when the broker keeps refusing, the worker exits for redelivery."""
        metrics.DEAD_LETTERED.labels("kafka", reason).inc()
        headers = [
            ("reason", reason.encode()),
            ("error", error.encode()[:500]),
            ("source_topic", self.topic_name.encode()),
            ("source_partition", str(message.partition).encode()),
            ("source_offset", str(message.offset).encode()),
        ]
        try:
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=0.1, max=5.0),
                stop=stop_after_attempt(DEAD_LETTER_ATTEMPTS),
                before_sleep=_log_retry,
                reraise=True,
            ):
                with attempt:
                    sent = await self.dlq.send(
                        key=message.key,
                        value=raw if raw is not None else b"",
                        headers=headers,
                    )
                    await sent
        except Exception as exc:
            exit_for_redelivery(f"a GDPR dead letter could not be delivered: {exc!r}"[:300])


def make_gdpr_agent(
    app: faust.App,
    topics: Topics,
    flusher: Flusher,
    namespace: str,
) -> None:
    """Attach the GDPR agent; `flusher` is the progress pipeline's (its buffer is dropped)."""
    agent = GdprAgent(app, topics, flusher, namespace)

    async def gdpr(stream: faust.StreamT[bytes]) -> None:
        async for record in stream.events():
            await agent.handle(record)

    app.agent(agent.source, name="gdpr", concurrency=1)(gdpr)
