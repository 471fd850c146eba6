"""What a write reports, the errors it raises, and the extra work a flush may carry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.progress import Delta
from tables.db import OUTAGE

# A chunk whose rows other writers keep inserting or changing is merged again this often
# (each time on a fresh snapshot), then the flush fails as a retry-class error.
RETRY_AFTER_RACES = 5

Extra = Callable[[AsyncConnection], Awaitable[None]]


@runtime_checkable
class PartedExtra(Protocol):
    """Extra work that splits with the rows of a large flush: each part's rows and its
    share of the work commit together, apart from the other parts (Kafka positions, per
    group of partitions and the users whose events came from them)."""

    def __call__(self, conn: AsyncConnection) -> Awaitable[None]: ...

    def split(self, deltas: Sequence[Delta], ways: int) -> list[tuple[list[Delta], Extra]]:
        """At most `ways` parts; every delta in one of them, all of the work too."""
        ...


class TransientWriteError(Exception):
    """The batch could not be written now; nothing of `remaining` was committed.

    `remaining` is None when nothing at all was committed (retry the whole batch); after
    a write in parts it holds the deltas of the parts that failed, `remaining_extra`
    their share of the extra (only that is retried: the committed parts' Kafka positions
    must not be stored again, another worker may own those partitions by then), and
    `committed` the result of the parts that did commit.
    """

    def __init__(
        self,
        message: str,
        remaining: list[Delta] | None = None,
        committed: WriteResult | None = None,
        *,
        kind: str = OUTAGE,
        remaining_extra: Extra | None = None,
    ):
        super().__init__(message)
        self.remaining = remaining
        self.remaining_extra = remaining_extra
        self.committed = committed
        # OUTAGE: retry until the database is back; RETRY: a few times, then isolate.
        self.kind = kind


class RowsLocked(TransientWriteError):
    """A write with `extra` met rows held by another transaction. Nothing of its rows
    was committed (after a write in parts: nothing of `remaining`)."""


class ReportTag(StrEnum):
    """What a row of a merge statement's report says (tables/merge_sql.py); a report row
    is (tag, count, user id, goal id): a count row has no key, a key row counts one."""

    UPDATED = "U"  # how many rows were updated
    INSERTED = "I"  # how many rows were inserted
    COMPLETIONS = "C"  # how many goal-completed outbox rows were written
    MISSING = "m"  # a key without a row (ASSIGNMENT_MODE=required)
    CARRIED = "c"  # a key held by another transaction: carried to the next flush
    RACED = "r"  # a key another writer inserted or changed meanwhile: merged again
    ERASED = "e"  # a key of a user erased by a GDPR deletion: left out


@dataclass
class WriteResult:
    rows: int = 0  # deltas offered
    updated: int = 0
    inserted: int = 0
    completions: int = 0  # goal-completed outbox rows written (docs/completions.md)
    missing: int = 0  # ASSIGNMENT_MODE=required: no row to update
    duplicates: int = 0  # events already applied by an earlier flush (event-id claim)
    statements: int = 0  # merge statements
    round_trips: int = 0  # every statement sent, BEGIN and COMMIT included
    poisoned: list[tuple[Delta, str]] = field(default_factory=list)
    # Deltas of users with a row held by another transaction: not written, for the next flush.
    carried: list[Delta] = field(default_factory=list)
    # Deltas of users erased by a GDPR deletion (a tombstone): never written.
    erased: list[Delta] = field(default_factory=list)
    dead_letters_escaped: int = 0
    dead_letters_lost: int = 0  # could not be stored even escaped (logged in full)
    abandoned: int = 0  # rows of a flush given up on (callers told to retry)

    def merge(self, other: WriteResult) -> None:
        self.rows += other.rows
        self.updated += other.updated
        self.inserted += other.inserted
        self.completions += other.completions
        self.missing += other.missing
        self.duplicates += other.duplicates
        self.statements += other.statements
        self.round_trips += other.round_trips
        self.poisoned.extend(other.poisoned)
        self.carried.extend(other.carried)
        self.erased.extend(other.erased)
        self.dead_letters_escaped += other.dead_letters_escaped
        self.dead_letters_lost += other.dead_letters_lost
        self.abandoned += other.abandoned

    @property
    def skipped(self) -> int:
        """Guarded out: inactive, claimed, stale period, already counted today."""
        return (
            self.rows
            - self.updated
            - self.inserted
            - self.missing
            - len(self.poisoned)
            - len(self.carried)
            - len(self.erased)
        )

    def tally(
        self, report: Sequence[Sequence[Any]], by_key: dict[tuple[str, str], Delta]
    ) -> list[Delta]:
        """Count a merge statement's report; returns the raced deltas (to merge again)."""
        raced: list[Delta] = []
        for tag, count, user_id, goal_id in report:
            if tag == ReportTag.UPDATED:
                self.updated += count
            elif tag == ReportTag.INSERTED:
                self.inserted += count
            elif tag == ReportTag.COMPLETIONS:
                self.completions += count
            elif tag == ReportTag.MISSING:
                self.missing += 1
            elif tag == ReportTag.CARRIED:
                self.carried.append(by_key[(user_id, goal_id)])
            elif tag == ReportTag.RACED:
                raced.append(by_key[(user_id, goal_id)])
            elif tag == ReportTag.ERASED:
                self.erased.append(by_key[(user_id, goal_id)])
        return raced
