"""`progress USER_ID`: one user's rows as a table."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, select

from app.core.settings import Settings
from tables.db import make_engine
from tables.schema import user_goal_progress


def register(sub: Any) -> None:
    progress = sub.add_parser("progress", help="show one user's goal progress")
    progress.add_argument("user_id")
    progress.set_defaults(handler=cmd_progress)


async def fetch_progress(database_url: str, user_id: str) -> Sequence[Any]:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            t = user_goal_progress
            rows = await conn.execute(
                select(
                    t.c.challenge_id,
                    t.c.goal_id,
                    t.c.progress,
                    t.c.baseline_value,
                    t.c.status,
                    t.c.completed_at,
                    t.c.expires_at,
                    t.c.updated_at,
                )
                .where(t.c.user_id == user_id)
                .order_by(t.c.challenge_id, t.c.goal_id)
            )
            return rows.all()
    finally:
        await engine.dispose()


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns (scripts and tests split these lines on whitespace)."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))
    return str(value)


def progress_table(rows: Sequence[Row[Any]]) -> str:
    headers = ["challenge", "goal", "progress", "status", "completed_at", "expires_at"]
    body = []
    for r in rows:
        shown = r.progress if r.baseline_value is None else r.progress - r.baseline_value
        body.append(
            [
                r.challenge_id,
                r.goal_id,
                str(shown),
                r.status,
                _cell(r.completed_at),
                _cell(r.expires_at),
            ]
        )
    return format_table(headers, body)


def cmd_progress(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    rows = asyncio.run(fetch_progress(settings.database_url, args.user_id))
    if not rows:
        print(f"no progress rows for user {args.user_id!r}")
        return 0
    print(progress_table(rows))
    return 0
