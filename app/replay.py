"""Replaying recorded events through the pipeline: the summary every replay prints, and
the JSON-lines file replay (README command 1 runs it on the embedded default)."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from app.core.clock import now_utc
from app.core.events import Event, InvalidEvent, decode_json_event
from app.core.settings import Settings
from app.core.time_bounds import TimeBounds
from app.observability import event_times
from app.pipeline import Pipeline
from tables.generation import Generation

SKIP_OUTCOMES = ("no_goal", "other_namespace", "ignored_value", "stale", "erased")


@dataclass
class ReplaySummary:
    lines: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # applied, duplicate, no_goal, ...
    invalid: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    first_errors: list[str] = field(default_factory=list)
    time_fallbacks: Counter[str] = field(default_factory=Counter)  # by reason

    def refused(self, reason: str, where: str, message: str) -> None:
        """Count an unusable record; the first few are quoted in the report."""
        self.invalid[reason] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"{where}: {message}")

    def report(self) -> list[str]:
        rate = self.lines / self.seconds if self.seconds else 0.0
        out = [
            f"read {self.lines} lines in {self.seconds:.2f}s ({rate:,.0f}/s): "
            f"{self.outcomes['applied']} applied, {self.outcomes['duplicate']} duplicates, "
            f"{sum(self.invalid.values())} invalid"
        ]
        for outcome in SKIP_OUTCOMES:
            if self.outcomes[outcome]:
                out.append(f"  skipped ({outcome.replace('_', ' ')}): {self.outcomes[outcome]}")
        for reason, count in sorted(self.invalid.items()):
            out.append(f"  invalid ({reason}): {count}")
        for reason, count in sorted(self.time_fallbacks.items()):
            out.append(f"  event time {reason.replace('_', ' ')}, next source used: {count}")
        out.extend(f"  {line}" for line in self.first_errors)
        return out

    def bounds(self, settings: Settings) -> TimeBounds:
        """The event-time bounds of a replay: a time passed over is counted in the metric,
        the minute's log line and this summary."""

        def note(reason: str) -> None:
            self.time_fallbacks[reason] += 1
            event_times.note(reason)

        return TimeBounds.from_settings(settings, note=note)


def progress_bar() -> Progress:
    """A progress bar on a terminal (stderr); silent when stderr is not one."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[events]} events"),
        disable=not sys.stderr.isatty(),
        transient=False,
    )


# Lines read and handed to the pipeline at a time; the wall clock (the replay's receipt
# time: only the future bound depends on it, old times stay exact, contract §1.3) is read
# once per batch.
LINES_PER_BATCH = 1000


async def replay_file(pipeline: Pipeline, path: Path) -> ReplaySummary:
    summary = ReplaySummary()
    bounds = summary.bounds(pipeline.settings)
    received = now_utc()
    started = time.perf_counter()
    pending: set[asyncio.Future[Any]] = set()

    def event_of(numbered: tuple[int, bytes]) -> Event | None:
        number, line = numbered
        summary.lines += 1
        try:
            return decode_json_event(line, received=received, bounds=bounds)
        except InvalidEvent as exc:
            summary.refused(exc.reason, f"line {number}", exc.message)
            return None

    def on_added(_numbered: tuple[int, bytes], generation: Generation | None) -> None:
        if generation is not None and not generation.done.done():
            pending.add(generation.done)

    # A local file read line by line: the event loop only runs our own flusher meanwhile.
    size = path.stat().st_size  # noqa: ASYNC240
    with progress_bar() as bar, path.open("rb") as handle:
        task = bar.add_task(path.name, total=max(size, 1), events=0)
        numbered = ((n, line) for n, line in enumerate(handle, 1) if line.strip())
        while batch := list(itertools.islice(numbered, LINES_PER_BATCH)):
            received = now_utc()
            await pipeline.add_batch(batch, event_of, on_added)
            bar.update(task, completed=handle.tell(), events=summary.lines)
            pending = {f for f in pending if not f.done()}
        await pipeline.flusher.flush_now()
        if pending:
            await asyncio.gather(*pending)
        bar.update(task, events=summary.lines)
    summary.seconds = time.perf_counter() - started
    summary.outcomes = Counter(pipeline.outcomes)
    return summary
