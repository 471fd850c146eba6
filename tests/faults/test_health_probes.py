"""Health as a platform probes it, on a real `serve` whose database goes away: liveness
(the overall name "") stays SERVING, so no replica is restarted for an outage a restart
cannot fix; readiness (the event services' and the GDPR service's names) goes
NOT_SERVING and comes back by itself. The database is cut with a TCP gate in front of the
shared PostgreSQL (tests/helpers/faults.py), which keeps running for everyone else."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.faults import TcpGate
from tests.helpers.grpc import (
    LIVENESS,
    NOT_SERVING,
    OK,
    READINESS,
    SERVING,
    UNAVAILABLE,
    Bridge,
    Server,
    login,
    progress,
    server_env,
    users,
    write_config,
)

pytestmark = [pytest.mark.postgres]


async def test_liveness_stays_while_readiness_follows_the_database(pg_url: str, tmp_path: Path):
    gate = TcpGate.before(pg_url)
    env = server_env(
        gate.url,
        write_config(tmp_path),
        HEALTH_CHECK_INTERVAL="200ms",
        GRPC_ACK_TIMEOUT="1s",
        GRPC_BUFFER_WAIT="1s",
    )
    server = Server(env, tmp_path / "serve.log").start()
    people = users(2)
    try:
        await server.wait_ready(SERVING)
        assert await server.health(LIVENESS) == SERVING
        gate.cut()
        await server.wait_ready(NOT_SERVING, deadline=15)
        async with Bridge(server.target) as bridge:
            # alive and answering: the call is refused for now, the bridge will redeliver
            code, _ = await bridge.call(login(people[0]), timeout=10)
            assert code is UNAVAILABLE
            for name in READINESS:
                assert await server.health(name) == NOT_SERVING
            assert await server.health(LIVENESS) == SERVING
            gate.restore()
            await server.wait_ready(SERVING, deadline=30)
            assert await server.health(LIVENESS) == SERVING
            assert await bridge.call(login(people[1])) == (OK, "")
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.stop_quietly()
        gate.close()
    # the refused call's event stayed buffered and was written once the database was back
    assert await progress(pg_url, people, "logins") == dict.fromkeys(people, 1)
    assert "readiness NOT_SERVING" in server.log_text()
    assert "readiness SERVING" in server.log_text()
