"""What output may say about a database URL: where the rows go, never the password.

Every start line names its database so an operator sees at once whether a container
writes to PostgreSQL or to a file that dies with it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_PG_PORT = 5432


def _without_credentials(url: str) -> tuple[str, str, bool]:
    """(scheme, the rest after the last `@`, whether credentials were there). The last
    `@`, not the first: a password typed into DATABASE_URL may hold `@` or `/` itself."""
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        return scheme, rest.rpartition("@")[2], True
    return scheme, rest, False


def redact(url: str) -> str:
    """The URL without its credentials (user and password both go)."""
    scheme, rest, had = _without_credentials(url)
    return f"{scheme}://***@{rest}" if had else url


def is_sqlite(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0].lower() == "sqlite"


def describe(url: str) -> str:
    """`host:port/database` for PostgreSQL, the absolute file path for SQLite."""
    if is_sqlite(url):
        path = url.partition("://")[2].split("?", 1)[0]
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
        if path in ("", ":memory:"):
            return "SQLite in memory"
        return str(Path(unquote(path)).absolute())
    scheme, rest, _ = _without_credentials(url)
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        host = parts.hostname or "localhost"
        port = parts.port or DEFAULT_PG_PORT
    except ValueError:  # a port that is not a number: say nothing more than the scheme
        return f"{scheme} (unreadable URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}/{unquote(parts.path.lstrip('/'))}"
