"""A Feast offline store for PostgreSQL whose point-in-time join is one LATERAL lookup per
entity row and feature view.

Switched on in ``feature_store.yaml``::

    offline_store:
      type: materialize.feature_store.offline_store.LateralJoinPostgreSQLOfflineStore
      host: ...            # the same keys as Feast's ``type: postgres``

Stock Feast's Postgres store joins every source row in the entity rows' time range to
every entity row, then ranks them: its cost depends on the planner's row estimates and
grows with history times entity rows. Here each entity row looks up, per feature view,

    SELECT <features> FROM <source> s
    WHERE s.<join keys> = e.<join keys> AND s.ts <= e.ts [AND s.ts >= e.ts - ttl]
    ORDER BY s.ts DESC, s.created DESC LIMIT 1

which an index on the source's (join keys, timestamp) answers in about log(history),
whatever the planner estimates. Entity frames travel to a temporary table and results
come back as Arrow, both through the ADBC PostgreSQL driver (binary COPY), never cell by
cell through Python. Everything else (``pull_latest_from_table_or_query`` for
materialization, ``pull_all``, monitoring, ``persist``) is stock Feast's Postgres store.

Semantics are stock Feast's: the latest row at or before the entity timestamp, within
the view's ttl (both edges inclusive), ties on the timestamp broken by the latest
``created_timestamp``; join keys are compared column by column (no concatenated row id,
so keys such as (1, 12) and (11, 2) never collide). One difference: the entity
timestamp column comes back timezone-aware (UTC) where stock returns it naive.
"""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Literal

import pandas as pd
import pyarrow as pa
from psycopg import sql

from feast.errors import InvalidEntityType
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
    PostgreSQLRetrievalJob,
    _get_entity_df_event_timestamp_range,
    _get_entity_schema,
)
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

from materialize.feature_store.arrow_connections import CONNECTIONS

STORE_TYPE = "materialize.feature_store.offline_store.LateralJoinPostgreSQLOfflineStore"
ENTITY_TABLE_PREFIX = "feast_entity_rows_"


class LateralJoinPostgreSQLOfflineStoreConfig(PostgreSQLOfflineStoreConfig):
    """The keys of Feast's ``type: postgres`` offline store (host, port, database, user,
    password, sslmode, ...); ``entity_select_mode`` is not used."""

    type: Literal["materialize.feature_store.offline_store.LateralJoinPostgreSQLOfflineStore"] = STORE_TYPE


def adbc_connection(store_config: PostgreSQLOfflineStoreConfig):
    """An autocommit ADBC (Arrow) connection to the offline store's database, reused
    between calls (``arrow_connections``); a context manager."""
    from psycopg.conninfo import make_conninfo

    conninfo = make_conninfo(
        host=store_config.host, port=store_config.port, dbname=store_config.database, user=store_config.user,
        password=store_config.password or "", sslmode=store_config.sslmode or "prefer",
    )
    return CONNECTIONS.connection(conninfo)


def point_in_time_sql(contexts: list, entity_relation: sql.Composable, entity_columns: list[str], timestamp_column: str,
                      full_feature_names: bool, filter_by_created_timestamp: bool = False) -> sql.Composed:
    """The retrieval query: every entity row, plus one LATERAL lookup per distinct lookup
    (views reading the same source with the same keys, timestamps and ttl share one).

    Args:
        contexts: Feast's ``FeatureViewQueryContext`` per requested view.
        entity_relation: a table or a parenthesised query holding the entity rows.
        entity_columns: the entity rows' columns, returned first and in this order.
    """
    entity_ts = sql.SQL("e.{}").format(sql.Identifier(timestamp_column))
    selected = [sql.SQL("e.{}").format(sql.Identifier(c)) for c in entity_columns]
    lookups: dict[tuple, list] = {}
    for context in contexts:
        lookup = (context.table_subquery, tuple(context.entity_selections), context.timestamp_field,
                  context.created_timestamp_column, context.ttl)
        lookups.setdefault(lookup, []).append(context)
    joins = []
    for number, ((source, selections, timestamp_field, created_column, ttl), group) in enumerate(lookups.items()):
        alias = sql.Identifier(f"fv{number}")
        columns = []
        for context in group:
            output_names = [context.field_mapping.get(f, f) for f in context.features]
            if full_feature_names:
                output_names = [f"{context.name}__{name}" for name in output_names]
            selected += [sql.SQL("{}.{}").format(alias, sql.Identifier(name)) for name in output_names]
            columns += [sql.SQL("s.{} AS {}").format(sql.Identifier(f), sql.Identifier(name))
                        for f, name in zip(context.features, output_names)]
        source_ts = sql.SQL("s.{}").format(sql.Identifier(timestamp_field))
        conditions = [sql.SQL("{} <= {}").format(source_ts, entity_ts)]
        for selection in selections:  # "source_column AS join_key"
            source_column, join_key = selection.split(" AS ")
            conditions.append(sql.SQL("s.{} = e.{}").format(sql.Identifier(source_column), sql.Identifier(join_key)))
        if ttl:
            conditions.append(sql.SQL("{} >= {} - make_interval(secs => {})").format(source_ts, entity_ts, sql.Literal(ttl)))
        order = [sql.SQL("{} DESC").format(source_ts)]
        if created_column:
            created = sql.SQL("s.{}").format(sql.Identifier(created_column))
            order.append(sql.SQL("{} DESC").format(created))
            if filter_by_created_timestamp:
                conditions.append(sql.SQL("{} <= {}").format(created, entity_ts))
        joins.append(sql.SQL(
            "LEFT JOIN LATERAL (SELECT {columns} FROM {source} AS s WHERE {conditions} ORDER BY {order} LIMIT 1) AS {alias} ON true"
        ).format(
            columns=sql.SQL(", ").join(columns) if columns else sql.SQL("1 AS present"),
            source=sql.SQL(source),  # the data source's own SQL, from the feature repo
            conditions=sql.SQL(" AND ").join(conditions), order=sql.SQL(", ").join(order), alias=alias,
        ))
    return sql.SQL("SELECT {} FROM {} AS e {}").format(sql.SQL(", ").join(selected), entity_relation, sql.SQL(" ").join(joins))


