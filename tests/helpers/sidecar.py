"""A stand-in for the Extend Async Messaging publisher sidecar.

The real sidecar is AccelByte's and runs only beside an Extend app on AccelByte's
platform, so it cannot run here. This is a real gRPC server implementing the sidecar's
real proto (proto/accelbyte/extend/async_messaging/publisher_service.proto): that proto is
the contract boundary between the service and the sidecar, so a test against this server
exercises everything of ours up to the wire. It records every PublishMessage it accepts
(body parsed as JSON, topic, metadata, the time it arrived), can be stopped and started
again on the same port (the sidecar down, then up), and can run a callback on receipt
before answering (e.g. kill -9 the publishing process after its publish, before its mark).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import orjson
from google.protobuf import empty_pb2

from app.core.clock import now_utc
from proto.build import load as load_protos
from tests.helpers.process import free_port

pb = load_protos()


@dataclass(frozen=True)
class Received:
    body: dict[str, Any]
    raw: str
    topic: str
    metadata: dict[str, str]
    at: datetime  # naive UTC, when the message arrived

    @property
    def id(self) -> str:
        return str(self.body["id"])


class SidecarStandIn(pb.publisher_grpc.AsyncMessagingPublisherServiceServicer):  # type: ignore[misc,name-defined]
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.received: list[Received] = []
        # called with each request once recorded, before it is answered
        self.on_receive: Callable[[Any], None] | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    async def PublishMessage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - the proto's name
        self.received.append(
            Received(
                orjson.loads(request.body),
                request.body,
                request.topic,
                dict(request.metadata),
                now_utc(),
            )
        )
        if self.on_receive is not None:  # the message has arrived; the answer has not
            self.on_receive(request)
        return empty_pb2.Empty()

    async def start(self) -> SidecarStandIn:
        server = grpc.aio.server()
        pb.publisher_grpc.add_AsyncMessagingPublisherServiceServicer_to_server(self, server)
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)

    @property
    def running(self) -> bool:
        return self._server is not None

    def ids(self, users: Collection[str] | None = None) -> list[str]:
        """Ids in arrival order (only those of `users`: tests share one database, and a
        publisher sends whatever earlier tests left unpublished)."""
        return [r.id for r in self.of(users)]

    def first_arrivals_by_user(self) -> dict[str, list[int]]:
        """Each user's ids in the order they first arrived (a refused call or a resend
        may bring an id again; consumers drop those by id)."""
        seen: set[str] = set()
        found: dict[str, list[int]] = {}
        for r in self.received:
            if r.id not in seen:
                seen.add(r.id)
                found.setdefault(str(r.body["userId"]), []).append(int(r.id))
        return found

    def of(self, users: Collection[str] | None = None) -> list[Received]:
        if users is None:
            return list(self.received)
        return [r for r in self.received if r.body.get("userId") in users]
