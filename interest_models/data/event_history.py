"""The raw event history that training reads (decision points, labels, seen items,
popularity and the baselines' histories), from either profile's store.

``PostgresEvents`` queries ``interest.events``; ``SparkEvents`` runs the same queries in
Spark SQL over the Parquet events of the warehouse (the ``events`` view of
``materialize.features.spark_builder.register_inputs``: one row per event key, the item's
current category), so the spark profile needs no event history in PostgreSQL. Each query
is written in both dialects side by side below; ``tests/interest_models/data/
test_event_history.py`` checks that both return the same rows on one shop. Spark's results
come back through staged Parquet in batches (``frame_staging.collect``), never collected
into the driver.

Row order: every method returns its rows sorted as documented (Spark's are sorted here,
after reading, on the keys it returns besides).
"""
from __future__ import annotations

import datetime as dt
import uuid

import pandas as pd
import psycopg

from materialize.database.tables import fetch_frame

# --------------------------------------------------------------------------- queries

_BOUNDARIES_PG = """
SELECT min(event_timestamp), max(event_timestamp),
       percentile_disc(%(cuts)s::float8[]) WITHIN GROUP (ORDER BY event_timestamp)
FROM interest.events
"""
_BOUNDARIES_SPARK = """
SELECT min(unix_micros(event_timestamp)) AS first, max(unix_micros(event_timestamp)) AS last,
       percentile_disc(:c0) WITHIN GROUP (ORDER BY unix_micros(event_timestamp)) AS q0,
       percentile_disc(:c1) WITHIN GROUP (ORDER BY unix_micros(event_timestamp)) AS q1,
       percentile_disc(:c2) WITHIN GROUP (ORDER BY unix_micros(event_timestamp)) AS q2,
       percentile_disc(:c3) WITHIN GROUP (ORDER BY unix_micros(event_timestamp)) AS q3
FROM events
"""

# Session starts after ``min_history`` events of the user, from ``since`` on: a new
# session_id or a gap over the session gap; unless ``recommended``, not those whose first
# event answers a recommendation (it carries the list's recommendation_id).
_SESSION_STARTS_PG = """
SELECT user_id, event_timestamp, item_id, category_id
FROM (
    SELECT e.user_id, e.event_timestamp, e.item_id, i.category_id, e.event_type, e.session_id, e.recommendation_id,
           lag(e.event_timestamp) OVER w AS previous_timestamp,
           lag(e.session_id) OVER w AS previous_session_id,
           row_number() OVER w AS position
    FROM interest.events e JOIN interest.items i USING (item_id)
    WINDOW w AS (PARTITION BY e.user_id ORDER BY e.event_timestamp, e.item_id, e.event_type)
) s
WHERE position > %(min_history)s
  AND (session_id IS DISTINCT FROM previous_session_id OR event_timestamp - previous_timestamp > %(gap)s)
  AND event_timestamp >= %(since)s
  AND (%(recommended)s OR recommendation_id IS NULL)
ORDER BY user_id, event_timestamp, item_id, event_type
"""
_SESSION_STARTS_SPARK = """
SELECT user_id, event_timestamp, item_id, category_id, event_type
FROM (
    SELECT user_id, event_timestamp, item_id, category_id, event_type, session_id, recommendation_id,
           lag(event_timestamp) OVER w AS previous_timestamp,
           lag(session_id) OVER w AS previous_session_id,
           row_number() OVER w AS position
    FROM events
    WINDOW w AS (PARTITION BY user_id ORDER BY event_timestamp, item_id, event_type)
) s
WHERE position > :min_history
  AND (session_id IS DISTINCT FROM previous_session_id
       OR unix_micros(event_timestamp) - unix_micros(previous_timestamp) > :gap_us)
  AND event_timestamp >= :since
  AND (:recommended OR recommendation_id IS NULL)
"""

_LAST_EVENTS_PG = """
SELECT user_id, event_timestamp, item_id, category_id, position, n_events
FROM (
    SELECT e.user_id, e.event_timestamp, e.item_id, i.category_id,
           row_number() OVER w AS position, count(*) OVER (PARTITION BY e.user_id) AS n_events
    FROM interest.events e JOIN interest.items i USING (item_id)
    WINDOW w AS (PARTITION BY e.user_id ORDER BY e.event_timestamp, e.item_id, e.event_type)
) s
WHERE position > %(min_history)s
ORDER BY user_id, position
"""
_LAST_EVENTS_SPARK = """
SELECT user_id, event_timestamp, item_id, category_id, position, n_events
FROM (
    SELECT user_id, event_timestamp, item_id, category_id,
           row_number() OVER w AS position, count(*) OVER (PARTITION BY user_id) AS n_events
    FROM events
    WINDOW w AS (PARTITION BY user_id ORDER BY event_timestamp, item_id, event_type)
) s
WHERE position > :min_history
"""

