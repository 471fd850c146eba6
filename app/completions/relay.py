"""A sink's calls in a process of their own (COMPLETION_SENDER=process).

A gRPC unary call costs about 0.2 ms of Python CPU and an aiokafka record tens of
microseconds; in the service's process that CPU is taken from the event loop that
acknowledges events. `RelayedSink` stands in the service for the `async-messaging` or
`kafka` sink and hands each batch to a child process (`python -m app.completions.relay`),
which runs the real sink and answers how many leading events it accepted: the service
keeps the outbox, the lease, the marks and the metrics, the child only sends.

Frames on the child's stdin and stdout: a 4-byte big-endian length, then JSON; one batch
out, one answer back. The child never outlives the service: it ends at the end of its
stdin, and on Linux the kernel kills it the moment the service dies (PR_SET_PDEATHSIG),
so a service killed with -9 stops sending at once, as if the calls were its own. A child that dies or stops answering fails that batch (retried
by the publisher from the outbox, as any refusal) and is started afresh for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from app.completions.async_messaging import NAME as ASYNC_MESSAGING
from app.completions.async_messaging import AsyncMessagingSink
from app.completions.kafka_sink import NAME as KAFKA
from app.completions.kafka_sink import KafkaSink
from app.observability.logs import setup_logging
from tables.publisher import Outgoing, Sink, SinkRefused

log = logging.getLogger(__name__)

_LENGTH = 4
_PR_SET_PDEATHSIG = 1


def build(spec: dict[str, Any]) -> Sink:
    """The real sink a relay runs, from its spec (what `RelayedSink` was given)."""
    if spec["sink"] == ASYNC_MESSAGING:
        return AsyncMessagingSink(
            spec["host"], spec["port"], spec["topic"], timeout=spec["timeout"]
        )
    if spec["sink"] == KAFKA:
        return KafkaSink(spec["servers"], spec["topic"], timeout=spec["timeout"])
    raise ValueError(f"no relay for sink {spec['sink']!r}")


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(_LENGTH, "big") + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(_LENGTH), "big")
    return await reader.readexactly(size)


class RelayedSink:
    """The service's side: same name, same `send` contract as the sink it relays."""

    def __init__(self, spec: dict[str, Any], *, log_level: str = "info", log_format: str = "json"):
        self.spec = spec
        self.name: str = spec["sink"]
        self.topic: str = spec["topic"]
        self.timeout: float = spec["timeout"]
        self._argv = [orjson.dumps(spec).decode(), log_level, log_format, str(os.getpid())]
        self._child: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    async def start(self) -> None:
        if self._child is None:
            self._child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app.completions.relay",
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )

    async def send(self, events: Sequence[Outgoing]) -> int:
        await self.start()
        child = self._child
        assert child is not None and child.stdin is not None and child.stdout is not None
        batch = orjson.dumps([(e.id, e.user_id, e.body.decode(), e.metadata) for e in events])
        try:
            child.stdin.write(_frame(batch))
            await child.stdin.drain()
            # each call of the child has its own timeout; one user's events go one by one
            answer = await asyncio.wait_for(
                _read_frame(child.stdout), self.timeout * (len(events) + 2)
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await self.close()
            raise SinkRefused(f"{self.name} relay process failed: {exc!r}") from exc
        return int(orjson.loads(answer))

    async def close(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            child.stdin.close()  # the end of its input: it closes its sink and exits
        try:
            await asyncio.wait_for(child.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()


async def relay(spec: dict[str, Any]) -> None:
    """The child: send each batch read from stdin with the real sink, answer on stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    answers = sys.stdout.buffer  # a few bytes per batch: a plain blocking write
    sink = build(spec)
    try:
        while True:
            try:
                batch = orjson.loads(await _read_frame(reader))
            except asyncio.IncompleteReadError:
                return  # the service closed our input, or is gone
            events = [Outgoing(i, user, body.encode(), meta) for i, user, body, meta in batch]
            try:
                accepted = await sink.send(events)
            except Exception as exc:
                log.warning(
                    "relayed sink failed", extra={"sink": sink.name, "error": str(exc)[:300]}
                )
                accepted = 0
            answers.write(_frame(str(accepted).encode()))
            answers.flush()
    finally:
        with contextlib.suppress(Exception):
            await sink.close()


def _die_with(service: int) -> None:
    """Have the kernel SIGKILL this process when the service dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != service:  # it died before the line above
        sys.exit(0)


def main(argv: list[str]) -> None:
    spec, level, fmt, service = orjson.loads(argv[0]), argv[1], argv[2], int(argv[3])
    _die_with(service)
    setup_logging(level, fmt)  # to stderr, shared with the service; stdout is the answers
    asyncio.run(relay(spec))


if __name__ == "__main__":
    main(sys.argv[1:])
