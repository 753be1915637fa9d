"""Point-in-time retrieval through the project's feature repo against a brute-force reference.

Random feature rows (with timestamps on a coarse grid so that entity times often equal
feature times) and entity rows on the ttl edges; the repo's configured offline store (the
LATERAL plugin) and stock Feast's must both return exactly what the reference says.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from materialize.database.tables import fetch_frame
from materialize.ingest.loader import load_frames
from materialize.feature_store.repo import open_store
from materialize.pipeline import Pipeline
from tests.conftest import new_database, settings_for

TTL = pd.Timedelta(days=60)  # user_activity and item_popularity in feature_repo/feature_views.py
START = pd.Timestamp("2026-01-01", tz="UTC")
FEATURES = [
    "user_activity:view_count_7d",
    "user_activity:spend_30d",
    "user_recent_sequence:sequence_length",
    "item_popularity:item_view_count_7d",
]


@pytest.fixture(scope="module")
def applied(pg_server, settings):
    with new_database(pg_server) as pg:
        with Pipeline(settings_for(settings, pg), progress=False) as pipeline:
            pipeline.apply()
            yield pipeline


def _copy(conn, table: str, frame: pd.DataFrame) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY interest.{table} ({', '.join(frame.columns)}) FROM STDIN") as copy:
        for row in frame.itertuples(index=False):
            copy.write_row(tuple(row))
    conn.commit()


def _random_feature_rows(rng, keys, n_rows, value_name):
    grid_hours = rng.integers(0, 24 * 240, n_rows) // 12 * 12  # 12-hour grid over 240 days
    frame = pd.DataFrame(
        {
            "key": rng.choice(keys, n_rows),
            "event_timestamp": START + pd.to_timedelta(grid_hours, unit="h"),
            value_name: rng.integers(0, 1000, n_rows),
        }
    ).drop_duplicates(["key", "event_timestamp"])
    return frame.reset_index(drop=True)


def _insert_features(conn, rng):
    created = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    users = _random_feature_rows(rng, np.arange(1, 9), 400, "value")
    daily = pd.DataFrame({"user_id": users.key, "event_timestamp": users.event_timestamp, "created_timestamp": created})
    for window in ("1d", "7d", "30d"):
        for kind in ("view", "click", "cart", "purchase"):
            daily[f"{kind}_count_{window}"] = 0
    daily["view_count_7d"] = users.value
    daily["spend_7d"] = 0.0
    daily["spend_30d"] = users.value / 4
    daily["session_count_7d"] = daily["session_count_30d"] = 0
    daily["days_since_last_event"] = 0.0
    daily["category_share_7d"] = daily["category_share_30d"] = [[] for _ in range(len(daily))]
    daily["dominant_category_changed"] = False
    _copy(conn, "user_daily_features", daily)

    sequences = _random_feature_rows(rng, np.arange(1, 9), 300, "sequence_length")
    _copy(
        conn,
        "user_recent_sequence",
        pd.DataFrame(
            {
                "user_id": sequences.key,
                "event_timestamp": sequences.event_timestamp,
                "created_timestamp": created,
                "recent_item_ids": [[1]] * len(sequences),
                "recent_category_ids": [[1]] * len(sequences),
                "recent_event_types": [[0]] * len(sequences),
                "recent_gap_seconds": [[0.0]] * len(sequences),
                "sequence_length": sequences.sequence_length,
            }
        ),
    )
    items = _random_feature_rows(rng, np.arange(1, 6), 200, "value")
    item_daily = pd.DataFrame({"item_id": items.key, "event_timestamp": items.event_timestamp, "created_timestamp": created})
    for column in ("item_view_count_1d", "item_view_count_7d", "item_view_count_30d", "item_purchase_count_7d",
                   "item_purchase_count_30d", "item_event_count_7d", "item_unique_users_7d"):
        item_daily[column] = 0
    item_daily["item_view_count_7d"] = items.value
    _copy(conn, "item_daily_features", item_daily)
    return {
        "user_activity": daily.rename(columns={"user_id": "key"})[["key", "event_timestamp", "view_count_7d", "spend_30d"]],
        "user_recent_sequence": sequences[["key", "event_timestamp", "sequence_length"]],
        "item_popularity": items.rename(columns={"value": "item_view_count_7d"}),
    }


def _entity_rows(rng, sources) -> pd.DataFrame:
    n = 300
    rows = pd.DataFrame(
        {
            "user_id": rng.integers(1, 10, n),  # user 9 has no features at all
            "item_id": rng.integers(1, 7, n),  # item 6 neither
            "event_timestamp": START + pd.to_timedelta(rng.integers(0, 24 * 300, n) // 12 * 12, unit="h"),
        }
    )
    activity = sources["user_activity"].sample(30, random_state=1)
    edges = []
    for offset in (pd.Timedelta(0), TTL, TTL + pd.Timedelta(seconds=1), TTL - pd.Timedelta(seconds=1)):
        edges.append(pd.DataFrame({"user_id": activity.key.to_numpy(), "item_id": 1, "event_timestamp": (activity.event_timestamp + offset).to_numpy()}))
    rows = pd.concat([rows, *edges], ignore_index=True)
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    rows["category_id"] = 1
    return rows.drop_duplicates(["user_id", "item_id", "event_timestamp"]).reset_index(drop=True)


def _reference(entity_rows, sources) -> pd.DataFrame:
    """Latest feature row with ts <= entity ts (and ts >= entity ts - ttl when the view has one)."""
    out = entity_rows.copy()
    plan = [("user_activity", "user_id", TTL), ("user_recent_sequence", "user_id", None), ("item_popularity", "item_id", TTL)]
    for view, key, ttl in plan:
        source = sources[view]
        values = [c for c in source.columns if c not in ("key", "event_timestamp")]
        found = []
        for entity_key, ts in zip(out[key], out["event_timestamp"]):
            candidates = source[(source.key == entity_key) & (source.event_timestamp <= ts)]
            if ttl is not None:
                candidates = candidates[candidates.event_timestamp >= ts - ttl]
            found.append(candidates.sort_values("event_timestamp").iloc[-1][values] if len(candidates) else pd.Series({v: np.nan for v in values}))
        out = pd.concat([out, pd.DataFrame(found, index=out.index)[values]], axis=1)
    return out


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    if frame["event_timestamp"].dt.tz is None:
        frame["event_timestamp"] = frame["event_timestamp"].dt.tz_localize("UTC")
    columns = ["user_id", "item_id", "category_id", "event_timestamp", "view_count_7d", "spend_30d", "sequence_length", "item_view_count_7d"]
    frame = frame[columns].sort_values(["user_id", "item_id", "event_timestamp"]).reset_index(drop=True)
    return frame.astype({c: "float64" for c in columns[4:]})


def _stock_store(applied, directory):
    """The same registry and tables read through stock Feast's ``type: postgres`` store."""
    for path in applied.settings.feature_repo_dir.glob("*.py"):
        (directory / path.name).write_text(path.read_text())
    config = (applied.settings.feature_repo_dir / "feature_store.yaml").read_text()
    (directory / "feature_store.yaml").write_text(config.replace(
        "type: materialize.feature_store.offline_store.LateralJoinPostgreSQLOfflineStore", "type: postgres"))
    return open_store(directory, applied.settings.postgres, applied.pgvector)