def latest_rows_sql(source: str, join_keys: list[str], columns: list[str], timestamp_field: str,
                    created_timestamp_column: str | None, start: datetime, end: datetime) -> sql.Composed:
    """Each entity's latest row with ``start <= timestamp <= end`` (stock's tie-break: the
    latest ``created_timestamp``): a recursive skip scan over the distinct join keys, then
    one ``ORDER BY ... LIMIT 1`` lookup per entity. Rows with a NULL join key are skipped.

    Args:
        source: the data source's SQL (a table name or a parenthesised query).
        columns: the selected columns (join keys, features, timestamps).
    """
    keys = [sql.Identifier(k) for k in join_keys]
    source_keys = sql.SQL(", ").join(sql.SQL("s.{}").format(k) for k in keys)
    previous_keys = sql.SQL(", ").join(sql.SQL("p.{}").format(k) for k in keys)
    ts = sql.SQL("s.{}").format(sql.Identifier(timestamp_field))
    order = [sql.SQL("{} DESC").format(ts)]
    if created_timestamp_column:
        order.append(sql.SQL("s.{} DESC").format(sql.Identifier(created_timestamp_column)))
    return sql.SQL(
        "WITH RECURSIVE entity_keys AS ("
        "(SELECT {source_keys} FROM {source} AS s WHERE {not_null} ORDER BY {source_keys} LIMIT 1) "
        "UNION ALL "
        "SELECT n.* FROM entity_keys AS p CROSS JOIN LATERAL (SELECT {source_keys} FROM {source} AS s "
        "WHERE ({source_keys}) > ({previous_keys}) ORDER BY {source_keys} LIMIT 1) AS n) "
        "SELECT l.* FROM entity_keys AS p CROSS JOIN LATERAL (SELECT {columns} FROM {source} AS s "
        "WHERE {match} AND {ts} BETWEEN {start} AND {end} ORDER BY {order} LIMIT 1) AS l"
    ).format(
        source_keys=source_keys, source=sql.SQL(source), previous_keys=previous_keys,
        not_null=sql.SQL(" AND ").join(sql.SQL("s.{} IS NOT NULL").format(k) for k in keys),
        columns=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns),
        match=sql.SQL(" AND ").join(sql.SQL("s.{0} = p.{0}").format(k) for k in keys),
        ts=ts, start=sql.Literal(start), end=sql.Literal(end), order=sql.SQL(", ").join(order),
    )


def _entity_arrow(entity_df: pd.DataFrame, timestamp_column: str) -> pa.Table:
    """The entity rows as Arrow, the timestamp column as UTC (naive means UTC)."""
    frame = entity_df.copy()
    timestamps = frame[timestamp_column]
    if isinstance(timestamps.dtype, pd.DatetimeTZDtype):
        frame[timestamp_column] = timestamps.dt.tz_convert("UTC")
    else:
        frame[timestamp_column] = pd.to_datetime(timestamps, utc=True)
    return pa.Table.from_pandas(frame, preserve_index=False)


def _fetch_arrow(store_config: PostgreSQLOfflineStoreConfig, query: str) -> pa.Table:
    """The rows of ``query`` as one-chunk Arrow (Feast's writers read a table's first batch only)."""
    with adbc_connection(store_config) as conn, contextlib.closing(conn.cursor()) as cur:
        cur.execute(query)
        table = cur.fetch_arrow_table()
    return table.replace_schema_metadata(None).combine_chunks()


