"""Fuzz suite, gRPC end to end (hostile input, contract §2): a real `serve` on PostgreSQL
takes a few thousand structurally valid messages with hostile values, plus random
request bytes.

- no call is answered INTERNAL or UNKNOWN; each is OK or INVALID_ARGUMENT exactly when
  the contract §2 rules (written out independently below) say so;
- every OK'd event is in the table with the result of the rules (`app.core.progress` as
  the oracle), and a refused event changed nothing (no partial apply: each hostile event
  has a user of its own);
- every call is counted in the gRPC metrics, the log holds no traceback and no line per
  call, and the server is SERVING afterwards and exits 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from app.core.challenges import Source, parse_config
from app.core.events import INT_MAX, INT_MIN, Event, EventType
from app.core.progress import Row, apply_delta, fold
from tests.helpers.grpc import (
    INVALID,
    NAMESPACE,
    OK,
    SERVING,
    Server,
    fetch_rows,
    new_id,
    pb,
    server_env,
    write_config,
)
from tests.helpers.process import samples

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MESSAGES = int(os.environ.get("FUZZ_GRPC_MESSAGES", "3000"))
RANDOM_BODIES = int(os.environ.get("FUZZ_GRPC_RANDOM_BODIES", "1000"))
SEQUENCES = 60  # users with several events in order (relative baselines across flushes)

CONFIG = {
    "challenges": [
        {
            "challengeId": "fuzz",
            "name": "fuzz",
            "goals": [
                {
                    "goalId": "logins",
                    "eventSource": "login",
                    "type": "increment",
                    "requirement": {"targetValue": 1_000_000},
                },
                {
                    "goalId": "daily-login",
                    "eventSource": "login",
                    "type": "daily",
                    "requirement": {"targetValue": 1},
                },
                {
                    "goalId": "wins",
                    "eventSource": "statistic",
                    "requirement": {"statCode": "match_wins", "targetValue": 10},
                },
                {
                    "goalId": "kills",
                    "eventSource": "statistic",
                    "type": "increment",
                    "requirement": {"statCode": "enemy_kills", "targetValue": 1_000_000},
                },
                {
                    "goalId": "score",
                    "eventSource": "statistic",
                    "requirement": {
                        "statCode": "score",
                        "targetValue": 100,
                        "progressMode": "relative",
                    },
                },
            ],
        }
    ]
}
RULES = parse_config(CONFIG)

FLOATS = [
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
    -0.0,
    0.0,
    0.9999,
    -0.9999,
    42.7,
    -1.1,
    2.0**31,
    -(2.0**31) - 1,
    2_147_483_647.0,
    -2_147_483_648.0,
    3e9,
    -1.0,
    5.0,
    100.0,
    1e-300,
]
# (timestamp, the event time it stands for; None: falls back to the receive time)
TIMESTAMPS = [
    ("", None),
    ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, 0)),
    ("2026-11-20T23:30:00-02:00", datetime(2026, 11, 21, 1, 30)),
    ("2026-11-20T10:00:00.123456+05:30", datetime(2026, 11, 20, 4, 30, 0, 123456)),
    ("0001-01-01T00:00:00+01:00", None),
    ("9999-12-31T23:59:59-01:00", None),
    ("9999-12-31T23:59:59Z", None),
    ("0001-01-01T00:00:00Z", None),  # before EVENT_TIME_MIN
    ("1999-12-31T23:59:59.999999Z", None),
    ("2000-01-01T00:00:00Z", datetime(2000, 1, 1)),
    ("9999-12-30T00:00:00Z", None),  # later than receipt + EVENT_TIME_MAX_SKEW
    ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999)),  # a leap second
    ("garbage", None),
    ("2026-13-45T99:99:99Z", None),
    ("\x00", None),
    ("1" * 500, None),
]
CODES = ["match_wins", "enemy_kills", "score", "unknown_code", "", "score\x00", "ß" * 3]
HOSTILE_IDS = [
    "",
    "x" * 100,
    "x" * 101,
    "nul\x00id",
    "'; DROP TABLE user_goal_progress; --",
    "ユーザー🎮",
    "user:with:colons",
    " ",
    "\\x00",
    "%s%n",
]


@dataclass
class Sent:
    user: str
    kind: EventType
    code: str = ""
    value: float = 0.0
    inc: float = 0.0
    when: datetime | None = None  # None: receive time


def expected_refusal(s: Sent) -> str | None:
    """contract §2, written out independently of the decoders."""
    if not s.user:
        return "userId cannot be empty"
    if len(s.user) > 100:
        return "userId too long"
    if "\x00" in s.user:
        return "userId contains invalid characters"
    if s.kind is EventType.STATISTIC:
        if not s.code:
            return "statCode cannot be empty"
        if "\x00" in s.code:
            return "statCode contains invalid characters"
        if math.isnan(s.value):
            return "latestValue is not a number"
        if math.isnan(s.inc):
            return "inc is not a number"
    return None


def clamp(x: float) -> int:
    """Truncate toward zero, clamp to INT (contract §2), independently of app.core.events."""
    return INT_MAX if x >= INT_MAX else INT_MIN if x <= INT_MIN else int(x)


def hostile_messages(rng: random.Random) -> tuple[list, list[Sent]]:
    messages, sent = [], []
    for i in range(MESSAGES):
        if rng.random() < 0.25:
            hostile = rng.choice(HOSTILE_IDS)
            # unique per message yet still hostile (empty stays empty, long stays long)
            user = hostile if hostile in ("", "x" * 101) else f"{i}{hostile}"[:100]
        else:
            user = f"fz-{i}-{new_id()[:8]}"
        stamp, when = rng.choice(TIMESTAMPS)
        if rng.random() < 0.3:
            messages.append(
                pb.login_pb2.UserLoggedIn(
                    id=new_id(), namespace=NAMESPACE, user_id=user, timestamp=stamp
                )
            )
            sent.append(Sent(user, EventType.LOGIN, when=when))
            continue
        code, value, inc = rng.choice(CODES), rng.choice(FLOATS), rng.choice(FLOATS)
        messages.append(
            pb.stat_pb2.StatItemUpdated(
                id=new_id(),
                namespace=NAMESPACE,
                user_id=user,
                timestamp=stamp,
                payload=pb.stat_pb2.StatItem(stat_code=code, latest_value=value, inc=inc),
            )
        )
        sent.append(Sent(user, EventType.STATISTIC, code, value, inc, when))
    return messages, sent


def oracle(events: list[Sent], received: datetime) -> dict[str, tuple[int, str, int | None]]:
    """goal -> (progress, status, baseline) after each event in its own flush, by the rules."""
    rows: dict[str, Row | None] = {}
    for s in events:
        event = Event(
            new_id(),
            s.kind,
            NAMESPACE,
            s.user,
            s.when or received,
            s.code,
            clamp(s.value),
            clamp(s.inc),
        )
        source = Source.LOGIN if s.kind is EventType.LOGIN else Source.STATISTIC
        deltas: dict = {}
        fold(deltas, event, RULES.goals_for(source, s.code))
        for delta in deltas.values():
            rows[delta.goal.goal_id] = apply_delta(
                rows.get(delta.goal.goal_id), delta, datetime.now(UTC).replace(tzinfo=None)
            )
    return {g: (r.progress, r.status, r.baseline_value) for g, r in rows.items() if r}


async def raw_call(channel: grpc.aio.Channel, method: str, body: bytes):
    call = channel.unary_unary(method)  # no serializers: the body goes out as is
    try:
        await call(body, timeout=60)
        return OK, ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


LOGIN_METHOD = "/accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService/OnMessage"
STAT_METHOD = "/accelbyte.social.statistic.v1.StatisticStatItemUpdatedService/OnMessage"


async def test_grpc_fuzz_hostile_values_and_random_bytes(pg_url: str, tmp_path: Path):
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "9")))
    server = Server(
        server_env(pg_url, write_config(tmp_path, CONFIG), LOG_LEVEL="info"),
        tmp_path / "serve.log",
    ).start()
    try:
        await server.wait_health(SERVING)
        messages, sent = hostile_messages(rng)
        bodies = [rng.randbytes(rng.randint(0, 300)) for _ in range(RANDOM_BODIES)]
        sequences = {
            f"seq-{k}-{new_id()[:8]}": [
                Sent("", EventType.STATISTIC, rng.choice(["score", "enemy_kills"]), v, c, when)
                for v, c, when in (
                    (rng.choice(FLOATS), rng.choice(FLOATS), datetime(2026, 11, 20, 10, j))
                    for j in range(4)
                )
                if not math.isnan(v) and not math.isnan(c)
            ]
            for k in range(SEQUENCES)
        }
        started = datetime.now(UTC).replace(tzinfo=None)
        gate = asyncio.Semaphore(200)
        async with grpc.aio.insecure_channel(server.target) as channel:

            async def one(message):
                async with gate:
                    method = (
                        LOGIN_METHOD
                        if isinstance(message, pb.login_pb2.UserLoggedIn)
                        else STAT_METHOD
                    )
                    return await raw_call(channel, method, message.SerializeToString())

            async def garbage(body: bytes, i: int):
                async with gate:
                    return await raw_call(channel, (LOGIN_METHOD, STAT_METHOD)[i % 2], body)

            async def sequence(user: str, events: list[Sent]):
                results = []
                for s in events:  # in order: each durable OK is committed before the next
                    s.user = user
                    message = pb.stat_pb2.StatItemUpdated(
                        id=new_id(),
                        namespace=NAMESPACE,
                        user_id=user,
                        timestamp=s.when.isoformat() + "Z",
                        payload=pb.stat_pb2.StatItem(
                            stat_code=s.code, latest_value=s.value, inc=s.inc
                        ),
                    )
                    async with gate:
                        results.append(
                            await raw_call(channel, STAT_METHOD, message.SerializeToString())
                        )
                return results

            hostile, random_results, sequenced = await asyncio.gather(
                asyncio.gather(*(one(m) for m in messages)),
                asyncio.gather(*(garbage(b, i) for i, b in enumerate(bodies))),
                asyncio.gather(*(sequence(u, e) for u, e in sequences.items())),
            )
        finished = datetime.now(UTC).replace(tzinfo=None)

        # 1. codes: exactly what the rules say; random bytes never UNKNOWN/INTERNAL
        for s, (code, details) in zip(sent, hostile, strict=True):
            refusal = expected_refusal(s)
            assert (code, details) == ((INVALID, refusal) if refusal else (OK, "")), s
        allowed = {OK, INVALID}
        assert {code for code, _ in random_results} <= allowed
        malformed = sum(d == "malformed message" for _, d in random_results)
        assert malformed > RANDOM_BODIES // 2
        for results in sequenced:
            assert all(code is OK for code, _ in results), results

        # 2. the table: every OK'd event with the rules' result, nothing of a refused one
        accepted = [s for s, (code, _) in zip(sent, hostile, strict=True) if code is OK]
        refused_users = [s.user for s, (code, _) in zip(sent, hostile, strict=True) if code != OK]
        rows = await fetch_rows(pg_url, [s.user for s in accepted] + list(sequences))
        assert not await fetch_rows(pg_url, [u for u in refused_users if u and "\x00" not in u])
        found: dict[str, dict[str, tuple]] = {}
        for (user, goal_id), r in rows.items():
            found.setdefault(user, {})[goal_id] = (
                r["progress"],
                r["status"],
                r["baseline_value"],
                r["completed_at"],
            )
        for s in accepted:
            want = oracle([s], started)
            got = found.get(s.user, {})
            assert {g: v[:3] for g, v in got.items()} == _with_received(want, s, got), s
            for _, _, _, completed_at in got.values():  # a fallback time is the receive time
                if completed_at is not None and s.when is None:
                    assert started <= completed_at <= finished, s
        for user, events in sequences.items():
            got = found.get(user, {})
            assert {g: v[:3] for g, v in got.items()} == oracle(events, started), events

        # 3. every call counted, the server healthy, no traceback, no line per call
        total = len(messages) + len(bodies) + sum(len(e) for e in sequences.values())
        metrics = samples(await server.metrics())
        counted = sum(
            v for n, _, v in metrics if n == "challenge_event_handler_grpc_requests_total"
        )
        assert counted == total
        refusals = {
            labels: v
            for n, labels, v in metrics
            if n == "challenge_event_handler_events_failed_total"
        }
        assert await server.health() == SERVING
        assert server.terminate() == 0
        log = server.log_text()
        assert "Traceback" not in log
        # one info line per flush is the contract (contract §7), and group commit flushes
        # small groups at this rate; anything else must not grow with the calls
        other = [line for line in log.splitlines() if '"flush committed"' not in line]
        assert len(other) < 100, "a log line per call"
        print(
            f"\ngRPC fuzz: sent={total} (hostile={len(messages)}, random bytes={len(bodies)}, "
            f"sequenced={total - len(messages) - len(bodies)}) "
            f"accepted={len(accepted)} refused={len(messages) - len(accepted)} "
            f"random bytes malformed={malformed} refusals by reason={refusals} crashes=0"
        )
    finally:
        server.stop_quietly()


def _with_received(want: dict, s: Sent, got: dict) -> dict:
    """A fallback event time is only known to the server: recompute with the row's time."""
    if s.when is not None or not got:
        return want
    moments = [v[3] for v in got.values() if v[3] is not None]
    if not moments:
        return want
    return oracle([Sent(s.user, s.kind, s.code, s.value, s.inc, moments[0])], moments[0])


async def test_server_answers_health_after_a_burst_of_garbage(pg_url: str, tmp_path: Path):
    """Random bytes alone, as fast as they come: all refused, counted, no log flood."""
    server = Server(
        server_env(pg_url, write_config(tmp_path, CONFIG)), tmp_path / "serve.log"
    ).start()
    try:
        await server.wait_health(SERVING)
        rng = random.Random(99)
        async with grpc.aio.insecure_channel(server.target) as channel:
            results = await asyncio.wait_for(  # the bound of a broken run only
                asyncio.gather(
                    *(
                        raw_call(channel, STAT_METHOD, b"\xff" + rng.randbytes(rng.randint(1, 64)))
                        for _ in range(2000)
                    )
                ),
                60,
            )
        assert {code for code, _ in results} <= {INVALID}
        body = await server.metrics()
        value = sum(
            v
            for n, labels, v in samples(body)
            if n == "challenge_event_handler_events_failed_total" and "malformed" in labels
        )
        assert value == sum(d == "malformed message" for _, d in results)
        assert await server.health() == SERVING
        assert server.terminate() == 0
        log = server.log_text()
        assert "Traceback" not in log and "DecodeError" not in log
        assert len(log.splitlines()) < 50
    finally:
        server.stop_quietly()
