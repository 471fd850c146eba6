"""Environment -> one frozen Settings object.

Every variable is parsed once at startup; a bad value raises SettingsError naming the
variable, so a typo in a deployment fails loudly instead of running with a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

DEFAULT_SQLITE_PATH = "data/challenge.db"


class SettingsError(ValueError):
    """A configuration variable has a value we cannot use."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SSLMODE = re.compile(r"([?&])sslmode=")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(name: str, raw: str) -> float:
    """`100ms`, `1s`, `1.5s`, `2m` or a bare number of seconds -> seconds."""
    match = _DURATION.match(raw)
    if not match:
        raise SettingsError(f"{name}: invalid duration {raw!r} (use e.g. 100ms, 1s, 1.5s, 2m)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise SettingsError(f"{name}: duration must be greater than zero, got {raw!r}")
    return seconds


# Kafka's rule for client-chosen names (group.instance.id): legal characters, 1-249 long.
_KAFKA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def kafka_name(name: str, raw: str) -> str:
    """An optional Kafka identifier ("" when unset)."""
    value = raw.strip()
    if value and not _KAFKA_NAME.match(value):
        raise SettingsError(f"{name}: use 1-249 of the characters A-Z a-z 0-9 . _ -, got {raw!r}")
    return value


def positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be greater than zero, got {raw!r}")
    return value


def _port(name: str, raw: str) -> int:
    value = positive_int(name, raw)
    if value > 65535:
        raise SettingsError(f"{name}: not a port number: {raw!r}")
    return value


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return value


def async_database_url(name: str, url: str) -> str:
    """Plain `postgresql://` / `sqlite:///` URLs -> the async driver SQLAlchemy needs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SettingsError(f"{name}: not a URL: {url!r}")
    base = scheme.split("+", 1)[0].lower()
    if base in ("postgresql", "postgres"):
        rest = _SSLMODE.sub(r"\1ssl=", rest)  # libpq spells it sslmode=, asyncpg ssl=
        return f"postgresql+asyncpg://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise SettingsError(
        f"{name}: unsupported database {scheme!r} (use postgresql:// or sqlite:///)"
    )


def _database_url(env: Mapping[str, str]) -> str:
    if env.get("DATABASE_URL"):
        return async_database_url("DATABASE_URL", env["DATABASE_URL"])
    parts = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SSLMODE")
    if not any(env.get(p) for p in parts):
        return f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH}"
    host = env.get("DB_HOST") or "localhost"
    port = _port("DB_PORT", env.get("DB_PORT") or "5432")
    name = env.get("DB_NAME") or "challenge_db"
    user = quote(env.get("DB_USER") or "postgres", safe="")
    password = quote(env.get("DB_PASSWORD") or "postgres", safe="")
    sslmode = _choice(
        "DB_SSLMODE",
        env.get("DB_SSLMODE") or "disable",
        ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    )
    url = f"postgresql+asyncpg://{user}:{password}@{host}:{port}/{name}"
    return url if sslmode == "disable" else f"{url}?ssl={sslmode}"


SUPERVISED_ENV = "CHALLENGE_GRPC_SUPERVISED"  # set by the GRPC_WORKERS supervisor


class _Env:
    """Reads one variable at a time; blank counts as unset, so defaults apply."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def raw(self, name: str, default: str) -> str:
        value = self.env.get(name)
        return default if value is None or value.strip() == "" else value

    def duration(self, name: str, default: str) -> float:
        return parse_duration(name, self.raw(name, default))

    def duration_or_zero(self, name: str, default: str) -> float:
        raw = self.raw(name, default)
        return 0.0 if raw.strip() in ("0", "0s", "0ms") else parse_duration(name, raw)

    def count(self, name: str, default: str) -> int:
        return positive_int(name, self.raw(name, default))

    def port(self, name: str, default: str) -> int:
        return _port(name, self.raw(name, default))

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        return _choice(name, self.raw(name, default), choices)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of every mode (SPEC §7, docs/grpc.md, docs/kafka.md), parsed once."""

    namespace: str = ""
    config_path: Path = Path("config/challenges.json")
    database_url: str = f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH}"
    grpc_port: int = 6565
    metrics_port: int = 8080
    kafka_bootstrap_servers: str = "localhost:9092"
    flush_interval: float = 1.0
    # Durable group commit: an urgent flush waits `commit_delay` for more callers, and
    # `busy_commit_delay` while at least `commit_siblings` calls are in flight
    # (docs/durability.md has the measurements behind the defaults).
    commit_delay: float = 0.005
    busy_commit_delay: float = 0.010
    commit_siblings: int = 32
    buffer_max_size: int = 10_000
    db_batch_size: int = 1000
    db_pool_size: int = 10
    ack_mode: str = "durable"
    assignment_mode: str = "auto"
    dedup_window: float = 600.0
    log_level: str = "info"
    log_format: str = "json"
    # gRPC bridge
    grpc_ack_timeout: float = 10.0  # durable: longest wait for the commit
    grpc_buffer_wait: float = 5.0  # longest wait for buffer space
    grpc_max_concurrent_rpcs: int = 2000
    grpc_shutdown_grace: float = 15.0
    health_check_interval: float = 1.0
    grpc_workers: int = 1
    grpc_supervised: bool = False  # a worker process of the GRPC_WORKERS supervisor
    # Kafka worker
    kafka_consumer_group: str = "challenge-event-handler"
    kafka_repartition_partitions: int = 8
    kafka_session_timeout: float = 10.0
    # static group membership: a restarted worker with the same id takes its partitions
    # back at once instead of after the session timeout ("" = dynamic membership)
    kafka_group_instance_id: str = ""
    kafka_source_partitions: int = 4  # for topics the worker creates when missing
    kafka_batch_size: int = 1000  # records an agent takes at a time
    kafka_batch_wait: float = 0.05  # longest wait to fill a batch

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def kafka_bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = _Env(os.environ if env is None else env)
        return cls(
            namespace=e.raw("AB_NAMESPACE", "").strip(),
            config_path=Path(e.raw("CONFIG_PATH", "config/challenges.json")),
            database_url=_database_url(e.env),
            grpc_port=e.port("GRPC_PORT", "6565"),
            metrics_port=e.port("METRICS_PORT", "8080"),
            kafka_bootstrap_servers=e.raw("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            flush_interval=e.duration("BUFFER_FLUSH_INTERVAL", "1s"),
            commit_delay=e.duration_or_zero("BUFFER_COMMIT_DELAY", "5ms"),
            busy_commit_delay=e.duration_or_zero("BUFFER_BUSY_COMMIT_DELAY", "10ms"),
            commit_siblings=e.count("BUFFER_COMMIT_SIBLINGS", "32"),
            buffer_max_size=e.count("BUFFER_MAX_SIZE", "10000"),
            db_batch_size=e.count("DB_BATCH_SIZE", "1000"),
            db_pool_size=e.count("DB_POOL_SIZE", "10"),
            ack_mode=e.choice("ACK_MODE", "durable", ("durable", "buffered")),
            assignment_mode=e.choice("ASSIGNMENT_MODE", "auto", ("auto", "required")),
            dedup_window=e.duration("DEDUP_WINDOW", "10m"),
            log_level=e.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=e.choice("LOG_FORMAT", "json", ("json", "text")),
            grpc_ack_timeout=e.duration("GRPC_ACK_TIMEOUT", "10s"),
            grpc_buffer_wait=e.duration("GRPC_BUFFER_WAIT", "5s"),
            grpc_max_concurrent_rpcs=e.count("GRPC_MAX_CONCURRENT_RPCS", "2000"),
            grpc_shutdown_grace=e.duration("GRPC_SHUTDOWN_GRACE", "15s"),
            health_check_interval=e.duration("HEALTH_CHECK_INTERVAL", "1s"),
            grpc_workers=e.count("GRPC_WORKERS", "1"),
            grpc_supervised=e.raw(SUPERVISED_ENV, "") == "1",
            kafka_consumer_group=e.raw("KAFKA_CONSUMER_GROUP", "challenge-event-handler").strip(),
            kafka_repartition_partitions=e.count("KAFKA_REPARTITION_PARTITIONS", "8"),
            kafka_session_timeout=e.duration("KAFKA_SESSION_TIMEOUT", "10s"),
            kafka_group_instance_id=kafka_name(
                "KAFKA_GROUP_INSTANCE_ID", e.raw("KAFKA_GROUP_INSTANCE_ID", "")
            ),
            kafka_source_partitions=e.count("KAFKA_SOURCE_PARTITIONS", "4"),
            kafka_batch_size=e.count("KAFKA_BATCH_SIZE", "1000"),
            kafka_batch_wait=e.duration("KAFKA_BATCH_WAIT", "50ms"),
        )

    def require_namespace(self) -> str:
        if not self.namespace:
            raise SettingsError("AB_NAMESPACE: required in this mode (the game namespace)")
        return self.namespace
