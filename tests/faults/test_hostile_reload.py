"""Hostile config reloads: SIGHUP with an unreadable challenges.json (bytes that are not UTF-8, not JSON,
a missing file, wrong types, nesting too deep) logs the refusal line and keeps the running
config, in `serve` and in `worker` — never an asyncio traceback."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers import grpc as g
from tests.helpers import kafka as k

pytestmark = [pytest.mark.postgres]

UNREADABLE = [
    (b'{"challenges": [\xff\xfe\xfd]}', "not UTF-8"),
    (b"\x89PNG\r\n\x1a\n", "not UTF-8"),
    (b"{definitely not json", "invalid JSON"),
    (b'{"challenges": {"a": 1}}', "needs at least one challenge"),
    (b'{"challenges": [{"challengeId": 5, "goals": [{"goalId": [], "eventSource": 7}]}]}', ""),
    (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    (None, "cannot read config"),  # the file was removed
]


async def _refused(process, count: int, problem: str) -> bool:
    lines = [line for line in process.log_text().splitlines() if "config reload refused" in line]
    return len(lines) >= count and problem in lines[-1]


def _replace(path: Path, content: bytes | None) -> None:
    if content is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(content)


async def _send_hup_with(process, path: Path, content: bytes | None, seen: int, problem: str):
    _replace(path, content)
    assert process.proc is not None
    process.proc.send_signal(signal.SIGHUP)
    await k.wait_for(lambda: _refused(process, seen + 1, problem), 30, f"refusal of {problem}")
    lines = [line for line in process.log_text().splitlines() if "config reload refused" in line]
    return len(lines)


async def test_serve_keeps_its_config_when_the_reload_is_unreadable(pg_url: str, tmp_path: Path):
    path = g.write_config(tmp_path)
    server = g.Server(g.server_env(pg_url, path), tmp_path / "serve.log").start()
    try:
        await server.wait_health(g.SERVING)
        seen = 0
        for content, problem in UNREADABLE:
            seen = await _send_hup_with(server, path, content, seen, problem)
            assert server.running(), server.log_tail()
        (user,) = g.users(1)
        async with g.Bridge(server.target) as bridge:
            assert await bridge.call(g.login(user)) == (g.OK, "")
        assert await g.progress(pg_url, [user], "logins") == {user: 1}  # the old config
        assert await server.health() == g.SERVING
        assert server.terminate() == 0
        assert "Traceback" not in server.log_text()
    finally:
        server.stop_quietly()


@pytest.mark.kafka
async def test_worker_keeps_its_config_when_the_reload_is_unreadable(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path
):
    ns = k.new_namespace()
    await k.create_topics(kafka_bootstrap, ns)
    path = k.write_config(tmp_path)
    worker = k.Worker(pg_url, kafka_bootstrap, ns, path, tmp_path / "worker.log").start()
    try:
        await worker.wait_ready()
        seen = 0
        for content, problem in UNREADABLE[:3]:
            seen = await _send_hup_with(worker, path, content, seen, problem)
        _replace(path, orjson.dumps({"challenges": "not a list"}))
        await k.produce(
            kafka_bootstrap, [k.Record(k.login_topic(ns), k.login_json(ns, "kept", k.BASE_TIME))]
        )

        async def done() -> bool:
            assert worker.running(), worker.tail()
            return await k.drained(kafka_bootstrap, pg_engine, ns, worker.group)

        await k.wait_for(done, 60, "worker drained")
        assert await k.table(pg_engine) == {("kept", "login-5"): (1, "in_progress")}
        assert worker.terminate() == 0
        assert "Traceback" not in worker.log_text()
    finally:
        worker.stop_quietly()
