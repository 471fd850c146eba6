"""A large flush on PostgreSQL written as parts on several connections at once.

Each part is its own transaction: split by user without `extra`, and by the extra's own
split when it has one (`PartedExtra`: Kafka positions, each part with the positions of
the partitions its users came from); any other `extra` keeps the flush one transaction.
A part that fails is reported in `TransientWriteError.remaining` (and its extra in
`remaining_extra`) so only it is retried: the others are committed and must not be
applied twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.core.progress import Delta
from tables.db import OUTAGE, RETRY
from tables.write_result import Extra, PartedExtra, RowsLocked, TransientWriteError, WriteResult

Part = tuple[list[Delta], Extra | None]


def split(deltas: Sequence[Delta], extra: Extra | None, ways: int) -> list[Part]:
    """The parts of a flush (fewer than two: write it as one transaction)."""
    if ways < 2:
        return []
    if extra is None:
        buckets: list[list[Delta]] = [[] for _ in range(ways)]
        for delta in deltas:
            buckets[hash(delta.user_id) % ways].append(delta)
        return [(bucket, None) for bucket in buckets]
    if isinstance(extra, PartedExtra):
        return list(extra.split(deltas, ways))
    return []


def _together(extras: list[Extra]) -> Extra | None:
    """The failed parts' extras, run one after the other in the retry's transaction."""
    if len(extras) < 2:
        return extras[0] if extras else None

    async def run(conn: object) -> None:
        for extra in extras:
            await extra(conn)  # type: ignore[arg-type]

    return run


def combine(parts: list[Part], outcomes: Sequence[WriteResult | BaseException]) -> WriteResult:
    """The parts' results as one; raises what the caller must retry when a part failed."""
    total, remaining, failures = WriteResult(), [], []
    extras: list[Extra] = []
    for (part, part_extra), outcome in zip(parts, outcomes, strict=True):
        if isinstance(outcome, Exception):
            remaining.extend(part)
            failures.append(outcome)
            if part_extra is not None:
                extras.append(part_extra)
        elif isinstance(outcome, BaseException):
            raise outcome  # cancelled (shutdown gave up)
        else:
            total.merge(outcome)
    if not failures:
        return total
    bug = next((f for f in failures if not isinstance(f, TransientWriteError)), None)
    if bug is not None and len(failures) == len(parts):
        raise bug  # nothing committed: the caller isolates the whole flush
    # Retry only the failed parts, with only their extra. All of them held by another
    # transaction: RowsLocked (waited for like an outage). Otherwise the kind comes from
    # the other failures (a bug among them counts as a data error: a few retries, then
    # isolation), not from a held part's.
    others = [f for f in failures if not isinstance(f, RowsLocked)]
    error = TransientWriteError if others else RowsLocked
    outage = not others or any(getattr(f, "kind", RETRY) == OUTAGE for f in others)
    kind = OUTAGE if outage else RETRY
    message = str((others or failures)[0])
    if len(failures) == len(parts):  # nothing committed: retried whole, split again
        raise error(message, kind=kind)
    raise error(message, remaining, total, kind=kind, remaining_extra=_together(extras))
