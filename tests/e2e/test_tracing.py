"""Tracing against a real Zipkin server and a real `python -m app serve`: incoming W3C and
B3 (single and multi header) context continued, each call's flush span in its trace and
linked to it, the GDPR deletion span, refusals not marked as failures, trace ids in the
JSON log lines; and with tracing off, nothing of OpenTelemetry loaded, no ids in logs."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.helpers.grpc import (
    INVALID,
    OK,
    ROOT,
    SERVING,
    Server,
    login,
    pb,
    server_env,
    users,
    write_config,
)

pytestmark = pytest.mark.postgres

ZIPKIN_DEFAULT = "http://127.0.0.1:9411"
LOGIN_SPAN = "accelbyte.iam.account.v1.userauthenticationuserloggedinservice/onmessage"
GDPR_SPAN = (
    "accelbyte.iam.account.v1.deletionaccountgdprgdprrequestdatadeletionresponseservice/onmessage"
)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=3) as reply:
            return json.load(reply).get("status") == "UP"
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def zipkin() -> str:
    """Base URL of a Zipkin server: ZIPKIN_URL, else ours on 9411 (started when down)."""
    base = os.environ.get("ZIPKIN_URL", "").rstrip("/")
    if base:
        if not _healthy(base):
            pytest.fail(f"ZIPKIN_URL={base} does not answer /health")
        return base
    if not _healthy(ZIPKIN_DEFAULT):
        started = subprocess.run(
            ["bash", str(ROOT / "scripts" / "services.sh"), "start", "zipkin"],
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        if started.returncode != 0 or not _healthy(ZIPKIN_DEFAULT):
            pytest.fail(f"could not start Zipkin (scripts/services.sh):\n{started.stderr[-2000:]}")
    return ZIPKIN_DEFAULT


def trace_spans(base: str, trace_id: str) -> list[dict[str, Any]]:
    """The spans Zipkin holds for `trace_id` ([] while none arrived)."""
    try:
        with urllib.request.urlopen(f"{base}/api/v2/trace/{trace_id}", timeout=5) as reply:
            return list(json.load(reply))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


def wait_for_spans(base: str, trace_id: str, names: set[str], deadline: float = 30.0) -> list:
    """Poll Zipkin until the trace holds a span of every name in `names`."""
    end = time.monotonic() + deadline
    spans: list[dict[str, Any]] = []
    while time.monotonic() < end:
        spans = trace_spans(base, trace_id)
        if names <= {span.get("name") for span in spans}:
            return spans
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id} never held {names}: {json.dumps(spans)[:2000]}")


def only(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [span for span in spans if span.get("name") == name]
    assert len(found) == 1, f"{len(found)} spans named {name}: {found}"
    return found[0]


def log_lines(server: Server) -> list[dict[str, Any]]:
    lines = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def new_context() -> tuple[str, str]:
    """A caller's trace id (32 hex) and span id (16 hex)."""
    return secrets.token_hex(16), secrets.token_hex(8)


def w3c(trace_id: str, span_id: str) -> tuple[tuple[str, str], ...]:
    return (("traceparent", f"00-{trace_id}-{span_id}-01"),)


def b3_single(trace_id: str, span_id: str) -> tuple[tuple[str, str], ...]:
    return (("b3", f"{trace_id}-{span_id}-1"),)


def b3_multi(trace_id: str, span_id: str) -> tuple[tuple[str, str], ...]:
    return (("x-b3-traceid", trace_id), ("x-b3-spanid", span_id), ("x-b3-sampled", "1"))


