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
