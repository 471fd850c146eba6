"""Kafka-mode commands: `worker`, `produce FILE.jsonl`, and `replay --topic` (replay_topic)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from app.challenges import load_config
from app.events import EventType, InvalidEvent, event_type_of, utc_naive
from app.kafka_settings import KafkaSettings, topic_for
from app.logs import setup_logging
from app.metrics import serve_metrics
from app.settings import Settings, SettingsError

log = logging.getLogger(__name__)


def register(sub) -> None:
    worker = sub.add_parser(
        "worker", help="run one Kafka (Faust) worker of the consumer group (KAFKA_CONSUMER_GROUP)"
    )
    worker.set_defaults(handler=cmd_worker)
    produce = sub.add_parser("produce", help="load a JSON-lines file into the event topics")
    produce.add_argument("file", help="JSON-lines file, one event per line")
    produce.set_defaults(handler=cmd_produce)


# ----------------------------------------------------------------------- worker


def cmd_worker(args) -> int:
    import faust

    from app.faust_app import create_app, reload_config
    from tables.migrate import upgrade

    settings = Settings.from_env()
    kafka = KafkaSettings.from_env(settings)
    setup_logging(settings.log_level, settings.log_format)
    config = load_config(settings.config_path)
    _wait_for_database(lambda: upgrade(settings.database_url))
    from app.kafka_admin import ensure_event_topics

    asyncio.run(ensure_event_topics(kafka))
    serve_metrics(settings.metrics_port)
    loop = asyncio.new_event_loop()  # upgrade() ran (and closed) its own
    asyncio.set_event_loop(loop)
    app, runtime = create_app(settings, kafka, config)
    # before anything runs: SIGHUP's default action would end the process
    loop.add_signal_handler(signal.SIGHUP, reload_config, runtime, settings.config_path)
    log.info(
        "kafka worker starting",
        extra={
            "group": kafka.group,
            "topics": sorted(kafka.source_topics),
            "repartition_topic": kafka.repartition_topic,
            "partitions": kafka.repartition_partitions,
        },
    )
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.upper(),
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,
    )
    worker.spinner = None  # no terminal escape codes in the JSON log stream
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _wait_for_database(step, attempts: int = 30) -> None:
    """Run a startup step that needs the database, waiting out a short outage (a restart
    of PostgreSQL next to a restarting worker); a longer one is a startup error."""
    from tables.db import backoff_delay, is_transient

    for attempt in range(1, attempts + 1):
        try:
            step()
            return
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            log.warning(
                "database not reachable at startup, retrying",
                extra={"attempt": attempt, "error": str(exc)[:300]},
            )
            time.sleep(backoff_delay(attempt, base=0.1, cap=2.0))


# ----------------------------------------------------------------------- produce


def _route(line: bytes, namespace: str) -> tuple[str, bytes]:
    """A JSON line -> (its topic by event type, the bytes to send unchanged)."""
    import orjson

    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise InvalidEvent("undecodable", "cannot decode JSON") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("nil_message", "message cannot be nil")
    return topic_for(event_type_of(obj), namespace), line


async def produce_file(bootstrap: str, namespace: str, path: Path) -> dict[str, int]:
    from aiokafka import AIOKafkaProducer

    counts: dict[str, int] = {}
    total = max(path.stat().st_size, 1)  # noqa: ASYNC240
    tty = sys.stderr.isatty()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        done, last = 0, 0.0
        pending: list[asyncio.Future] = []
        with path.open("rb") as handle:  # noqa: ASYNC240
            for line in handle:
                done += len(line)
                if not line.strip():
                    continue
                try:
                    topic, value = _route(line.strip(), namespace)
                except InvalidEvent:
                    topic, value = topic_for(EventType.STATISTIC, namespace), line.strip()
                pending.append(await producer.send(topic, value))
                counts[topic] = counts.get(topic, 0) + 1
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
                if tty and time.monotonic() - last > 0.2:
                    last = time.monotonic()
                    bar = "#" * int(30 * done / total)
                    print(f"\r[{bar:<30}] {done / total:6.1%}", end="", file=sys.stderr)
        await asyncio.gather(*pending)
        if tty:
            print(f"\r[{'#' * 30}] 100.0%", file=sys.stderr)
    finally:
        await producer.stop()
    return counts


def cmd_produce(args) -> int:
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


# ----------------------------------------------------------------------- replay


def parse_time(name: str, raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(f"{name}: not an ISO 8601 time: {raw!r}") from None
    return utc_naive(moment)


def replay_topic(settings: Settings, args) -> int:
    """Re-process a topic range through the core pipeline; commits no group offsets."""
    from app.kafka_replay import replay_range

    start_time = parse_time("--from-time", args.from_time)
    end_time = parse_time("--to-time", args.to_time)
    if args.from_offset is not None and args.from_offset < 0:
        raise SettingsError("--from-offset: must be >= 0")
    config = load_config(settings.config_path)
    summary = asyncio.run(
        replay_range(
            settings,
            config,
            args.topic,
            from_offset=args.from_offset,
            from_time=start_time,
            to_time=end_time,
        )
    )
    print("\n".join(summary.report()))
    return 0


def epoch_ms(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp() * 1000)
