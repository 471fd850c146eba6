"""The gRPC bridge against a real server process and real PostgreSQL: validation codes,
rows written, namespace filter, redelivery, health, reflection, metrics, SIGHUP reload."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.helpers.grpc import (
    INVALID,
    LIVENESS,
    LOGIN_SERVICE,
    OK,
    READINESS,
    ROOT,
    SERVING,
    STAT_SERVICE,
    TEST_CONFIG,
    Bridge,
    Server,
    fetch_rows,
    login,
    new_id,
    pb,
    server_env,
    stat,
    users,
    write_config,
)

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("grpc-server")
    config = write_config(directory)
    proc = Server(server_env(pg_url, config), directory / "server.log").start()
    try:
        asyncio.run(proc.wait_health(SERVING))
        yield proc
    finally:
        proc.stop_quietly()


@pytest.fixture
async def bridge(server: Server) -> AsyncIterator[Bridge]:
    async with Bridge(server.target) as client:
        yield client


# --------------------------------------------------------------------- validation (contract §2)

STAT_NO_PAYLOAD = pb.stat_pb2.StatItemUpdated(id="e1", namespace="mygame", user_id="u1")
STAT_EMPTY_CODE = pb.stat_pb2.StatItemUpdated(
    id="e1", namespace="mygame", user_id="u1", payload=pb.stat_pb2.StatItem(latest_value=3)
)


@pytest.mark.parametrize(
    ("message", "details"),
    [
        (pb.login_pb2.UserLoggedIn(), "message cannot be nil"),
        (pb.stat_pb2.StatItemUpdated(), "message cannot be nil"),
        (login(""), "userId cannot be empty"),
        (stat("", "match_wins", 1), "userId cannot be empty"),
        # user id is checked before the payload
        (pb.stat_pb2.StatItemUpdated(id="e1", namespace="mygame"), "userId cannot be empty"),
        (STAT_NO_PAYLOAD, "payload cannot be nil"),
        (STAT_EMPTY_CODE, "statCode cannot be empty"),
        (login("x" * 101), "userId too long"),
        (stat("x" * 101, "match_wins", 1), "userId too long"),
    ],
    ids=[
        "login-nil",
        "stat-nil",
        "login-no-user",
        "stat-no-user",
        "stat-no-user-no-payload",
        "stat-no-payload",
        "stat-no-code",
        "login-user-too-long",
        "stat-user-too-long",
    ],
)
async def test_invalid_events_get_exact_code_and_message(bridge: Bridge, message, details):
    assert await bridge.call(message) == (INVALID, details)


async def test_wrong_namespace_is_ok_and_writes_nothing(bridge: Bridge, pg_url: str):
    (user,) = users(1)
    assert await bridge.call(login(user, namespace="othergame")) == (OK, "")
    assert await bridge.call(stat(user, "enemy_kills", 0, 4, namespace="othergame")) == (OK, "")
    # a valid event for the same user afterwards: durable ack = everything before is settled
    assert await bridge.call(stat(user, "match_wins", 2)) == (OK, "")
    assert set(await fetch_rows(pg_url, [user])) == {(user, "wins")}


async def test_event_moving_no_goal_is_ok_and_writes_nothing(bridge: Bridge, pg_url: str):
    (user,) = users(1)
    assert await bridge.call(stat(user, "unknown_stat", 5)) == (OK, "")
    assert await fetch_rows(pg_url, [user]) == {}


# --------------------------------------------------------------------- rows (durable acks)


async def test_stat_absolute_value_truncated_and_completion_sticky(bridge: Bridge, pg_url: str):
    (user,) = users(1)
    assert await bridge.call(stat(user, "match_wins", 42.7)) == (OK, "")
    row = (await fetch_rows(pg_url, [user]))[(user, "wins")]
    assert (row["progress"], row["status"], row["namespace"]) == (42, "completed", "mygame")
    assert row["challenge_id"] == "grpc-test" and row["completed_at"] is not None
    assert await bridge.call(stat(user, "match_wins", 3)) == (OK, "")
    row = (await fetch_rows(pg_url, [user]))[(user, "wins")]
    assert (row["progress"], row["status"]) == (3, "completed")


async def test_stat_increment_adds_inc_or_one(bridge: Bridge, pg_url: str):
    (user,) = users(1)
    results = [await bridge.call(stat(user, "enemy_kills", 100, inc)) for inc in (5, 0, 2.9)]
    assert results == [(OK, "")] * 3
    row = (await fetch_rows(pg_url, [user]))[(user, "kills")]
    assert (row["progress"], row["status"]) == (5 + 1 + 2, "in_progress")


async def test_login_counts_and_completes_daily_at_event_time(bridge: Bridge, pg_url: str):
    (user,) = users(1)
    first = login(user, timestamp="2026-03-01T10:15:00Z")
    assert await bridge.call(first) == (OK, "")
    assert await bridge.call(login(user, timestamp="2026-03-01T18:00:00Z")) == (OK, "")
    rows = await fetch_rows(pg_url, [user])
    assert rows[(user, "logins")]["progress"] == 2
    daily = rows[(user, "daily-login")]
    assert (daily["progress"], daily["status"]) == (1, "completed")
    assert daily["completed_at"] == datetime(2026, 3, 1, 10, 15)


async def test_user_id_falls_back_to_payload(bridge: Bridge, pg_url: str):
    a, b = users(2)
    account = pb.login_pb2.UserAccount(user_id=a)
    message = pb.login_pb2.UserLoggedIn(
        id=new_id(),
        namespace="mygame",
        payload=pb.login_pb2.UserLoggedIn.Payload(user_account=account),
    )
    assert await bridge.call(message) == (OK, "")
    item = pb.stat_pb2.StatItem(user_id=b, stat_code="match_wins", latest_value=7)
    message = pb.stat_pb2.StatItemUpdated(id=new_id(), namespace="mygame", payload=item)
    assert await bridge.call(message) == (OK, "")
    rows = await fetch_rows(pg_url, [a, b])
    assert rows[(a, "logins")]["progress"] == 1
    assert rows[(b, "wins")]["progress"] == 7


async def test_longest_user_id_accepted(bridge: Bridge, pg_url: str):
    user = users(1)[0] + ":" + "x" * 100
    user = user[:100]
    assert await bridge.call(stat(user, "match_wins", 1)) == (OK, "")
    assert (await fetch_rows(pg_url, [user]))[(user, "wins")]["progress"] == 1


async def test_redelivered_event_id_counts_once(bridge: Bridge, pg_url: str):
    (user,) = users(1)
    login_id, kill_id = new_id(), new_id()
    for _ in range(3):
        assert await bridge.call(login(user, event_id=login_id)) == (OK, "")
    # concurrently, too: the copies join the same flush
    results = await bridge.call_all([stat(user, "enemy_kills", 0, 5, event_id=kill_id)] * 3)
    assert results == [(OK, "")] * 3
    rows = await fetch_rows(pg_url, [user])
    assert rows[(user, "logins")]["progress"] == 1
    assert rows[(user, "kills")]["progress"] == 5


# --------------------------------------------------------------------- health, reflection, metrics


async def test_health_serving_for_all_service_names(server: Server):
    for name in (LIVENESS, *READINESS):
        assert await server.health(name) == SERVING
    assert await server.health("no.such.Service") is None  # NOT_FOUND: not a name we serve


async def test_reflection_lists_the_services(server: Server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names = set()
        async for reply in stub.ServerReflectionInfo(iter([request])):
            names |= {s.name for s in reply.list_services_response.service}
    assert {LOGIN_SERVICE, STAT_SERVICE, "grpc.health.v1.Health"} <= names


METRIC_NAMES = (
    "challenge_event_handler_events_total",
    "challenge_event_handler_events_processed_total",
    "challenge_event_handler_events_failed_total",
    "challenge_event_handler_event_processing_duration_seconds",
    "challenge_event_handler_buffer_size",
    "challenge_event_handler_flush_duration_seconds",
    "challenge_event_handler_db_batch_size",
    "challenge_event_handler_grpc_requests_total",
    "challenge_event_handler_grpc_request_duration_seconds",
    "challenge_event_handler_grpc_in_flight_requests",
)


async def test_metrics_after_traffic(server: Server, bridge: Bridge):
    before_events = await server.metric("challenge_event_handler_events_total", 'source="grpc"')
    before_flushes = await server.metric("challenge_event_handler_flush_duration_seconds_count")
    before_bad = await server.metric(
        "challenge_event_handler_events_failed_total", 'reason="empty_user_id"'
    )
    people = users(20)
    results = await bridge.call_all([login(u) for u in people] + [login("")])
    assert [code for code, _ in results].count(OK) == 20
    text = await server.metrics()
    for name in METRIC_NAMES:
        assert f"\n{name}" in text, name
    assert await server.metric("challenge_event_handler_events_total", 'source="grpc"') >= (
        before_events + 21
    )
    assert (
        await server.metric("challenge_event_handler_events_failed_total", 'reason="empty_user_id"')
        == before_bad + 1
    )
    assert await server.metric("challenge_event_handler_flush_duration_seconds_count") > (
        before_flushes
    )
    assert await server.metric("challenge_event_handler_db_batch_size_sum") >= 40
    assert (
        await server.metric(
            "challenge_event_handler_grpc_requests_total",
            f'code="OK",method="/{LOGIN_SERVICE}/OnMessage"',
        )
        >= 20
    )
    assert await server.metric("challenge_event_handler_grpc_in_flight_requests") == 0
    # durable acks: every acknowledged event is committed, nothing is left buffered
    assert await server.metric("challenge_event_handler_buffer_size") == 0


async def test_buffer_size_is_what_is_buffered(pg_url: str, tmp_path: Path):
    """Buffered acks and an hour-long interval: after the acks nothing is flushed yet, and
    the gauge is the buffered (user, goal) count; SIGTERM's final flush writes them."""
    env = server_env(
        pg_url, write_config(tmp_path), ACK_MODE="buffered", BUFFER_FLUSH_INTERVAL="1h"
    )
    server = Server(env, tmp_path / "server.log").start()
    try:
        await server.wait_health(SERVING)
        people = users(7)
        async with Bridge(server.target) as client:
            results = await client.call_all([login(u) for u in people])
        assert [code for code, _ in results] == [OK] * 7
        # two login goals per user (logins, daily-login), none written yet
        assert await server.metric("challenge_event_handler_buffer_size") == 14
        assert await fetch_rows(pg_url, people) == {}
        assert server.terminate() == 0
        assert len(await fetch_rows(pg_url, people)) == 14
    finally:
        server.stop_quietly()