_FIRST_SEEN_PG = """
SELECT user_id, item_id, min(event_timestamp) AS first_seen FROM interest.events
WHERE user_id = ANY(%(users)s) GROUP BY user_id, item_id ORDER BY user_id, item_id
"""
_FIRST_SEEN_SPARK = """
SELECT user_id, item_id, min(event_timestamp) AS first_seen FROM events
WHERE user_id IN (SELECT user_id FROM asked_users) GROUP BY user_id, item_id
"""

_ITEM_COUNTS_PG = """
SELECT item_id, count(*) AS n FROM interest.events WHERE event_timestamp < %(before)s GROUP BY item_id ORDER BY item_id
"""
_ITEM_COUNTS_SPARK = """
SELECT item_id, count(*) AS n FROM events WHERE event_timestamp < :before GROUP BY item_id
"""

# The baselines' histories: every event with whether it starts a session (a user's first
# event, a new session_id or a gap over the session gap); lag() looks back only, so events
# cut off at the end (the period boundary, the held-out last events) cannot move a boundary.
_HISTORIES_PG = """
SELECT user_id, item_id, new_session FROM (
    SELECT user_id, item_id, event_timestamp, event_type,
           row_number() OVER (PARTITION BY user_id ORDER BY event_timestamp DESC, item_id DESC, event_type DESC) AS from_end,
           (lag(event_timestamp) OVER w IS NULL
            OR session_id IS DISTINCT FROM lag(session_id) OVER w
            OR event_timestamp - lag(event_timestamp) OVER w > %(gap)s) AS new_session
    FROM interest.events
    WHERE event_timestamp < %(before)s
    WINDOW w AS (PARTITION BY user_id ORDER BY event_timestamp, item_id, event_type)
) e
WHERE from_end > %(drop_last)s
ORDER BY user_id, event_timestamp, item_id, event_type
"""
_HISTORIES_SPARK = """
SELECT user_id, item_id, new_session, event_timestamp, event_type FROM (
    SELECT user_id, item_id, event_timestamp, event_type,
           row_number() OVER (PARTITION BY user_id ORDER BY event_timestamp DESC, item_id DESC, event_type DESC) AS from_end,
           (lag(event_timestamp) OVER w IS NULL
            OR session_id IS DISTINCT FROM lag(session_id) OVER w
            OR unix_micros(event_timestamp) - unix_micros(lag(event_timestamp) OVER w) > :gap_us) AS new_session
    FROM events
    WHERE event_timestamp < :before
    WINDOW w AS (PARTITION BY user_id ORDER BY event_timestamp, item_id, event_type)
) e
WHERE from_end > :drop_last
"""

_CATEGORY_EVENTS_PG = """
SELECT user_id, event_timestamp, category_id
FROM interest.events e JOIN interest.items i USING (item_id)
WHERE user_id = ANY(%(users)s) AND event_timestamp >= %(start)s AND event_timestamp <= %(end)s
ORDER BY user_id, event_timestamp
"""
_CATEGORY_EVENTS_SPARK = """
SELECT user_id, event_timestamp, category_id, item_id, event_type FROM events
WHERE user_id IN (SELECT user_id FROM asked_users) AND event_timestamp >= :start AND event_timestamp <= :end
"""