class ArrowQueryRetrievalJob(PostgreSQLRetrievalJob):
    """A fixed query whose rows come back as Arrow through ADBC."""

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        with self._query_generator() as query:
            return _fetch_arrow(self.config.offline_store, query)


class LateralJoinRetrievalJob(PostgreSQLRetrievalJob):
    """Runs the LATERAL retrieval on one ADBC connection: entity rows in, Arrow out.

    Args:
        entity_df: the user's SQL for the entity rows, or their rows as Arrow.
        render: the query for a given entity relation (``point_in_time_sql`` bound to
            the request).
    """

    def __init__(self, config: RepoConfig, entity_df: pa.Table | str, render, full_feature_names: bool,
                 on_demand_feature_views: list[OnDemandFeatureView], metadata: RetrievalMetadata):
        self._entity_df, self._render = entity_df, render
        super().__init__(self._sql_text, config, full_feature_names, on_demand_feature_views, metadata)

    @contextlib.contextmanager
    def _entity_relation(self, cursor=None) -> Iterator[sql.Composable]:
        """The entity rows as a relation: the user's SQL, or a temporary table that
        ``cursor`` fills and drops."""
        if isinstance(self._entity_df, str):
            yield sql.SQL("({})").format(sql.SQL(self._entity_df))
            return
        table = f"{ENTITY_TABLE_PREFIX}{uuid.uuid4().hex}"
        if cursor is not None:
            cursor.adbc_ingest(table, self._entity_df, mode="create", temporary=True)
        try:
            yield sql.Identifier(table)
        finally:
            if cursor is not None:
                cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)).as_string(None))

    @contextlib.contextmanager
    def _sql_text(self) -> Iterator[str]:
        """The query as text (``to_sql``); DataFrame rows are named by a temporary table
        that exists only while the job runs."""
        with self._entity_relation() as relation:
            yield self._render(relation).as_string(None)

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        with adbc_connection(self.config.offline_store) as conn, contextlib.closing(conn.cursor()) as cur:
            with self._entity_relation(cur) as relation:
                cur.execute(self._render(relation).as_string(None))
                table = cur.fetch_arrow_table()
        return table.replace_schema_metadata(None)


class LateralJoinPostgreSQLOfflineStore(PostgreSQLOfflineStore):
    """Stock Feast's Postgres offline store with a LATERAL point-in-time join."""

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        """Each entity's latest row in [start_date, end_date], for materialization."""
        if not join_key_columns or not feature_name_columns:  # entity-less views, "all columns" transforms
            return PostgreSQLOfflineStore.pull_latest_from_table_or_query(
                config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date,
            )
        timestamps = [timestamp_field] + ([created_timestamp_column] if created_timestamp_column else [])
        query = latest_rows_sql(
            data_source.get_table_query_string(), join_key_columns,
            list(dict.fromkeys(join_key_columns + feature_name_columns + timestamps)), timestamp_field,
            created_timestamp_column, start_date, end_date,
        )
        return ArrowQueryRetrievalJob(query.as_string(None), config, full_feature_names=False, on_demand_feature_views=None)

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs,
    ) -> RetrievalJob:
        if entity_df is None:  # Feast's entity-less time-range mode: stock's query serves it
            return PostgreSQLOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project, full_feature_names,
                filter_by_created_timestamp, **kwargs,
            )
        if not isinstance(entity_df, (pd.DataFrame, str)):
            raise InvalidEntityType(type(entity_df))
        entity_schema = _get_entity_schema(entity_df, config)
        timestamp_column = offline_utils.infer_event_timestamp_from_entity_df(entity_schema)
        offline_utils.assert_expected_columns_in_entity_df(
            entity_schema, offline_utils.get_expected_join_keys(project, feature_views, registry), timestamp_column
        )
        time_range: tuple[datetime, datetime] = _get_entity_df_event_timestamp_range(entity_df, timestamp_column, config)
        contexts = offline_utils.get_feature_view_query_context(feature_refs, feature_views, registry, project, time_range)
        entity_columns = list(entity_schema)

        def render(relation: sql.Composable) -> sql.Composed:
            return point_in_time_sql(contexts, relation, entity_columns, timestamp_column, full_feature_names,
                                     filter_by_created_timestamp)

        return LateralJoinRetrievalJob(
            config, _entity_arrow(entity_df, timestamp_column) if isinstance(entity_df, pd.DataFrame) else entity_df,
            render, full_feature_names,
            OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            RetrievalMetadata(features=feature_refs, keys=list(entity_schema.keys() - {timestamp_column}),
                              min_event_timestamp=time_range[0], max_event_timestamp=time_range[1]),
        )
