"""Environment -> one frozen Settings object; every variable declared once.

Each field of `Settings` is declared with `setting(...)`: its variable's name, the
default as the docs show it, the parser and a one-line doc. `from_env` reads every
declared variable, the docs' settings table and `.env.template` are generated from the
same declarations (app/core/settings_docs.py), and a unit test holds the files to them.
A bad value raises SettingsError naming the variable; blank counts as unset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app.core.database_url import describe
from app.core.setting_types import (
    Declaration,
    SettingsError,
    async_database_url,
    choice,
    choices_list,
    declaration_of,
    duration_or_zero,
    flag,
    kafka_name,
    optional_database_url,
    parse_duration,
    port,
    positive_int,
    setting,
    text,
    timestamp,
)
from app.core.setting_types import path as path_value

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "SUPERVISED_ENV",
    "Settings",
    "SettingsError",
    "async_database_url",
    "declarations",
    "parse_duration",
]

DEFAULT_SQLITE_PATH = "data/challenge.db"
EMBEDDED_DATABASE_URL = f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH}"
SUPERVISED_ENV = "CHALLENGE_GRPC_SUPERVISED"  # set by the GRPC_WORKERS supervisor
_DB_PARTS = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SSLMODE")
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
COMPLETION_SINKS = ("async-messaging", "kafka", "log")
SENDER_DOC = (
    "where the async-messaging and kafka sinks make their calls: inline (in the service's "
    "process) or process (a child process per sink, off the event loop that acknowledges "
    "events: for a container with two CPUs or more)"
)

DURATIONS = "`100ms`, `1s`, `1.5s`, `2m`, `1h`, `400d` or bare seconds"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of every mode, parsed once (docs/contract.md §7, docs/settings.md)."""

    # ---- service
    namespace: str = setting(
        "AB_NAMESPACE", "", text,
        "game namespace; required by `serve` and `worker`, events of other namespaces are "
        "acknowledged and skipped",
        required=True,
    )  # fmt: skip
    config_path: Path = setting(
        "CONFIG_PATH", "config/challenges.json", path_value,
        "challenge config file; reloaded on SIGHUP (validated first)",
    )  # fmt: skip
    challenges_json: str = setting(
        "CHALLENGES_JSON", "", text,
        "the challenge config itself (JSON, or base64 of it); wins over CONFIG_PATH; read "
        "once at start (SIGHUP has nothing new to read: restart with the new value)",
        secret=True,
    )  # fmt: skip
    # ---- database
    database_url: str = setting(
        "DATABASE_URL", "", optional_database_url,
        "`postgresql://user:pass@host:5432/db` or `sqlite:///path` (the async driver is "
        "picked by the app); `serve` and `worker` need it or DB_HOST",
        group="database", secret=True, required=True,
    )  # fmt: skip
    db_host: str = setting(
        "DB_HOST", "localhost", text, "used when DATABASE_URL is unset", group="database"
    )
    db_port: int = setting("DB_PORT", "5432", port, "PostgreSQL port", group="database")
    db_name: str = setting("DB_NAME", "challenge_db", text, "database name", group="database")
    db_user: str = setting("DB_USER", "postgres", text, "database user", group="database")
    db_password: str = setting(
        "DB_PASSWORD", "postgres", text, "database password", group="database", secret=True
    )
    db_sslmode: str = setting(
        "DB_SSLMODE", "disable", choice(*_SSL_MODES), "libpq sslmode", group="database"
    )
    db_pool_size: int = setting(
        "DB_POOL_SIZE", "10", positive_int, "connections in the pool", group="database"
    )
    db_batch_size: int = setting(
        "DB_BATCH_SIZE", "1000", positive_int, "rows per SQL statement", group="database"
    )
    assignment_mode: str = setting(
        "ASSIGNMENT_MODE", "auto", choice("auto", "required"),
        "`required`: only update rows the challenge backend created; never create "
        "user_goal_progress", group="database",
    )  # fmt: skip
    # ---- buffering and delivery
    flush_interval: float = setting(
        "BUFFER_FLUSH_INTERVAL", "1s", parse_duration,
        "how long buffered gRPC acks, Kafka and replay updates may sit unwritten", group="buffer",
    )  # fmt: skip
    commit_delay: float = setting(
        "BUFFER_COMMIT_DELAY", "5ms", duration_or_zero,
        "durable group commit: an urgent flush waits this long for more callers (0: at once)",
        group="buffer",
    )  # fmt: skip
    busy_commit_delay: float = setting(
        "BUFFER_BUSY_COMMIT_DELAY", "10ms", duration_or_zero,
        "... and this long while at least BUFFER_COMMIT_SIBLINGS calls are in flight",
        group="buffer",
    )  # fmt: skip
    commit_siblings: int = setting(
        "BUFFER_COMMIT_SIBLINGS", "32", positive_int,
        "calls in flight from which the busy commit delay applies", group="buffer",
    )  # fmt: skip
    buffer_max_size: int = setting(
        "BUFFER_MAX_SIZE", "10000", positive_int,
        "pending (user, goal) entries before an early flush, then backpressure", group="buffer",
    )  # fmt: skip
    ack_mode: str = setting(
        "ACK_MODE", "durable", choice("durable", "buffered"),
        "`durable`: gRPC answers after the commit; `buffered`: once buffered", group="buffer",
    )  # fmt: skip
    dedup_window: float = setting(
        "DEDUP_WINDOW", "10m", parse_duration,
        "gRPC: a redelivered event id inside the window is applied once", group="buffer",
    )  # fmt: skip
    # ---- event times and erasures
    event_time_min: datetime = setting(
        "EVENT_TIME_MIN", "2000-01-01T00:00:00Z", timestamp,
        "an event time before this is not real: the next time source is used", group="events",
    )  # fmt: skip
    event_time_max_skew: float = setting(
        "EVENT_TIME_MAX_SKEW", "5m", parse_duration,
        "an event time later than receipt plus this is not real either", group="events",
    )  # fmt: skip
    erasure_retention: float = setting(
        "ERASURE_RETENTION", "400d", parse_duration,
        "how long a GDPR erasure tombstone keeps the user's later events out", group="events",
    )  # fmt: skip
    # ---- ports, logs, tracing
    grpc_port: int = setting("GRPC_PORT", "6565", port, "gRPC port of `serve`", group="ops")
    metrics_port: int = setting(
        "METRICS_PORT", "8080", port, "Prometheus `/metrics` port", group="ops"
    )
    log_level: str = setting(
        "LOG_LEVEL", "info", choice("debug", "info", "warning", "error"), "log level", group="ops"
    )
    log_format: str = setting(
        "LOG_FORMAT", "json", choice("json", "text"), "`text` for humans", group="ops"
    )
    otel_zipkin_endpoint: str = setting(
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT", "", text,
        "Zipkin span endpoint (e.g. http://zipkin:9411/api/v2/spans); unset: tracing off",
        group="ops",
    )  # fmt: skip
    otel_service_name: str = setting(
        "OTEL_SERVICE_NAME", "challenge-event-handler", text,
        "service name on exported spans", group="ops",
    )  # fmt: skip
    # ---- gRPC bridge
    grpc_ack_timeout: float = setting(
        "GRPC_ACK_TIMEOUT", "10s", parse_duration,
        "durable: longest wait for the caller's rows to commit, then UNAVAILABLE", group="grpc",
    )  # fmt: skip
    grpc_buffer_wait: float = setting(
        "GRPC_BUFFER_WAIT", "5s", parse_duration,
        "longest wait for buffer space, then UNAVAILABLE", group="grpc",
    )  # fmt: skip
    grpc_max_concurrent_rpcs: int = setting(
        "GRPC_MAX_CONCURRENT_RPCS", "2000", positive_int,
        "calls in flight past this are answered RESOURCE_EXHAUSTED at once", group="grpc",
    )  # fmt: skip
    grpc_shutdown_grace: float = setting(
        "GRPC_SHUTDOWN_GRACE", "15s", parse_duration,
        "SIGTERM: in-flight calls and the final flush must finish within it", group="grpc",
    )  # fmt: skip
    health_check_interval: float = setting(
        "HEALTH_CHECK_INTERVAL", "1s", parse_duration,
        "database probe interval of the health status", group="grpc",
    )  # fmt: skip
    grpc_workers: int = setting(
        "GRPC_WORKERS", "1", positive_int,
        "server processes sharing the port under a supervisor", group="grpc",
    )  # fmt: skip
    grpc_supervised: bool = setting(
        SUPERVISED_ENV, "", flag,
        "internal: set by the GRPC_WORKERS supervisor on its worker processes", group="internal",
    )  # fmt: skip
    # ---- Kafka worker
    kafka_bootstrap_servers: str = setting(
        "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092", text,
        "comma list of brokers", group="kafka",
    )  # fmt: skip
    kafka_consumer_group: str = setting(
        "KAFKA_CONSUMER_GROUP", "challenge-event-handler", text, "consumer group", group="kafka"
    )
    kafka_repartition_partitions: int = setting(
        "KAFKA_REPARTITION_PARTITIONS", "8", positive_int,
        "partitions of the repartition topic (records not keyed by user id)", group="kafka",
    )  # fmt: skip
    kafka_session_timeout: float = setting(
        "KAFKA_SESSION_TIMEOUT", "10s", parse_duration,
        "a killed worker's partitions move after this long", group="kafka",
    )  # fmt: skip
    kafka_group_instance_id: str = setting(
        "KAFKA_GROUP_INSTANCE_ID", "", kafka_name,
        "static group membership id (one per worker, e.g. the pod name)", group="kafka",
    )  # fmt: skip
    kafka_source_partitions: int = setting(
        "KAFKA_SOURCE_PARTITIONS", "4", positive_int,
        "partitions of source topics the worker creates when missing (local development)",
        group="kafka",
    )  # fmt: skip
    kafka_batch_size: int = setting(
        "KAFKA_BATCH_SIZE", "1000", positive_int, "records an agent takes at a time", group="kafka",
    )  # fmt: skip
    kafka_batch_wait: float = setting(
        "KAFKA_BATCH_WAIT", "50ms", parse_duration, "longest wait to fill a batch", group="kafka",
    )  # fmt: skip
    # ---- goal-completed events
    completion_sinks: tuple[str, ...] = setting(
        "COMPLETION_SINKS", "", choices_list(*COMPLETION_SINKS),
        "where goal-completed events go: comma list of async-messaging, kafka, log "
        "(unset: none)", group="completions",
    )  # fmt: skip
    async_messaging_host: str = setting(
        "ASYNC_MESSAGING_PUBLISHER_GRPC_HOST", "localhost", text,
        "Extend Async Messaging publisher sidecar host", group="completions",
    )  # fmt: skip
    async_messaging_port: int = setting(
        "ASYNC_MESSAGING_PUBLISHER_GRPC_PORT", "7474", port,
        "... and its gRPC port", group="completions",
    )  # fmt: skip
    completion_topic: str = setting(
        "COMPLETION_TOPIC", "goalCompleted", text,
        "Async Messaging topic of goal-completed events", group="completions",
    )  # fmt: skip
    completion_kafka_topic: str = setting(
        "COMPLETION_KAFKA_TOPIC", "{AB_NAMESPACE}.challenge.v1.goalCompleted", text,
        "Kafka topic of goal-completed events (`{AB_NAMESPACE}` is replaced)", group="completions",
    )  # fmt: skip
    completion_sender: str = setting(
        "COMPLETION_SENDER", "inline", choice("inline", "process"), SENDER_DOC, group="completions"
    )
    completion_batch_size: int = setting(
        "COMPLETION_BATCH_SIZE", "2000", positive_int,
        "completions a publisher reads and sends at a time", group="completions",
    )  # fmt: skip
    completion_poll_interval: float = setting(
        "COMPLETION_POLL_INTERVAL", "500ms", parse_duration,
        "how often an idle publisher looks for new completions", group="completions",
    )  # fmt: skip
    # Derived, not a variable of its own: no database settings at all, so the embedded
    # SQLite file (fine for `demo`, `replay FILE`, `progress`; refused by the services).
    embedded_database: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def database_label(self) -> str:
        """Where the rows go, for start lines: `host:port/db` or the SQLite file."""
        return describe(self.database_url)

    @property
    def kafka_bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", EMBEDDED_DATABASE_URL)
            object.__setattr__(self, "embedded_database", True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return _from_env(cls, os.environ if env is None else env)

    def require_namespace(self) -> str:
        if not self.namespace:
            raise SettingsError("AB_NAMESPACE: required in this mode (the game namespace)")
        return self.namespace

    def require_database(self) -> str:
        """`serve` and `worker` never fall back to the embedded file: in a container it
        dies with the container, and a service would answer OK while losing every row."""
        if self.embedded_database:
            raise SettingsError(
                "DATABASE_URL / DB_HOST: not set, and `serve` and `worker` do not fall back to "
                "the embedded SQLite file (it dies with the container): set "
                "DATABASE_URL=postgresql://user:pass@host:5432/db or DB_HOST and the other "
                "DB_* variables, or ask for a file explicitly: DATABASE_URL=sqlite:///path"
            )
        return self.database_url


def _from_env(cls: type[Settings], env: Mapping[str, str]) -> Settings:
    values: dict[str, Any] = {}
    for name, declaration in _declared():
        raw = env.get(declaration.env)
        if raw is not None and raw.strip() != "":
            values[name] = declaration.parse(declaration.env, raw)
    return _resolved(cls(**values), env)


def _declared() -> Iterator[tuple[str, Declaration]]:
    for f in fields(Settings):
        declaration = declaration_of(f)
        if declaration is not None:
            yield f.name, declaration


def declarations() -> list[Declaration]:
    """Every declared variable, in declaration order (docs, .env.template)."""
    return [declaration for _name, declaration in _declared()]


def _resolved(settings: Settings, env: Mapping[str, str]) -> Settings:
    """What depends on several variables: the database URL and the completion topic."""
    changes: dict[str, Any] = {}
    if not env.get("DATABASE_URL", "").strip() and any(
        env.get(part, "").strip() for part in _DB_PARTS
    ):
        user = quote(settings.db_user, safe="")
        password = quote(settings.db_password, safe="")
        url = (
            f"postgresql+asyncpg://{user}:{password}@{settings.db_host}:{settings.db_port}"
            f"/{settings.db_name}"
        )
        changes["database_url"] = url if settings.db_sslmode == "disable" else (
            f"{url}?ssl={settings.db_sslmode}"
        )  # fmt: skip
        changes["embedded_database"] = False
    if "{AB_NAMESPACE}" in settings.completion_kafka_topic:
        changes["completion_kafka_topic"] = settings.completion_kafka_topic.replace(
            "{AB_NAMESPACE}", settings.namespace or "default"
        )
    return replace(settings, **changes) if changes else settings
