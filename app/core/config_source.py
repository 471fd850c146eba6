"""Where the challenge config comes from: `CHALLENGES_JSON`, else the `CONFIG_PATH` file.

An AccelByte Extend app is given variables and secrets, never files, so the config can
be the variable's value itself: plain JSON, or base64 of it (a secret pasted through a
tool that mangles quotes and newlines). It is validated exactly as the file is, and every
problem line names the variable. The environment of a running process cannot change, so
a config from the environment is fixed for the process's life (`reloadable` is False).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.challenges import (
    ChallengeConfig,
    ConfigError,
    config_from_data,
    load_config,
    read_json,
)
from app.core.settings import Settings

ENV_NAME = "CHALLENGES_JSON"
# What one environment string can hold on Linux (MAX_ARG_STRLEN, 128 KiB): longer text
# did not come from a real environment. The reference config is about 5 KB.
MAX_CHARS = 1 << 17
_SPACE = re.compile(r"\s+")
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """`label` names the source in logs and errors (the variable or the file path); the
    environment's text is never shown."""

    label: str
    path: Path | None
    text: str = field(default="", repr=False)

    @property
    def reloadable(self) -> bool:
        """A file can be re-read on SIGHUP; the process's environment cannot change."""
        return self.path is not None

    def load(self) -> ChallengeConfig:
        if self.path is not None:
            return load_config(self.path)
        return config_from_env(self.text)


def config_source(settings: Settings) -> ConfigSource:
    if settings.challenges_json:
        return ConfigSource(ENV_NAME, None, settings.challenges_json)
    return ConfigSource(str(settings.config_path), settings.config_path)


def config_from_env(raw: str, name: str = ENV_NAME) -> ChallengeConfig:
    """The variable's text -> validated config; ConfigError lines all start `name: `."""
    data = _data(decode_env_text(raw, name), name)
    try:
        return config_from_data(data, name)
    except ConfigError as exc:
        prefix = f"{name}: "
        raise ConfigError(
            [p if p.startswith(prefix) else prefix + p for p in exc.problems]
        ) from None


def decode_env_text(raw: str, name: str = ENV_NAME) -> str:
    """JSON as it is, or the JSON text base64 (standard or URL-safe alphabet) stands for."""
    text = raw.strip().lstrip("\ufeff")
    if len(text) > MAX_CHARS:
        raise ConfigError([f"{name}: too large ({len(text):,} characters; at most {MAX_CHARS:,})"])
    if "\x00" in text:
        raise ConfigError([f"{name}: contains a NUL character"])
    if text[:1] in ("{", "["):
        return text
    decoded = _base64(text)
    if decoded is None:
        raise ConfigError(
            [f"{name}: neither a JSON object (it does not start with '{{') nor base64 of one"]
        )
    try:
        inner = decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{name}: base64 of bytes that are not UTF-8 text (byte {exc.start})"]
        ) from None
    if "\x00" in inner:
        raise ConfigError([f"{name}: base64 of text with a NUL character"])
    inner = inner.strip()
    if inner[:1] not in ("{", "["):
        raise ConfigError([f"{name}: base64 of something that is not a JSON object"])
    return inner


def _base64(text: str) -> bytes | None:
    """Decoded bytes, or None when `text` is not base64 (line breaks are allowed)."""
    compact = _SPACE.sub("", text)
    if not compact or not _BASE64.match(compact):
        return None
    alphabet = b"-_" if ("-" in compact or "_" in compact) else None
    padded = compact + "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        return None


def _data(text: str, name: str) -> Any:
    data = read_json(text, name)  # starts with { or [: an object or a list
    if not isinstance(data, dict):
        raise ConfigError([f'{name}: must be a JSON object with "challenges", got a list'])
    return data
