"""Shared fixtures: a throw-away database on the embedded server (or on the external
server named by INTEREST_PG_* variables), created once per test session."""
from __future__ import annotations

import os
import uuid

import psycopg
import pytest

from materialize.database import create_schema
from materialize.postgres import drop_database, ensure_database
from materialize.settings import load_settings


@pytest.fixture(scope="session")
def settings():
    return load_settings()


@pytest.fixture(scope="session")
def pg_server(settings):
    """Settings of the server the tests use (the database is created per fixture)."""
    return settings.postgres


@pytest.fixture()
def fresh_db(pg_server):
    """A new empty database with the project schema; dropped afterwards."""
    pg = pg_server.with_database(f"interest_test_{uuid.uuid4().hex[:10]}")
    ensure_database(pg)
    with psycopg.connect(pg.conninfo()) as conn:
        create_schema(conn)
    yield pg
    if not os.environ.get("INTEREST_KEEP_TEST_DB"):
        drop_database(pg)


@pytest.fixture()
def conn(fresh_db):
    with psycopg.connect(fresh_db.conninfo()) as connection:
        yield connection
