"""Creating the project's tables (``sql/schema.sql``) in a database."""
from __future__ import annotations

from importlib import resources

import psycopg


def sql_text(name: str) -> str:
    """The text of ``materialize/sql/<name>``."""
    return resources.files("materialize").joinpath("sql", name).read_text()


def create_schema(conn: psycopg.Connection) -> None:
    """Create all raw, bookkeeping and feature-source tables (idempotent)."""
    conn.execute(sql_text("schema.sql"))
    conn.commit()


def fetch_frame(conn: psycopg.Connection, query: str, params: tuple | dict | None = None):
    """Run a query and return its rows as a pandas DataFrame."""
    import pandas as pd

    with conn.cursor() as cur:
        cur.execute(query, params)
        columns = [c.name for c in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=columns)
