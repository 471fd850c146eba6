"""The in-process dedup window of gRPC mode: recently seen event ids -> their flush."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any


class DedupWindow:
    """Event ids seen in the last `window` seconds -> the future of their flush.

    Bounded twice: by age and by `max_entries` (oldest forgotten first).
    """

    def __init__(self, window: float, max_entries: int = 1_000_000):
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, tuple[float, asyncio.Future[Any]]] = OrderedDict()

    def get(self, event_id: str) -> asyncio.Future[Any] | None:
        entry = self._seen.get(event_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def remember(self, event_id: str, future: asyncio.Future[Any]) -> None:
        now = time.monotonic()
        seen = self._seen
        seen[event_id] = (now + self.window, future)
        seen.move_to_end(event_id)
        while seen:
            oldest_expiry = next(iter(seen.values()))[0]
            if oldest_expiry >= now and len(seen) <= self.max_entries:
                break
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
