"""`db upgrade`: create/upgrade the schema (Alembic)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from app.core.database_url import redact
from app.core.settings import Settings
from app.observability.logs import setup_logging
from tables.migrate import upgrade_async


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema tools")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="create/upgrade the schema (Alembic)")
    up.set_defaults(handler=cmd_db_upgrade)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(upgrade_async(settings.database_url))
    print(f"schema up to date ({redact(settings.database_url)})")
    return 0
