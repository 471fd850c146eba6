"""Which database a command writes to: the services refuse the silent embedded file, and
what a start line says names the place, never the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.database_url import describe, redact
from app.core.settings import Settings, SettingsError


def test_no_database_settings_means_the_embedded_file_which_the_services_refuse():
    settings = Settings.from_env({})
    assert settings.embedded_database
    with pytest.raises(SettingsError) as caught:
        settings.require_database()
    message = str(caught.value)
    assert message.startswith("DATABASE_URL / DB_HOST: ")
    assert "DATABASE_URL=sqlite:///path" in message  # how to ask for the file explicitly
    assert "\n" not in message


@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": "postgresql://u:p@db:5432/game"},
        {"DATABASE_URL": "sqlite:///data/asked-for.db"},
        {"DB_HOST": "db"},
        {"DB_PASSWORD": "only this"},  # any DB_* part means PostgreSQL, not the file
    ],
)
def test_any_database_setting_satisfies_the_services(env):
    settings = Settings.from_env(env)
    assert not settings.embedded_database
    assert settings.require_database() == settings.database_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+asyncpg://app:s3cret@db.internal:5433/game?ssl=require",
            "db.internal:5433/game",
        ),
        ("postgresql+asyncpg://db/game", "db:5432/game"),
        ("postgresql+asyncpg://app:s3cret@[fd00::1]:5432/game", "[fd00::1]:5432/game"),
        # a password typed with `@` and `/` in it, not percent-encoded
        ("postgresql+asyncpg://app:s3/cr@et@db:5432/game", "db:5432/game"),
        ("postgresql+asyncpg://app:s3cret@db:port/game", "postgresql+asyncpg (unreadable URL)"),
        ("sqlite+aiosqlite:////var/lib/challenge.db", "/var/lib/challenge.db"),
        ("sqlite+aiosqlite://", "SQLite in memory"),
    ],
)
def test_a_database_is_described_by_where_it_is(url: str, shown: str):
    assert describe(url) == shown
    for secret in ("s3cret", "s3/cr", "et@db"):
        assert secret not in describe(url)
        assert secret not in redact(url)


def test_a_relative_sqlite_file_is_shown_with_its_absolute_path():
    settings = Settings.from_env({"DATABASE_URL": "sqlite:///data/x.db"})
    assert settings.database_label == str(Path("data/x.db").absolute())


def test_db_parts_are_described_without_the_password():
    settings = Settings.from_env(
        {"DB_HOST": "pg", "DB_PORT": "6543", "DB_NAME": "ch", "DB_PASSWORD": "p@ss/word"}
    )
    assert settings.database_label == "pg:6543/ch"
    assert "p@ss" not in redact(settings.database_url)
    assert redact(settings.database_url) == "postgresql+asyncpg://***@pg:6543/ch"
