"""Helpers for the gRPC end-to-end tests: a real `python -m app serve` process, an async
Extend-bridge stand-in client, and database reads.

Everything waits on a real condition with a deadline (health status, metric values,
process exit), never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from app.core.settings import async_database_url
from proto.build import load as load_protos
from tables.db import make_engine
from tests.helpers.process import ServiceProcess, free_port, sample_value, scrape

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "mygame"
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
INVALID = grpc.StatusCode.INVALID_ARGUMENT
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LOGIN_SERVICE = "accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService"
STAT_SERVICE = "accelbyte.social.statistic.v1.StatisticStatItemUpdatedService"
GDPR_SERVICE = "accelbyte.iam.account.v1.DeletionAccountGdprGdprRequestDataDeletionResponseService"
LIVENESS = ""  # the overall status: the process serves calls at all
READINESS = (LOGIN_SERVICE, STAT_SERVICE, GDPR_SERVICE)  # database reachable, writes flow

pb = load_protos()

TEST_CONFIG = {
    "challenges": [
        {
            "challengeId": "grpc-test",
            "name": "gRPC test",
            "goals": [
                {
                    "goalId": "logins",
                    "eventSource": "login",
                    "type": "increment",
                    "requirement": {"targetValue": 1_000_000, "operator": ">="},
                },
                {
                    "goalId": "daily-login",
                    "eventSource": "login",
                    "type": "daily",
                    "requirement": {"targetValue": 1, "operator": ">="},
                },
                {
                    "goalId": "wins",
                    "eventSource": "statistic",
                    "requirement": {"statCode": "match_wins", "targetValue": 10, "operator": ">="},
                },
                {
                    "goalId": "kills",
                    "eventSource": "statistic",
                    "type": "increment",
                    "requirement": {
                        "statCode": "enemy_kills",
                        "targetValue": 1_000_000,
                        "operator": ">=",
                    },
                },
            ],
        }
    ]
}


def write_config(directory: Path, config: dict | None = None) -> Path:
    path = directory / "challenges.json"
    path.write_text(json.dumps(config or TEST_CONFIG))
    return path


def users(count: int) -> list[str]:
    """Fresh user ids: tests share one database."""
    tag = uuid.uuid4().hex[:8]
    return [f"u-{tag}-{i}" for i in range(count)]


def new_id() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------ messages


def login(user: str = "", *, event_id: str | None = None, namespace: str = NAMESPACE, **fields):
    return pb.login_pb2.UserLoggedIn(
        id=event_id or new_id(), namespace=namespace, user_id=user, **fields
    )


def stat(
    user: str = "",
    code: str = "match_wins",
    value: float = 0.0,
    inc: float = 0.0,
    *,
    event_id: str | None = None,
    namespace: str = NAMESPACE,
    **fields,
):
    return pb.stat_pb2.StatItemUpdated(
        id=event_id or new_id(),
        namespace=namespace,
        user_id=user,
        payload=pb.stat_pb2.StatItem(stat_code=code, latest_value=value, inc=inc),
        **fields,
    )


# ------------------------------------------------------------------------ server


class Server(ServiceProcess):
    """One `python -m app serve` child process on free ports."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        full_env = {
            **os.environ,
            "GRPC_PORT": str(self.grpc_port),
            "METRICS_PORT": str(self.metrics_port),
            **env,
        }
        super().__init__("serve", full_env, log_path)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> Server:
        self.start_process()
        return self

    async def health(self, service: str = LIVENESS) -> int | None:
        """The health status, or None when the server does not answer."""
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            except grpc.RpcError:
                return None
            return reply.status

    async def wait_health(
        self, status: int = SERVING, deadline: float = 30.0, service: str = LIVENESS
    ) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if await self.health(service) == status:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"health of {service!r} never became {status} in {deadline}s:\n{self.log_tail()}"
        )

    async def wait_ready(self, status: int = SERVING, deadline: float = 30.0) -> None:
        """Every readiness name at `status` (they move together)."""
        for service in READINESS:
            await self.wait_health(status, deadline, service)

    async def metrics(self) -> str:
        return await asyncio.to_thread(scrape, self.metrics_port)

    async def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample (`labels` as in the exposition: 'code="OK",method="..."')."""
        return sample_value(await self.metrics(), name, labels)


def server_env(pg_url: str, config: Path, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": pg_url,
        "AB_NAMESPACE": NAMESPACE,
        "CONFIG_PATH": str(config),
        "BUFFER_FLUSH_INTERVAL": "100ms",
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        **extra,
    }


# ------------------------------------------------------------------------ client


class Bridge:
    """Stand-in for the Extend event bridge: async OnMessage calls on one channel."""

    def __init__(self, target: str):
        self.channel = grpc.aio.insecure_channel(target)
        self.login_stub = pb.login_grpc.UserAuthenticationUserLoggedInServiceStub(self.channel)
        self.stat_stub = pb.stat_grpc.StatisticStatItemUpdatedServiceStub(self.channel)

    async def __aenter__(self) -> Bridge:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()

    async def call(self, message, timeout: float = 30.0) -> tuple[grpc.StatusCode, str]:
        stub = self.login_stub if isinstance(message, pb.login_pb2.UserLoggedIn) else self.stat_stub
        try:
            await stub.OnMessage(message, timeout=timeout)
            return OK, ""
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""

    async def call_all(
        self, messages: Iterable, concurrency: int = 200, timeout: float = 30.0
    ) -> list[tuple[grpc.StatusCode, str]]:
        gate = asyncio.Semaphore(concurrency)

        async def one(message):
            async with gate:
                return await self.call(message, timeout)

        return await asyncio.gather(*(one(m) for m in messages))


def codes(results: Iterable[tuple[grpc.StatusCode, str]]) -> Counter:
    return Counter(code.name for code, _ in results)


# ------------------------------------------------------------------------ database


async def fetch_rows(pg_url: str, user_ids: Iterable[str]) -> dict[tuple[str, str], dict]:
    """(user, goal) -> row for the given users."""
    engine = make_engine(async_database_url("DATABASE_URL", pg_url), pool_size=1)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text("SELECT * FROM user_goal_progress WHERE user_id = ANY(:users)"),
                {"users": list(user_ids)},
            )
            return {(r.user_id, r.goal_id): dict(r._mapping) for r in result}
    finally:
        await engine.dispose()


async def progress(pg_url: str, user_ids: Iterable[str], goal_id: str) -> dict[str, int]:
    """user -> progress of one goal (users without a row are absent)."""
    rows = await fetch_rows(pg_url, user_ids)
    return {user: row["progress"] for (user, goal), row in rows.items() if goal == goal_id}
