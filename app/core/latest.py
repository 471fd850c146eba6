"""The latest-value guard: statistic values older than one already applied are dropped.

Used by the Kafka worker and topic replay, where one user's records may sit in different
source partitions and arrive out of order.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from app.core.challenges import ChallengeConfig, Source
from app.core.events import Event, EventType
from app.core.progress import Family, family_of


class LatestValues:
    """Per (user, stat) the newest event time applied, for stats whose goals all take the
    latest value (absolute / relative SET goals).

    The buffer keeps the latest value by event time within a flush; this extends it
    across flushes, so values of one user that reached different source partitions and
    arrive out of order still end at the newest one. Bounded (oldest forgotten).
    """

    def __init__(self, config: ChallengeConfig, max_entries: int = 1_000_000):
        self.config = config
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], datetime] = OrderedDict()
        self._set_only: dict[str, bool] = {}

    def _guarded(self, stat_code: str) -> bool:
        known = self._set_only.get(stat_code)
        if known is None:
            goals = self.config.goals_for(Source.STATISTIC, stat_code)
            known = bool(goals) and all(family_of(g) is Family.SET for g in goals)
            self._set_only[stat_code] = known
        return known

    def stale(self, event: Event) -> bool:
        if event.type is not EventType.STATISTIC or not self._guarded(event.stat_code):
            return False
        key = (event.user_id, event.stat_code)
        newest = self._seen.get(key)
        if newest is not None and event.event_time < newest:
            return True
        self._seen[key] = event.event_time
        self._seen.move_to_end(key)
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return False
