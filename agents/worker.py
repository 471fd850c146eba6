"""The Kafka worker: the Faust app of `app.kafka` with the agents of this package attached."""

from __future__ import annotations

from agents.gdpr import make_gdpr_agent
from agents.ingest import make_ingest_agent
from agents.progress import make_progress_agent
from app.core.challenges import ChallengeConfig
from app.core.settings import Settings
from app.kafka.faust_app import KafkaApp, create_app
from app.kafka.topics import Topics


def build_worker(settings: Settings, config: ChallengeConfig) -> KafkaApp:
    kafka = create_app(settings, config)
    for source in kafka.sources:
        make_ingest_agent(kafka, source)
    make_progress_agent(kafka)
    make_gdpr_agent(
        kafka.app,
        Topics(settings.require_namespace(), settings.kafka_consumer_group),
        kafka.runtime.pipeline.flusher,
        settings.namespace,
    )
    return kafka
