"""Contract tests of the online store plugin (``PostgresFastOnlineStore``).

One Feast project on a throw-away database is served by two online stores at once, the
way a repository migrates (same registry, same offline store, only the ``online_store``
block differs): stock Feast (``type: postgres``) and the plugin. Both materialize the same
random rows (timestamps on a coarse grid, equal timestamps broken by created timestamps,
nulls, arrays, a two-key view, an embedding view), and every read is compared with

- a brute-force reference (latest row per entity by event then created timestamp; a value
  older than the view's ttl reads as null with status OUTSIDE_MAX_AGE), and
- stock Feast, value for value and status for status, with ``ttl_on_read: ignore``
  (stock does not enforce ttl on read).

Also: push (sync, async, and through ``feast serve``'s app), out-of-order writes, ttl
edges, HNSW search against exact cosine top-k and its query plan, table lifecycle on
``feast apply`` / teardown, and recovery after the server restarts.

The plugin materializes with ``pull_latest_features: false`` (every source row, in no
particular order, reaches ``online_write_batch``), stock with ``true``. Timestamps are whole
hours before an anchor 30 minutes in the past, so no value sits near a ttl edge while the
tests run.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

from materialize.database.server import stop_embedded
from materialize.settings import PostgresSettings
from tests.conftest import new_database

PROJECT = "online_contract"
SOURCE_SCHEMA = "online_contract_src"
DIM = 32
TTL = dt.timedelta(days=7)
N_USERS = 200
N_PAIR_KEYS = 12  # users x items 1..12: (1, 12) and (11, 2) both exist
N_ITEMS = 1500
PUSHED_USERS = range(5001, 5011)  # entities only the push test writes
WRITTEN_USERS = range(6001, 6010)  # entities only the direct-write tests write
NEW_ITEMS = range(90001, 90004)

UTC = dt.timezone.utc


# --------------------------------------------------------------------------- Feast objects


def _feast_objects():
    from feast import Entity, FeatureView, Field, PushSource, ValueType
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.types import Array, Bool, Float32, Float64, Int64, String

    def source(table):
        return PostgreSQLSource(
            name=table,
            query=f"SELECT * FROM {SOURCE_SCHEMA}.{table}",
            timestamp_field="event_timestamp",
            created_timestamp_column="created_timestamp",
        )

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
    user_push = PushSource(name="user_push", batch_source=source("user_rows"))
    user_profile = FeatureView(
        name="user_profile",
        entities=[user],
        ttl=TTL,
        schema=[
            Field(name="visits", dtype=Int64),
            Field(name="item_ids", dtype=Array(Int64)),
            Field(name="shares", dtype=Array(Float32)),
            Field(name="spend", dtype=Float64),
            Field(name="active", dtype=Bool),
            Field(name="segment", dtype=String),
        ],
        source=user_push,
    )
    user_item = FeatureView(
        name="user_item",
        entities=[user, item],
        ttl=dt.timedelta(0),
        schema=[Field(name="affinity", dtype=Float64)],
        source=source("pair_rows"),
    )
    item_embedding = FeatureView(
        name="item_embedding",
        entities=[item],
        ttl=dt.timedelta(0),
        schema=[
            Field(name="embedding", dtype=Array(Float32), vector_index=True, vector_length=DIM,
                  vector_search_metric="cosine"),
            Field(name="title", dtype=String),
        ],
        source=source("item_rows"),
    )
    return [user, item, user_push, user_profile, user_item, item_embedding]


def _connection_keys(pg: PostgresSettings) -> dict:
    return dict(host=pg.host, port=pg.port, database=pg.database, db_schema="public", user=pg.user,
                password=pg.password, sslmode=pg.sslmode)


def plugin_online(pg: PostgresSettings, **extra) -> dict:
    from materialize.feature_store.online_store import STORE_TYPE

    return {"type": STORE_TYPE, **_connection_keys(pg), "vector_enabled": True, "pool_timeout_seconds": 1, **extra}


def open_store(pg: PostgresSettings, registry: Path, online: dict, project: str = PROJECT, pull_latest: bool = True,
               offline_type: str = "postgres", batch_engine: str = "local", provider: str = "local"):
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    config = RepoConfig(
        project=project,
        provider=provider,
        registry=str(registry),
        offline_store={"type": offline_type, **_connection_keys(pg)},
        online_store=online,
        batch_engine={"type": batch_engine},
        entity_key_serialization_version=3,
        materialization={"pull_latest_features": pull_latest},
    )
    return FeatureStore(config=config)


# --------------------------------------------------------------------------- random data


def _user_row(rng, user_id, event_ts, created_ts):
    return {
        "user_id": int(user_id),
        "event_timestamp": event_ts,
        "created_timestamp": created_ts,
        "visits": None if rng.random() < 0.1 else int(rng.integers(0, 10**12)),
        "item_ids": None if rng.random() < 0.1 else rng.integers(1, 10**6, rng.integers(1, 6)).tolist(),
        "shares": rng.random(3).astype(np.float32).tolist(),
        "spend": None if rng.random() < 0.1 else float(rng.normal() * 100),
        "active": bool(rng.random() < 0.5),
        "segment": None if rng.random() < 0.1 else str(rng.choice(["new", "loyal", "lapsed", "é ✓"])),
    }


def _grid_times(rng, anchor, n, max_hours):
    """Event timestamps on a 6-hour grid (equal timestamps are frequent), created
    timestamps on an hour grid (they break the ties)."""
    event = rng.integers(0, max_hours, n) // 6 * 6
    created = rng.integers(0, 3, n)
    return [anchor - dt.timedelta(hours=int(e)) for e in event], [anchor - dt.timedelta(hours=int(c)) for c in created]


def _dedupe(rows, keys):
    seen, out = set(), []
    for row in rows:
        marker = tuple(row[k] for k in keys) + (row["event_timestamp"], row["created_timestamp"])
        if marker not in seen:
            seen.add(marker)
            out.append(row)
    return out


def make_data(rng, anchor):
    users = rng.integers(1, N_USERS + 1, 700)
    events, created = _grid_times(rng, anchor, len(users), 24 * 14)  # half older than the 7-day ttl
    user_rows = _dedupe([_user_row(rng, u, e, c) for u, e, c in zip(users, events, created)], ["user_id"])

    pairs = rng.integers(1, N_PAIR_KEYS + 1, (300, 2))
    events, created = _grid_times(rng, anchor, len(pairs), 24 * 30)
    pair_rows = _dedupe(
        [{"user_id": int(u), "item_id": int(i), "event_timestamp": e, "created_timestamp": c,
          "affinity": float(rng.normal())} for (u, i), e, c in zip(pairs, events, created)],
        ["user_id", "item_id"],
    )

    centres = rng.normal(size=(30, DIM))
    vectors = (centres[rng.integers(0, 30, N_ITEMS)] + 0.35 * rng.normal(size=(N_ITEMS, DIM))).astype(np.float32)
    item_rows = [
        {"item_id": i + 1, "event_timestamp": anchor - dt.timedelta(hours=24), "created_timestamp": anchor,
         "embedding": vectors[i].tolist(), "title": f"item {i + 1}"}
        for i in range(N_ITEMS)
    ]
    # An older, different version of some items: the newer one must win.
    for i in rng.choice(N_ITEMS, 100, replace=False):
        item_rows.append({"item_id": int(i) + 1, "event_timestamp": anchor - dt.timedelta(hours=48),
                          "created_timestamp": anchor, "embedding": rng.normal(size=DIM).astype(np.float32).tolist(),
                          "title": "stale"})
    order = rng.permutation(len(item_rows))
    return user_rows, pair_rows, [item_rows[i] for i in order]


_SOURCE_DDL = f"""
CREATE SCHEMA {SOURCE_SCHEMA};
CREATE TABLE {SOURCE_SCHEMA}.user_rows (user_id bigint, event_timestamp timestamptz, created_timestamp timestamptz,
    visits bigint, item_ids bigint[], shares real[], spend double precision, active boolean, segment text);
