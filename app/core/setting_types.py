"""How one environment variable's text becomes a value, and the declaration that ties a
variable's name, default, parser and doc together (app/core/settings.py uses it).

Every parser takes the variable's name and its raw text and raises `SettingsError`
naming the variable, so a typo in a deployment fails at start with a line that says
which variable to fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import Field, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from app.core.clock import utc_naive


class SettingsError(ValueError):
    """A configuration variable has a value we cannot use."""


Parser = Callable[[str, str], Any]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Kafka's rule for client-chosen names (group.instance.id): legal characters, 1-249 long.
_KAFKA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SSLMODE = re.compile(r"([?&])sslmode=")


def parse_duration(name: str, raw: str) -> float:
    """`100ms`, `1s`, `1.5s`, `2m`, `1h`, `400d` or a bare number of seconds -> seconds."""
    match = _DURATION.match(raw)
    if not match:
        raise SettingsError(f"{name}: invalid duration {raw!r} (use e.g. 100ms, 1s, 1.5s, 2m)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise SettingsError(f"{name}: duration must be greater than zero, got {raw!r}")
    return seconds


def duration_or_zero(name: str, raw: str) -> float:
    """A duration where `0` turns the feature off."""
    return 0.0 if raw.strip() in ("0", "0s", "0ms") else parse_duration(name, raw)


def positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be greater than zero, got {raw!r}")
    return value


def port(name: str, raw: str) -> int:
    value = positive_int(name, raw)
    if value > 65535:
        raise SettingsError(f"{name}: not a port number: {raw!r}")
    return value


def text(name: str, raw: str) -> str:
    return raw.strip()


def path(name: str, raw: str) -> Path:
    return Path(raw.strip())


def flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def choice(*choices: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
        return value

    parse.__doc__ = f"one of {', '.join(choices)}"
    return parse


def choices_list(*choices: str) -> Parser:
    """A comma list of distinct choices ("" = none)."""

    def parse(name: str, raw: str) -> tuple[str, ...]:
        values: list[str] = []
        for item in raw.split(","):
            value = item.strip().lower()
            if not value:
                continue
            if value not in choices:
                raise SettingsError(f"{name}: {item.strip()!r} is not one of {', '.join(choices)}")
            if value not in values:
                values.append(value)
        return tuple(values)

    parse.__doc__ = f"comma list of {', '.join(choices)}"
    return parse


def kafka_name(name: str, raw: str) -> str:
    """An optional Kafka identifier ("" when unset)."""
    value = raw.strip()
    if value and not _KAFKA_NAME.match(value):
        raise SettingsError(f"{name}: use 1-249 of the characters A-Z a-z 0-9 . _ -, got {raw!r}")
    return value


def timestamp(name: str, raw: str) -> datetime:
    """An RFC 3339 time (offset optional, UTC assumed) -> naive UTC."""
    text_value = raw.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        return utc_naive(datetime.fromisoformat(text_value))
    except ValueError:
        raise SettingsError(f"{name}: not an RFC 3339 time: {raw!r}") from None


def async_database_url(name: str, url: str) -> str:
    """Plain `postgresql://` / `sqlite:///` URLs -> the async driver SQLAlchemy needs."""
    scheme, sep, rest = url.strip().partition("://")
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


def optional_database_url(name: str, raw: str) -> str:
    return async_database_url(name, raw) if raw.strip() else ""


@dataclass(frozen=True, slots=True)
class Declaration:
    """One environment variable: its name, documented default, parser, one-line doc and
    the docs section it is listed under. `secret`: never printed with its value.
    `required`: the services need it set (.env.template leaves it uncommented, as the
    Extend templates list what a developer must fill in)."""

    env: str
    default: str
    parse: Parser
    doc: str
    group: str
    secret: bool = False
    required: bool = False


def setting(
    env: str,
    default: str,
    parse: Parser,
    doc: str,
    *,
    group: str = "core",
    secret: bool = False,
    required: bool = False,
) -> Any:
    """A Settings field declared by its variable: the Python default is the documented
    default parsed, so the two cannot disagree."""
    declaration = Declaration(env, default, parse, doc, group, secret, required)
    value = parse(env, default)
    return field(default=value, metadata={"declaration": declaration})


def declaration_of(f: Field[Any]) -> Declaration | None:
    found = f.metadata.get("declaration")
    return found if isinstance(found, Declaration) else None
