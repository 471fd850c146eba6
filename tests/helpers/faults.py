"""Faults injected into the real services (scripts/services.sh), always undone."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.helpers.process import ROOT, free_port


def services(*args: str) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "services.sh"), *args],
        check=True,
        timeout=180,
        capture_output=True,
    )


class Outage:
    """Stops and starts a real service ("pg" or "kafka"); whatever is still stopped at
    the end of the test is started again by the fixture."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def stop(self, service: str) -> None:
        self.stopped.add(service)
        services("stop", service)

    def start(self, service: str) -> None:
        services("start", service)
        self.stopped.discard(service)

    def restore(self) -> None:
        for service in sorted(self.stopped):
            self.start(service)


class RowLock:
    """A second, real PostgreSQL session holding `SELECT ... FOR UPDATE` on users' rows,
    as the challenge backend's claim does while it grants a reward.

        async with RowLock(pg_url, ["alice"]) as lock:   # held here
            ...
            await lock.release()                          # or at the end of the block
    """

    def __init__(self, pg_url: str, users: list[str], goal_id: str | None = None):
        self.url = pg_url
        self.users = users
        self.goal_id = goal_id
        self.locked = 0
        self._conn: asyncpg.Connection | None = None
        self._tx: Any = None

    async def __aenter__(self) -> RowLock:
        self._conn = await asyncpg.connect(self.url)
        self._tx = self._conn.transaction()
        await self._tx.start()
        sql = "SELECT 1 FROM user_goal_progress WHERE user_id = ANY($1::text[])"
        args: list[Any] = [self.users]
        if self.goal_id is not None:
            sql += " AND goal_id = $2"
            args.append(self.goal_id)
        self.locked = len(await self._conn.fetch(sql + " FOR UPDATE", *args))
        return self

    async def release(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            await self._tx.rollback()
        finally:
            await conn.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class TcpGate:
    """A TCP forwarder in front of a real server that can be cut: every connection
    through it dropped and new ones refused, as when the database host goes away, while
    the shared server itself keeps running for everyone else.

        gate = TcpGate.before(pg_url)        # gate.url: the same database, through the gate
        gate.cut(); ...; gate.restore()      # gate.close() at the end
    """

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.url = ""

    @classmethod
    def before(cls, url: str) -> TcpGate:
        parts = urlsplit(url)
        gate = cls(parts.hostname or "127.0.0.1", parts.port or 5432)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{gate.port}" if credentials else f"127.0.0.1:{gate.port}"
        gate.url = urlunsplit(parts._replace(netloc=netloc))
        gate.restore()
        return gate

    def restore(self) -> None:
        """Accept connections again (on the same port)."""
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets, self._sockets = self._sockets, set()
        if listener is not None:
            _shut(listener)  # wakes the accept() blocked in its thread
        for sock in open_sockets:
            _shut(sock)

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                late = self._listener is not listener  # cut while this one connected
                if not late:
                    self._sockets |= {client, upstream}
            if late:
                _shut(client)
                _shut(upstream)
                return
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:  # the other side went, or the gate was cut
        return
    finally:
        _shut(source)
        _shut(sink)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
