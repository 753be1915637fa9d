"""Contract tests of the LATERAL offline store against stock Feast and a brute-force
reference, on a small repo of its own: randomised rows on a coarse time grid (so entity
times often equal feature times), equal timestamps told apart by ``created_timestamp``,
entity rows on both sides of the ttl edge, a two-key view whose keys would collide in a
concatenated row id, an on-demand view, full feature names and SQL entity frames."""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import psycopg
import pytest

from materialize.feature_store.offline_store import ENTITY_TABLE_PREFIX, STORE_TYPE
from materialize.feature_store.repo import apply_repo, open_store
from tests.conftest import new_database

START = pd.Timestamp("2026-03-01", tz="UTC")
TTL = pd.Timedelta(hours=12)
DEFINITIONS = textwrap.dedent('''
    from datetime import timedelta

    import pandas as pd
    from feast import Entity, FeatureView, Field, ValueType
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.on_demand_feature_view import on_demand_feature_view
    from feast.types import Array, Float32, Float64, Int64

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)

    def source(table):
        return PostgreSQLSource(name=table, query=f"SELECT * FROM {table}", timestamp_field="event_timestamp",
                                created_timestamp_column="created_timestamp")

    stats_source = source("user_stats")
    user_stats = FeatureView(name="user_stats", entities=[user], ttl=timedelta(hours=12), source=stats_source,
                             schema=[Field(name="clicks", dtype=Int64), Field(name="spend", dtype=Float64),
                                     Field(name="shares", dtype=Array(Float32))])
    user_spend = FeatureView(name="user_spend", entities=[user], ttl=timedelta(hours=12), source=stats_source,
                             schema=[Field(name="spend", dtype=Float64)])
    user_history = FeatureView(name="user_history", entities=[user], ttl=timedelta(0), source=source("user_history"),
                               schema=[Field(name="visits", dtype=Int64)])
    user_item = FeatureView(name="user_item", entities=[user, item], ttl=timedelta(hours=12), source=source("user_item"),
                            schema=[Field(name="affinity", dtype=Float64)])

    @on_demand_feature_view(sources=[user_stats, user_item], schema=[Field(name="affinity_per_click", dtype=Float64)])
    def user_item_ratio(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"affinity_per_click": inputs["affinity"] / (inputs["clicks"] + 1)})
''')
YAML = textwrap.dedent('''
    project: offline_contract
    provider: local
    registry:
      registry_type: sql
      path: ${INTEREST_REGISTRY_URL}
    offline_store:
      type: OFFLINE_TYPE
      host: ${INTEREST_PG_HOST}
      port: ${INTEREST_PG_PORT}
      database: ${INTEREST_PG_DB}
      user: ${INTEREST_PG_USER}
      password: "${INTEREST_PG_PASSWORD}"
      sslmode: ${INTEREST_PG_SSLMODE}
    online_store:
      type: postgres
      host: ${INTEREST_PG_HOST}
      port: ${INTEREST_PG_PORT}
      database: ${INTEREST_PG_DB}
      user: ${INTEREST_PG_USER}
      password: "${INTEREST_PG_PASSWORD}"
      sslmode: ${INTEREST_PG_SSLMODE}
    entity_key_serialization_version: 3
''')
VIEWS = {  # view -> (join keys, ttl, features)
    "user_stats": (["user_id"], TTL, ["clicks", "spend", "shares"]),
    "user_history": (["user_id"], None, ["visits"]),
    "user_item": (["user_id", "item_id"], TTL, ["affinity"]),
}
FEATURES = ["user_stats:clicks", "user_stats:spend", "user_stats:shares", "user_history:visits", "user_item:affinity",
            "user_item_ratio:affinity_per_click"]


