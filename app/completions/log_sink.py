"""The `log` sink (local development): one JSON line per completion on standard output,
the event body exactly as the other sinks send it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from tables.publisher import Outgoing

NAME = "log"


class LogSink:
    name = NAME

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    async def start(self) -> None:
        return None

    async def send(self, events: Sequence[Outgoing]) -> int:
        stream = self.stream or sys.stdout
        stream.write("".join(event.body.decode() + "\n" for event in events))
        stream.flush()
        return len(events)

    async def close(self) -> None:
        return None
