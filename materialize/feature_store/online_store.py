"""A Feast online store on PostgreSQL: one row per (feature view, entity), COPY writes,
one-query reads, ttl on read, a self-healing connection pool and pgvector HNSW search.

Switch it on in ``feature_store.yaml`` (the other keys are those of Feast's
``type: postgres`` store; switching back is the one ``type`` line, then ``feast apply``
and a materialize)::

    online_store:
      type: materialize.feature_store.online_store.PostgresFastOnlineStore
      host: ...
      port: 5432
      database: ...
      db_schema: public
      user: ...
      password: ""
      sslmode: disable
      vector_enabled: true      # pgvector column + HNSW index for vector_index fields

Layout. Each feature view has one table ``<db_schema>.<project>_<view>_packed`` (a hash
shortens names past PostgreSQL's 63 bytes), so it never collides with the stock store's
``<project>_<view>`` tables, whose layout differs::

    entity_key      bytea PRIMARY KEY   -- feast serialize_entity_key (repo's version)
    layout_id       bigint NOT NULL     -- which feature names, in which order
    value_offsets   int4[] NOT NULL     -- where each value starts in feature_values
    feature_values  bytea NOT NULL      -- a serialized feast.types.RepeatedValue
    event_ts        timestamptz NOT NULL
    created_ts      timestamptz
    event_ts_wire   bytea NOT NULL      -- event_ts as serving-response protobuf bytes
    vector_value    vector(n)           -- only for a view with a vector_index field

and the project has one ``<project>_packed_layouts (layout_id, feature_names text[])``:
a row's values are those of its layout's names, so a view that gains or loses features
keeps reading its older rows (a feature a row lacks reads as NOT_FOUND).
``vector_value`` copies the first ``vector_index`` field (``n`` is its ``vector_length``)
and carries ``USING hnsw (vector_value <metric>_ops)``, the metric being the field's
``vector_search_metric``.

Writes (materialize, materialize-incremental, push, write_to_online_store) COPY the batch
in binary into a temporary staging table and upsert it with one statement: the newest row
per entity (event_ts, then created_ts, then the later row of the batch) replaces the stored
row only when it is not older than it, so out-of-order batches never overwrite newer
values. A large batch into a vector view drops the HNSW index and builds it again after the
upsert (a bulk build is several times cheaper than inserting into the graph row by row);
meanwhile vector searches stay exact, by a sequential scan.

Reads (``get_online_features``, sync and async) are one statement for all requested views
and entities (``entity_key = ANY(...)`` per view, joined with UNION ALL). The response is
assembled from bytes: each requested feature's FeatureVector is the concatenation of the
stored, already-encoded values of the entity rows, so no protobuf object is built per
value. A view's ttl (when positive)
is enforced against the wall clock, as Feast's offline store does at an entity timestamp of
now: with ``ttl_on_read: hide`` (default) a value whose event_ts is older than now - ttl is
returned as null with status OUTSIDE_MAX_AGE; ``flag`` keeps the value with that status
(Feast's Go feature server); ``ignore`` returns it as PRESENT (the stock Python stores).

Vector search (``retrieve_online_documents_v2``) is ``ORDER BY vector_value <op> query
LIMIT k`` on the view's table, which PostgreSQL serves with an index scan of the HNSW
index; ``hnsw.ef_search`` is max(``hnsw_ef_search``, 2 k), capped at pgvector's 1000
(larger k run exactly, without the index), set on a pooled connection only when it
changes, so a search is one round trip.

Connections (autocommit) come from a ``psycopg_pool.ConnectionPool`` for sync calls and,
for async calls, from a small set of connections per event loop that runs no background
tasks (an ``AsyncConnectionPool`` left open hangs ``asyncio.run`` at exit). A call that
finds its connection broken (the server restarted or dropped it), or cannot get one within
``pool_timeout_seconds``, drops the idle connections (the sync pool is replaced) and runs
once more on a fresh connection, so a restarted server is picked up by the next call
without an error; while the server is down, calls fail with psycopg's
``OperationalError`` (``PoolTimeout`` from the pool).

Differences from ``type: postgres`` (Feast's stock store):
    - ttl is enforced on read (see above); stock returns expired values as PRESENT.
    - A write never replaces a newer stored row; stock's last write wins whatever its
      event_ts. On equal (event_ts, created_ts) the later write wins.
    - A write replaces the entity's whole row: features missing from a row written
      through ``online_write_batch`` read as NOT_FOUND afterwards (Feast's materialize and
      push always write every feature of the view); stock keeps them.
    - ``retrieve_online_documents_v2`` is approximate (HNSW) and supports vector queries
      only: no ``query_string`` keyword search and no ``filters``. Version-pinned reads
      (``enable_online_feature_view_versioning``), ``retrieve_online_documents`` (v1) and
      ``precompute_online`` feature services are not supported. Only the first
      ``vector_index`` field of a view is searchable, and only one with a ``vector_length``
      gets an index.
    - ``conn_type`` is ignored: connections always come from a pool (``min_conn`` ..
      ``max_conn``).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import threading
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, TypeVar

import psycopg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
from pydantic import PositiveFloat, PositiveInt

from feast import Entity, FeatureView, utils
from feast.infra.key_encoding_utils import deserialize_entity_key, serialize_entity_key
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.supported_async_methods import SupportedAsyncMethods
from feast.infra.utils.postgres.postgres_config import PostgreSQLConfig
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import RepeatedValue as RepeatedValueProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.adapt import Dumper
from psycopg.pq import Format

from materialize.feature_store.arrow_values import (fixed_width, join, length_delimited, serialized_entity_keys,
                                                   serialized_values, timestamp_wires, varint)
from materialize.feature_store.binary_copy import int4_array_values, int8_values, timestamptz_values, write_copy

log = logging.getLogger(__name__)

STORE_TYPE = "materialize.feature_store.online_store.PostgresFastOnlineStore"
TABLE_SUFFIX = "_packed"
INDEX_SUFFIX = "_packed_hnsw"
LAYOUTS_SUFFIX = "_packed_layouts"
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL truncates longer names silently
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search

# A batch of at least this many rows, and at least a quarter of the rows already stored,
# rebuilds the HNSW index instead of inserting into it. Measured with pgvector 0.6.2 and
# 384-d vectors: about 4 ms per row inserted into the graph, 0.7 ms per row built in bulk.
HNSW_REBUILD_MIN_ROWS = 256
HNSW_REBUILD_MIN_FRACTION = 0.25

# distance metric (Feast's names) -> (pgvector operator, HNSW operator class)
VECTOR_METRICS = {
    "cosine": ("<=>", "vector_cosine_ops"),
    "L2": ("<->", "vector_l2_ops"),
    "inner_product": ("<#>", "vector_ip_ops"),
    "L1": ("<+>", "vector_l1_ops"),
}
DEFAULT_METRIC = "L2"  # FeatureStore.retrieve_online_documents_v2's default

_T = TypeVar("_T")

# Responses are assembled with these statuses as single protobuf bytes (_append_vectors).
assert (FieldStatus.PRESENT, FieldStatus.NOT_FOUND, FieldStatus.OUTSIDE_MAX_AGE) == (1, 3, 4)


class PostgresFastOnlineStoreConfig(PostgreSQLConfig):
    """Online store config: Feast's Postgres connection keys plus the keys below."""

    type: Literal["materialize.feature_store.online_store.PostgresFastOnlineStore"] = STORE_TYPE

    vector_enabled: bool = False
    """Give views with a ``vector_index`` field a pgvector column, an HNSW index and
    ``retrieve_online_documents_v2``. Needs ``CREATE EXTENSION vector`` in the database."""

    hnsw_m: PositiveInt = 16
    """HNSW graph degree (pgvector's ``m``)."""

    hnsw_ef_construction: PositiveInt = 64
    """HNSW candidate list while building (pgvector's ``ef_construction``)."""

    hnsw_build_memory: str = "1GB"
    """``maintenance_work_mem`` while (re)building an HNSW index after a large batch:
    pgvector builds several times faster when the graph fits in it (about 2 KB per 384-d
    item at m 16). A PostgreSQL size (``"512MB"``); the server's own value for ``""``."""

    hnsw_ef_search: PositiveInt = 200
    """Least HNSW candidate list per query; a query uses max(this, 2 top_k), at most 1000.
    Measured on 1,500 clustered 32-d items, 100 random queries, top 10: recall 0.87 at 40
    (pgvector's default), 0.97 at 100, 1.0 at 200."""

    ttl_on_read: Literal["hide", "flag", "ignore"] = "hide"
    """A value older than its view's ttl: ``hide`` (null, OUTSIDE_MAX_AGE), ``flag``
    (value, OUTSIDE_MAX_AGE) or ``ignore`` (value, PRESENT, as the stock store)."""

    pool_timeout_seconds: PositiveFloat = 5.0
    """How long a call waits for a connection (also libpq's connect_timeout)."""

    synchronous_commit: Literal["on", "off"] = "on"
    """``off``: a write returns before its commit reaches the disk (PostgreSQL's
    ``synchronous_commit``; one fsync less per write and view). A server crash can lose the
    writes of its last ``wal_writer_delay`` (0.2 s by default) that no later synchronous
    commit covered: online values that materialization, or a later push, writes again."""


