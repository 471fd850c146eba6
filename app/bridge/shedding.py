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


def server_options(max_rpcs: int) -> list[tuple[str, int]]:
    """C-core options so calls reach the Shedder instead of being dropped unseen.

    grpc.aio picks calls up from the core one per event-loop iteration; the rest wait in
    the core's pending queue. Past `grpc.server.max_pending_requests` (1,000 by default)
    the core drops waiting calls at random, up to all of them at the hard limit (3,000):
    clients see CANCELLED, and no metric of ours counts them (6,685 of 50,505 calls at
    1,500 in flight). Raised to 2 x GRPC_MAX_CONCURRENT_RPCS (at least 4,000; the hard
    limit twice that), every call of a client keeping that many in flight reaches the
    handler and is served or shed, counted. The hard limit also caps the memory the
    queue can take.
    """
    soft = max(2 * max_rpcs, 4_000)
    return [
        ("grpc.server.max_pending_requests", soft),
        ("grpc.server.max_pending_requests_hard_limit", 2 * soft),
    ]


REFUSED = grpc.StatusCode.RESOURCE_EXHAUSTED
