"""Daily feedback features from the impression log (Feast views ``user_feedback`` and
``item_feedback``): impressions, clicks and purchases over 7 days, CTR, CVR and a CTR
corrected for position (clicks per position-discounted impression, the discount being
``1 / log2(position + 1)``), and per user the clicks and exposure per category.

``refresh_feedback_features`` writes the snapshot at the end of each given UTC day
(idempotent: a day written again is replaced). ``latest_feedback`` reads each entity's
newest snapshot up to a time straight from the tables Feast reads (what materialization
would put in the online store).
"""
from __future__ import annotations

import datetime as dt
from importlib import resources

import numpy as np
import psycopg

from materialize.database.tables import fetch_frame, share_offline_writes_lock


def _sql(name: str) -> str:
    return resources.files("interest_models.feedback").joinpath(f"sql/{name}.sql").read_text()


def day_end(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc)


def refresh_feedback_features(conn: psycopg.Connection, days) -> None:
    """Write the user and item feedback snapshots stamped at the end of each day (commits)."""
    user_sql, item_sql = _sql("user_feedback_daily"), _sql("item_feedback_daily")
    share_offline_writes_lock(conn)
    for day in sorted(set(days)):
        params = {"day_end": day_end(day)}
        conn.execute(user_sql, params)
        conn.execute(item_sql, params)
    conn.commit()


def latest_feedback(conn: psycopg.Connection, at: dt.datetime, n_categories: int, max_age_days: int = 8):
    """Each user's and item's newest feedback snapshot stamped at or before ``at`` (and at
    most ``max_age_days`` old).

    Returns:
        users: dict user_id -> (category_clicks (n_categories,), category_exposure (n_categories,)).
        items: dict item_id -> (clicks, exposure).
    """
    params = {"at": at, "oldest": at - dt.timedelta(days=max_age_days)}
    users = fetch_frame(conn, (
        "SELECT DISTINCT ON (user_id) user_id, category_clicks_7d, category_exposure_7d FROM interest.user_feedback_daily "
        "WHERE event_timestamp <= %(at)s AND event_timestamp > %(oldest)s ORDER BY user_id, event_timestamp DESC"), params)
    items = fetch_frame(conn, (
        "SELECT DISTINCT ON (item_id) item_id, item_clicks_7d, item_exposure_7d FROM interest.item_feedback_daily "
        "WHERE event_timestamp <= %(at)s AND event_timestamp > %(oldest)s ORDER BY item_id, event_timestamp DESC"), params)
    conn.commit()

    def padded(values) -> np.ndarray:
        out = np.zeros(n_categories)
        values = np.asarray(values, np.float64)[:n_categories]
        out[: len(values)] = values
        return out

    return ({int(u): (padded(c), padded(e)) for u, c, e in users.itertuples(index=False)},
            {int(i): (float(c), float(e)) for i, c, e in items.itertuples(index=False)})
