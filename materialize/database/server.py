"""PostgreSQL access: the embedded server (pgserver) or an external one, and pgvector.

Functions that talk to the database take a connection; only ``connect`` and the
embedded-server helpers know where the server is.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from materialize.settings import PostgresSettings

log = logging.getLogger(__name__)


def _pgserver():
    # pgserver warns when XDG_RUNTIME_DIR is unset; the fallback it picks is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver

    return pgserver


def start_embedded(pgdata: Path) -> None:
    """Start (or reuse) the embedded server in ``pgdata``; it keeps running after exit."""
    pgdata.mkdir(parents=True, exist_ok=True)
    _pgserver().get_server(pgdata, cleanup_mode=None)


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server in ``pgdata`` (fast shutdown: open sessions are ended).

    Returns False when none was running.
    """
    if not (pgdata / "postmaster.pid").exists():
        return False
    # As root, pgserver runs postgres as its own "pgserver" user; pg_ctl must run as that user.
    user = "pgserver" if os.geteuid() == 0 else None
    _pgserver().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def ensure_database(pg: PostgresSettings) -> PostgresSettings:
    """Start the embedded server when configured, and create ``pg.database`` if missing."""
    if pg.embedded:
        start_embedded(Path(pg.host))
    with psycopg.connect(pg.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (pg.database,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(pg.database)))
            log.info("created database %s", pg.database)
    return pg


def drop_database(pg: PostgresSettings) -> None:
    """Drop ``pg.database`` (used by tests for their throw-away databases)."""
    with psycopg.connect(pg.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(pg.database))
        )


def connect(pg: PostgresSettings, autocommit: bool = False) -> psycopg.Connection:
    """Open a connection to the configured database."""
    return psycopg.connect(pg.conninfo(), autocommit=autocommit)


def enable_pgvector(conn: psycopg.Connection) -> bool:
    """Create the ``vector`` extension when the server has it.

    Returns:
        True when pgvector is usable; False (with a logged explanation) when the server
        does not ship it, in which case vector search falls back to in-process search.
    """
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
    ).fetchone()
    if not available:
        log.warning(
            "pgvector is not installed on this server: item embeddings are stored as "
            "real[] without a vector index, and nearest-neighbour search runs in process."
        )
        return False
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.commit()
    return True


def has_pgvector(conn: psycopg.Connection) -> bool:
    """True when the ``vector`` extension is created in this database."""
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is not None
