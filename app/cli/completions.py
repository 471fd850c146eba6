"""`completions`: the goal-completed outbox for an operator (docs/completions.md).

    python -m app completions                     counts per sink, oldest pending age
    python -m app completions --user U            one user's completions and their sinks
    python -m app completions --republish --from-id A --to-id B [--sink S]

`--republish` clears the delivery marks of ids A..B (of one sink, or of every sink): the
running publisher sends those events again, with the same ids (at-least-once; consumers
dedup on the id). It reads the outbox from the start now and then, so this takes effect
within seconds without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from app.cli.progress import _cell, format_table
from app.core.clock import now_utc
from app.core.settings import Settings, SettingsError
from tables import outbox
from tables.db import make_engine


def register(sub: Any) -> None:
    cmd = sub.add_parser(
        "completions", help="the goal-completed outbox: pending per sink, re-publish a range"
    )
    cmd.add_argument("--user", help="list one user's completions")
    cmd.add_argument("--republish", action="store_true", help="send an id range again")
    cmd.add_argument("--from-id", type=int, help="first id to re-publish")
    cmd.add_argument("--to-id", type=int, help="last id to re-publish")
    cmd.add_argument("--sink", help="re-publish to this sink only (default: every sink)")
    cmd.set_defaults(handler=cmd_completions)


async def _summary(engine: Any, configured: tuple[str, ...]) -> str:
    async with engine.connect() as conn:
        found = await outbox.backlog(conn)
        sinks = list(dict.fromkeys([*configured, *await outbox.known_sinks(conn)]))
        rows = []
        for sink in sinks:
            pending, delivered = await outbox.sink_counts(conn, sink)
            rows.append([sink, str(pending), str(delivered)])
    age = "-" if found.oldest is None else f"{(now_utc() - found.oldest).total_seconds():.1f}s"
    head = f"unpublished: {found.depth}  oldest unpublished: {age}"
    if not configured:
        head += "  (COMPLETION_SINKS is empty: no publisher runs)"
    return head + "\n" + format_table(["sink", "pending", "delivered"], rows)


async def _user(engine: Any, user_id: str) -> str:
    async with engine.connect() as conn:
        found = await outbox.of_user(conn, user_id)
    headers = ["id", "challenge", "goal", "completed_at", "period_start", "published_at", "sinks"]
    body = [
        [
            str(r.id),
            r.challenge_id,
            r.goal_id,
            _cell(r.completed_at),
            _cell(r.period_start),
            _cell(r.published_at),
            ",".join(sorted((r.sinks or "").split(","))) or "-",
        ]
        for r in found
    ]
    return format_table(headers, body)


async def _republish(engine: Any, first: int, last: int, sink: str | None) -> str:
    async with engine.begin() as conn:
        cleared = await outbox.republish(conn, first, last, sink)
    target = sink or "every sink"
    return f"ids {first}..{last}: {cleared} delivery marks cleared; {target} sends them again"


async def _run(settings: Settings, args: argparse.Namespace) -> str:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        if args.republish:
            return await _republish(engine, args.from_id, args.to_id, args.sink)
        if args.user is not None:
            return await _user(engine, args.user)
        return await _summary(engine, settings.completion_sinks)
    finally:
        await engine.dispose()


def cmd_completions(args: argparse.Namespace) -> int:
    if args.republish and (args.from_id is None or args.to_id is None):
        raise SettingsError("--republish needs --from-id and --to-id")
    if args.republish and args.from_id > args.to_id:
        raise SettingsError("--from-id: must not be greater than --to-id")
    if not args.republish and (args.sink or args.from_id is not None or args.to_id is not None):
        raise SettingsError("--from-id, --to-id and --sink go with --republish")
    print(asyncio.run(_run(Settings.from_env(), args)))
    return 0
