"""Point-in-time training frames through Feast, fast on PostgreSQL.

``training_frame`` returns exactly what ``FeatureStore.get_historical_features`` returns
(Feast renders the point-in-time SQL and applies on-demand views), with three changes to
how the query runs:

1. The entity rows are copied into an UNLOGGED table with COPY and ANALYZEd, instead of
   Feast's row-by-row INSERT into an unanalysed table, and joined in by reference
   (``entity_select_mode: embed_query``).
2. The join runs with ``SET LOCAL enable_nestloop = off`` in its own transaction. Postgres
   underestimates the rows flowing through the join's intermediate results and picks a
   nested loop that is quadratic in practice; the setting is scoped to this one
   transaction, so it works on any server without touching its configuration.
3. Rows are converted column-wise into Arrow instead of cell by cell.
"""
from __future__ import annotations

import io
import uuid
import pandas as pd
import psycopg
import pyarrow as pa
from psycopg import sql

ENTITY_TABLE_PREFIX = "feast_entities_"

_PG_TYPES = {
    "int64": "bigint",
    "int32": "integer",
    "int16": "smallint",
    "float64": "double precision",
    "float32": "real",
    "bool": "boolean",
    "object": "text",
    "string": "text",
}


def _column_type(series: pd.Series) -> str:
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(series):
        return "timestamptz"
    name = str(series.dtype).lower()
    if name not in _PG_TYPES:
        raise TypeError(f"entity column {series.name!r} has unsupported dtype {series.dtype}")
    return _PG_TYPES[name]


def upload_entity_rows(conn: psycopg.Connection, entity_df: pd.DataFrame, timestamp_column: str) -> str:
    """COPY entity rows into a new UNLOGGED table; returns its name (caller drops it)."""
    frame = entity_df.copy()
    timestamps = frame[timestamp_column]
    if not isinstance(timestamps.dtype, pd.DatetimeTZDtype):
        frame[timestamp_column] = pd.to_datetime(timestamps, utc=True)  # naive means UTC
    table = f"{ENTITY_TABLE_PREFIX}{uuid.uuid4().hex}"
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_column_type(frame[c]))) for c in frame.columns
    )
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S.%f%z")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE UNLOGGED TABLE public.{} ({})").format(sql.Identifier(table), columns))
        with cur.copy(sql.SQL("COPY public.{} FROM STDIN WITH (FORMAT csv)").format(sql.Identifier(table))) as copy:
            copy.write(buffer.getvalue())
        cur.execute(sql.SQL("ANALYZE public.{}").format(sql.Identifier(table)))
    return table


def _planner_safe_job(job, conn: psycopg.Connection):
    """Wrap a Feast Postgres retrieval job so its SQL runs on ``conn`` with the fix."""
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLRetrievalJob
    from feast.type_map import pg_type_code_to_arrow

    class PlannerSafeRetrievalJob(PostgreSQLRetrievalJob):
        def _to_arrow_internal(self, timeout=None) -> pa.Table:
            with self._query_generator() as query, conn.transaction(), conn.cursor() as cur:
                cur.execute("SET LOCAL enable_nestloop = off")
                cur.execute(query)
                rows = cur.fetchall()
                fields = [(c.name, pg_type_code_to_arrow(c.type_code)) for c in cur.description]
            columns = list(zip(*rows)) if rows else [[] for _ in fields]
            return pa.Table.from_arrays(
                [pa.array(list(values), type=arrow_type) for values, (_, arrow_type) in zip(columns, fields)],
                schema=pa.schema(fields),
            )

    return PlannerSafeRetrievalJob(
        query=job.to_sql(),
        config=job.config,
        full_feature_names=job.full_feature_names,
        on_demand_feature_views=job.on_demand_feature_views,
        metadata=job.metadata,
    )


def training_frame(
    store,
    conn: psycopg.Connection,
    entity_df: pd.DataFrame,
    features,
    full_feature_names: bool = False,
    timestamp_column: str = "event_timestamp",
) -> pd.DataFrame:
    """Point-in-time correct features for each entity row.

    Args:
        store: a ``feast.FeatureStore`` whose offline store is this Postgres database.
        conn: a connection to the same database (not in a transaction).
        entity_df: join keys and ``timestamp_column`` (tz-aware, or naive meaning UTC).
        features: a ``FeatureService`` or a list of ``"view:feature"`` references.
        full_feature_names: prefix feature columns with their view name.

    Returns:
        One row per entity row (same order is not guaranteed, as with Feast), feature
        columns added; ``timestamp_column`` is tz-aware UTC.
    """
    table = upload_entity_rows(conn, entity_df, timestamp_column)
    try:
        entity_query = sql.SQL("SELECT * FROM public.{}").format(sql.Identifier(table)).as_string(conn)
        job = store.get_historical_features(
            entity_df=entity_query, features=features, full_feature_names=full_feature_names
        )
        frame = _planner_safe_job(job, conn).to_df()
    finally:
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS public.{}").format(sql.Identifier(table)))
    timestamps = frame[timestamp_column]
    frame[timestamp_column] = (
        timestamps.dt.tz_convert("UTC") if isinstance(timestamps.dtype, pd.DatetimeTZDtype) else timestamps.dt.tz_localize("UTC")
    )
    return frame