# --------------------------------------------------------------------------- naming


@dataclass(frozen=True)
class VectorColumn:
    """The searchable vector of a view: the first field with ``vector_index``."""

    feature: str
    dimension: int  # 0 when the field has no vector_length: then no index
    metric: str

    @property
    def operator(self) -> str:
        return VECTOR_METRICS[self.metric][0]

    @property
    def opclass(self) -> str:
        return VECTOR_METRICS[self.metric][1]

    @property
    def pg_type(self) -> str:
        return f"vector({self.dimension})" if self.dimension else "vector"


@dataclass(frozen=True)
class ViewTable:
    """Where one feature view lives."""

    schema: str
    name: str
    index: str
    layouts: str
    vector: Optional[VectorColumn]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def layouts_ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.layouts)

    @property
    def indexed(self) -> bool:
        return self.vector is not None and self.vector.dimension > 0


def _identifier(base: str, suffix: str) -> str:
    name = base + suffix
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(base.encode()).hexdigest()[:8]
    keep = MAX_IDENTIFIER_BYTES - len(suffix) - len(digest) - 1
    return base.encode()[:keep].decode(errors="ignore") + "_" + digest + suffix


def online_table_name(project: str, view_name: str) -> str:
    """The table holding a view's rows (in the store's ``db_schema``)."""
    return _identifier(f"{project}_{view_name}", TABLE_SUFFIX)


def layouts_table_name(project: str) -> str:
    """The table of the project's feature-name layouts."""
    return _identifier(project, LAYOUTS_SUFFIX)


def vector_column(config: RepoConfig, view: FeatureView) -> Optional[VectorColumn]:
    """The view's pgvector column, or None (no vector_index field, or vectors disabled)."""
    if not config.online_store.vector_enabled:
        return None
    for field in view.features:
        if field.vector_index:
            metric = field.vector_search_metric or DEFAULT_METRIC
            if metric not in VECTOR_METRICS:
                raise ValueError(
                    f"{view.name}.{field.name}: vector_search_metric {metric!r} is not one of {sorted(VECTOR_METRICS)}"
                )
            return VectorColumn(field.name, int(field.vector_length or 0), metric)
    return None


def view_table(config: RepoConfig, view: FeatureView) -> ViewTable:
    base = f"{config.project}_{view.name}"
    return ViewTable(
        schema=config.online_store.db_schema,
        name=_identifier(base, TABLE_SUFFIX),
        index=_identifier(base, INDEX_SUFFIX),
        layouts=layouts_table_name(config.project),
        vector=vector_column(config, view),
    )


# --------------------------------------------------------------------------- encoding


