"""ADBC connections kept between offline-store calls: reused, replaced when broken,
dropped after a failure."""
from __future__ import annotations

import contextlib

import psycopg
import pytest

from materialize.feature_store.arrow_connections import ArrowConnections


def _backend_pid(conn) -> int:
    with contextlib.closing(conn.cursor()) as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


@pytest.fixture()
def connections():
    pool = ArrowConnections()
    yield pool
    pool.close_all()


def test_a_connection_is_reused_and_autocommits(fresh_db, connections):
    with connections.connection(fresh_db.conninfo()) as conn:
        first = _backend_pid(conn)
        with contextlib.closing(conn.cursor()) as cur:
            cur.execute("CREATE TABLE kept (x int)")
    with connections.connection(fresh_db.conninfo()) as conn:
        assert _backend_pid(conn) == first
    with psycopg.connect(fresh_db.conninfo()) as other:  # autocommit: visible elsewhere, nothing left open
        assert other.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone()[0]
        states = other.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [first]).fetchone()
        assert states == ("idle",)


def test_a_connection_broken_while_idle_is_replaced(fresh_db, connections):
    with connections.connection(fresh_db.conninfo()) as conn:
        broken = _backend_pid(conn)
    with psycopg.connect(fresh_db.conninfo(), autocommit=True) as admin:  # what a server restart does to it
        assert admin.execute("SELECT pg_terminate_backend(%s)", [broken]).fetchone()[0]
    with connections.connection(fresh_db.conninfo()) as conn:
        assert _backend_pid(conn) != broken


def test_a_connection_is_not_reused_after_an_error(fresh_db, connections):
    with pytest.raises(Exception, match="no_such_table"):
        with connections.connection(fresh_db.conninfo()) as conn:
            failed = _backend_pid(conn)
            with contextlib.closing(conn.cursor()) as cur:
                cur.execute("SELECT * FROM no_such_table")
    with connections.connection(fresh_db.conninfo()) as conn:
        assert _backend_pid(conn) != failed
