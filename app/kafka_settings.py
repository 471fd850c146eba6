"""Kafka-mode settings and topic names (SPEC §1.2), parsed once like app.settings.

Kept apart from the core Settings so Kafka-only knobs do not leak into the other modes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from app.events import EventType
from app.settings import Settings, parse_duration, positive_int

DEFAULT_GROUP = "challenge-event-handler"
LOGIN_SUFFIX = "iam.account.v1.userLoggedIn"
STAT_SUFFIX = "social.statistic.v1.statItemUpdated"


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    namespace: str
    bootstrap: str
    group: str = DEFAULT_GROUP
    repartition_partitions: int = 8
    session_timeout: float = 10.0

    @classmethod
    def from_env(cls, settings: Settings, env: Mapping[str, str] | None = None) -> KafkaSettings:
        env = os.environ if env is None else env
        group = (env.get("KAFKA_CONSUMER_GROUP") or DEFAULT_GROUP).strip()
        parts = positive_int(
            "KAFKA_REPARTITION_PARTITIONS", env.get("KAFKA_REPARTITION_PARTITIONS") or "8"
        )
        session = parse_duration("KAFKA_SESSION_TIMEOUT", env.get("KAFKA_SESSION_TIMEOUT") or "10s")
        return cls(
            session_timeout=session,
            namespace=settings.require_namespace(),
            bootstrap=settings.kafka_bootstrap_servers,
            group=group,
            repartition_partitions=parts,
        )

    @property
    def login_topic(self) -> str:
        return f"{self.namespace}.{LOGIN_SUFFIX}"

    @property
    def stat_topic(self) -> str:
        return f"{self.namespace}.{STAT_SUFFIX}"

    @property
    def source_topics(self) -> dict[str, EventType]:
        return {self.login_topic: EventType.LOGIN, self.stat_topic: EventType.STATISTIC}

    @property
    def repartition_topic(self) -> str:
        """One per (namespace, group): two deployments never consume each other's copy."""
        return f"{self.namespace}.{self.group}.events-by-user"

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def topic_for(event_type: EventType, namespace: str) -> str:
    suffix = LOGIN_SUFFIX if event_type is EventType.LOGIN else STAT_SUFFIX
    return f"{namespace}.{suffix}"
