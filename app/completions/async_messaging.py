"""The `async-messaging` sink: the Extend Async Messaging publisher sidecar over gRPC
(proto/accelbyte/extend/async_messaging/publisher_service.proto).

Each event is one `PublishMessage` call (body = the JSON event, topic = COMPLETION_TOPIC,
metadata = userId and, when traced, traceId); the proto has no batch call. Up to
`in_flight` calls run at once, for different users: a user's next event is sent only
once the sidecar accepted the one before, so one user's events reach the sidecar in id
order. A grpc.aio call costs less CPU when several share the event loop's wake-ups (about
half at 32 in flight than one at a time, docs/performance.md). After the first refusal
nothing more is started; the batch counts as accepted up to its first refused event and
the publisher retries from there (events of other users already accepted after it are
sent again, with the same ids). The channel reconnects by itself when the sidecar comes
back.
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


class AsyncMessagingSink:
    name = NAME

    def __init__(
        self, host: str, port: int, topic: str, *, timeout: float = 5.0, in_flight: int = 32
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
        slots = asyncio.Semaphore(self.in_flight)
        refused = asyncio.Event()

        async def one(event: Outgoing, before: asyncio.Task[bool] | None) -> bool:
            if before is not None and not await before:
                return False  # the user's previous event was refused: keep the order
            async with slots:
                if refused.is_set():
                    return False
                request = request_type(
                    body=event.body.decode(), topic=self.topic, metadata=event.metadata
                )
                try:
                    await publish(request, timeout=self.timeout)
                except grpc.aio.AioRpcError as exc:
                    refused.set()
                    log.debug(
                        "sidecar refused a completion",
                        extra={"code": exc.code().name, "completion_id": event.completion.id},
                    )
                    return False
                return True

        latest: dict[str, asyncio.Task[bool]] = {}  # each user's last call so far
        calls = []
        for event in events:
            user = event.completion.user_id
            call = asyncio.ensure_future(one(event, latest.get(user)))
            latest[user] = call
            calls.append(call)
        try:
            outcomes = await asyncio.gather(*calls)
        except BaseException:
            for call in calls:
                call.cancel()
            raise
        return outcomes.index(False) if False in outcomes else len(outcomes)

    async def close(self) -> None:
        channel, self._channel, self._publish = self._channel, None, None
        if channel is not None:
            await channel.close()
