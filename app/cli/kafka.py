"""Kafka-mode commands: `worker` (one Faust worker of the group) and `produce FILE.jsonl`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import faust
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from agents.worker import build_worker
from app.core.config_source import config_source
from app.core.settings import Settings
from app.kafka.admin import ensure_event_topics
from app.kafka.produce import produce_file
from app.kafka.topics import Topics
from app.lifecycle import reload_from, settle_heap
from app.observability import tracing
from app.observability.logs import setup_logging
from app.observability.metrics import serve_metrics
from tables.db import is_transient
from tables.migrate import upgrade

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    worker = sub.add_parser(
        "worker", help="run one Kafka (Faust) worker of the consumer group (KAFKA_CONSUMER_GROUP)"
    )
    worker.set_defaults(handler=cmd_worker)
    produce = sub.add_parser("produce", help="load a JSON-lines file into the event topics")
    produce.add_argument("file", help="JSON-lines file, one event per line")
    produce.set_defaults(handler=cmd_produce)


def migrate_waiting(database_url: str) -> None:
    """Migrate, waiting out a short database outage (PostgreSQL restarting next to a
    restarting worker); a longer one is a startup error."""
    for attempt in Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(initial=0.1, max=2.0),
        stop=stop_after_attempt(30),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    ):
        with attempt:
            upgrade(database_url)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    namespace = settings.require_namespace()
    settings.require_database()
    setup_logging(settings.log_level, settings.log_format)
    source = config_source(settings)
    config = source.load()
    tracing.setup(settings.otel_zipkin_endpoint, settings.otel_service_name)  # flush spans
    migrate_waiting(settings.database_url)
    asyncio.run(ensure_event_topics(settings))
    serve_metrics(settings.metrics_port)
    loop = asyncio.new_event_loop()  # asyncio.run above closed its own
    asyncio.set_event_loop(loop)
    kafka = build_worker(settings, config)
    # before anything runs: SIGHUP's default action would end the process
    loop.add_signal_handler(signal.SIGHUP, reload_from, source, kafka.runtime.use_config)
    topics = Topics(namespace, settings.kafka_consumer_group)
    log.info(
        "kafka worker starting",
        extra={
            "group": topics.group,
            "topics": sorted(topics.sources),
            "repartition_topic": topics.repartition,
            "partitions": settings.kafka_repartition_partitions,
            "database": settings.database_label,
            "config": source.label,
        },
    )
    worker = faust.Worker(
        kafka.app,
        loglevel=settings.log_level.upper(),
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,
    )
    worker.spinner = None  # no terminal escape codes in the JSON log stream
    settle_heap()  # start-up done: the collector tuned for what traffic keeps alive
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    namespace = settings.require_namespace()
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    counts = asyncio.run(produce_file(settings.kafka_bootstrap_servers, namespace, path))
    for topic, count in sorted(counts.items()):
        print(f"{topic}: {count} records")
    return 0
