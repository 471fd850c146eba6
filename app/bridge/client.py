"""A tiny Extend-bridge stand-in: build UserLoggedIn / StatItemUpdated and call OnMessage."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc

from proto.build import load as load_protos


@dataclass(frozen=True)
class CallResult:
    code: grpc.StatusCode
    message: str
    seconds: float

    def describe(self) -> str:
        text = f"{self.code.name}"
        if self.message:
            text += f": {self.message}"
        return f"{text} ({self.seconds * 1000:.1f} ms)"


def login_message(
    user: str, namespace: str, event_id: str | None = None, timestamp: str = ""
) -> Any:
    pb = load_protos().login_pb2
    return pb.UserLoggedIn(
        id=event_id or uuid.uuid4().hex,
        name="userLoggedIn",
        namespace=namespace,
        user_id=user,
        timestamp=timestamp,
    )


def stat_message(
    user: str,
    namespace: str,
    stat_code: str,
    value: float,
    inc: float = 0.0,
    event_id: str | None = None,
    timestamp: str = "",
) -> Any:
    pb = load_protos().stat_pb2
    return pb.StatItemUpdated(
        id=event_id or uuid.uuid4().hex,
        name="statItemUpdated",
        namespace=namespace,
        user_id=user,
        timestamp=timestamp,
        payload=pb.StatItem(stat_code=stat_code, latest_value=value, inc=inc),
    )


def send(target: str, message: Any, timeout: float = 30.0) -> CallResult:
    """One blocking OnMessage call to the service matching the message type."""
    protos = load_protos()
    with grpc.insecure_channel(target) as channel:
        if isinstance(message, protos.login_pb2.UserLoggedIn):
            stub = protos.login_grpc.UserAuthenticationUserLoggedInServiceStub(channel)
        elif isinstance(message, protos.gdpr_pb2.GdprRequestDataDeletionResponse):
            stub = protos.gdpr_grpc.DeletionAccountGdprGdprRequestDataDeletionResponseServiceStub(
                channel
            )
        else:
            stub = protos.stat_grpc.StatisticStatItemUpdatedServiceStub(channel)
        started = time.perf_counter()
        try:
            stub.OnMessage(message, timeout=timeout)
            code, text = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, text = exc.code(), exc.details() or ""
        return CallResult(code, text, time.perf_counter() - started)
