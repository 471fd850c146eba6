"""The publisher of a running service: its sinks from the settings, its own engine.

The publisher has its own small connection pool, so a sink lease (one session per sink)
or a slow outbox read never takes a connection a flush needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.completions.async_messaging import NAME as ASYNC_MESSAGING
from app.completions.async_messaging import TIMEOUT as AM_TIMEOUT
from app.completions.kafka_sink import NAME as KAFKA
from app.completions.kafka_sink import TIMEOUT as KAFKA_TIMEOUT
from app.completions.log_sink import LogSink
from app.completions.relay import RelayedSink, build
from app.core.challenges import ChallengeConfig
from app.core.settings import Settings
from tables import outbox
from tables.db import make_engine
from tables.publisher import Publisher, Sink


def build_sinks(settings: Settings) -> list[Sink]:
    sinks: list[Sink] = []
    for name in settings.completion_sinks:
        if name == ASYNC_MESSAGING:
            spec: dict[str, Any] = {
                "sink": name,
                "host": settings.async_messaging_host,
                "port": settings.async_messaging_port,
                "topic": settings.completion_topic,
                "timeout": AM_TIMEOUT,
            }
        elif name == KAFKA:
            spec = {
                "sink": name,
                "servers": settings.kafka_bootstrap_list,
                "topic": settings.completion_kafka_topic,
                "timeout": KAFKA_TIMEOUT,
            }
        else:
            sinks.append(LogSink())
            continue
        if settings.completion_sender == "process":
            sinks.append(
                RelayedSink(spec, log_level=settings.log_level, log_format=settings.log_format)
            )
        else:
            sinks.append(build(spec))
    return sinks


def rotating_goals(config: Callable[[], ChallengeConfig]) -> Callable[[str], bool]:
    """Whether a goal rotates, by the configuration in force (SIGHUP may change it)."""

    def rotating(goal_id: str) -> bool:
        goal = config().goal(goal_id)
        return goal is not None and goal.rotation is not None

    return rotating


class CompletionPublishing:
    """The publisher of one process, started and stopped with the service like the
    flusher (`serve`, the Kafka worker). Off when COMPLETION_SINKS is empty."""

    def __init__(self, settings: Settings, config: Callable[[], ChallengeConfig]):
        self.settings = settings
        self.config = config
        self.publisher: Publisher | None = None

    def start(self) -> None:
        sinks = build_sinks(self.settings)
        if not sinks or self.publisher is not None:
            return
        settings = self.settings
        # per sink: its lease session and a connection for reads and marks; one for gauges
        engine = make_engine(
            settings.database_url, pool_size=2 * len(sinks) + 1, planner=outbox.PLANNER
        )
        self.publisher = Publisher(
            engine,
            sinks,
            rotating=rotating_goals(self.config),
            batch_size=settings.completion_batch_size,
            poll_interval=settings.completion_poll_interval,
        )
        self.publisher.start()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing; what is not published yet stays in the outbox."""
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            await publisher.stop(timeout)
            await publisher.engine.dispose()
