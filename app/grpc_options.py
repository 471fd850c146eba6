"""Knobs of the gRPC bridge beyond the shared `Settings` (env, same duration syntax).

GRPC_ACK_TIMEOUT [10s]      durable mode: longest wait for the commit before UNAVAILABLE
GRPC_BUFFER_WAIT [5s]       longest wait for buffer space before UNAVAILABLE
GRPC_MAX_CONCURRENT_RPCS [2000]  calls beyond this get RESOURCE_EXHAUSTED at once
GRPC_SHUTDOWN_GRACE [15s]   SIGTERM: how long in-flight calls may take to finish
HEALTH_CHECK_INTERVAL [1s]  how often the database is probed for the health status
GRPC_WORKERS [1]            server processes sharing the port (SO_REUSEPORT); >1 starts a
                            supervisor that also serves their merged /metrics
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from app.settings import parse_duration, positive_int

SUPERVISED_ENV = "CHALLENGE_GRPC_SUPERVISED"


@dataclass(frozen=True, slots=True)
class GrpcOptions:
    ack_timeout: float = 10.0
    buffer_wait: float = 5.0
    max_concurrent_rpcs: int = 2000
    shutdown_grace: float = 15.0
    health_interval: float = 1.0
    workers: int = 1
    supervised: bool = False  # a worker process started by the GRPC_WORKERS supervisor

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GrpcOptions:
        env = os.environ if env is None else env

        def duration(name: str, default: str) -> float:
            return parse_duration(name, (env.get(name) or "").strip() or default)

        rpcs = positive_int(
            "GRPC_MAX_CONCURRENT_RPCS",
            (env.get("GRPC_MAX_CONCURRENT_RPCS") or "").strip() or "2000",
        )
        return cls(
            ack_timeout=duration("GRPC_ACK_TIMEOUT", "10s"),
            buffer_wait=duration("GRPC_BUFFER_WAIT", "5s"),
            max_concurrent_rpcs=rpcs,
            shutdown_grace=duration("GRPC_SHUTDOWN_GRACE", "15s"),
            health_interval=duration("HEALTH_CHECK_INTERVAL", "1s"),
            workers=positive_int("GRPC_WORKERS", (env.get("GRPC_WORKERS") or "").strip() or "1"),
            supervised=env.get(SUPERVISED_ENV) == "1",
        )