def _varint_size(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def encode_feature_values(values: Mapping[str, ValueProto]) -> Tuple[Tuple[str, ...], bytes, List[int]]:
    """One entity's values as ``(names, payload, offsets)``: ``payload`` is a serialized
    ``feast.types.RepeatedValue`` of the values in ``names`` order, and value ``i`` (with
    its field tag, as in a serving response's ``values``) is ``payload[offsets[i]:offsets[i + 1]]``."""
    names = tuple(values)
    stored = list(values.values())
    offsets = [0]
    for value in stored:
        size = value.ByteSize()
        offsets.append(offsets[-1] + 1 + _varint_size(size) + size)
    return names, RepeatedValueProto(val=stored).SerializeToString(), offsets


def decode_feature_values(
    names: Sequence[str], payload: bytes, requested: Optional[Sequence[str]] = None
) -> Dict[str, ValueProto]:
    """Inverse of ``encode_feature_values``, keeping only ``requested`` names if given."""
    stored = dict(zip(names, RepeatedValueProto.FromString(payload).val))
    if requested is None:
        return stored
    return {name: stored[name] for name in requested if name in stored}


def layout_id(names: Sequence[str]) -> int:
    """A stable 64-bit id of an ordered list of feature names."""
    digest = hashlib.sha1("\x1f".join(names).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _timestamp_wire(ts: datetime) -> bytes:
    """``ts`` as one ``event_timestamps`` element of a serving response's FeatureVector."""
    stamp = Timestamp()
    stamp.FromDatetime(ts)
    body = stamp.SerializeToString()
    return b"\x1a" + bytes([len(body)]) + body


_INT4_OID, _BYTEA_OID, _BYTEA_ARRAY_OID = 23, 17, 1001
_NULL_VALUE = b"\x0a\x00"  # an empty Value as one element of FeatureVector.values
_NULL_TIMESTAMP = b"\x1a\x00"  # an empty Timestamp as one element of FeatureVector.event_timestamps


def _array_binary(element_oid: int, elements: Sequence[bytes]) -> bytes:
    """PostgreSQL's binary input of a one-dimensional array of pre-encoded elements."""
    if not elements:
        return struct.pack(">iiI", 0, 0, element_oid)
    head = struct.pack(">iiIii", 1, 0, element_oid, len(elements), 1)
    return head + b"".join(struct.pack(">i", len(e)) + e for e in elements)


def _int4_array_binary(values: Sequence[int]) -> bytes:
    if not values:
        return struct.pack(">iiI", 0, 0, _INT4_OID)
    body = struct.pack(f">{2 * len(values)}i", *[x for v in values for x in (4, v)])
    return struct.pack(">iiIii", 1, 0, _INT4_OID, len(values), 1) + body


class ByteaArray(bytes):
    """A ``bytea[]`` parameter already in PostgreSQL's binary array format."""


class _ByteaArrayDumper(Dumper):
    format = Format.BINARY
    oid = _BYTEA_ARRAY_OID

    def dump(self, obj: ByteaArray) -> bytes:
        return obj


# Only this module's own type: other users of psycopg are unaffected.
psycopg.adapters.register_dumper(ByteaArray, _ByteaArrayDumper)


_VECTOR_HEADER = struct.Struct(">hh")  # pgvector's binary format: dimension, unused, float4[]
_LIST_KINDS = ("float_list_val", "double_list_val", "int32_list_val", "int64_list_val")


def _vector_binary(value: Optional[ValueProto], column: VectorColumn, view: str) -> Optional[bytes]:
    """pgvector's binary input for one value, None for a null or empty list."""
    if value is None:
        return None
    kind = value.WhichOneof("val")
    if kind not in _LIST_KINDS:
        return None
    items = getattr(value, kind).val
    if len(items) == 0:
        return None
    if column.dimension and len(items) != column.dimension:
        raise ValueError(
            f"{view}.{column.feature}: a vector of length {len(items)} where vector_length is {column.dimension}"
        )
    return _VECTOR_HEADER.pack(len(items), 0) + struct.pack(f">{len(items)}f", *items)


def _vector_binaries(column: pa.ChunkedArray, vector: VectorColumn, view: str) -> pa.LargeBinaryArray:
    """pgvector's binary input per row of a list column; null for a null or empty list."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    present = array.is_valid().to_numpy(zero_copy_only=False) & (lengths > 0)
    wrong = present & (lengths != vector.dimension) if vector.dimension else np.zeros(len(lengths), bool)
    if wrong.any():
        length = int(lengths[wrong.argmax()])
        raise ValueError(f"{view}.{vector.feature}: a vector of length {length} where vector_length is {vector.dimension}")
    flat = array.values.to_numpy(zero_copy_only=False).astype(">f4").tobytes()
    values = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets * 4),
                                                                                pa.py_buffer(flat)])
    head = np.zeros((len(lengths), 2), dtype=">i2")  # dimension, unused
    head[:, 0] = lengths
    rows = join(fixed_width(head.view(np.uint8).reshape(-1, 4)), values)
    return rows if present.all() else pc.if_else(pa.array(present), rows, pa.scalar(None, pa.large_binary()))


def _utc(ts: datetime) -> datetime:
    """Feast hands over naive timestamps meaning UTC."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def _ttl_cutoff(view: FeatureView, now: datetime) -> Optional[datetime]:
    ttl = getattr(view, "ttl", None)  # on-demand views written online have none
    if ttl is None or ttl <= timedelta(0):
        return None
    return now - ttl


# --------------------------------------------------------------------------- SQL

_SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
_CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {schema}"

_TABLE_COLUMNS = """
SELECT array_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'
"""
_INDEX_DEFINITION = """
SELECT o.opcname, c.reloptions
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_index i ON i.indexrelid = c.oid
JOIN pg_opclass o ON o.oid = i.indclass[0]
WHERE n.nspname = %s AND c.relname = %s
"""
_ESTIMATED_ROWS = """
SELECT greatest(c.reltuples, 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""
_COLUMNS = [
    ("entity_key", "bytea"),
    ("layout_id", "bigint"),
    ("value_offsets", "integer[]"),
    ("feature_values", "bytea"),
    ("event_ts", "timestamp with time zone"),
    ("created_ts", "timestamp with time zone"),
    ("event_ts_wire", "bytea"),
]
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    entity_key bytea PRIMARY KEY,
    layout_id bigint NOT NULL,
    value_offsets int4[] NOT NULL,
    feature_values bytea NOT NULL,
    event_ts timestamptz NOT NULL,
    created_ts timestamptz,
    event_ts_wire bytea NOT NULL{vector_column}
)
"""
_CREATE_LAYOUTS = "CREATE TABLE IF NOT EXISTS {layouts} (layout_id bigint PRIMARY KEY, feature_names text[] NOT NULL)"
_INSERT_LAYOUT = "INSERT INTO {layouts} (layout_id, feature_names) VALUES (%s, %s) ON CONFLICT (layout_id) DO NOTHING"
_CREATE_INDEX = (
    "CREATE INDEX IF NOT EXISTS {index} ON {table} USING hnsw (vector_value {opclass}) "
    "WITH (m = {m}, ef_construction = {ef_construction})"
)
_DROP_INDEX = "DROP INDEX IF EXISTS {index}"
_DROP_TABLE = "DROP TABLE IF EXISTS {table}"

# Staging: one temporary table per session and layout, emptied at each commit.
_STAGE = "feast_online_stage"
_STAGE_VECTOR = "feast_online_stage_vector"
_CREATE_STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (
    seq bigint NOT NULL,
    entity_key bytea NOT NULL,
    layout_id bigint NOT NULL,
    value_offsets int4[] NOT NULL,
    feature_values bytea NOT NULL,
    event_ts timestamptz NOT NULL,
    created_ts timestamptz,
    event_ts_wire bytea NOT NULL{vector_column}
) ON COMMIT DELETE ROWS
"""
_COPY_STAGE = "COPY {stage} FROM STDIN (FORMAT BINARY)"
# value_offsets and vector_value travel as their binary input, declared bytea to psycopg.
_STAGE_TYPES = ["int8", "bytea", "int8", "bytea", "bytea", "timestamptz", "timestamptz", "bytea"]
_STAGE_VECTOR_TYPES = _STAGE_TYPES + ["bytea"]

_UPSERT = """
INSERT INTO {table} AS stored
    (entity_key, layout_id, value_offsets, feature_values, event_ts, created_ts, event_ts_wire{vector_names})
SELECT DISTINCT ON (entity_key)
    entity_key, layout_id, value_offsets, feature_values, event_ts, created_ts, event_ts_wire{vector_names}
FROM pg_temp.{stage}
ORDER BY entity_key, event_ts DESC, created_ts DESC NULLS LAST, seq DESC
ON CONFLICT (entity_key) DO UPDATE SET
    layout_id = excluded.layout_id,
    value_offsets = excluded.value_offsets,
    feature_values = excluded.feature_values,
    event_ts = excluded.event_ts,
    created_ts = excluded.created_ts,
    event_ts_wire = excluded.event_ts_wire{vector_update}
WHERE (excluded.event_ts, coalesce(excluded.created_ts, '-infinity'))
   >= (stored.event_ts, coalesce(stored.created_ts, '-infinity'))
"""

_READ_BRANCH = """
SELECT {tag}::int4 AS tag, entity_key, layout_id, value_offsets, feature_values, event_ts, event_ts_wire
FROM {table} WHERE entity_key = ANY(%s::bytea[])
"""
_READ_LAYOUTS = "SELECT layout_id, feature_names FROM {layouts} WHERE layout_id = ANY(%s)"
# Whole rows, decoded in Python (online_read).
_READ_ENTITIES = """
SELECT t.entity_key, l.feature_names, t.feature_values, t.event_ts
FROM {table} t LEFT JOIN {layouts} l ON l.layout_id = t.layout_id
WHERE t.entity_key = ANY(%s::bytea[])
"""

_SET_EF_SEARCH = "SELECT set_config('hnsw.ef_search', %s, true)"
_SET_SESSION_EF_SEARCH = "SELECT set_config('hnsw.ef_search', %s, false)"
_EXACT_SEARCH = "SELECT set_config('enable_indexscan', 'off', true)"
_ANN = """
SELECT nn.entity_key, l.feature_names, nn.feature_values, nn.event_ts, nn.distance
FROM (
    SELECT entity_key, layout_id, feature_values, event_ts, vector_value {operator} %s::vector AS distance
    FROM {table}
    WHERE {where}
    ORDER BY distance
    LIMIT %s
) nn
LEFT JOIN {layouts} l ON l.layout_id = nn.layout_id
ORDER BY nn.distance
"""


def _vector_sql(table: ViewTable) -> Tuple[sql.Composable, sql.Composable, sql.Composable]:
    """(column definition, column name list, update clause) of the vector column."""
    if table.vector is None:
        return sql.SQL(""), sql.SQL(""), sql.SQL("")
    return (
        sql.SQL(",\n    vector_value {}").format(sql.SQL(table.vector.pg_type)),
        sql.SQL(", vector_value"),
        sql.SQL(",\n    vector_value = excluded.vector_value"),
    )


def upsert_statement(table: ViewTable) -> sql.Composed:
    """The statement that moves the staged batch into ``table``."""
    _, names, update = _vector_sql(table)
    stage = _STAGE_VECTOR if table.vector else _STAGE
    return sql.SQL(_UPSERT).format(
        table=table.ident, stage=sql.Identifier(stage), vector_names=names, vector_update=update
    )


def read_statement(tables: Sequence[ViewTable]) -> sql.Composed:
    """One statement reading the rows of every table for its own keys (one %s each, a
    ``ByteaArray``); rows are (tag = table position, entity_key, layout_id, value_offsets,
    feature_values, event_ts, event_ts_wire)."""
    return sql.SQL(" UNION ALL ").join(
        sql.SQL(_READ_BRANCH).format(tag=sql.Literal(tag), table=table.ident) for tag, table in enumerate(tables)
    )


def entities_statement(table: ViewTable) -> sql.Composed:
    return sql.SQL(_READ_ENTITIES).format(table=table.ident, layouts=table.layouts_ident)


def ann_statement(
    table: ViewTable, embedding: Sequence[float], top_k: int, metric: str, cutoff: Optional[datetime]
) -> Tuple[sql.Composed, List[Any]]:
    """The nearest-neighbour query of ``retrieve_online_documents_v2`` and its parameters."""
    assert table.vector is not None
    where = [sql.SQL("vector_value IS NOT NULL")]
    params: List[Any] = [[float(v) for v in embedding]]
    if cutoff is not None:
        where.append(sql.SQL("event_ts >= %s"))
        params.append(cutoff)
    params.append(int(top_k))
    statement = sql.SQL(_ANN).format(
        operator=sql.SQL(VECTOR_METRICS[metric][0]),
        table=table.ident,
        layouts=table.layouts_ident,
        where=sql.SQL(" AND ").join(where),
    )
    return statement, params


def ef_search_for(config: RepoConfig, top_k: int) -> int:
    return min(MAX_EF_SEARCH, max(config.online_store.hnsw_ef_search, 2 * top_k))


# --------------------------------------------------------------------------- the store


_KEY_KINDS = {"int64_val": ValueType.INT64, "int32_val": ValueType.INT32, "string_val": ValueType.STRING}


@dataclass(frozen=True)
class _Read:
    """One feature view's share of a read."""

    view: FeatureView
    table: ViewTable
    requested: List[str]
    keys: List[bytes]  # serialized entity keys, one per response row
    unique_keys: ByteaArray


def _lost_connection(exc: BaseException, conn: Optional[psycopg.Connection | psycopg.AsyncConnection]) -> bool:
    if isinstance(exc, (PoolTimeout, PoolClosed)):
        return True
    return isinstance(exc, psycopg.OperationalError) and conn is not None and (conn.broken or conn.closed)


class _LoopConnections:
    """The async connections of one event loop: idle ones kept for reuse, at most
    ``max_size`` in use. Unlike ``psycopg_pool.AsyncConnectionPool`` it runs no background
    tasks, so a caller's ``asyncio.run`` can end without closing the store first."""

    def __init__(self, conninfo: str, max_size: int, timeout: float):
        self.conninfo, self.max_size, self.timeout = conninfo, max_size, timeout
        self.idle: List[psycopg.AsyncConnection] = []
        self.slots = asyncio.Semaphore(max_size)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        try:
            async with asyncio.timeout(self.timeout):
                await self.slots.acquire()
        except TimeoutError:
            raise PoolTimeout(f"no async connection free within {self.timeout} s") from None
        try:
            conn = self.idle.pop() if self.idle else await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True
            )
            try:
                yield conn
            finally:
                if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                    await conn.close()
                else:
                    self.idle.append(conn)
        finally:
            self.slots.release()

    async def close_idle(self) -> None:
        idle = list(self.idle)
        self.idle.clear()
        for conn in idle:
            await conn.close()

    def finish_idle(self) -> None:
        """Close the idle connections without an event loop (libpq's PQfinish)."""
        idle = list(self.idle)
        self.idle.clear()
        for conn in idle:
            conn.pgconn.finish()


class PostgresFastOnlineStore(OnlineStore):
    """Feast online store on PostgreSQL; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: Optional[ConnectionPool] = None
        self._layouts: Dict[int, Tuple[str, ...]] = {}  # layout_id -> feature names (ids are content hashes)
        self._ef_search_of: "weakref.WeakKeyDictionary[psycopg.Connection, int]" = weakref.WeakKeyDictionary()
        self._async_connections: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections]" = (
            weakref.WeakKeyDictionary()
        )

    @property
    def async_supported(self) -> SupportedAsyncMethods:
        return SupportedAsyncMethods(read=True, write=True)

    # ---------------------------------------------------------------- connections

    @staticmethod
    def _conninfo(config: RepoConfig) -> str:
        store = config.online_store
        return make_conninfo(
            host=store.host,
            port=int(store.port),
            dbname=store.database,
            user=store.user,
            password=store.password,
            sslmode=store.sslmode,
            sslkey=store.sslkey_path,
            sslcert=store.sslcert_path,
            sslrootcert=store.sslrootcert_path,
            keepalives_idle=store.keepalives_idle,
            connect_timeout=max(1, int(store.pool_timeout_seconds)),
            application_name="feast-online",
        )

    def _sync_pool(self, config: RepoConfig) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                store = config.online_store
                self._pool = ConnectionPool(
                    self._conninfo(config),
                    min_size=store.min_conn,
                    max_size=max(store.min_conn, store.max_conn),
                    kwargs={"autocommit": True},
                    timeout=store.pool_timeout_seconds,
                    open=False,
                    name="feast-online",
                )
                self._pool.open(wait=False)
            return self._pool

    def _discard_sync_pool(self, pool: ConnectionPool) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        # Its workers may be inside a connection attempt: let them finish off the caller's path.
        threading.Thread(target=pool.close, name="feast-online-pool-close", daemon=True).start()

    def _run(self, config: RepoConfig, work: Callable[[psycopg.Connection], _T]) -> _T:
        """``work(conn)`` on a pooled connection; once more on a fresh pool if the
        connection was lost (the work must be idempotent, which all of ours are)."""
        for attempt in (1, 2):
            pool = self._sync_pool(config)
            conn = None
            try:
                with pool.connection() as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:
                if attempt == 2 or not _lost_connection(exc, conn):
                    raise
                log.warning("online store connection lost (%s); retrying on a new pool", exc)
                self._discard_sync_pool(pool)
        raise AssertionError("unreachable")

    def _loop_connections(self, config: RepoConfig) -> "_LoopConnections":
        loop = asyncio.get_running_loop()
        with self._lock:
            connections = self._async_connections.get(loop)
            if connections is None:
                store = config.online_store
                connections = _LoopConnections(self._conninfo(config), store.max_conn, store.pool_timeout_seconds)
                self._async_connections[loop] = connections
                # When the loop is gone (an asyncio.run ended), close its idle connections.
                weakref.finalize(loop, connections.finish_idle)
            return connections

    async def _run_async(self, config: RepoConfig, work: Callable[[psycopg.AsyncConnection], Any]) -> Any:
        for attempt in (1, 2):
            connections = self._loop_connections(config)
            conn = None
            try:
                async with connections.connection() as conn:
                    return await work(conn)
            except psycopg.OperationalError as exc:
                if attempt == 2 or not _lost_connection(exc, conn):
                    raise
                log.warning("online store connection lost (%s); retrying on a new connection", exc)
                await connections.close_idle()
        raise AssertionError("unreachable")

    async def initialize(self, config: RepoConfig) -> None:
        """Open this event loop's first connection (``feast serve`` calls it at start-up)."""
        async with self._loop_connections(config).connection():
            pass

    async def close(self) -> None:
        """Close this event loop's connections and the thread pool."""
        with self._lock:
            connections = self._async_connections.pop(asyncio.get_running_loop(), None)
            sync_pool, self._pool = self._pool, None
        if connections is not None:
            await connections.close_idle()
        if sync_pool is not None:
            sync_pool.close()

    # ---------------------------------------------------------------- writes

    @staticmethod
    def _staged_rows(
        config: RepoConfig,
        view: FeatureView,
        table: ViewTable,
        data: Iterable[Tuple[EntityKeyProto, Dict[str, ValueProto], datetime, Optional[datetime]]],
    ) -> Tuple[List[tuple], Dict[int, Tuple[str, ...]]]:
        """The COPY rows of ``data`` and the layouts they use."""
        version = config.entity_key_serialization_version
        rows: List[tuple] = []
        layouts: Dict[Tuple[str, ...], int] = {}
        for seq, (entity_key, values, event_ts, created_ts) in enumerate(data):
            names, payload, offsets = encode_feature_values(values)
            layout = layouts.get(names)
            if layout is None:
                layout = layouts[names] = layout_id(names)
            event_ts = _utc(event_ts)
            row: tuple = (
                seq,
                serialize_entity_key(entity_key, entity_key_serialization_version=version),
                layout,
                _int4_array_binary(offsets),
                payload,
                event_ts,
                _utc(created_ts) if created_ts is not None else None,
                _timestamp_wire(event_ts),
            )
            if table.vector is not None:
                row += (_vector_binary(values.get(table.vector.feature), table.vector, view.name),)
            rows.append(row)
        return rows, {layout: names for names, layout in layouts.items()}

    @staticmethod
    def _rebuild_index(cur, table: ViewTable, batch_rows: int) -> bool:
        """Whether this batch should rebuild the HNSW index rather than insert into it."""
        if not table.indexed or batch_rows < HNSW_REBUILD_MIN_ROWS:
            return False
        stored = cur.execute(_ESTIMATED_ROWS, (table.schema, table.name)).fetchone()
        return stored is None or batch_rows >= HNSW_REBUILD_MIN_FRACTION * stored[0]

    @staticmethod
    def _write_statements(table: ViewTable) -> Tuple[sql.Composed, sql.Composed, sql.Composed, sql.Composed, List[str]]:
        """(create stage, insert layout, copy into stage, upsert, COPY types)."""
        stage = sql.Identifier(_STAGE_VECTOR if table.vector else _STAGE)
        column = sql.SQL(",\n    vector_value vector") if table.vector else sql.SQL("")
        return (
            sql.SQL(_CREATE_STAGE).format(stage=stage, vector_column=column),
            sql.SQL(_INSERT_LAYOUT).format(layouts=table.layouts_ident),
            sql.SQL(_COPY_STAGE).format(stage=stage),
            upsert_statement(table),
            _STAGE_VECTOR_TYPES if table.vector else _STAGE_TYPES,
        )

    @staticmethod
    def _index_sql(config: RepoConfig, table: ViewTable) -> Tuple[sql.Composed, sql.Composed]:
        store = config.online_store
        create = sql.SQL(_CREATE_INDEX).format(
            index=sql.Identifier(table.index),
            table=table.ident,
            opclass=sql.SQL(table.vector.opclass),
            m=sql.Literal(store.hnsw_m),
            ef_construction=sql.Literal(store.hnsw_ef_construction),
        )
        drop = sql.SQL(_DROP_INDEX).format(index=sql.Identifier(table.schema, table.index))
        return create, drop

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: List[Tuple[EntityKeyProto, Dict[str, ValueProto], datetime, Optional[datetime]]],
        progress: Optional[Callable[[int], Any]],
    ) -> None:
        """Upsert ``data`` (any order, several rows per entity allowed): COPY into a
        staging table, then one INSERT ... ON CONFLICT keeping the newest row."""
        target = view_table(config, table)
        rows, layouts = self._staged_rows(config, table, target, data)
        types = self._write_statements(target)[4]

        def fill_stage(copy) -> None:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)

        self._write_rows(config, target, len(rows), layouts, fill_stage)
        if progress:
            progress(len(data))

    def online_write_arrow(self, config: RepoConfig, table: FeatureView, data: pa.Table,
                           join_key_types: Mapping[str, ValueType]) -> bool:
        """``online_write_batch`` for a materialized Arrow batch (the columns of the view's
        join keys, features and batch-source timestamps), encoded column by column into one
        binary COPY stream. Returns False, having written nothing, when a column needs
        Feast's conversion."""
        target = view_table(config, table)
        names = tuple(f.name for f in table.features)
        values = [serialized_values(data.column(f.name), f.dtype.to_value_type()) for f in table.features]
        keys = serialized_entity_keys(
            {k: data.column(k).to_pylist() for k in join_key_types}, join_key_types, config.entity_key_serialization_version
        )
        source = table.batch_source
        event_ts = data.column(source.timestamp_field)
        if keys is None or any(v is None for v in values) or event_ts.null_count:
            return False
        rows = data.num_rows
        elements = [length_delimited(b"\x0a", v) for v in values]  # each a ``Value`` inside a ``RepeatedValue``
        offsets = np.zeros((rows, len(elements) + 1), dtype=np.int64)
        sizes = np.column_stack([pc.binary_length(e).to_numpy(zero_copy_only=False) for e in elements])
        np.cumsum(sizes, axis=1, out=offsets[:, 1:])
        layout = layout_id(names)
        created = source.created_timestamp_column
        fields = [
            int8_values(np.arange(rows)),
            pa.array(keys, pa.large_binary()),
            int8_values(np.full(rows, layout)),
            int4_array_values(offsets),
            join(*elements),
            timestamptz_values(event_ts),
            timestamptz_values(data.column(created)) if created else pa.nulls(rows, pa.large_binary()),
            timestamp_wires(event_ts),
        ]
        if target.vector:
            fields.append(_vector_binaries(data.column(target.vector.feature), target.vector, table.name))
        self._write_rows(config, target, rows, {layout: names}, lambda copy: write_copy(copy, fields))
        return True

    def _write_rows(self, config: RepoConfig, target: ViewTable, row_count: int, layouts: Dict[int, Tuple[str, ...]],
                    fill_stage: Callable[[Any], None]) -> None:
        """Stage ``row_count`` rows (``fill_stage`` writes them to the COPY) and upsert
        them, rebuilding the HNSW index after a large batch."""
        if not row_count:
            return
        create_stage, insert_layout, copy_stage, upsert, _ = self._write_statements(target)

        def work(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                rebuild = self._rebuild_index(cur, target, row_count)
                if rebuild:
                    create_index, drop_index = self._index_sql(config, target)
                    cur.execute(drop_index)
                try:
                    with conn.transaction():
                        cur.execute("SELECT set_config('synchronous_commit', %s, true)", (config.online_store.synchronous_commit,))
                        for layout, names in layouts.items():
                            cur.execute(insert_layout, (layout, list(names)))
                        cur.execute(create_stage)
                        with cur.copy(copy_stage) as copy:
                            fill_stage(copy)
                        cur.execute(upsert)
                finally:
                    if rebuild and not conn.broken:  # also after a failed upsert
                        memory = config.online_store.hnsw_build_memory
                        if memory:
                            cur.execute("SELECT set_config('maintenance_work_mem', %s, false)", (memory,))
                        cur.execute(create_index)
                        if memory:
                            cur.execute("RESET maintenance_work_mem")

        self._run(config, work)

    async def online_write_batch_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: List[Tuple[EntityKeyProto, Dict[str, ValueProto], datetime, Optional[datetime]]],
        progress: Optional[Callable[[int], Any]],
    ) -> None:
        """Async ``online_write_batch`` (pushes from ``feast serve``); never rebuilds the index."""
        target = view_table(config, table)
        rows, layouts = self._staged_rows(config, table, target, data)
        if rows:
            create_stage, insert_layout, copy_stage, upsert, types = self._write_statements(target)

            async def work(conn: psycopg.AsyncConnection) -> None:
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.execute("SELECT set_config('synchronous_commit', %s, true)",
                                      (config.online_store.synchronous_commit,))
                    for layout, names in layouts.items():
                        await cur.execute(insert_layout, (layout, list(names)))
                    await cur.execute(create_stage)
                    async with cur.copy(copy_stage) as copy:
                        copy.set_types(types)
                        for row in rows:
                            await copy.write_row(row)
                    await cur.execute(upsert)

            await self._run_async(config, work)
        if progress:
            progress(len(data))

    # ---------------------------------------------------------------- reads

    @staticmethod
    def _keys(config: RepoConfig, entity_keys: Iterable[EntityKeyProto]) -> List[bytes]:
        version = config.entity_key_serialization_version
        return [serialize_entity_key(k, entity_key_serialization_version=version) for k in entity_keys]

    def _prepare_reads(
        self, config: RepoConfig, grouped_refs, join_key_values, entity_name_to_join_key_map
    ) -> List[_Read]:
        """Per requested view, the serialized key of every response row; views keyed by the
        same join keys share one serialization."""
        reads = []
        shared: Dict[Tuple[str, ...], Tuple[List[bytes], ByteaArray]] = {}
        for view, requested in grouped_refs:
            columns = utils._get_table_entity_values(view, entity_name_to_join_key_map, join_key_values)
            signature = tuple(sorted(columns))
            found = shared.get(signature) if len(columns) == len(view.entities) else None
            if found is None:
                found = self._fast_keys(config, columns) if len(columns) == len(view.entities) else None
                if found is None:
                    found = self._feast_keys(config, view, join_key_values, entity_name_to_join_key_map)
                else:
                    shared[signature] = found
            keys, unique_keys = found
            reads.append(_Read(view, view_table(config, view), list(requested), keys, unique_keys))
        return reads

    @staticmethod
    def _fast_keys(config: RepoConfig, columns: Mapping[str, List[ValueProto]]) -> Optional[Tuple[List[bytes], ByteaArray]]:
        """Keys straight from the request's values (ints and strings); None for anything else."""
        python_values, value_types = {}, {}
        for name, protos in columns.items():
            kinds = {p.WhichOneof("val") for p in protos}
            if len(kinds) != 1 or next(iter(kinds)) not in _KEY_KINDS:
                return None
            kind = kinds.pop()
            value_types[name] = _KEY_KINDS[kind]
            python_values[name] = [getattr(p, kind) for p in protos]
        keys = serialized_entity_keys(python_values, value_types, config.entity_key_serialization_version)
        if keys is None:
            return None
        return keys, ByteaArray(_array_binary(_BYTEA_OID, list(dict.fromkeys(keys))))

    def _feast_keys(self, config: RepoConfig, view: FeatureView, join_key_values, entity_name_to_join_key_map
                    ) -> Tuple[List[bytes], ByteaArray]:
        """Keys through Feast's own grouping and serialization (it also reports missing keys)."""
        entity_values, idxs, output_len = utils._get_unique_entities(view, join_key_values, entity_name_to_join_key_map)
        unique_keys = self._keys(config, utils._get_entity_key_protos(entity_values))
        keys: List[bytes] = [b""] * output_len
        for key, positions in zip(unique_keys, idxs):
            for position in positions:
                keys[position] = key
        return keys, ByteaArray(_array_binary(_BYTEA_OID, unique_keys))

    def _fetch(self, conn: psycopg.Connection, statement: sql.Composed, reads: Sequence[_Read]) -> List[tuple]:
        with conn.cursor(binary=True) as cur:
            rows = cur.execute(statement, [read.unique_keys for read in reads]).fetchall()
            missing = {row[2] for row in rows} - self._layouts.keys()
            if missing:
                statement = sql.SQL(_READ_LAYOUTS).format(layouts=reads[0].table.layouts_ident)
                self._layouts.update((k, tuple(v)) for k, v in cur.execute(statement, [list(missing)]))
        return rows

    async def _fetch_async(self, conn: psycopg.AsyncConnection, statement: sql.Composed, reads: Sequence[_Read]) -> List[tuple]:
        async with conn.cursor(binary=True) as cur:
            await cur.execute(statement, [read.unique_keys for read in reads])
            rows = await cur.fetchall()
            missing = {row[2] for row in rows} - self._layouts.keys()
            if missing:
                await cur.execute(sql.SQL(_READ_LAYOUTS).format(layouts=reads[0].table.layouts_ident), [list(missing)])
                self._layouts.update((k, tuple(v)) for k, v in await cur.fetchall())
        return rows

    def _append_vectors(
        self,
        config: RepoConfig,
        reads: Sequence[_Read],
        rows: Iterable[tuple],
        online_features_response,
        full_feature_names: bool,
        include_feature_view_version_metadata: bool,
    ) -> None:
        """Add each requested feature's FeatureVector (and its name) to the response, in
        the order Feast's ``_populate_response_from_feature_data`` would, built from the
        stored value bytes: per entity row one slice per feature, then one join per feature."""
        found: List[Dict[bytes, tuple]] = [{} for _ in reads]
        for tag, entity_key, *row in rows:
            found[tag][bytes(entity_key)] = row
        mode = config.online_store.ttl_on_read
        now = datetime.now(timezone.utc)
        metadata = online_features_response.metadata
        for read, stored in zip(reads, found):
            projection = read.view.projection
            prefix = f"{projection.name_to_use()}__" if full_feature_names else ""
            metadata.feature_names.val.extend(prefix + name for name in read.requested)
            if include_feature_view_version_metadata:
                name = projection.name_alias or projection.name
                if name not in [m.name for m in metadata.feature_view_metadata]:
                    added = metadata.feature_view_metadata.add()
                    added.name = name
                    added.version = getattr(read.view, "current_version_number", 0) or 0
            if not read.requested:
                continue
            cutoff = None if mode == "ignore" else _ttl_cutoff(read.view, now)
            width = len(read.requested)
            missing_values, missing_statuses = (_NULL_VALUE,) * width, bytes([FieldStatus.NOT_FOUND]) * width
            positions: Dict[int, Tuple[List[Optional[int]], bytes, bytes]] = {}
            values, statuses, stamps = [], [], []
            for key in read.keys:
                row = stored.get(key)
                if row is None:
                    values.append(missing_values)
                    statuses.append(missing_statuses)
                    stamps.append(_NULL_TIMESTAMP)
                    continue
                layout, offsets, payload, event_ts, event_ts_wire = row
                if layout not in positions:
                    positions[layout] = self._positions(self._layouts.get(layout, ()), read.requested)
                index, present, expired = positions[layout]
                stamps.append(event_ts_wire)
                if cutoff is not None and event_ts < cutoff:
                    statuses.append(expired)
                    if mode == "hide":
                        values.append(missing_values)
                        continue
                else:
                    statuses.append(present)
                values.append([_NULL_VALUE if i is None else payload[offsets[i]:offsets[i + 1]] for i in index])
            stamp_wire = b"".join(stamps)
            for value_column, status_column in zip(zip(*values), zip(*statuses)):
                status_bytes = bytes(status_column)
                wire = b"".join(value_column) + b"\x12" + varint(len(status_bytes)) + status_bytes + stamp_wire
                online_features_response.results.add().MergeFromString(wire)
            if not read.keys:
                for _ in read.requested:
                    online_features_response.results.add()

    @staticmethod
    def _positions(names: Sequence[str], requested: Sequence[str]) -> Tuple[List[Optional[int]], bytes, bytes]:
        """For one layout: the index of each requested feature (None: not stored), and the
        statuses of a fresh and of an expired row."""
        where = {name: i for i, name in enumerate(names)}
        index = [where.get(name) for name in requested]
        present = bytes(FieldStatus.NOT_FOUND if i is None else FieldStatus.PRESENT for i in index)
        expired = bytes(FieldStatus.NOT_FOUND if i is None else FieldStatus.OUTSIDE_MAX_AGE for i in index)
        return index, present, expired

    def _read_features_per_fv(
        self,
        config: RepoConfig,
        grouped_refs: List,
        join_key_values: Dict,
        entity_name_to_join_key_map: Dict,
        online_features_response,
        full_feature_names: bool,
        include_feature_view_version_metadata: bool,
    ) -> None:
        """All requested views for all entities in one statement."""
        reads = self._prepare_reads(config, grouped_refs, join_key_values, entity_name_to_join_key_map)
        if not reads:
            return
        statement = read_statement([r.table for r in reads])
        rows = self._run(config, lambda conn: self._fetch(conn, statement, reads))
        self._append_vectors(config, reads, rows, online_features_response, full_feature_names,
                             include_feature_view_version_metadata)

    async def _read_features_per_fv_async(
        self,
        config: RepoConfig,
        grouped_refs: List,
        join_key_values: Dict,
        entity_name_to_join_key_map: Dict,
        online_features_response,
        full_feature_names: bool,
        include_feature_view_version_metadata: bool,
    ) -> None:
        reads = self._prepare_reads(config, grouped_refs, join_key_values, entity_name_to_join_key_map)
        if not reads:
            return
        statement = read_statement([r.table for r in reads])
        rows = await self._run_async(config, lambda conn: self._fetch_async(conn, statement, reads))
        self._append_vectors(config, reads, rows, online_features_response, full_feature_names,
                             include_feature_view_version_metadata)

    def _entities_result(
        self, config: RepoConfig, view: FeatureView, keys: List[bytes], requested: Optional[List[str]], rows
    ) -> List[Tuple[Optional[datetime], Optional[Dict[str, ValueProto]]]]:
        mode = config.online_store.ttl_on_read
        cutoff = None if mode != "hide" else _ttl_cutoff(view, datetime.now(timezone.utc))
        found = {bytes(key): (names, payload, ts) for key, names, payload, ts in rows}
        result: List[Tuple[Optional[datetime], Optional[Dict[str, ValueProto]]]] = []
        for key in keys:
            row = found.get(key)
            if row is None or row[0] is None or (cutoff is not None and row[2] < cutoff):
                result.append((None, None))
            else:
                names, payload, event_ts = row
                result.append((event_ts, decode_feature_values(names, payload, requested)))
        return result

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: List[EntityKeyProto],
        requested_features: Optional[List[str]] = None,
    ) -> List[Tuple[Optional[datetime], Optional[Dict[str, ValueProto]]]]:
        """Rows for ``entity_keys`` in order; (None, None) when missing or (with
        ``ttl_on_read: hide``) past the view's ttl."""
        keys = self._keys(config, entity_keys)
        statement = entities_statement(view_table(config, table))
        param = ByteaArray(_array_binary(_BYTEA_OID, keys))

        def work(conn: psycopg.Connection) -> List[tuple]:
            with conn.cursor(binary=True) as cur:
                return cur.execute(statement, [param]).fetchall()

        return self._entities_result(config, table, keys, requested_features, self._run(config, work))

    async def online_read_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: List[EntityKeyProto],
        requested_features: Optional[List[str]] = None,
    ) -> List[Tuple[Optional[datetime], Optional[Dict[str, ValueProto]]]]:
        keys = self._keys(config, entity_keys)
        statement = entities_statement(view_table(config, table))
        param = ByteaArray(_array_binary(_BYTEA_OID, keys))

        async def work(conn: psycopg.AsyncConnection) -> List[tuple]:
            async with conn.cursor(binary=True) as cur:
                await cur.execute(statement, [param])
                return await cur.fetchall()

        return self._entities_result(config, table, keys, requested_features, await self._run_async(config, work))

    # ---------------------------------------------------------------- vector search

    def retrieve_online_documents_v2(
        self,
        config: RepoConfig,
        table: FeatureView,
        requested_features: List[str],
        embedding: Optional[List[float]],
        top_k: int,
        distance_metric: Optional[str] = None,
        query_string: Optional[str] = None,
        filters=None,
        include_feature_view_version_metadata: bool = False,
    ) -> List[Tuple[Optional[datetime], Optional[EntityKeyProto], Optional[Dict[str, ValueProto]]]]:
        """The ``top_k`` entities nearest to ``embedding``, nearest first, each with its
        requested features and ``distance`` (pgvector's, as the stock store returns).

        Raises:
            ValueError: vectors are disabled, the view has no vector_index field, or the
                metric is unknown.
            NotImplementedError: keyword search (``query_string``) or ``filters``.
        """
        if not config.online_store.vector_enabled:
            raise ValueError("Vector search is not enabled in the online store config (vector_enabled)")
        if query_string is not None or filters is not None:
            raise NotImplementedError(
                f"{type(self).__name__} supports vector queries only (no query_string, no filters); "
                "use the stock store (type: postgres) for keyword search"
            )
        if embedding is None:
            raise ValueError("retrieve_online_documents_v2 needs an embedding")
        target = view_table(config, table)
        if target.vector is None:
            raise ValueError(f"feature view {table.name} has no vector_index field")
        metric = distance_metric or target.vector.metric
        if metric not in VECTOR_METRICS:
            raise ValueError(f"distance metric {metric!r} is not one of {sorted(VECTOR_METRICS)}")
        if top_k <= 0:
            return []
        cutoff = None
        if config.online_store.ttl_on_read == "hide":
            cutoff = _ttl_cutoff(table, datetime.now(timezone.utc))
        statement, params = ann_statement(target, embedding, top_k, metric, cutoff)
        ef_search = ef_search_for(config, top_k)

        def work(conn: psycopg.Connection) -> List[tuple]:
            if top_k > ef_search:  # HNSW returns at most ef_search rows: an exact search
                with conn.transaction(), conn.cursor(binary=True) as cur:
                    cur.execute(_EXACT_SEARCH)
                    return cur.execute(statement, params).fetchall()
            with conn.cursor(binary=True) as cur:
                if self._ef_search_of.get(conn) != ef_search:  # set once per pooled connection, not per query
                    cur.execute(_SET_SESSION_EF_SEARCH, (str(ef_search),))
                    self._ef_search_of[conn] = ef_search
                return cur.execute(statement, params).fetchall()

        rows = self._run(config, work)
        version = config.entity_key_serialization_version
        result = []
        for entity_key, names, payload, event_ts, distance in rows:
            features = decode_feature_values(names or [], payload, requested_features)
            features["distance"] = ValueProto(double_val=float(distance))
            result.append((event_ts, deserialize_entity_key(bytes(entity_key), version), features))
        return result

    # ---------------------------------------------------------------- infrastructure

    def _ensure_table(self, conn: psycopg.Connection, config: RepoConfig, table: ViewTable) -> None:
        found = conn.execute(_TABLE_COLUMNS, (table.schema, table.name)).fetchone()
        wanted = [f"{name} {pg_type}" for name, pg_type in _COLUMNS]
        if table.vector is not None:
            wanted.append(f"vector_value {table.vector.pg_type}")
        if found is not None and found[0] is not None and list(found[0]) != wanted:
            log.warning(
                "online table %s.%s has columns %s, the view needs %s: recreating it (materialize the view again)",
                table.schema, table.name, found[0], wanted,
            )
            conn.execute(sql.SQL(_DROP_TABLE).format(table=table.ident))
        column, _, _ = _vector_sql(table)
        conn.execute(sql.SQL(_CREATE_TABLE).format(table=table.ident, vector_column=column))
        if not table.indexed:
            return
        create_index, drop_index = self._index_sql(config, table)
        index = conn.execute(_INDEX_DEFINITION, (table.schema, table.index)).fetchone()
        store = config.online_store
        wanted_options = sorted([f"m={store.hnsw_m}", f"ef_construction={store.hnsw_ef_construction}"])
        if index is not None and (index[0] != table.vector.opclass or sorted(index[1] or []) != wanted_options):
            conn.execute(drop_index)
        conn.execute(create_index)

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Create (or fit to the view) the tables and indexes of ``tables_to_keep``; drop
        those of ``tables_to_delete``."""
        schema = config.online_store.db_schema
        layouts = sql.Identifier(schema, layouts_table_name(config.project))

        def work(conn: psycopg.Connection) -> None:
            with conn.transaction():
                if conn.execute(_SCHEMA_EXISTS, (schema,)).fetchone() is None:
                    conn.execute(sql.SQL(_CREATE_SCHEMA).format(schema=sql.Identifier(schema)))
                conn.execute(sql.SQL(_CREATE_LAYOUTS).format(layouts=layouts))
                for view in tables_to_delete:
                    conn.execute(sql.SQL(_DROP_TABLE).format(table=view_table(config, view).ident))
                for view in tables_to_keep:
                    self._ensure_table(conn, config, view_table(config, view))

        self._run(config, work)

    def teardown(self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]) -> None:
        """Drop the tables (and with them the indexes) of ``tables``, and the project's
        layouts table."""
        layouts = sql.Identifier(config.online_store.db_schema, layouts_table_name(config.project))

        def work(conn: psycopg.Connection) -> None:
            with conn.transaction():
                for view in tables:
                    conn.execute(sql.SQL(_DROP_TABLE).format(table=view_table(config, view).ident))
                conn.execute(sql.SQL(_DROP_TABLE).format(table=layouts))

        self._run(config, work)
