"""The spark profile computes the same feature tables as the postgres profile.

One synthetic shop (tests/spark_shop.py) is loaded through both profiles; every row and
every value of the five feature-source tables is compared. Tolerances: integers, booleans,
days and ids exactly; float64 values within 1e-9 relative (+1e-12 absolute: PostgreSQL
sums numerics and doubles in another order than Spark); float32 arrays within 1e-6
relative (+1e-7 absolute: a mean or a gap rounded to float32 from a double that differs
in its last bits).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from materialize.database.tables import fetch_frame
from materialize.features.spark_builder import SPARK_FEATURE_TABLES

KEYS = {
    "user_daily_features": ["user_id", "event_timestamp"],
    "user_recent_sequence": ["user_id", "event_timestamp"],
    "user_interest_embedding": ["user_id", "event_timestamp"],
    "item_daily_features": ["item_id", "event_timestamp"],
    "category_daily_features": ["category_id", "event_timestamp"],
}


def spark_table(warehouse, table: str) -> pd.DataFrame:
    frame = pq.read_table(warehouse / "features" / table).to_pandas()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
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
