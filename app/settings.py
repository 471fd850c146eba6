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


@dataclass(frozen=True, slots=True)
class Settings:
    namespace: str = ""
    config_path: Path = Path("config/challenges.json")
    database_url: str = f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH}"
    grpc_port: int = 6565
    metrics_port: int = 8080
    kafka_bootstrap_servers: str = "localhost:9092"
    flush_interval: float = 1.0
    buffer_max_size: int = 10_000
    db_batch_size: int = 1000
    db_pool_size: int = 10
    ack_mode: str = "durable"
    assignment_mode: str = "auto"
    dedup_window: float = 600.0
    log_level: str = "info"
    log_format: str = "json"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            value = env.get(name)
            return default if value is None or value.strip() == "" else value

        return cls(
            namespace=get("AB_NAMESPACE", "").strip(),
            config_path=Path(get("CONFIG_PATH", "config/challenges.json")),
            database_url=_database_url(env),
            grpc_port=_port("GRPC_PORT", get("GRPC_PORT", "6565")),
            metrics_port=_port("METRICS_PORT", get("METRICS_PORT", "8080")),
            kafka_bootstrap_servers=get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            flush_interval=parse_duration(
                "BUFFER_FLUSH_INTERVAL", get("BUFFER_FLUSH_INTERVAL", "1s")
            ),
            buffer_max_size=positive_int("BUFFER_MAX_SIZE", get("BUFFER_MAX_SIZE", "10000")),
            db_batch_size=positive_int("DB_BATCH_SIZE", get("DB_BATCH_SIZE", "1000")),
            db_pool_size=positive_int("DB_POOL_SIZE", get("DB_POOL_SIZE", "10")),
            ack_mode=_choice("ACK_MODE", get("ACK_MODE", "durable"), ("durable", "buffered")),
            assignment_mode=_choice(
                "ASSIGNMENT_MODE", get("ASSIGNMENT_MODE", "auto"), ("auto", "required")
            ),
            dedup_window=parse_duration("DEDUP_WINDOW", get("DEDUP_WINDOW", "10m")),
            log_level=_choice(
                "LOG_LEVEL", get("LOG_LEVEL", "info"), ("debug", "info", "warning", "error")
            ),
            log_format=_choice("LOG_FORMAT", get("LOG_FORMAT", "json"), ("json", "text")),
        )

    def require_namespace(self) -> str:
        if not self.namespace:
            raise SettingsError("AB_NAMESPACE: required in this mode (the game namespace)")
        return self.namespace
