"""The project's tables (``schema.sql``) and reading query results as DataFrames."""
from __future__ import annotations

from importlib import resources

import psycopg


def create_schema(conn: psycopg.Connection) -> None:
    """Create all raw, bookkeeping and feature-source tables (idempotent)."""
    conn.execute(resources.files("materialize.database").joinpath("schema.sql").read_text())
    conn.commit()


def fetch_frame(conn: psycopg.Connection, query: str, params: tuple | dict | None = None):
    """Run a query and return its rows as a pandas DataFrame."""
    import pandas as pd

    with conn.cursor() as cur:
        cur.execute(query, params)
        columns = [c.name for c in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=columns)


# Advisory lock: writers of feature-source rows hold it shared for their transaction;
# materialization holds it exclusively while it reads where each view starts and loads it
# (so no row is written between the two unseen).
OFFLINE_WRITES_LOCK = "interest.offline_feature_writes"


def share_offline_writes_lock(conn: psycopg.Connection) -> None:
    """Take ``OFFLINE_WRITES_LOCK`` shared until the end of the current transaction."""
    conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext(%s))", (OFFLINE_WRITES_LOCK,))