_LATEST = dt.datetime.max.replace(tzinfo=dt.timezone.utc)


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class PostgresEvents:
    """The history in ``interest.events`` (the postgres profile)."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    def boundaries(self, cuts: list[float]) -> tuple[pd.Timestamp, pd.Timestamp, list[pd.Timestamp]]:
        """(first event time, last event time, event times at the quantiles ``cuts`` (percentile_disc))."""
        first, last, quantiles = self.conn.execute(_BOUNDARIES_PG, {"cuts": [float(c) for c in cuts]}).fetchone()
        return pd.Timestamp(first), pd.Timestamp(last), [pd.Timestamp(q) for q in quantiles]

    def session_starts(self, min_history: int, gap: dt.timedelta, since: dt.datetime,
                       recommended: bool = False) -> pd.DataFrame:
        """user_id, event_timestamp, item_id, category_id of session starts; by user, time, item, event type."""
        return fetch_frame(self.conn, _SESSION_STARTS_PG,
                           {"min_history": min_history, "gap": gap, "since": since, "recommended": recommended})

    def last_events(self, min_history: int) -> pd.DataFrame:
        """user_id, event_timestamp, item_id, category_id, position (1-based), n_events of
        each user's events after the first ``min_history``; by user, position."""
        return fetch_frame(self.conn, _LAST_EVENTS_PG, {"min_history": min_history})

    def first_seen(self, users: list[int]) -> pd.DataFrame:
        """user_id, item_id, first_seen of the items each of ``users`` interacted with; by user, item."""
        return fetch_frame(self.conn, _FIRST_SEEN_PG, {"users": users})

    def item_counts(self, before: dt.datetime) -> pd.DataFrame:
        """item_id, n: events per item before ``before``; by item."""
        return fetch_frame(self.conn, _ITEM_COUNTS_PG, {"before": before})

    def histories(self, gap: dt.timedelta, before: dt.datetime | None = None, drop_last: int = 0) -> pd.DataFrame:
        """user_id, item_id, new_session of the events before ``before`` (None: all), less
        each user's last ``drop_last``; by user, time, item, event type."""
        return fetch_frame(self.conn, _HISTORIES_PG, {"gap": gap, "before": before or _LATEST, "drop_last": drop_last})

    def category_events(self, users: list[int], start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
        """user_id, event_timestamp, category_id of ``users``' events in [start, end]; by user, time."""
        return fetch_frame(self.conn, _CATEGORY_EVENTS_PG, {"users": users, "start": start, "end": end})


class SparkEvents:
    """The history in the warehouse's Parquet events, through Spark SQL (the spark profile).

    Args:
        spark: the active session.
        warehouse: the warehouse folder or URI (``Settings.spark.warehouse``).
        staging: where results are staged (``Settings.spark.staging``).
    """

    def __init__(self, spark, warehouse: str, staging: str):
        from materialize.features.spark_builder import register_inputs

        self.spark, self.staging = spark, staging
        register_inputs(spark, warehouse)

    def _frame(self, query: str, args: dict, order: list[str], columns: list[str],
               users: list[int] | None = None) -> pd.DataFrame:
        """The query's rows (staged, read back in batches), sorted by ``order``; ``users``
        become the view ``asked_users``, staged as Parquet too (not a plan-held local relation)."""
        from interest_models.data.frame_staging import collect, remove_staged, spark_uri, write_staged

        asked = None
        if users is not None:
            asked = write_staged([pd.DataFrame({"user_id": pd.Series(users, dtype="int64")})],
                                 f"{self.staging.rstrip('/')}/{uuid.uuid4().hex}-users")
            self.spark.read.parquet(spark_uri(asked)).createOrReplaceTempView("asked_users")
        try:
            frame = collect(self.spark.sql(query, args=args), self.staging)
        finally:
            if asked is not None:
                remove_staged([asked])
        if frame.empty:
            return pd.DataFrame(columns=columns)
        return frame.sort_values(order, kind="stable").reset_index(drop=True)[columns]

    def boundaries(self, cuts: list[float]) -> tuple[pd.Timestamp, pd.Timestamp, list[pd.Timestamp]]:
        """The four quantiles of ``decision_points.split_boundaries``; see ``PostgresEvents``."""
        row = self.spark.sql(_BOUNDARIES_SPARK, args={f"c{i}": float(c) for i, c in enumerate(cuts)}).first()
        stamp = lambda micros: pd.Timestamp(int(micros), unit="us", tz="UTC")  # noqa: E731
        return stamp(row.first), stamp(row.last), [stamp(row[f"q{i}"]) for i in range(len(cuts))]

    def session_starts(self, min_history: int, gap: dt.timedelta, since: dt.datetime,
                       recommended: bool = False) -> pd.DataFrame:
        return self._frame(_SESSION_STARTS_SPARK, {"min_history": min_history, "gap_us": _micros(gap), "since": since,
                                                   "recommended": recommended},
                           ["user_id", "event_timestamp", "item_id", "event_type"],
                           ["user_id", "event_timestamp", "item_id", "category_id"])

    def last_events(self, min_history: int) -> pd.DataFrame:
        return self._frame(_LAST_EVENTS_SPARK, {"min_history": min_history}, ["user_id", "position"],
                           ["user_id", "event_timestamp", "item_id", "category_id", "position", "n_events"])

    def first_seen(self, users: list[int]) -> pd.DataFrame:
        return self._frame(_FIRST_SEEN_SPARK, {}, ["user_id", "item_id"], ["user_id", "item_id", "first_seen"], users)

    def item_counts(self, before: dt.datetime) -> pd.DataFrame:
        return self._frame(_ITEM_COUNTS_SPARK, {"before": before}, ["item_id"], ["item_id", "n"])

    def histories(self, gap: dt.timedelta, before: dt.datetime | None = None, drop_last: int = 0) -> pd.DataFrame:
        return self._frame(_HISTORIES_SPARK, {"gap_us": _micros(gap), "before": before or _LATEST, "drop_last": drop_last},
                           ["user_id", "event_timestamp", "item_id", "event_type"], ["user_id", "item_id", "new_session"])

    def category_events(self, users: list[int], start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
        return self._frame(_CATEGORY_EVENTS_SPARK, {"start": start, "end": end},
                           ["user_id", "event_timestamp", "item_id", "event_type"],
                           ["user_id", "event_timestamp", "category_id"], users)


def event_history(source) -> PostgresEvents | SparkEvents:
    """``source`` as an event history: a psycopg connection becomes ``PostgresEvents``."""
    return PostgresEvents(source) if isinstance(source, psycopg.Connection) else source
