"""GRPC_WORKERS=2: two server processes share the port; rows exact, metrics merged,
SIGTERM drains both and exits 0."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.grpc import (
    OK,
    Bridge,
    Server,
    codes,
    fetch_rows,
    login,
    server_env,
    users,
    write_config,
)
from tests.helpers.kafka import wait_for

pytestmark = [pytest.mark.postgres]


async def test_two_worker_processes_share_the_port(pg_url, tmp_path):
    env = server_env(
        pg_url, write_config(tmp_path), GRPC_WORKERS="2", BUFFER_FLUSH_INTERVAL="100ms"
    )
    server = Server(env=env, log_path=tmp_path / "serve.log").start()
    try:
        await server.wait_health()
        # Health answers as soon as one worker serves; the other may still be starting
        # (the kernel then gives every connection to the first). Wait for both to bind.
        await wait_for(lambda: _both_started(server), timeout=30, what="both workers' start lines")
        people = users(40)
        messages = [login(user) for user in people for _ in range(5)]
        bridges = [Bridge(server.target) for _ in range(8)]  # 8 connections, spread by the kernel
        try:
            parts = await asyncio.gather(
                *(b.call_all(messages[i::8], concurrency=25) for i, b in enumerate(bridges))
            )
        finally:
            for bridge in bridges:
                await bridge.channel.close()
        assert codes(result for part in parts for result in part) == {OK.name: 200}
        rows = await fetch_rows(pg_url, people)
        assert {rows[(u, "logins")]["progress"] for u in people} == {5}
        assert await server.metric("challenge_event_handler_events_total", 'source="grpc"') == 200
        assert _started(server) == 2
        database = pg_url.rpartition("/")[2]
        supervisor = next(
            line for line in server.log_text().splitlines() if "gRPC workers started" in line
        )
        assert f'"database":"127.0.0.1:5432/{database}"' in supervisor
        worker_pids = [int(p) for p in _children(server.proc.pid)]
        assert len(worker_pids) == 2
        assert server.terminate() == 0
        assert all(_gone(pid) for pid in worker_pids)  # both drained and reaped
    finally:
        server.stop_quietly()


def _started(server: Server) -> int:
    return server.log_text().count('"event":"gRPC server started"')


async def _both_started(server: Server) -> bool:
    return _started(server) == 2


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return handle.read().split()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1].startswith("Z")  # exited, not yet reaped
    except FileNotFoundError:
        return True