CREATE TABLE {SOURCE_SCHEMA}.pair_rows (user_id bigint, item_id bigint, event_timestamp timestamptz,
    created_timestamp timestamptz, affinity double precision);
CREATE TABLE {SOURCE_SCHEMA}.item_rows (item_id bigint, event_timestamp timestamptz, created_timestamp timestamptz,
    embedding real[], title text);
"""


def _copy(conn, table, rows):
    columns = list(rows[0])
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(SOURCE_SCHEMA, table), sql.SQL(", ").join(map(sql.Identifier, columns)))
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


# --------------------------------------------------------------------------- reference


def latest_rows(rows, keys):
    """Brute force: the newest row per key by (event_timestamp, created_timestamp)."""
    latest = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        rank = (row["event_timestamp"], row["created_timestamp"])
        if key not in latest or rank > (latest[key]["event_timestamp"], latest[key]["created_timestamp"]):
            latest[key] = row
    return latest


def expected_values(latest, key_rows, features, cutoff, prefix=""):
    """What an online read must return: {column: values}, None where missing or expired."""
    out = {}
    for feature in features:
        values = []
        for key in key_rows:
            row = latest.get(key)
            fresh = row is not None and (cutoff is None or row["event_timestamp"] >= cutoff)
            values.append(row[feature] if fresh else None)
        out[prefix + feature] = values
    return out


def expected_statuses(latest, key_rows, cutoff):
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    statuses = []
    for key in key_rows:
        row = latest.get(key)
        if row is None:
            statuses.append(FieldStatus.NOT_FOUND)
        elif cutoff is not None and row["event_timestamp"] < cutoff:
            statuses.append(FieldStatus.OUTSIDE_MAX_AGE)
        else:
            statuses.append(FieldStatus.PRESENT)
    return statuses


def statuses_of(response) -> dict:
    proto = response.proto
    return {name: list(result.statuses) for name, result in zip(proto.metadata.feature_names.val, proto.results)}


USER_FEATURES = ["visits", "item_ids", "shares", "spend", "active", "segment"]


# --------------------------------------------------------------------------- fixture


class Contract:
    """The test database, the two stores and the reference data."""

    def __init__(self, pg, registry, anchor, user_rows, pair_rows, item_rows):
        self.pg, self.registry, self.anchor = pg, registry, anchor
        self.user_rows, self.pair_rows, self.item_rows = user_rows, pair_rows, item_rows
        self.cutoff = anchor + dt.timedelta(minutes=30) - TTL  # = now - ttl, far from every row
        self.stock = open_store(pg, registry, {"type": "postgres", **_connection_keys(pg), "vector_enabled": True})
        # ef_search 400 of 1,500 items: the HNSW answer is the exact one whatever the graph.
        self.plugin = open_store(pg, registry, plugin_online(pg, hnsw_ef_search=400), pull_latest=False)
        self.plugin_ignoring_ttl = open_store(pg, registry, plugin_online(pg, ttl_on_read="ignore"))

    def view(self, name):
        return self.plugin.get_feature_view(name)

    def connect(self):
        return psycopg.connect(self.pg.conninfo(), autocommit=True)


@pytest.fixture(scope="module")
def contract(pg_server, tmp_path_factory):
    rng = np.random.default_rng(20260509)
    anchor = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=30)
    user_rows, pair_rows, item_rows = make_data(rng, anchor)
    with new_database(pg_server) as pg:
        with psycopg.connect(pg.conninfo()) as conn:
            conn.execute(_SOURCE_DDL)
            _copy(conn, "user_rows", user_rows)
            _copy(conn, "pair_rows", pair_rows)
            _copy(conn, "item_rows", item_rows)
            conn.commit()
        registry = tmp_path_factory.mktemp("online_contract") / "registry.db"
        c = Contract(pg, registry, anchor, user_rows, pair_rows, item_rows)
        objects = _feast_objects()
        # Stock first, then the plugin on the same project and registry: the migration path.
        c.stock.apply(objects)
        c.plugin.apply(objects)
        start, end = c.window = anchor - dt.timedelta(days=40), dt.datetime.now(UTC)
        c.stock.materialize(start_date=start, end_date=end)
        c.plugin.materialize(start_date=start, end_date=end)
        yield c
        for store in (c.plugin, c.plugin_ignoring_ttl):
            asyncio.run(store.close())


# --------------------------------------------------------------------------- tests: layout


def test_one_row_per_entity_beside_the_stock_tables(contract):
    from materialize.feature_store.online_store import online_table_name

    with contract.connect() as conn:
        def rows(table):
            return conn.execute(sql.SQL("SELECT count(*), count(DISTINCT entity_key) FROM {}").format(
                sql.Identifier("public", table))).fetchone()

        users = len({r["user_id"] for r in contract.user_rows})
        items = len({r["item_id"] for r in contract.item_rows})
        assert rows(online_table_name(PROJECT, "user_profile")) == (users, users)
        assert rows(online_table_name(PROJECT, "item_embedding")) == (items, items)
        stock_rows, stock_entities = rows(f"{PROJECT}_user_profile")  # stock: one row per (entity, feature)
        assert (stock_rows, stock_entities) == (users * len(USER_FEATURES), users)

        vector_type = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = 'vector_value'", (f"public.{online_table_name(PROJECT, 'item_embedding')}",)).fetchone()
        assert vector_type == (f"vector({DIM})",)
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%hnsw%%'",
            (online_table_name(PROJECT, "item_embedding"),)).fetchone()
        assert index and "vector_cosine_ops" in index[0] and "m='16'" in index[0]


# --------------------------------------------------------------------------- tests: reads


@pytest.mark.parametrize("full_feature_names", [False, True])
def test_online_values_equal_reference_and_stock(contract, full_feature_names):
    ids = list(range(1, N_USERS + 6)) + [3, 3, 7]  # some never written, some asked for twice
    pairs = [(u, i) for u in range(1, N_PAIR_KEYS + 2) for i in range(1, N_PAIR_KEYS + 2)]
    features = [f"user_profile:{f}" for f in USER_FEATURES] + ["user_item:affinity"]
    entity_rows = [{"user_id": u, "item_id": i} for u, i in pairs]

    response = contract.plugin.get_online_features(features, entity_rows, full_feature_names=full_feature_names)
    got = response.to_dict()
    users = latest_rows(contract.user_rows, ["user_id"])
    user_keys = [(u,) for u, _ in pairs]
    prefix = "user_profile__" if full_feature_names else ""
    expected = {"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs]}
    expected |= expected_values(users, user_keys, USER_FEATURES, contract.cutoff, prefix)
    expected |= expected_values(latest_rows(contract.pair_rows, ["user_id", "item_id"]), pairs, ["affinity"], None,
                                "user_item__" if full_feature_names else "")
    assert got == expected
    assert statuses_of(response)[prefix + "visits"] == expected_statuses(users, user_keys, contract.cutoff)

    # Users alone, many entities in one read; stock matches when ttl is not enforced.
    rows = [{"user_id": u} for u in ids]
    user_features = features[:-1]
    plugin = contract.plugin.get_online_features(user_features, rows, full_feature_names=full_feature_names)
    assert plugin.to_dict() == {"user_id": ids} | expected_values(users, [(u,) for u in ids], USER_FEATURES,
                                                                   contract.cutoff, prefix)
    stock = contract.stock.get_online_features(user_features, rows, full_feature_names=full_feature_names)
    ignoring = contract.plugin_ignoring_ttl.get_online_features(user_features, rows,
                                                                full_feature_names=full_feature_names)
    assert ignoring.to_dict(include_event_timestamps=True) == stock.to_dict(include_event_timestamps=True)
    assert statuses_of(ignoring) == statuses_of(stock)
    assert ignoring.to_dict() == {"user_id": ids} | expected_values(users, [(u,) for u in ids], USER_FEATURES, None,
                                                                     prefix)


def test_async_reads_equal_sync_reads(contract):
    from materialize.feature_store.online_store import PostgresFastOnlineStore

    features = [f"user_profile:{f}" for f in USER_FEATURES] + ["item_embedding:title"]
    rows = [{"user_id": u, "item_id": u} for u in range(1, N_USERS + 3)]

    async def read_twice():
        first = await contract.plugin.get_online_features_async(features, rows)
        second = await contract.plugin.get_online_features_async(features, rows)  # the same loop's pool
        return first, second

    first, second = asyncio.run(read_twice())
    sync = contract.plugin.get_online_features(features, rows)
    assert first.to_dict() == second.to_dict() == sync.to_dict()
    assert statuses_of(first) == statuses_of(sync)

    store = contract.plugin._get_provider().online_store
    assert isinstance(store, PostgresFastOnlineStore)
    assert store.async_supported.read and store.async_supported.write
    view, keys = contract.view("user_profile"), _entity_keys("user_id", range(1, 40))
    assert asyncio.run(store.online_read_async(contract.plugin.config, view, keys)) == \
        store.online_read(contract.plugin.config, view, keys)


# --------------------------------------------------------------------------- tests: writes


def _entity_keys(join_key, ids):
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return [EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(i))]) for i in ids]


def _user_frame(rows):
    import pandas as pd

    return pd.DataFrame(rows)


def test_push_reaches_the_online_store_and_older_pushes_never_win(contract):
    from feast.data_source import PushMode

    rng = np.random.default_rng(7)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    newer = [_user_row(rng, u, now - dt.timedelta(hours=1), now) for u in PUSHED_USERS]
    older = [_user_row(rng, u, now - dt.timedelta(hours=5), now) for u in PUSHED_USERS]
    for row in newer:  # no nulls: a pushed frame needs typed columns
        row["visits"], row["spend"], row["item_ids"], row["segment"] = 3, 1.5, [1, 2], "pushed"
    for row in older:
        row["visits"], row["spend"], row["item_ids"], row["segment"] = 1, 0.5, [9], "older"
    features = [f"user_profile:{f}" for f in USER_FEATURES]
    rows = [{"user_id": u} for u in PUSHED_USERS]

    contract.plugin.push("user_push", _user_frame(newer), to=PushMode.ONLINE)
    contract.plugin.push("user_push", _user_frame(older), to=PushMode.ONLINE)  # arrives late: ignored
    asyncio.run(contract.plugin.push_async("user_push", _user_frame(older), to=PushMode.ONLINE))
    contract.stock.push("user_push", _user_frame(newer), to=PushMode.ONLINE)

    expected = {"user_id": list(PUSHED_USERS)} | expected_values(
        latest_rows(newer + older, ["user_id"]), [(u,) for u in PUSHED_USERS], USER_FEATURES, None)
    assert contract.plugin.get_online_features(features, rows).to_dict() == expected
    assert contract.stock.get_online_features(features, rows).to_dict() == expected


def _values(visits: int, segment: str):
    from feast.protos.feast.types.Value_pb2 import Value

    return {"visits": Value(int64_val=visits), "segment": Value(string_val=segment)}


def test_out_of_order_batches_keep_the_newest_row(contract):
    store = contract.plugin._get_provider().online_store
    config, view = contract.plugin.config, contract.view("user_profile")
    now = dt.datetime.now(UTC)
    t1, t2 = now - dt.timedelta(hours=3), now - dt.timedelta(hours=2)
    a, b, c, d, e = _entity_keys("user_id", list(WRITTEN_USERS[:4]) + [WRITTEN_USERS[7]])
    naive = (now - dt.timedelta(hours=1)).replace(tzinfo=None)  # Feast's naive timestamps mean UTC

    store.online_write_batch(config, view, [(a, _values(2, "a-new"), t2, None), (b, _values(2, "b-new"), t2, t1)],
                             None)
    store.online_write_batch(config, view, [(a, _values(1, "a-old"), t1, None), (b, _values(1, "b-old"), t2, None)],
                             None)
    # Several rows per entity in one batch, in no order: newest event, then newest created,
    # then the later row of the batch wins.
    store.online_write_batch(config, view, [
        (c, _values(3, "c-created-late"), t2, t2),
        (c, _values(2, "c-created-early"), t2, t1),
        (c, _values(1, "c-old"), t1, t2),
        (d, _values(1, "d-first"), t2, None),
        (d, _values(2, "d-second"), t2, None),
        (e, _values(1, "e-old"), t2, None),
        (e, _values(0, "e-naive-newest"), naive, None),
    ], None)
    asyncio.run(store.online_write_batch_async(config, view, [(c, _values(9, "c-async-old"), t1, now)], None))

    result = store.online_read(config, view, [a, b, c, d, e], ["visits", "segment"])
    assert [r[1]["segment"].string_val for r in result] == ["a-new", "b-new", "c-created-late", "d-second",
                                                             "e-naive-newest"]
    assert result[4][0] == naive.replace(tzinfo=UTC)
    assert [r[1]["visits"].int64_val for r in result] == [2, 2, 3, 2, 0]
    assert sorted(result[0][1]) == ["segment", "visits"]
    assert store.online_read(config, view, [a], ["segment"])[0][1].keys() == {"segment"}

    # These rows hold two of the view's six features: the others read as NOT_FOUND.
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    response = contract.plugin.get_online_features(
        ["user_profile:visits", "user_profile:spend", "user_profile:segment"],
        [{"user_id": u} for u in WRITTEN_USERS[:4]])
    assert response.to_dict()["segment"] == ["a-new", "b-new", "c-created-late", "d-second"]
    assert response.to_dict()["spend"] == [None] * 4
    statuses = statuses_of(response)
    assert statuses["spend"] == [FieldStatus.NOT_FOUND] * 4 and statuses["visits"] == [FieldStatus.PRESENT] * 4


def test_ttl_on_read(contract):
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    store = contract.plugin._get_provider().online_store
    config, view = contract.plugin.config, contract.view("user_profile")
    now = dt.datetime.now(UTC)
    fresh, stale = _entity_keys("user_id", WRITTEN_USERS[4:6])
    store.online_write_batch(config, view, [
        (fresh, _values(1, "fresh"), now - TTL + dt.timedelta(minutes=5), None),
        (stale, _values(2, "stale"), now - TTL - dt.timedelta(minutes=5), None),
    ], None)
    rows = [{"user_id": u} for u in WRITTEN_USERS[4:7]]  # fresh, stale, never written

    hidden = contract.plugin.get_online_features(["user_profile:segment"], rows)
    assert hidden.to_dict()["segment"] == ["fresh", None, None]
    assert statuses_of(hidden)["segment"] == [FieldStatus.PRESENT, FieldStatus.OUTSIDE_MAX_AGE, FieldStatus.NOT_FOUND]
    assert store.online_read(config, view, [fresh, stale])[1] == (None, None)

    flagging = open_store(contract.pg, contract.registry, plugin_online(contract.pg, ttl_on_read="flag"))
    flagged = flagging.get_online_features(["user_profile:segment"], rows)
    assert flagged.to_dict()["segment"] == ["fresh", "stale", None]
    assert statuses_of(flagged)["segment"] == statuses_of(hidden)["segment"]
    asyncio.run(flagging.close())
    ignored = contract.plugin_ignoring_ttl.get_online_features(["user_profile:segment"], rows)
    assert statuses_of(ignored)["segment"] == [FieldStatus.PRESENT, FieldStatus.PRESENT, FieldStatus.NOT_FOUND]


# --------------------------------------------------------------------------- tests: vectors


def _exact_cosine_top_k(vectors: dict, query, k):
    ids = np.array(sorted(vectors))
    matrix = np.array([vectors[i] for i in ids], dtype=np.float64)
    similarity = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    order = np.argsort(-similarity, kind="stable")[:k]
    return ids[order].tolist(), (1 - similarity[order]).tolist()


def test_vector_search_equals_exact_cosine_top_k(contract):
    """The store's answer is the exact top k, each row with its own features. Through
    ``FeatureStore.retrieve_online_documents_v2`` the plugin answers what stock answers:
    Feast 0.67 there pairs the i-th nearest entity's features with the entity of the i-th
    smallest key (it sorts the keys to deduplicate them), for stock and plugin alike, so
    only the entity column and the set of values are compared with the reference."""
    import pandas as pd

    latest = latest_rows(contract.item_rows, ["item_id"])
    vectors = {key[0]: np.asarray(row["embedding"], np.float64) for key, row in latest.items()}
    store = contract.plugin._get_provider().online_store
    view = contract.view("item_embedding")
    rng = np.random.default_rng(11)
    features = ["item_embedding:embedding", "item_embedding:title"]
    k = 10
    for query in rng.normal(size=(10, DIM)):
        expected_ids, expected_distances = _exact_cosine_top_k(vectors, query, k)
        rows = store.retrieve_online_documents_v2(contract.plugin.config, view, ["embedding", "title"],
                                                  query.tolist(), k, "cosine")
        assert [key.entity_values[0].int64_val for _, key, _ in rows] == expected_ids  # recall 1.0 at this size
        assert [f["distance"].double_val for _, _, f in rows] == pytest.approx(expected_distances, abs=1e-5)
        assert [f["title"].string_val for _, _, f in rows] == [latest[(i,)]["title"] for i in expected_ids]
        assert [list(f["embedding"].float_list_val.val) for _, _, f in rows] == \
            [latest[(i,)]["embedding"] for i in expected_ids]
        assert all(ts == latest[(i,)]["event_timestamp"] for (ts, _, _), i in zip(rows, expected_ids))

        got = contract.plugin.retrieve_online_documents_v2(features=features, query=query.tolist(), top_k=k,
                                                           distance_metric="cosine").to_dict()
        stock = contract.stock.retrieve_online_documents_v2(features=features, query=query.tolist(), top_k=k,
                                                            distance_metric="cosine").to_dict()
        assert got["item_id"] == stock["item_id"] == expected_ids
        assert sorted(got) == sorted(stock) == ["distance", "embedding", "item_id", "title"]
        assert got["distance"] == pytest.approx(stock["distance"], abs=1e-6)
        assert got["title"] == stock["title"] and got["embedding"] == stock["embedding"]
        assert sorted(got["title"]) == sorted(latest[(i,)]["title"] for i in expected_ids)

    # A few new items go into the existing graph (no rebuild) and are found at once.
    query = rng.normal(size=DIM)
    new = pd.DataFrame({
        "item_id": list(NEW_ITEMS),
        "event_timestamp": [dt.datetime.now(UTC)] * len(NEW_ITEMS),
        "created_timestamp": [dt.datetime.now(UTC)] * len(NEW_ITEMS),
        "embedding": [(query + 0.01 * rng.normal(size=DIM)).astype(np.float32).tolist() for _ in NEW_ITEMS],
        "title": [f"new {i}" for i in NEW_ITEMS],
    })
    contract.plugin.write_to_online_store("item_embedding", new)
    rows = store.retrieve_online_documents_v2(contract.plugin.config, view, ["title"], query.tolist(), 5, "cosine")
    assert {key.entity_values[0].int64_val for _, key, _ in rows[:len(NEW_ITEMS)]} == set(NEW_ITEMS)


def test_vector_query_is_an_hnsw_index_scan(contract):
    from materialize.feature_store.online_store import ann_statement, ef_search_for, view_table

    table = view_table(contract.plugin.config, contract.view("item_embedding"))
    query = np.random.default_rng(3).normal(size=DIM).tolist()
    statement, params = ann_statement(table, query, 50, "cosine", None)
    config = contract.plugin.config
    assert ef_search_for(config, 50) == 400 and ef_search_for(config, 300) == 600 and ef_search_for(config, 600) == 1000
    with contract.connect() as conn:
        plan = "\n".join(row[0] for row in conn.execute(sql.SQL("EXPLAIN ") + statement, params))
    assert f"Index Scan using {table.index}" in plan, plan
    assert f"Seq Scan on {table.name}" not in plan  # only the k rows found are sorted (after the layout join)


# --------------------------------------------------------------------------- tests: infrastructure


def test_update_fits_tables_to_views_and_teardown_drops_them(contract, tmp_path):
    from feast import FeatureView, Field
    from feast.types import Array, Float32

    from materialize.feature_store.online_store import layouts_table_name, online_table_name

    project = "online_lifecycle"
    store = open_store(contract.pg, tmp_path / "registry.db", plugin_online(contract.pg), project=project)
    user, item, user_push, user_profile, _, item_embedding = _feast_objects()
    store.apply([user, item, user_push, user_profile, item_embedding])

    def tables():
        with contract.connect() as conn:
            return dict(conn.execute(
                "SELECT c.relname, format_type(a.atttypid, a.atttypmod) FROM pg_class c LEFT JOIN pg_attribute a "
                "ON a.attrelid = c.oid AND a.attname = 'vector_value' WHERE c.relname LIKE %s AND c.relkind = 'r'",
                (f"{project}%",)).fetchall())

    profile, embedding = online_table_name(project, "user_profile"), online_table_name(project, "item_embedding")
    layouts = layouts_table_name(project)
    assert tables() == {profile: None, embedding: f"vector({DIM})", layouts: None}

    wider = FeatureView(name="item_embedding", entities=[item], ttl=dt.timedelta(0), source=item_embedding.batch_source,
                        schema=[Field(name="embedding", dtype=Array(Float32), vector_index=True, vector_length=2 * DIM,
                                      vector_search_metric="cosine")])
    store.apply([wider], objects_to_delete=[user_profile], partial=False)
    assert tables() == {embedding: f"vector({2 * DIM})", layouts: None}

    store.teardown()
    asyncio.run(store.close())
    assert tables() == {}
    assert online_table_name("p" * 40, "v" * 40) != online_table_name("p" * 40, "v" * 39 + "w")
    assert len(online_table_name("p" * 40, "v" * 40).encode()) <= 63


def test_connections_recover_after_a_server_restart(tmp_path):
    """Stop and start a private embedded server under a live store: calls during the
    outage fail with psycopg's OperationalError, the first call after it succeeds."""

    pgdata = Path(tempfile.mkdtemp(prefix="online-store-pg-"))
    server = PostgresSettings(host=str(pgdata), sslmode="disable", embedded=True)
    try:
        with new_database(server) as pg:
            store = open_store(pg, tmp_path / "registry.db", plugin_online(pg), project="online_restart")
            user, _, user_push, user_profile, _, _ = _feast_objects()
            store.apply([user, user_push, user_profile])
            now = dt.datetime.now(UTC)
            store.write_to_online_store("user_profile", _user_frame(
                [_user_row(np.random.default_rng(1), u, now, now) | {"visits": u, "spend": 1.0, "item_ids": [u],
                                                                     "segment": "s"} for u in (1, 2)]))
            rows, features = [{"user_id": 1}, {"user_id": 2}], ["user_profile:visits"]
            loop = asyncio.new_event_loop()

            def read_async():
                return loop.run_until_complete(store.get_online_features_async(features, rows)).to_dict()

            before = store.get_online_features(features, rows).to_dict()
            assert before["visits"] == [1, 2] and read_async() == before

            stop_embedded(pgdata)
            with pytest.raises(psycopg.OperationalError):
                store.get_online_features(features, rows)
            with pytest.raises(psycopg.OperationalError):
                read_async()

            # A fresh process: pgserver caches the handle of a server it started in this one.
            subprocess.run([sys.executable, "-c", "from pathlib import Path; from materialize.database.server import "
                            f"start_embedded; start_embedded(Path({str(pgdata)!r}))"], check=True, capture_output=True)
            started = time.monotonic()
            assert store.get_online_features(features, rows).to_dict() == before
            assert read_async() == before
            assert time.monotonic() - started < 5
            loop.run_until_complete(store._get_provider().online_store.close())
            loop.close()
    finally:
        stop_embedded(pgdata)
        shutil.rmtree(pgdata, ignore_errors=True)


