"""Kafka topic names (contract §1.2), in this one module."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.events import EventType

LOGIN_SUFFIX = "iam.account.v1.userLoggedIn"
STAT_SUFFIX = "social.statistic.v1.statItemUpdated"
GDPR_SUFFIX = "iam.account.v1.gdprRequestDataDeletionResponse"


def topic_for(event_type: EventType, namespace: str) -> str:
    """The AGS source topic of an event type in a namespace."""
    suffix = LOGIN_SUFFIX if event_type is EventType.LOGIN else STAT_SUFFIX
    return f"{namespace}.{suffix}"


def event_type_for(topic: str) -> EventType | None:
    """The event type a source topic carries (None: not one of ours)."""
    if topic.endswith(LOGIN_SUFFIX):
        return EventType.LOGIN
    if topic.endswith(STAT_SUFFIX):
        return EventType.STATISTIC
    return None


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics one worker group of one namespace reads and writes."""

    namespace: str
    group: str

    @property
    def login(self) -> str:
        return topic_for(EventType.LOGIN, self.namespace)

    @property
    def stat(self) -> str:
        return topic_for(EventType.STATISTIC, self.namespace)

    @property
    def sources(self) -> dict[str, EventType]:
        return {self.login: EventType.LOGIN, self.stat: EventType.STATISTIC}

    @property
    def gdpr(self) -> str:
        """GDPR account deletions (contract §1.2), consumed by agents/gdpr.py."""
        return f"{self.namespace}.{GDPR_SUFFIX}"

    @property
    def repartition(self) -> str:
        """One per (namespace, group): two deployments never consume each other's copy."""
        return f"{self.namespace}.{self.group}.events-by-user"