def test_retrieval_matches_brute_force_reference(applied, tmp_path):
    conn = applied.conn
    rng = np.random.default_rng(11)
    items = pd.DataFrame({"item_id": range(1, 7), "category": "books", "title": [f"t{i}" for i in range(1, 7)]})
    load_frames(conn, "items", [items], source="items")
    sources = _insert_features(conn, rng)
    entity_rows = _entity_rows(rng, sources)
    expected = _normalised(_reference(entity_rows, sources))
    assert type(applied.store._get_provider().offline_store).__name__ == "LateralJoinPostgreSQLOfflineStore"
    ours = _normalised(applied.store.get_historical_features(entity_df=entity_rows, features=FEATURES).to_df())
    stock = _normalised(_stock_store(applied, tmp_path).get_historical_features(entity_df=entity_rows, features=FEATURES).to_df())
    # The edge rows really exercise the ttl boundary: both included and excluded cases exist.
    assert expected["view_count_7d"].isna().any() and expected["view_count_7d"].notna().any()
    pd.testing.assert_frame_equal(ours, expected, check_dtype=False)
    pd.testing.assert_frame_equal(stock, expected, check_dtype=False)
    # Nothing left behind by either store.
    leftovers = fetch_frame(conn, "SELECT relname FROM pg_class WHERE relname LIKE 'feast_entit%%'")
    assert leftovers.empty


def test_item_catalog_is_retrieved_as_it_was_at_the_entity_time(applied):
    """A category and price change keeps the earlier version: rows before the change get
    the old values, rows after it the new ones (both stores)."""
    conn = applied.conn
    first = pd.DataFrame({"item_id": [101, 102], "category": ["garden", "toys"], "title": ["spade", "kite"],
                          "price": [12.5, 8.0]})
    load_frames(conn, "items", [first], source="catalogue v1")
    load_frames(conn, "items", [first.assign(category=["kitchen", "toys"], price=[14.0, 8.0])], source="catalogue v2")
    changed_at = conn.execute("SELECT valid_from FROM interest.items WHERE item_id = 101").fetchone()[0]
    categories = dict(conn.execute("SELECT category, category_id FROM interest.categories"))
    entity_rows = pd.DataFrame({
        "item_id": [101, 101, 101, 102],
        "event_timestamp": pd.to_datetime([changed_at - dt.timedelta(days=3), changed_at - dt.timedelta(microseconds=1),
                                           changed_at + dt.timedelta(seconds=1), changed_at + dt.timedelta(seconds=1)],
                                          utc=True),
    })
    got = applied.store.get_historical_features(
        entity_df=entity_rows, features=["item_catalog:item_category_id", "item_catalog:item_price"]
    ).to_df().sort_values(["item_id", "event_timestamp"]).reset_index(drop=True)
    assert list(got.item_category_id) == [categories["garden"], categories["garden"], categories["kitchen"], categories["toys"]]
    assert list(got.item_price) == [12.5, 12.5, 14.0, 8.0]