def _grid_times(rng, n) -> pd.Series:
    return START + pd.to_timedelta(rng.integers(0, 24 * 30, n) // 6 * 6, unit="h")  # 6-hour grid over 30 days


def _source_rows(rng) -> dict[str, pd.DataFrame]:
    created = pd.Timestamp("2026-05-01", tz="UTC")
    n = 600
    users = pd.DataFrame({"user_id": rng.integers(1, 13, n), "event_timestamp": _grid_times(rng, n),
                          "created_timestamp": created - pd.to_timedelta(rng.integers(0, 3, n), unit="D"),
                          "clicks": rng.integers(0, 100, n), "spend": rng.normal(50, 20, n).round(3)})
    users = users.drop_duplicates(["user_id", "event_timestamp", "created_timestamp"]).reset_index(drop=True)
    users["shares"] = [rng.random(3).astype(np.float32).round(3).tolist() for _ in range(len(users))]
    history = pd.DataFrame({"user_id": rng.integers(1, 13, 300), "event_timestamp": _grid_times(rng, 300),
                            "created_timestamp": created, "visits": rng.integers(0, 50, 300)})
    history = history.drop_duplicates(["user_id", "event_timestamp"]).reset_index(drop=True)
    # Keys chosen so that a concatenated id would confuse (1, 12) with (11, 2).
    pairs = np.array([(1, 12), (11, 2), (1, 2), (11, 12), (2, 3)])[rng.integers(0, 5, 400)]
    user_item = pd.DataFrame({"user_id": pairs[:, 0], "item_id": pairs[:, 1], "event_timestamp": _grid_times(rng, 400),
                              "created_timestamp": created, "affinity": rng.random(400).round(4)})
    user_item = user_item.drop_duplicates(["user_id", "item_id", "event_timestamp"]).reset_index(drop=True)
    return {"user_stats": users, "user_history": history, "user_item": user_item}


def _entity_rows(rng, sources) -> pd.DataFrame:
    n = 250
    pairs = np.array([(1, 12), (11, 2), (1, 2), (11, 12), (2, 3), (12, 1), (13, 5)])[rng.integers(0, 7, n)]
    rows = pd.DataFrame({"user_id": pairs[:, 0], "item_id": pairs[:, 1],
                         "event_timestamp": _grid_times(rng, n) + pd.Timedelta(days=2)})
    edges = sources["user_stats"].sample(20, random_state=3)
    for offset in (pd.Timedelta(0), TTL, TTL + pd.Timedelta(seconds=1), TTL - pd.Timedelta(seconds=1)):
        rows = pd.concat([rows, pd.DataFrame({"user_id": edges.user_id.to_numpy(), "item_id": 12,
                                              "event_timestamp": (edges.event_timestamp + offset).to_numpy()})])
    rows = rows.reset_index(drop=True)
    rows["event_timestamp"] = pd.to_datetime(rows.event_timestamp, utc=True)
    rows["request_tag"] = np.arange(len(rows))  # an extra entity column comes back untouched
    return rows


def _reference(entity_rows: pd.DataFrame, sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The latest source row with ts <= entity ts (and >= entity ts - ttl), ties broken by
    the latest created timestamp; computed row by row."""
    out = entity_rows.copy()
    for view, (keys, ttl, features) in VIEWS.items():
        source = sources[view]
        found = []
        for _, row in entity_rows.iterrows():
            match = source[(source[keys] == row[keys].to_numpy()).all(axis=1) & (source.event_timestamp <= row.event_timestamp)]
            if ttl is not None:
                match = match[match.event_timestamp >= row.event_timestamp - ttl]
            match = match.sort_values(["event_timestamp", "created_timestamp"])
            found.append(match.iloc[-1][features].to_dict() if len(match) else dict.fromkeys(features))
        out = pd.concat([out, pd.DataFrame(found, index=out.index)], axis=1)
    out["affinity_per_click"] = out.affinity.astype(float) / (out.clicks.astype(float) + 1)
    return out


def _comparable(frame: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    frame = frame.copy()
    if frame.event_timestamp.dt.tz is None:
        frame["event_timestamp"] = frame.event_timestamp.dt.tz_localize("UTC")
    names = {f"{prefix}{f}": f for f in ["clicks", "spend", "visits", "affinity", "affinity_per_click"]}
    frame = frame.rename(columns=names | {f"{prefix}shares": "shares"})
    frame["shares"] = [None if v is None or (np.isscalar(v) and pd.isna(v)) else np.round(np.asarray(v, float), 3).tolist()
                       for v in frame.shares]
    columns = ["request_tag", "user_id", "item_id", "event_timestamp", "clicks", "spend", "visits", "affinity",
               "affinity_per_click", "shares"]
    return frame[columns].sort_values("request_tag").reset_index(drop=True).astype({c: "float64" for c in columns[4:9]})


@pytest.fixture(scope="module")
def stores(pg_server, settings, tmp_path_factory):
    """The same applied repo opened with the plugin and with stock Feast's offline store."""
    with new_database(pg_server) as pg:
        rng = np.random.default_rng(5)
        sources = _source_rows(rng)
        with psycopg.connect(pg.conninfo()) as conn:
            for table, frame in sources.items():
                columns = {"user_id": "bigint", "item_id": "bigint", "event_timestamp": "timestamptz",
                           "created_timestamp": "timestamptz", "clicks": "bigint", "spend": "double precision",
                           "shares": "real[]", "visits": "bigint", "affinity": "double precision"}
                conn.execute(f"CREATE TABLE {table} ({', '.join(f'{c} {columns[c]}' for c in frame.columns)}, "
                             f"PRIMARY KEY ({', '.join(c for c in ('user_id', 'item_id') if c in frame)}, event_timestamp, created_timestamp))")
                with conn.cursor().copy(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN") as copy:
                    for row in frame.itertuples(index=False):
                        copy.write_row(tuple(row))
        opened = {}
        for name, offline_type in (("plugin", STORE_TYPE), ("stock", "postgres")):
            repo = tmp_path_factory.mktemp(f"repo_{name}")
            (repo / "definitions.py").write_text(DEFINITIONS)
            (repo / "feature_store.yaml").write_text(YAML.replace("OFFLINE_TYPE", offline_type))
            if name == "plugin":
                apply_repo(repo, pg, pgvector=False)
            opened[name] = open_store(repo, pg, pgvector=False)
        yield opened, sources, _entity_rows(rng, sources), pg


def test_plugin_is_the_configured_offline_store(stores):
    opened, *_ = stores
    assert type(opened["plugin"]._get_provider().offline_store).__name__ == "LateralJoinPostgreSQLOfflineStore"


def test_matches_the_reference_including_ties_ttl_edges_and_colliding_keys(stores):
    opened, sources, entity_rows, _ = stores
    expected = _comparable(_reference(entity_rows, sources))
    ours = opened["plugin"].get_historical_features(entity_df=entity_rows, features=FEATURES).to_df()
    assert len(ours) == len(entity_rows)
    pd.testing.assert_frame_equal(_comparable(ours), expected, check_dtype=False)
    # The cases are really there: found and expired values on the ttl edge, equal
    # timestamps told apart by created_timestamp, and both colliding key pairs.
    edge = expected.request_tag >= 250
    assert expected.clicks[edge].isna().any() and expected.clicks[edge].notna().any()
    stats = sources["user_stats"]
    assert stats.duplicated(["user_id", "event_timestamp"]).any()
    assert expected[(expected.user_id == 1) & (expected.item_id == 12)].affinity.notna().any()
    assert expected[(expected.user_id == 11) & (expected.item_id == 2)].affinity.notna().any()


def test_matches_stock_feast_where_stock_is_right(stores):
    """Stock concatenates join keys into a row id, so it is compared on the rows whose
    pair cannot collide with another at the same time."""
    opened, _, entity_rows, _ = stores
    ids = entity_rows.user_id.astype(str) + entity_rows.item_id.astype(str) + entity_rows.event_timestamp.astype(str)
    safe = entity_rows[~ids.duplicated(keep=False) & ~entity_rows.user_id.isin([1, 11])]
    ours = opened["plugin"].get_historical_features(entity_df=safe, features=FEATURES).to_df()
    stock = opened["stock"].get_historical_features(entity_df=safe, features=FEATURES).to_df()
    pd.testing.assert_frame_equal(_comparable(ours), _comparable(stock), check_dtype=False)
    assert list(ours.columns)[:4] == list(safe.columns)


def test_full_feature_names_and_sql_entity_rows(stores):
    opened, sources, entity_rows, pg = stores
    with psycopg.connect(pg.conninfo()) as conn:
        conn.execute("CREATE TABLE requests (user_id bigint, item_id bigint, event_timestamp timestamptz, request_tag bigint)")
        with conn.cursor().copy("COPY requests FROM STDIN") as copy:
            for row in entity_rows[["user_id", "item_id", "event_timestamp", "request_tag"]].itertuples(index=False):
                copy.write_row(tuple(row))
    frame = opened["plugin"].get_historical_features(
        entity_df="SELECT * FROM requests", features=FEATURES, full_feature_names=True
    ).to_df()
    assert {"user_stats__clicks", "user_item__affinity", "user_item_ratio__affinity_per_click"} <= set(frame.columns)
    renamed = frame.rename(columns=lambda c: c.split("__")[-1])
    pd.testing.assert_frame_equal(_comparable(renamed), _comparable(_reference(entity_rows, sources)), check_dtype=False)


def test_leaves_no_entity_tables_and_to_sql_names_the_lateral_join(stores):
    opened, _, entity_rows, pg = stores
    job = opened["plugin"].get_historical_features(entity_df=entity_rows.head(5), features=FEATURES)
    assert "LEFT JOIN LATERAL" in job.to_sql()
    job.to_df()
    with psycopg.connect(pg.conninfo()) as conn:
        left = conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE %s", (f"{ENTITY_TABLE_PREFIX}%",)).fetchone()[0]
    assert left == 0


def test_views_reading_one_source_share_one_lookup(stores):
    opened, _, entity_rows, _ = stores
    job = opened["plugin"].get_historical_features(
        entity_df=entity_rows, features=["user_stats:spend", "user_spend:spend", "user_history:visits"],
        full_feature_names=True)
    assert job.to_sql().count("LEFT JOIN LATERAL") == 2
    frame = job.to_df()
    assert frame.user_stats__spend.notna().any()
    pd.testing.assert_series_equal(frame.user_spend__spend, frame.user_stats__spend, check_names=False)


def test_materialization_reads_equal_stock(stores):
    """``pull_latest_from_table_or_query`` (the skip scan) returns stock's rows, over a
    window that cuts through the histories."""
    opened, sources, _, _ = stores
    for view, (keys, _, features) in VIEWS.items():
        times = sources[view].event_timestamp.sort_values()
        start, end = times.iloc[len(times) // 4].to_pydatetime(), times.iloc[3 * len(times) // 4].to_pydatetime()
        frames = []
        for name in ("plugin", "stock"):
            store = opened[name]
            offline = store._get_provider().offline_store
            frame = offline.pull_latest_from_table_or_query(
                store.config, store.get_feature_view(view).batch_source, keys, features, "event_timestamp",
                "created_timestamp", start, end).to_df()
            for column in ("event_timestamp", "created_timestamp"):
                frame[column] = pd.to_datetime(frame[column], utc=True)
            frames.append(frame.sort_values(keys).reset_index(drop=True))
        assert len(frames[0]) > 0
        pd.testing.assert_frame_equal(frames[0].astype(str), frames[1][list(frames[0].columns)].astype(str))


def test_naive_entity_timestamps_mean_utc(stores):
    opened, _, entity_rows, _ = stores
    aware = opened["plugin"].get_historical_features(entity_df=entity_rows.head(40), features=FEATURES).to_df()
    naive_rows = entity_rows.head(40).assign(event_timestamp=entity_rows.event_timestamp.head(40).dt.tz_convert(None))
    naive = opened["plugin"].get_historical_features(entity_df=naive_rows, features=FEATURES).to_df()
    pd.testing.assert_frame_equal(_comparable(naive), _comparable(aware))
    assert str(aware.event_timestamp.dt.tz) == "UTC"
