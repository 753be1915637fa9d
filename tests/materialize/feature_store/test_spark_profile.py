"""The spark profile through Feast: point-in-time training frames from Feast's Spark
offline store and materialization through Feast's Spark compute engine into the
PostgreSQL online store equal what the postgres profile gives on the same shop.

Tolerances: as tests/materialize/features/test_spark_builder.py (the feature tables
themselves differ only in float rounding: float64 1e-9 relative, float32 arrays 1e-6).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from materialize.database.tables import fetch_frame
from tests.spark_shop import SHOP


@pytest.fixture(scope="module")
def applied(two_profiles):
    two_profiles.postgres.apply()
    two_profiles.spark.apply()
    return two_profiles


def entity_rows(conn, n: int = 400) -> pd.DataFrame:
    """(user, item, category, time) rows: a sample of events stamped at their own time and at
    the next midnight (a daily snapshot's boundary), plus users asked before their first event."""
    events = fetch_frame(conn, """
        SELECT e.user_id, e.item_id, i.category_id, e.event_timestamp
        FROM interest.events e JOIN interest.items i USING (item_id)
        ORDER BY e.user_id, e.event_timestamp, e.item_id, e.event_type""")
    sample = events.sample(n=n, random_state=3)
    midnight = sample.assign(event_timestamp=sample.event_timestamp.dt.floor("D") + pd.Timedelta(days=1))
    early = sample.head(20).assign(event_timestamp=events.event_timestamp.min() - pd.Timedelta(days=1))
    rows = pd.concat([sample, midnight, early], ignore_index=True)
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    return rows.drop_duplicates(["user_id", "item_id", "category_id", "event_timestamp"]).reset_index(drop=True)


def _frame(store, rows: pd.DataFrame) -> pd.DataFrame:
    service = store.get_feature_service("user_item_training")
    frame = store.get_historical_features(entity_df=rows, features=service).to_df()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)  # Spark's comes back tz-naive
    return frame.sort_values(["user_id", "item_id", "category_id", "event_timestamp"]).reset_index(drop=True)


def _assert_cell(column: str, want, got) -> None:
    missing_want = want is None or (np.isscalar(want) and pd.isna(want))
    missing_got = got is None or (np.isscalar(got) and pd.isna(got))
    assert missing_want == missing_got, (column, want, got)
    if missing_want:
        return
    if isinstance(want, (list, np.ndarray)):
        w, g = np.asarray(want), np.asarray(got)
        assert w.shape == g.shape, column
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g.astype(float), w.astype(float), rtol=1e-6, atol=1e-7, err_msg=column)
        else:
            np.testing.assert_array_equal(g, w, err_msg=column)
    elif isinstance(want, (float, np.floating)):
        assert float(got) == pytest.approx(float(want), rel=1e-9, abs=1e-12), column
    else:
        assert got == want, column


def test_training_frames_equal(applied):
    rows = entity_rows(applied.postgres.conn)
    expected = _frame(applied.postgres.store, rows)
    actual = _frame(applied.spark.store, rows)
    assert len(actual) == len(expected) == len(rows)
    assert sorted(actual.columns) == sorted(expected.columns)
    compared = 0
    for column in expected.columns:
        for want, got in zip(expected[column], actual[column]):
            _assert_cell(column, want, got)
            compared += 1
    # the frame is not empty of features: most rows found a user and an item value
    assert expected["view_count_7d"].notna().mean() > 0.5 and expected["item_view_count_7d"].notna().mean() > 0.5
    assert expected["interest_item_cosine"].notna().any()
    assert len(expected.columns) > 50 and compared == len(rows) * len(expected.columns)


