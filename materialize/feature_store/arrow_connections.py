"""ADBC (Arrow) connections to PostgreSQL, kept idle between calls of the offline store.

Opening one costs about 45 ms (the driver reads the server's type catalogue), as much as
materializing a small feature view. A connection goes back to its idle list when the
work on it ended without error, and is checked with ``SELECT 1`` when taken again, so a
connection broken by a server restart is replaced instead of failing the next call (the
same policy as SQLAlchemy's ``pool_pre_ping``). Connections run in autocommit mode: none
sits idle inside a transaction. After a ``fork`` the child starts with no idle
connections of its own (the parent's sockets are never shared).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Iterator

MAX_IDLE = 2
"""Idle connections kept per connection string."""


class ArrowConnections:
    """Idle ADBC connections per connection string (thread-safe)."""

    def __init__(self, max_idle: int = MAX_IDLE):
        self._max_idle = max_idle
        self._idle: dict[str, list] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @contextlib.contextmanager
    def connection(self, conninfo: str) -> Iterator:
        """An open autocommit ADBC connection to ``conninfo``; kept for reuse when the
        block ends without an exception, closed otherwise."""
        conn = self._take(conninfo)
        try:
            yield conn
        except BaseException:
            _close(conn)
            raise
        self._give_back(conninfo, conn)

    def close_all(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for conn in connections:
                _close(conn)

    def _take(self, conninfo: str):
        while True:
            with self._lock:
                if self._pid != os.getpid():
                    self._idle, self._pid = {}, os.getpid()
                idle = self._idle.get(conninfo)
                conn = idle.pop() if idle else None
            if conn is None:
                return _connect(conninfo)
            if _alive(conn):
                return conn
            _close(conn)

    def _give_back(self, conninfo: str, conn) -> None:
        with self._lock:
            idle = self._idle.setdefault(conninfo, [])
            if self._pid == os.getpid() and len(idle) < self._max_idle:
                idle.append(conn)
                return
        _close(conn)


def _connect(conninfo: str):
    import adbc_driver_postgresql.dbapi as adbc

    return adbc.connect(conninfo, autocommit=True)


def _alive(conn) -> bool:
    try:
        with contextlib.closing(conn.cursor()) as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
        return True
    except Exception:  # any failure of the probe means: do not use this connection
        return False


def _close(conn) -> None:
    with contextlib.suppress(Exception):
        conn.close()


CONNECTIONS = ArrowConnections()
"""The process's idle ADBC connections (closed at exit, before the driver's own clean-up
would meet them half torn down)."""
atexit.register(CONNECTIONS.close_all)
