"""The publisher's outbox read on PostgreSQL stays a walk of the unpublished ids in order
that stops at the batch size, whatever the table statistics say: statistics taken while
the tables were empty must not turn each read into a scan of the whole backlog (the
drain would then slow down with every row delivered and every row waiting).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import text

from app.core.settings import async_database_url
from tables import outbox
from tables.db import make_engine

BACKLOG, DELIVERED, LIMIT = 5_000, 1_000, 100


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def test_a_read_walks_the_ids_in_order_and_stops_at_the_batch_size(pg_url):
    engine = make_engine(async_database_url("DATABASE_URL", pg_url), planner=outbox.PLANNER)
    try:
        async with engine.begin() as conn:  # the statistics of empty tables, then a backlog
            await conn.execute(
                text("TRUNCATE challenge_goal_completions, challenge_completion_deliveries")
            )
            await conn.execute(text("ANALYZE challenge_goal_completions"))
            await conn.execute(text("ANALYZE challenge_completion_deliveries"))
            await conn.execute(
                text(
                    "INSERT INTO challenge_goal_completions"
                    " (namespace, user_id, challenge_id, goal_id, completed_at)"
                    " SELECT 'mygame', 'u' || i, 'season', 'g' || i, now()"
                    " FROM generate_series(1, :n) AS i"
                ),
                {"n": BACKLOG},
            )
            first = (
                await conn.execute(text("SELECT min(id) FROM challenge_goal_completions"))
            ).scalar_one()
            # the first ids delivered to this sink, waiting for another one
            await conn.execute(
                text(
                    "INSERT INTO challenge_completion_deliveries (completion_id, sink, published_at)"
                    " SELECT id, 'kafka', now() FROM challenge_goal_completions WHERE id < :end"
                ),
                {"end": first + DELIVERED},
            )
        params = {"sink": "kafka", "after": 0, "limit": LIMIT}
        async with engine.connect() as conn:
            found = await outbox.pending(conn, "kafka", after=0, limit=LIMIT)
            explained = (
                await conn.execute(
                    text(
                        "EXPLAIN (ANALYZE, FORMAT JSON) "
                        + outbox.PENDING["postgresql"].element.text
                    ),
                    params,
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert [c.id for c in found] == list(range(first + DELIVERED, first + DELIVERED + LIMIT))
    nodes = list(_nodes(explained[0]["Plan"]))
    walk = [n for n in nodes if n.get("Relation Name") == "challenge_goal_completions"]
    probes = [n for n in nodes if n.get("Relation Name") == "challenge_completion_deliveries"]
    assert [n["Node Type"] for n in walk] == ["Index Scan"], nodes
    assert walk[0]["Actual Rows"] == LIMIT  # it stopped at the batch size
    assert walk[0]["Rows Removed by Filter"] == DELIVERED  # it skipped only the delivered
    assert {n["Node Type"] for n in probes} <= {"Index Only Scan", "Index Scan"}, nodes
    assert not {"Sort", "Materialize", "Hash", "Bitmap Heap Scan"} & {n["Node Type"] for n in nodes}
