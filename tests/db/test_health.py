"""app/bridge/health.py with real databases and a real gRPC server in this process:
liveness (the overall name "") never follows the database, readiness (the service names)
does, and draining turns every name NOT_SERVING. The same through `python -m app serve`:
tests/faults/test_health_probes.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.bridge.health import LIVENESS, HealthMonitor
from app.core.settings import async_database_url
from tables.db import make_engine
from tests.helpers.faults import TcpGate

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READINESS = ("test.EventService", "test.OtherEventService")


class Probe:
    """The monitor's servicer on a real server, asked through a real channel."""

    def __init__(self, monitor: HealthMonitor):
        self.monitor = monitor
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    async def status(self, service: str) -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return (await self.stub.Check(request, timeout=5)).status

    async def statuses(self) -> dict[str, int]:
        return {name: await self.status(name) for name in (LIVENESS, *READINESS)}


@pytest.fixture
async def probe_of() -> AsyncIterator:
    probes: list[Probe] = []

    async def make(url: str) -> Probe:
        engine = make_engine(async_database_url("DATABASE_URL", url), pool_size=1)
        probe = Probe(HealthMonitor(engine, READINESS, interval=0.2, probe_timeout=2.0))
        await probe.server.start()
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        await probe.monitor.stop()
        await probe.channel.close()
        await probe.server.stop(None)
        await probe.monitor.engine.dispose()


async def test_ready_while_the_database_answers(any_db_url: str, probe_of):
    probe = await probe_of(any_db_url)
    assert await probe.monitor.check_once() is True
    assert await probe.statuses() == dict.fromkeys((LIVENESS, *READINESS), SERVING)


async def test_an_unreachable_database_takes_readiness_not_liveness(pg_url: str, probe_of):
    gate = TcpGate.before(pg_url)
    try:
        probe = await probe_of(gate.url)
        assert await probe.monitor.check_once() is True
        gate.cut()
        assert await probe.monitor.check_once() is False
        assert await probe.statuses() == {
            LIVENESS: SERVING,
            **dict.fromkeys(READINESS, NOT_SERVING),
        }
        gate.restore()
        assert await probe.monitor.check_once() is True
        assert await probe.statuses() == dict.fromkeys((LIVENESS, *READINESS), SERVING)
    finally:
        gate.close()


async def test_stuck_writes_take_readiness_not_liveness(sqlite_url: str, probe_of):
    probe = await probe_of(sqlite_url)
    stuck = True
    probe.monitor.writes_stuck = lambda: stuck
    assert await probe.monitor.check_once() is False
    assert await probe.status(LIVENESS) == SERVING
    assert {await probe.status(name) for name in READINESS} == {NOT_SERVING}
    stuck = False
    assert await probe.monitor.check_once() is True
    assert {await probe.status(name) for name in READINESS} == {SERVING}


async def test_draining_turns_every_name_not_serving_for_good(sqlite_url: str, probe_of):
    probe = await probe_of(sqlite_url)
    probe.monitor.start()
    await probe.monitor.check_once()
    assert await probe.statuses() == dict.fromkeys((LIVENESS, *READINESS), SERVING)
    await probe.monitor.drain()
    assert await probe.statuses() == dict.fromkeys((LIVENESS, *READINESS), NOT_SERVING)
    await probe.monitor.set_ready(True)  # a late probe result cannot undo the drain
    assert await probe.statuses() == dict.fromkeys((LIVENESS, *READINESS), NOT_SERVING)
