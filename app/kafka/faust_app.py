"""The Faust app of Kafka mode: topics and the core pipeline the agents feed.

    source topics --ingest agents--+-- keyed by user id ------------------------+
                                   +-- other keys --> <ns>.<group>.events-by-user --progress agent--+
                                                                                                    v
    core Pipeline (namespace filter, goal index, dedup, buffer) --flusher--> Writer (rows + positions)

The agents themselves live in `agents/` and are attached by `agents.worker`. Faust's web
server is off (nothing of ours is served there, and no table views); the dedup buffer is
the core in-memory Generation buffer, not a Faust table (docs/kafka.md).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.sensors.monitor import Monitor

from app.completions.service import CompletionPublishing
from app.core.challenges import ChallengeConfig
from app.core.events import EventType
from app.core.settings import Settings
from app.core.time_bounds import TimeBounds
from app.kafka import metrics as kafka_metrics
from app.kafka.faust_internals import ChallengeApp, TablesDeclaredUpFront
from app.kafka.lag import track_lag
from app.kafka.runtime import PositionBook, ProgressRuntime
from app.kafka.topics import Topics, dlq_topic
from app.kafka.transport import Transport
from app.observability import event_times
from app.pipeline import Pipeline

# Exit status of a worker that gave up a flush (EX_SOFTWARE): restart it.
EXIT_FOR_REDELIVERY = 70

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


class PerRecordQuietMonitor(Monitor):
    """Faust's monitor without its per-record bookkeeping.

    The default monitor times every message in and out of every stream (dicts and deques
    updated per record) for Faust's web views, which this worker does not serve; our own
    metrics are per batch and per flush. Commit, send, rebalance hooks stay as they are.
    """

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None


def exit_for_redelivery(reason: str) -> None:
    """A flush was given up, or forwarded copies cannot be delivered: exit at once,
    nothing of them acked, so the restarted worker reads those records again from the
    positions stored with the rows and Kafka's committed offsets (as after kill -9)."""
    logging.getLogger(__name__).critical("exiting for redelivery", extra={"reason": reason})
    logging.shutdown()
    os._exit(EXIT_FOR_REDELIVERY)


@dataclass(frozen=True)
class SourceTopic:
    """One AGS source topic with the event type it carries and its dead-letter topic."""

    topic: faust.TopicT
    event_type: EventType
    dlq: faust.TopicT


@dataclass(frozen=True)
class KafkaApp:
    """The Faust app and what its agents are attached to."""

    app: faust.App
    sources: tuple[SourceTopic, ...]
    by_user: faust.TopicT
    runtime: ProgressRuntime
    batch_size: int
    batch_wait: float
    # event times out of bounds fall back, counted (contract §1.3)
    time_bounds: TimeBounds


def faust_app(settings: Settings, topics: Topics) -> faust.App:
    """The Faust app with this worker's settings (nothing attached yet)."""
    datadir = Path(tempfile.gettempdir()) / f"faust-{topics.group}-{topics.namespace}"
    session = settings.kafka_session_timeout
    app = ChallengeApp(
        topics.group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_list],
        autodiscover=False,
        web_enabled=False,
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.kafka_repartition_partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.005,  # batch the forwarded records instead of one request each
        broker_commit_interval=1.0,
        # a killed worker's partitions move after this long (Faust's default is 60 s)
        broker_session_timeout=session,
        broker_heartbeat_interval=max(1.0, session / 5),
        # KAFKA_GROUP_INSTANCE_ID: a worker restarted after a crash rejoins as itself
        consumer_group_instance_id=settings.kafka_group_instance_id or None,
        stream_wait_empty=True,
        # A few batches per stream. Larger buffers let one source stream's backlog hold
        # the fetcher (it waits to put into a full stream) and starve the repartition
        # stream behind it; unacked records stay bounded by BUFFER_MAX_SIZE backpressure.
        stream_buffer_maxsize=4 * settings.kafka_batch_size,
        broker_max_poll_records=settings.kafka_batch_size,
        worker_redirect_stdouts=False,
        monitor=PerRecordQuietMonitor(),
        TableManager=TablesDeclaredUpFront,
    )
    # the consumer and producer with the cheaper per-record paths (faust_internals.py)
    app.transport = Transport(app.conf.broker_consumer, app)
    return app


def _connect_lifecycle(
    app: faust.App,
    topics: Topics,
    pipeline: Pipeline,
    book: PositionBook,
    completions: CompletionPublishing,
) -> None:
    """Start the flusher and the publisher with the worker; forget revoked partitions'
    positions; the final flush before Faust shuts down."""

    @app.task  # type: ignore[untyped-decorator]
    async def start_flusher() -> None:
        pipeline.start()
        completions.start()  # goal-completed events: off unless COMPLETION_SINKS is set

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's stubs reject async receivers
    async def on_revoked(sender: faust.App, revoked: set[Any], **_: Any) -> None:
        kafka_metrics.READY.set(0)
        book.forget(
            {tp.partition for tp in revoked if tp.topic == topics.repartition},
            {(tp.topic, tp.partition) for tp in revoked if tp.topic in topics.sources},
        )

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # faust's stubs reject async receivers
    async def on_rebalanced(sender: faust.App, **_: Any) -> None:
        kafka_metrics.READY.set(1)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust's stubs reject async receivers
    async def final_flush(sender: faust.App, **_: Any) -> None:
        kafka_metrics.READY.set(0)
        await pipeline.close()
        await completions.stop()


def create_app(settings: Settings, config: ChallengeConfig) -> KafkaApp:
    topics = Topics(settings.require_namespace(), settings.kafka_consumer_group)
    app = faust_app(settings, topics)
    book = PositionBook(topics.group, topics.repartition, on_broken=exit_for_redelivery)
    # event ids recorded with the rows: a duplicate id at another offset (a producer retry)
    # is applied once even across restarts, within DEDUP_WINDOW
    pipeline = Pipeline.open(settings, config, record_event_ids=True, extra_for=book.extra_for)
    completions = CompletionPublishing(settings, lambda: pipeline.config)
    by_user = app.topic(
        topics.repartition,
        partitions=settings.kafka_repartition_partitions,
        internal=True,
        **RAW,
    )
    sources = tuple(
        SourceTopic(app.topic(name, **RAW), event_type, app.topic(dlq_topic(name), **RAW))
        for name, event_type in topics.sources.items()
    )
    track_lag(app)
    _connect_lifecycle(app, topics, pipeline, book, completions)
    runtime = ProgressRuntime(pipeline, book)
    bounds = TimeBounds.from_settings(settings, note=event_times.note)
    return KafkaApp(
        app,
        sources,
        by_user,
        runtime,
        settings.kafka_batch_size,
        settings.kafka_batch_wait,
        bounds,
    )
