"""The `async-messaging` sink: the Extend Async Messaging publisher sidecar over gRPC
(proto/accelbyte/extend/async_messaging/publisher_service.proto).

Each event is one `PublishMessage` call (body = the JSON event, topic = COMPLETION_TOPIC,
metadata = userId and, when traced, traceId), one after the other in id order, so one
user's events reach the sidecar in order; the first call that fails ends the batch and
the publisher retries from there. The channel reconnects by itself when the sidecar
comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from proto.build import load as load_protos
from tables.publisher import Outgoing

log = logging.getLogger(__name__)

NAME = "async-messaging"


class AsyncMessagingSink:
    name = NAME

    def __init__(self, host: str, port: int, topic: str, *, timeout: float = 5.0):
        self.target = f"{host}:{port}"
        self.topic = topic
        self.timeout = timeout
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
        assert self._publish is not None
        request_type = self._pb.publisher_pb2.PublishMessageRequest
        for sent, event in enumerate(events):
            request = request_type(
                body=event.body.decode(), topic=self.topic, metadata=event.metadata
            )
            try:
                await self._publish(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                log.debug(
                    "sidecar refused a completion",
                    extra={"code": exc.code().name, "completion_id": event.completion.id},
                )
                return sent
        return len(events)

    async def close(self) -> None:
        channel, self._channel, self._publish = self._channel, None, None
        if channel is not None:
            await channel.close()