def _stored_rows(conn, project: str, view: str) -> list[tuple]:
    from materialize.feature_store.online_store import online_table_name

    vector = ", vector_value::text" if view == "item_embedding" else ""
    return conn.execute(sql.SQL(
        "SELECT entity_key, layout_id, value_offsets, feature_values, event_ts, created_ts, event_ts_wire{} "
        "FROM {} ORDER BY entity_key").format(sql.SQL(vector), sql.Identifier("public", online_table_name(project, view)))
    ).fetchall()


def test_arrow_engine_and_lateral_reads_store_the_same_bytes_as_feasts_path(contract, tmp_path):
    """The repo's materialization path (the offline plugin's skip-scan read, the Arrow
    engine, the store's own encoding) stores byte for byte what Feast's conversion does."""
    from materialize.feature_store.compute_engine import ENGINE_TYPE
    from materialize.feature_store.offline_store import STORE_TYPE as OFFLINE_TYPE

    project = "arrow_engine"
    store = open_store(contract.pg, tmp_path / "registry.db", plugin_online(contract.pg), project=project,
                       offline_type=OFFLINE_TYPE, batch_engine=ENGINE_TYPE)
    store.apply(_feast_objects())
    sources = {"user_profile": len({r["user_id"] for r in contract.user_rows}),
               "user_item": len({(r["user_id"], r["item_id"]) for r in contract.pair_rows}),
               "item_embedding": len({r["item_id"] for r in contract.item_rows})}
    try:
        store.materialize(start_date=contract.window[0], end_date=contract.window[1])
        with contract.connect() as conn:
            for view in ("user_profile", "user_item", "item_embedding"):
                got = {row[0]: row for row in _stored_rows(conn, project, view)}
                # other tests write further entities into the fixture's project
                expected = {row[0]: row for row in _stored_rows(conn, PROJECT, view) if row[0] in got}
                assert len(got) == sources[view] and got == expected, view
    finally:
        store.teardown()
        asyncio.run(store.close())