# --------------------------------------------------------------------- SIGHUP reload


async def _wait_log(server: Server, needle: str, count: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if server.log_text().count(needle) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged {count}x:\n{server.log_tail()}")


async def test_sighup_reloads_valid_config_and_keeps_old_on_invalid(pg_url: str, tmp_path: Path):
    config = write_config(tmp_path)
    server = Server(server_env(pg_url, config), tmp_path / "server.log").start()
    try:
        await server.wait_health(SERVING)
        (user,) = users(1)
        async with Bridge(server.target) as client:
            # invalid file: refused, the old goals still apply
            config.write_text(json.dumps({"challenges": []}))
            server.proc.send_signal(signal.SIGHUP)
            await _wait_log(server, "config reload refused", 1)
            assert await client.call(stat(user, "match_wins", 4)) == (OK, "")
            # valid file with a new goal: applies to the next events
            new = json.loads(json.dumps(TEST_CONFIG))
            new["challenges"][0]["goals"].append(
                {
                    "goalId": "headshots",
                    "eventSource": "statistic",
                    "requirement": {"statCode": "headshots", "targetValue": 3, "operator": ">="},
                }
            )
            config.write_text(json.dumps(new))
            server.proc.send_signal(signal.SIGHUP)
            await _wait_log(server, "config reloaded", 1)
            assert await client.call(stat(user, "headshots", 3)) == (OK, "")
        rows = await fetch_rows(pg_url, [user])
        assert rows[(user, "wins")]["progress"] == 4
        assert (rows[(user, "headshots")]["progress"], rows[(user, "headshots")]["status"]) == (
            3,
            "completed",
        )
        assert server.terminate() == 0
    finally:
        server.stop_quietly()


# --------------------------------------------------------------------- CLI


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_send_client_prints_status_and_duration(server: Server, pg_url: str):
    (user,) = users(1)
    sent = await asyncio.to_thread(
        _cli, "send", "--target", server.target, "stat", "--user", user, "--code",
        "enemy_kills", "--value", "9", "--inc", "4",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert re.fullmatch(r"OK \(\d+\.\d ms\)\n", sent.stdout)
    assert (await fetch_rows(pg_url, [user]))[(user, "kills")]["progress"] == 4
    refused = await asyncio.to_thread(
        _cli, "send", "--target", server.target, "login", "--user", ""
    )
    assert refused.returncode == 1
    assert re.fullmatch(
        r"INVALID_ARGUMENT: userId cannot be empty \(\d+\.\d ms\)\n", refused.stdout
    )


def test_serve_refuses_to_start_without_namespace(tmp_path: Path):
    done = _cli("serve", env={"AB_NAMESPACE": "", "CONFIG_PATH": str(write_config(tmp_path))})
    assert done.returncode == 2
    assert "AB_NAMESPACE" in done.stderr


def test_serve_refuses_an_invalid_config(tmp_path: Path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"challenges": []}))
    done = _cli("serve", env={"AB_NAMESPACE": "mygame", "CONFIG_PATH": str(config)})
    assert done.returncode == 2
    assert done.stderr.startswith("error: ")