def test_staged_retrieval_equals_the_postgres_frame_and_leaves_no_files(applied):
    """The recipe's path in the spark profile: the entity rows are staged as Parquet and read
    by Spark, the executors write the frame into the staging folder, this process reads it
    back in batches (64 rows here); nothing of it is left in the staging folder."""
    from interest_models.data.feature_frames import service_features
    from interest_models.data.frame_staging import historical_frame

    rows = entity_rows(applied.postgres.conn, n=200)
    refs = service_features(applied.postgres.store)
    refs = refs.user + refs.item + refs.category  # stored views: the recipe computes the on-demand affinity itself
    expected = historical_frame(applied.postgres.store, rows, refs)  # the plugin: plain to_df()
    staging = applied.warehouse / "staging"
    assert applied.spark.store.config.offline_store.staging_location == str(staging)
    # stock to_df() stages too (Feast 0.67's to_arrow with a staging_location) and leaves its folders
    left_before = set(staging.iterdir()) if staging.exists() else set()
    actual = historical_frame(applied.spark.store, rows.copy(), refs, batch_rows=64)
    assert set(staging.iterdir()) == left_before
    keys = ["user_id", "item_id", "category_id", "event_timestamp"]
    for frame in (expected, actual):
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    expected, actual = (f.sort_values(keys).reset_index(drop=True) for f in (expected, actual))
    assert len(actual) == len(rows) and sorted(actual.columns) == sorted(expected.columns)
    for column in expected.columns:
        for want, got in zip(expected[column], actual[column]):
            _assert_cell(column, want, got)
    assert actual["recent_item_ids"].notna().mean() > 0.5  # the sequence arrays came through


def test_spark_engine_materializes_the_same_online_values(applied):
    end = SHOP.end + dt.timedelta(days=1)  # after the shop's last day (it ends today); one end so that ttl windows agree
    reports = {name: profile.materialize(end) for name, profile in (("postgres", applied.postgres), ("spark", applied.spark))}
    postgres_only = set(reports["postgres"].online_rows) - set(reports["spark"].online_rows)
    assert postgres_only <= {"user_feedback", "item_feedback"}  # issue 13's feedback views: PostgreSQL profile only
    assert reports["spark"].online_rows == {v: n for v, n in reports["postgres"].online_rows.items() if v not in postgres_only}
    assert reports["spark"].online_rows["user_activity"] > 300
    conn = applied.postgres.conn
    users = [{"user_id": int(u)} for u in fetch_frame(conn, "SELECT DISTINCT user_id FROM interest.events").user_id]
    items = [{"item_id": int(i)} for i in fetch_frame(conn, "SELECT item_id FROM interest.items").item_id]
    requests = [("user_profile_serving", users), ("item_embedding_serving", items)]
    for service, entities in requests:
        answers = [profile.store.get_online_features(features=profile.store.get_feature_service(service),
                                                     entity_rows=entities).to_dict()
                   for profile in (applied.postgres, applied.spark)]
        assert answers[0].keys() == answers[1].keys()
        for column in answers[0]:
            for want, got in zip(answers[0][column], answers[1][column]):
                _assert_cell(column, want, got)
    item_rows = [{"item_id": e["item_id"], "category_id": 1} for e in items]
    answers = [profile.store.get_online_features(
        features=["item_popularity:item_view_count_7d", "category_trends:category_event_share_7d"],
        entity_rows=item_rows).to_dict() for profile in (applied.postgres, applied.spark)]
    for column in answers[0]:
        for want, got in zip(answers[0][column], answers[1][column]):
            _assert_cell(column, want, got)


def test_both_profiles_find_rows_written_after_a_materialization(applied):
    """Every feature row was created after `end` (the build ran today): the next run of a
    view starts at its oldest row, read by SQL in one profile and from Parquet in the other."""
    from materialize.feature_store.repo import offline_writes_excluded, materialization_start

    end = dt.datetime(2026, 10, 2, tzinfo=dt.timezone.utc)
    starts = {}
    for name, profile in (("postgres", applied.postgres), ("spark", applied.spark)):
        with offline_writes_excluded(profile.store) as conn:
            assert (conn is None) == (name == "spark")
            starts[name] = {v.name: materialization_start(conn, v, end)
                            for v in profile.store.list_feature_views() if v.name in ("user_recent_sequence", "item_popularity")}
    oldest = applied.postgres.conn.execute("SELECT min(event_timestamp) FROM interest.user_recent_sequence").fetchone()[0]
    assert starts["spark"] == starts["postgres"] and starts["postgres"]["user_recent_sequence"] == oldest < end
    assert starts["postgres"]["item_popularity"] < end
