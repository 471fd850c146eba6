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

pytestmark = [pytest.mark.postgres]


async def test_two_worker_processes_share_the_port(pg_url, tmp_path):
    env = server_env(
        pg_url, write_config(tmp_path), GRPC_WORKERS="2", BUFFER_FLUSH_INTERVAL="100ms"
    )
    server = Server(env=env, log_path=tmp_path / "serve.log").start()
    try:
        await server.wait_health()
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
        started = server.log_text().count('"event":"gRPC server started"')
        assert started == 2
        worker_pids = [int(p) for p in _children(server.proc.pid)]
        assert len(worker_pids) == 2
        assert server.terminate() == 0
        assert all(_gone(pid) for pid in worker_pids)  # both drained and reaped
    finally:
        server.stop_quietly()


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return handle.read().split()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1].startswith("Z")  # exited, not yet reaped
    except FileNotFoundError:
        return True
