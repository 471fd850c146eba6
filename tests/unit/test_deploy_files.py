"""deploy/ and the compose file, read as files: the dashboard charts what an operator
needs, the rules name the alerts, docker-compose runs the Kafka that services.sh runs.
(tests/e2e/test_deploy_kit.py proves every metric they use is really exported.)"""

from __future__ import annotations

import re

from tests.helpers.deploy_kit import ROOT, RULES, dashboard_exprs


def test_dashboard_covers_what_an_operator_needs():
    exprs = "\n".join(dashboard_exprs())
    for needed in (
        "events_total",  # events/s by source
        "grpc_requests_total",  # refusals by code
        "events_failed_total",  # refusals by reason
        "grpc_request_duration_seconds_bucket",  # ack latency percentiles
        "flush_duration_seconds_bucket",
        "db_batch_size_bucket",
        "buffer_size",
        "rows_carried_total",
        "rows_dropped_total",
        "dead_lettered_total",
        "kafka_ready",
        "kafka_consumer_lag",
        "completions_total",  # goal-completed events per sink and outcome
        "completion_outbox_depth",
        "completion_oldest_unpublished_seconds",
    ):
        assert f"challenge_event_handler_{needed}" in exprs, needed
    rules = RULES.read_text()
    for alert in (
        "ChallengeWritesStuck",
        "ChallengeDeadLettersGrowing",
        "ChallengeAckLatencyOverSLO",
        "ChallengeKafkaConsumerLag",
        "ChallengeCompletionsNotPublished",
    ):
        assert f"alert: {alert}" in rules


def test_compose_runs_the_kafka_version_services_sh_runs():
    compose = (ROOT / "docker-compose.yml").read_text()
    services = (ROOT / "scripts" / "services.sh").read_text()
    pom = (ROOT / "scripts" / "kafka-pom.xml").read_text()
    (compose_version,) = re.findall(r"image:\s*apache/kafka:([\w.]+)", compose)
    (script_version,) = re.findall(r"^KAFKA_VERSION=([\w.]+)$", services, re.M)
    assert compose_version == script_version
    assert f"<kafka.version>{script_version}</kafka.version>" in pom