async def call(target: str, message: Any, metadata: tuple) -> grpc.StatusCode:
    """One OnMessage call (login or GDPR deletion) carrying `metadata`."""
    async with grpc.aio.insecure_channel(target) as channel:
        if isinstance(message, pb.login_pb2.UserLoggedIn):
            stub: Any = pb.login_grpc.UserAuthenticationUserLoggedInServiceStub(channel)
        else:
            stub = pb.gdpr_grpc.DeletionAccountGdprGdprRequestDataDeletionResponseServiceStub(
                channel
            )
        try:
            await stub.OnMessage(message, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return OK


def gdpr_message(user: str) -> Any:
    g = pb.gdpr_pb2
    return g.GdprRequestDataDeletionResponse(
        id=uuid.uuid4().hex,
        namespace="mygame",
        payload=g.GdprRequestDataDeletionResponsePayloadData(
            deletion_gdpr=g.DeletionGDPR(user_id=user, namespace="mygame")
        ),
    )


@pytest.fixture(scope="module")
def traced_server(
    pg_url: str, zipkin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    directory = tmp_path_factory.mktemp("traced")
    service = f"tracing-test-{uuid.uuid4().hex[:8]}"
    env = server_env(
        pg_url,
        write_config(directory),
        OTEL_EXPORTER_ZIPKIN_ENDPOINT=f"{zipkin}/api/v2/spans",
        OTEL_SERVICE_NAME=service,
        OTEL_BSP_SCHEDULE_DELAY="200",
        LOG_LEVEL="debug",
    )
    proc = Server(env, directory / "server.log").start()
    try:
        asyncio.run(proc.wait_health(SERVING))
        yield proc, service
    finally:
        proc.stop_quietly()


@pytest.mark.parametrize("headers", [w3c, b3_single, b3_multi], ids=lambda h: h.__name__)
async def test_a_call_continues_the_callers_trace_and_its_flush_is_linked(
    traced_server: tuple[Server, str], zipkin: str, headers
):
    server, service = traced_server
    (user,) = users(1)
    trace_id, caller_span = new_context()
    message = login(user)
    assert await call(server.target, message, headers(trace_id, caller_span)) == OK

    spans = wait_for_spans(zipkin, trace_id, {LOGIN_SPAN, "flush"})
    on_message, flush = only(spans, LOGIN_SPAN), only(spans, "flush")
    assert on_message["kind"] == "SERVER"
    assert on_message["parentId"] == caller_span  # the caller's context, continued
    assert on_message["localEndpoint"]["serviceName"] == service
    tags = on_message["tags"]
    assert tags["challenge.event.type"] == "login"
    assert tags["challenge.event.id"] == message.id
    assert tags["challenge.goals_affected"] == "2"  # logins + daily-login
    assert tags["challenge.outcome"] == "OK"
    assert tags["rpc.grpc.status_code"] == "0"
    assert "error" not in tags
    # the flush that committed the event: a child of the call, linked by trace id
    assert flush["parentId"] == on_message["id"]
    assert trace_id in flush["tags"]["challenge.flush.linked_trace_ids"].split(",")
    assert int(flush["tags"]["challenge.flush.linked_calls"]) >= 1
    assert int(flush["tags"]["challenge.flush.rows"]) >= 2
    assert int(flush["tags"]["challenge.flush.statements"]) >= 1
    # the call's own debug line carries the trace and span ids
    buffered = [
        line
        for line in log_lines(server)
        if line.get("event") == "event buffered" and line.get("event_id") == message.id
    ]
    assert len(buffered) == 1, buffered
    assert buffered[0]["trace_id"] == trace_id
    assert buffered[0]["span_id"] == on_message["id"]


async def test_a_refused_call_is_traced_with_its_code_not_as_a_failure(
    traced_server: tuple[Server, str], zipkin: str
):
    server, _ = traced_server
    trace_id, caller_span = new_context()
    assert await call(server.target, login(""), w3c(trace_id, caller_span)) == INVALID

    on_message = only(wait_for_spans(zipkin, trace_id, {LOGIN_SPAN}), LOGIN_SPAN)
    tags = on_message["tags"]
    assert tags["challenge.outcome"] == "INVALID_ARGUMENT"
    assert tags["rpc.grpc.status_code"] == "3"
    assert tags["challenge.outcome_detail"] == "userId cannot be empty"
    assert "error" not in tags  # the caller's mistake, not ours
    assert "challenge.event.type" not in tags  # refused before it was an event


async def test_a_gdpr_deletion_is_traced_and_its_log_line_carries_the_trace(
    traced_server: tuple[Server, str], zipkin: str
):
    server, _ = traced_server
    (user,) = users(1)
    assert await call(server.target, login(user), ()) == OK  # two rows to delete
    trace_id, caller_span = new_context()
    assert await call(server.target, gdpr_message(user), b3_multi(trace_id, caller_span)) == OK

    deletion = only(wait_for_spans(zipkin, trace_id, {GDPR_SPAN}), GDPR_SPAN)
    assert deletion["parentId"] == caller_span
    assert deletion["tags"]["challenge.outcome"] == "OK"
    assert int(deletion["tags"]["challenge.gdpr_rows_deleted"]) >= 2
    audit = [
        line
        for line in log_lines(server)
        if line.get("audit") == "gdpr_deletion" and line.get("user_id") == user
    ]
    assert len(audit) == 1, audit
    assert audit[0]["trace_id"] == trace_id


# ------------------------------------------------------------------------- tracing off

OFF_PROBE = """
import logging, sys
from app.cli import bridge  # the serve command and everything it imports
from app.core.settings import Settings
from app.observability import tracing
settings = Settings.from_env()
print(tracing.setup(settings.otel_zipkin_endpoint, settings.otel_service_name))
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
print(logging.getLogRecordFactory() is logging.LogRecord)
"""


def test_tracing_off_loads_nothing_of_opentelemetry():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    probe = subprocess.run(
        [sys.executable, "-c", OFF_PROBE],
        cwd=ROOT,
        env={**env, "AB_NAMESPACE": "mygame"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split("\n")[:3] == ["False", "[]", "True"]


async def test_tracing_off_logs_carry_no_trace_id(pg_url: str, tmp_path: Path):
    server = Server(
        server_env(pg_url, write_config(tmp_path), LOG_LEVEL="debug"), tmp_path / "s.log"
    )
    for name in [name for name in server.env if name.startswith("OTEL_")]:
        del server.env[name]  # whatever the test run's environment says
    server.start()
    try:
        await server.wait_health(SERVING)
        (user,) = users(1)
        message = login(user)
        trace_id, caller_span = new_context()
        assert await call(server.target, message, w3c(trace_id, caller_span)) == OK
        lines = log_lines(server)
    finally:
        server.stop_quietly()
    started = [line for line in lines if line.get("event") == "gRPC server started"]
    assert started and started[0]["tracing"] is False
    buffered = [line for line in lines if line.get("event_id") == message.id]
    assert len(buffered) == 1, buffered
    assert "trace_id" not in buffered[0] and "span_id" not in buffered[0]
    assert not any("trace_id" in line for line in lines)
