"""The raw event history in both dialects: the spark profile's Spark SQL over the Parquet
events returns the same rows as the postgres profile's SQL over interest.events, query by
query and for the decision points built on them (both protocols), on one shop
(tests/spark_shop.py)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from interest_models.config import load_config
from interest_models.data.decision_points import decision_points
from interest_models.data.event_history import PostgresEvents, SparkEvents

GAP = dt.timedelta(minutes=30)


@pytest.fixture(scope="module")
def histories(two_profiles, spark):
    settings = two_profiles.spark.settings.spark
    return PostgresEvents(two_profiles.postgres.conn), SparkEvents(spark, settings.warehouse, settings.staging)


def _same(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected) > 0
    for column in expected.columns:
        want, got = expected[column], actual[column]
        if "time" in column or column in ("first_seen", "as_of"):
            want, got = pd.to_datetime(want, utc=True), pd.to_datetime(got, utc=True)
            np.testing.assert_array_equal(got.to_numpy("datetime64[us]"), want.to_numpy("datetime64[us]"), err_msg=column)
        else:
            np.testing.assert_array_equal(got.to_numpy(), want.to_numpy(), err_msg=column)


def test_each_query_returns_the_same_rows(histories, two_profiles):
    postgres, spark = histories
    cuts = [0.1, 0.6, 0.7, 0.85]
    assert spark.boundaries(cuts) == postgres.boundaries(cuts)
    start, end, quantiles = postgres.boundaries(cuts)
    assert start < quantiles[0] < quantiles[-1] < end
    since = quantiles[0].to_pydatetime()
    _same(postgres.session_starts(3, GAP, since), spark.session_starts(3, GAP, since))
    short = dt.timedelta(minutes=5)  # more starts: the gap, not only the session id, must cut
    assert len(postgres.session_starts(3, short, since)) > len(postgres.session_starts(3, GAP, since))
    _same(postgres.session_starts(3, short, since), spark.session_starts(3, short, since))
    _same(postgres.last_events(3), spark.last_events(3))
    users = [int(row[0]) for row in two_profiles.postgres.conn.execute(
        "SELECT DISTINCT user_id FROM interest.events ORDER BY user_id LIMIT 40").fetchall()]
    _same(postgres.first_seen(users), spark.first_seen(users))
    _same(postgres.item_counts(since), spark.item_counts(since))
    for before, drop_last in ((since, 0), (None, 0), (None, 2)):
        expected = postgres.histories(GAP, before, drop_last)
        _same(expected, spark.histories(GAP, before, drop_last))
        assert expected.new_session.any() and not expected.new_session.all()
    _same(postgres.category_events(users, since, quantiles[2].to_pydatetime()),
          spark.category_events(users, since, quantiles[2].to_pydatetime()))


@pytest.mark.parametrize("protocol", ["time_split", "leave_one_out"])
def test_decision_points_are_the_same(histories, protocol):
    postgres, spark = histories
    config = load_config("training", {"protocol": protocol, "max_points_per_split": {
        "train_sequence": 500, "train_ranker": 100, "valid": 100, "test": 100}})
    expected = decision_points(postgres, config, GAP)
    assert set(expected.split) == {"train_sequence", "train_ranker", "valid", "test"}
    _same(expected, decision_points(spark, config, GAP))
