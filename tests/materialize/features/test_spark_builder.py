"""The spark profile computes the same feature tables as the postgres profile.

One synthetic shop (tests/spark_shop.py) is loaded through both profiles; every row and
every value of the five feature-source tables is compared, after a full Spark build and
after an incremental one over events that arrived in two loads, late ones included. Tolerances: integers, booleans,
days and ids exactly; float64 values within 1e-9 relative (+1e-12 absolute: PostgreSQL
sums numerics and doubles in another order than Spark); float32 arrays within 1e-6
relative (+1e-7 absolute: a mean or a gap rounded to float32 from a double that differs
in its last bits).
"""
from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from materialize.database.tables import fetch_frame
from materialize.features.spark_builder import PARTITION_COLUMN, SPARK_FEATURE_TABLES, build_features_spark
from materialize.ingest.parquet_writer import export_catalogue, load_event_frames_parquet
from materialize.ingest.sources.synthetic import SyntheticShop
from tests.spark_shop import SHOP

KEYS = {
    "user_daily_features": ["user_id", "event_timestamp"],
    "user_recent_sequence": ["user_id", "event_timestamp"],
    "user_interest_embedding": ["user_id", "event_timestamp"],
    "item_daily_features": ["item_id", "event_timestamp"],
    "category_daily_features": ["category_id", "event_timestamp"],
}


def spark_table(warehouse, table: str) -> pd.DataFrame:
    frame = pq.read_table(warehouse / "features" / table).to_pandas()
    days = frame.pop(PARTITION_COLUMN).astype(str)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    assert (days == frame["event_timestamp"].dt.strftime("%Y-%m-%d")).all(), f"{table}: rows in the wrong day partition"
    return frame.sort_values(KEYS[table]).reset_index(drop=True)


def postgres_table(conn, table: str) -> pd.DataFrame:
    frame = fetch_frame(conn, f"SELECT * FROM interest.{table}")  # names are constants
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.sort_values(KEYS[table]).reset_index(drop=True)


def assert_same_values(expected: pd.DataFrame, actual: pd.DataFrame, table: str) -> int:
    """Compare column by column; returns the number of values compared."""
    assert list(actual.columns) == list(expected.columns), table
    assert len(actual) == len(expected) > 0, table
    compared = 0
    for column in expected.columns:
        if column == "created_timestamp":
            continue
        want, got = expected[column], actual[column]
        assert (want.isna() == got.isna()).all(), f"{table}.{column}: different NULLs"
        present = want.notna().to_numpy()
        want, got = want[present], got[present]
        first = want.iloc[0] if len(want) else None
        if isinstance(first, (list, np.ndarray)):
            for key, (w, g) in enumerate(zip(want, got)):
                w, g = np.asarray(w), np.asarray(g)
                assert w.shape == g.shape, f"{table}.{column} row {key}: {w.shape} vs {g.shape}"
                if np.issubdtype(w.dtype, np.floating) or np.issubdtype(g.dtype, np.floating):
                    np.testing.assert_allclose(g.astype(float), w.astype(float), rtol=1e-6, atol=1e-7,
                                               err_msg=f"{table}.{column} row {key}")
                else:
                    np.testing.assert_array_equal(g, w, err_msg=f"{table}.{column} row {key}")
        elif pd.api.types.is_float_dtype(want) or pd.api.types.is_float_dtype(got):
            np.testing.assert_allclose(got.astype(float), want.astype(float), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{table}.{column}")
        else:
            assert (got.to_numpy() == want.to_numpy()).all(), f"{table}.{column}"
        compared += len(want)
    return compared


def test_both_profiles_load_the_same_events(two_profiles):
    reports = two_profiles.reports
    items, events = reports["postgres load"]
    assert reports["spark events"].reconciles and events.reconciles
    assert (reports["spark events"].rows_read, reports["spark events"].loaded) == (events.rows_read, events.loaded)
    assert reports["spark build"].events == events.loaded > 5_000
    assert reports["catalogue"]["catalog/item_vectors"] == items.loaded


@pytest.mark.parametrize("table", SPARK_FEATURE_TABLES)
def test_spark_feature_tables_equal_postgres(two_profiles, table):
    expected = postgres_table(two_profiles.postgres.conn, table)
    actual = spark_table(two_profiles.warehouse, table)
    assert two_profiles.reports["spark build"].rows[table] == len(expected)
    assert assert_same_values(expected, actual, table) > len(expected)


def test_incremental_build_equals_the_full_one(two_profiles, spark, settings, tmp_path):
    """The shop's events in two loads: the first 50 days less 5 % of those of days 45 to 49,
    then the rest with those (late events). After a full build of the first load
    and an incremental one of the second, every table equals the postgres profile's full
    build of the whole shop; a third build finds nothing to do."""
    warehouse, conn = tmp_path / "warehouse", two_profiles.spark.conn
    kwargs = {"future_tolerance_s": settings.pipeline.future_tolerance_seconds,
              "min_event_time": settings.pipeline.min_event_time}
    events = pd.concat(list(SyntheticShop(SHOP).events()), ignore_index=True)
    cutoff = SHOP.end - dt.timedelta(days=SHOP.days - 50)
    early = events.event_timestamp < cutoff
    late = early & (events.event_timestamp >= cutoff - dt.timedelta(days=5)) & (np.random.default_rng(3).random(len(events)) < 0.05)
    first = load_event_frames_parquet(conn, [events[early & ~late]], str(warehouse), source="first", **kwargs)
    export_catalogue(conn, str(warehouse))
    report = build_features_spark(spark, str(warehouse), settings.pipeline)
    assert (report.mode, report.events) == ("full", first.loaded)

    second = load_event_frames_parquet(conn, [events[~early | late]], str(warehouse), source="second", **kwargs)
    assert first.loaded + second.loaded == len(events)
    report = build_features_spark(spark, str(warehouse), settings.pipeline)
    assert report.mode == "incremental", report.reason
    assert report.since_day == events.event_timestamp[late].min().date()
    assert report.events < len(events)  # only the 30 days before since_day on were read
    for table in SPARK_FEATURE_TABLES:
        expected = postgres_table(two_profiles.postgres.conn, table)
        assert report.rows[table] == len(expected), table
        assert assert_same_values(expected, spark_table(warehouse, table), table) > len(expected)

    again = build_features_spark(spark, str(warehouse), settings.pipeline)
    assert again.mode == "up to date" and not again.rows

    # an item moved to another category: its users' history changes from its first event on
    items = pd.read_parquet(warehouse / "catalog" / "items")
    moved = int(items.item_id.iloc[0])
    items.loc[0, "category_id"] = items.category_id[items.category_id != items.category_id.iloc[0]].iloc[0]
    shutil.rmtree(warehouse / "catalog" / "items")
    (warehouse / "catalog" / "items").mkdir()
    items.to_parquet(warehouse / "catalog" / "items" / "items.parquet", index=False)
    moved_report = build_features_spark(spark, str(warehouse), settings.pipeline)
    assert moved_report.mode == "incremental", moved_report.reason
    assert moved_report.since_day == events.event_timestamp[events.item_id == moved].min().date()
