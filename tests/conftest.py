"""Shared fixtures: throw-away databases on the embedded server, or on the external server
named by INTEREST_PG_* variables (see materialize.settings)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid

import psycopg
import pytest

from materialize.database.tables import create_schema
from materialize.database.server import drop_database, enable_pgvector, ensure_database
from materialize.settings import PostgresSettings, load_settings


@contextlib.contextmanager
def new_database(server: PostgresSettings):
    """A new database with pgvector (where available) and the project schema; dropped after."""
    pg = server.with_database(f"interest_test_{uuid.uuid4().hex[:10]}")
    ensure_database(pg)
    with psycopg.connect(pg.conninfo()) as conn:
        enable_pgvector(conn)
        create_schema(conn)
    try:
        yield pg
    finally:
        if not os.environ.get("INTEREST_KEEP_TEST_DB"):
            drop_database(pg)


@pytest.fixture(scope="session")
def settings():
    return load_settings()


@pytest.fixture(scope="session")
def pg_server(settings):
    return settings.postgres


@pytest.fixture()
def fresh_db(pg_server):
    with new_database(pg_server) as pg:
        yield pg


@pytest.fixture()
def conn(fresh_db):
    with psycopg.connect(fresh_db.conninfo()) as connection:
        yield connection


def settings_for(settings, pg: PostgresSettings):
    """The session settings pointed at another database."""
    return dataclasses.replace(settings, postgres=pg)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local[2] SparkSession for every spark-profile test (stopped at the end)."""
    from tests.spark_shop import start_spark

    session = start_spark(tmp_path_factory.mktemp("spark-warehouse"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def two_profiles(settings, pg_server, spark, tmp_path_factory):
    """tests.spark_shop.SHOP loaded and built in both profiles (see tests/spark_shop.py)."""
    from tests.spark_shop import load_both

    with new_database(pg_server) as pg_a, new_database(pg_server) as pg_b:
        both = load_both(settings, pg_a, pg_b, tmp_path_factory.mktemp("warehouse"), spark)
        try:
            yield both
        finally:
            both.postgres.close()
            both.spark.close()