def test_encoding_slices_are_serving_response_values():
    """Each stored value slice is the value's FeatureVector field, and the payload
    decodes back to the values (no database)."""
    from feast.protos.feast.serving.ServingService_pb2 import GetOnlineFeaturesResponse
    from feast.protos.feast.types.Value_pb2 import DoubleList, Value

    from materialize.feature_store.online_store import decode_feature_values, encode_feature_values

    values = {"a": Value(int64_val=7), "b": Value(), "c": Value(double_list_val=DoubleList(val=[0.5] * 300)),
              "é": Value(string_val="x" * 200)}
    names, payload, offsets = encode_feature_values(values)
    assert names == ("a", "b", "c", "é") and offsets[-1] == len(payload)
    for i, name in enumerate(names):
        vector = GetOnlineFeaturesResponse.FeatureVector.FromString(payload[offsets[i]:offsets[i + 1]])
        assert list(vector.values) == [values[name]]
    assert decode_feature_values(names, payload) == values
    assert decode_feature_values(names, payload, ["c", "zz"]) == {"c": values["c"]}


def test_feature_server_reads_and_pushes_through_the_plugin(contract):
    """``feast serve``'s app: its async read and push paths run on the plugin."""
    from fastapi.testclient import TestClient
    from feast.feature_server import get_app

    store = open_store(contract.pg, contract.registry, plugin_online(contract.pg))
    ids = [1, 2, 3, N_USERS + 1]
    features = [f"user_profile:{f}" for f in ("visits", "spend", "segment")]
    expected = contract.plugin.get_online_features(features, [{"user_id": u} for u in ids])
    now = dt.datetime.now(UTC).replace(microsecond=0).isoformat()
    pushed = {"user_id": [5101, 5102], "event_timestamp": [now, now], "created_timestamp": [now, now],
              "visits": [4, 5], "item_ids": [[1], [2]], "shares": [[0.5], [0.25]], "spend": [1.0, 2.0],
              "active": [True, False], "segment": ["served", "served"]}
    with TestClient(get_app(store, registry_ttl_sec=0)) as client:
        response = client.post("/get-online-features", json={"entities": {"user_id": ids}, "features": features})
        assert response.status_code == 200, response.text
        body = response.json()
        served = {name: result["values"] for name, result in zip(body["metadata"]["feature_names"], body["results"])}
        assert served == {"user_id": ids} | {k: v for k, v in expected.to_dict().items() if k != "user_id"}
        push = client.post("/push", json={"push_source_name": "user_push", "df": pushed, "to": "online"})
        assert push.status_code == 200, push.text
    read = contract.plugin.get_online_features(features, [{"user_id": 5101}, {"user_id": 5102}]).to_dict()
    assert read["segment"] == ["served", "served"] and read["visits"] == [4, 5]


