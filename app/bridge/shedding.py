"""Overload: refuse early and visibly instead of queueing.

grpc.aio's own `maximum_concurrent_rpcs` does not refuse: calls over the limit wait in an
unbounded queue before any handler runs (p50 above a second at 1,500 in flight), so a
call could outlive GRPC_ACK_TIMEOUT before we even saw it. Instead every call enters the
handler at once and the first thing it does is ask the `Shedder`: past
GRPC_MAX_CONCURRENT_RPCS calls in flight it is answered RESOURCE_EXHAUSTED at once
(counted under that code in challenge_event_handler_grpc_requests_total, and in
challenge_event_handler_grpc_shed_total). The Extend bridge retries it.
"""

from __future__ import annotations

import grpc

from app.observability import metrics

OVERLOADED = "server overloaded: too many calls in flight, retry"


class Shedder:
    """Counts calls in flight; `enter` says whether one more may run."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self._shed = metrics.GRPC_SHED.labels("in_flight")

    def enter(self) -> bool:
        if self.in_flight >= self.limit:
            self._shed.inc()
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


def server_options() -> list[tuple[str, int]]:
    """C-core options so every call reaches the Shedder instead of being dropped unseen.

    The core keeps calls Python has not picked up yet in a pending queue; past
    `grpc.server.max_pending_requests` (1,000 by default) it cancels the oldest ones that
    waited longer than a second, which clients see as CANCELLED and no metric of ours
    counts. Python picks calls up one at a time, so under a burst the queue is the normal
    state: with a larger queue the handler sees every call and sheds it, counted.
    """
    return [
        ("grpc.server.max_pending_requests", 20_000),
        ("grpc.server.max_pending_requests_hard_limit", 40_000),
    ]


REFUSED = grpc.StatusCode.RESOURCE_EXHAUSTED
