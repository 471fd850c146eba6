"""The Faust app of Kafka mode: topics, agents, and the core pipeline they feed.

    source topics --ingest agents--> <ns>.<group>.events-by-user --progress agent-->
    core Pipeline (namespace filter, goal index, dedup, buffer) --flusher--> Writer

Faust's web server is off (nothing of ours is served there, and no table views); the
dedup buffer is the core in-memory Generation buffer, not a Faust table (docs/kafka.md).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import faust

from agents.ingest import make_ingest_agent
from agents.progress import ProgressRuntime, make_progress_agent
from app import kafka_metrics
from app.challenges import ChallengeConfig, ConfigError, load_config
from app.kafka_settings import KafkaSettings, dlq_topic
from app.pipeline import Pipeline
from app.settings import Settings
from tables.db import make_engine

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, kafka: KafkaSettings, config: ChallengeConfig
) -> tuple[faust.App, ProgressRuntime]:
    datadir = Path(tempfile.gettempdir()) / f"faust-{kafka.group}-{kafka.namespace}"
    app = faust.App(
        kafka.group,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_list],
        autodiscover=False,
        web_enabled=False,
        store="memory://",
        datadir=str(datadir),
        topic_partitions=kafka.repartition_partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.005,  # batch the forwarded records instead of one request each
        broker_commit_interval=1.0,
        # a killed worker's partitions move after this long (Faust's default is 60 s)
        broker_session_timeout=kafka.session_timeout,
        broker_heartbeat_interval=max(1.0, kafka.session_timeout / 5),
        stream_wait_empty=True,
        worker_redirect_stdouts=False,
    )
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    # event ids recorded with the rows: a duplicate id at another offset (a producer retry)
    # is applied once even across restarts, within DEDUP_WINDOW
    pipeline = Pipeline(settings, config, engine, record_event_ids=True)

    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
    raw.update(key_serializer="raw", value_serializer="raw")
    by_user = app.topic(
        kafka.repartition_topic,
        partitions=kafka.repartition_partitions,
        internal=True,
        **raw,
    )
    runtime = ProgressRuntime(pipeline, kafka.group, kafka.repartition_topic)
    for name, event_type in kafka.source_topics.items():
        source = app.topic(name, **raw)
        dlq = app.topic(dlq_topic(name), **raw)
        make_ingest_agent(app, source, event_type, by_user, dlq)
    make_progress_agent(app, by_user, runtime)

    @app.task
    async def start_flusher() -> None:
        pipeline.start()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: faust.App, revoked: set, **_: Any) -> None:
        kafka_metrics.READY.set(0)
        runtime.forget({tp.partition for tp in revoked if tp.topic == kafka.repartition_topic})

    @app.on_rebalance_complete.connect
    async def on_rebalanced(sender: faust.App, **_: Any) -> None:
        kafka_metrics.READY.set(1)

    @app.on_before_shutdown.connect
    async def final_flush(sender: faust.App, **_: Any) -> None:
        kafka_metrics.READY.set(0)
        await pipeline.close()
        await engine.dispose()

    return app, runtime


def reload_config(runtime: ProgressRuntime, path: Path) -> bool:
    """SIGHUP: validate first; keep the running config when the new one is invalid."""
    try:
        config = load_config(path)
    except (ConfigError, OSError) as exc:
        problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
        for problem in problems:
            log.error("config reload refused", extra={"problem": problem, "path": str(path)})
        return False
    runtime.use_config(config)
    log.info(
        "config reloaded",
        extra={"path": str(path), "challenges": len(config.challenges), "goals": len(config.goals)},
    )
    return True
