"""The in-process dedup window of gRPC mode: recently seen event ids -> their flush."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class DedupWindow(Generic[T]):
    """Event ids seen in the last `window` seconds -> what their flush is (to wait on).

    Bounded twice: by age and by `max_entries` (oldest forgotten first).
    """

    def __init__(self, window: float, max_entries: int = 1_000_000):
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def get(self, event_id: str) -> T | None:
        entry = self._seen.get(event_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def remember(self, event_id: str, future: T) -> None:
        now = time.monotonic()
        seen = self._seen
        seen.pop(event_id, None)  # an expired entry: re-added at the end
        seen[event_id] = (now + self.window, future)
        while seen:
            oldest_expiry = next(iter(seen.values()))[0]
            if oldest_expiry >= now and len(seen) <= self.max_entries:
                break
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
