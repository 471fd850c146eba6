"""The `async-messaging` sink: the Extend Async Messaging publisher sidecar over gRPC
(proto/accelbyte/extend/async_messaging/publisher_service.proto).

Each event is one `PublishMessage` call (body = the JSON event, topic = COMPLETION_TOPIC,
metadata = userId and, when traced, traceId); the proto has no batch call. Up to
`in_flight` callers run at once, each taking the next user's events and sending them one
after the other, so a user's next event is sent only once the sidecar accepted the one
before, and one user's events reach the sidecar in id order. A grpc.aio call costs less
CPU when several share the event loop's wake-ups (about half at 32 in flight than one at
a time, docs/performance.md). After the first refusal nothing more is started; the batch
counts as accepted up to its first refused event and the publisher retries from there
(events of other users already accepted after it are sent again, with the same ids).
The channel reconnects by itself when the sidecar comes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc

from proto.build import load as load_protos
from tables.publisher import Outgoing

log = logging.getLogger(__name__)

NAME = "async-messaging"
TIMEOUT = 5.0  # seconds a call may take


class AsyncMessagingSink:
    name = NAME

    def __init__(
        self, host: str, port: int, topic: str, *, timeout: float = TIMEOUT, in_flight: int = 32
    ):
        self.target = f"{host}:{port}"
        self.topic = topic
        self.timeout = timeout
        self.in_flight = max(1, in_flight)
        self._pb = load_protos()
        self._channel: grpc.aio.Channel | None = None
        self._publish: grpc.aio.UnaryUnaryMultiCallable | None = None

    async def start(self) -> None:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target)
            stub = self._pb.publisher_grpc.AsyncMessagingPublisherServiceStub(self._channel)
            self._publish = stub.PublishMessage

    async def send(self, events: Sequence[Outgoing]) -> int:
        if self._publish is None:
            await self.start()
        publish = self._publish
        assert publish is not None
        request_type = self._pb.publisher_pb2.PublishMessageRequest
        by_user: dict[str, list[int]] = {}  # each user's events, in id order
        for index, event in enumerate(events):
            by_user.setdefault(event.user_id, []).append(index)
        users = iter(by_user.values())
        accepted = [False] * len(events)
        refused = False

        async def caller() -> None:
            """Sends one user's events at a time, each after the one before was accepted."""
            nonlocal refused
            for indexes in users:
                for index in indexes:
                    if refused:
                        return
                    event = events[index]
                    request = request_type(
                        body=event.body.decode(), topic=self.topic, metadata=event.metadata
                    )
                    try:
                        await publish(request, timeout=self.timeout)
                    except grpc.aio.AioRpcError as exc:
                        refused = True
                        log.debug(
                            "sidecar refused a completion",
                            extra={"code": exc.code().name, "completion_id": event.id},
                        )
                        return
                    accepted[index] = True

        callers = [
            asyncio.ensure_future(caller()) for _ in range(min(self.in_flight, len(by_user)))
        ]
        try:
            await asyncio.gather(*callers)
        except BaseException:
            for call in callers:
                call.cancel()
            raise
        return accepted.index(False) if False in accepted else len(events)

    async def close(self) -> None:
        channel, self._channel, self._publish = self._channel, None, None
        if channel is not None:
            await channel.close()