def test_pushes_through_the_arrow_provider_store_the_same_bytes_as_feasts_path(contract, tmp_path, monkeypatch):
    """``ArrowPushProvider`` hands pushed frames to the store as Arrow: the rows stored (one-
    and two-key views, a 384-float vector view, nulls) are byte for byte those of Feast's
    own conversion."""
    import pandas as pd
    from feast.data_source import PushMode

    from materialize.feature_store.online_store import PostgresFastOnlineStore
    from materialize.feature_store.provider import PROVIDER_TYPE

    encoded = []  # what each Arrow write answered (False: it fell back to Feast's conversion)
    write_arrow = PostgresFastOnlineStore.online_write_arrow
    monkeypatch.setattr(PostgresFastOnlineStore, "online_write_arrow",
                        lambda self, *args: encoded.append(write_arrow(self, *args)) or encoded[-1])
    rng = np.random.default_rng(11)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    users = [_user_row(rng, u, now - dt.timedelta(hours=1), now) for u in range(1, 41)]
    for row in users[:20]:  # typed columns with nulls in them, and a column of nulls only
        row["visits"], row["spend"], row["segment"] = 7, None, None
    for row in users[20:]:
        row["visits"], row["spend"], row["segment"], row["item_ids"] = 3, None, "pushed", [1, 2]
    frames = {"user_profile": pd.DataFrame(users),
              "user_item": pd.DataFrame([{"user_id": u, "item_id": i, "event_timestamp": now, "created_timestamp": now,
                                          "affinity": float(rng.normal())} for u in range(1, 11) for i in (1, 12)]),
              "item_embedding": pd.DataFrame([{"item_id": i, "event_timestamp": now, "created_timestamp": now,
                                               "embedding": rng.normal(size=DIM).astype(np.float32).tolist(),
                                               "title": f"pushed {i}"} for i in range(1, 31)])}
    stores = {project: open_store(contract.pg, tmp_path / f"{project}.db", plugin_online(contract.pg), project=project,
                                  provider=provider)
              for project, provider in (("push_arrow", PROVIDER_TYPE), ("push_stock", "local"))}
    try:
        for store in stores.values():
            store.apply(_feast_objects())
            for view, frame in frames.items():
                store.write_to_online_store(view, frame)
            store.push("user_push", frames["user_profile"], to=PushMode.ONLINE)
        with contract.connect() as conn:
            for view, frame in frames.items():
                arrow_rows, stock_rows = (_stored_rows(conn, project, view) for project in stores)
                assert len(arrow_rows) == len(frame) and arrow_rows == stock_rows, view
        assert encoded == [True] * 4  # three views and the push, all as Arrow
    finally:
        for store in stores.values():
            store.teardown()
            asyncio.run(store.close())
