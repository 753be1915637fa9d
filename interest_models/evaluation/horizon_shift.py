"""Interest shift over a horizon: does the user's category mix of the coming days differ
from that of the past days?

"The next event's category differs from the 30-day dominant one" is true for most points
on shops with many categories (it mostly means "not the top category"). This label
compares whole distributions instead: the Jensen-Shannon divergence (base 2, in [0, 1])
between the user's category shares in the ``future_days`` after the decision point and in
the ``past_days`` before it, thresholded. Points without events on either side have no label.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from interest_models.data.event_history import event_history


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(n,) base-2 Jensen-Shannon divergence of the rows of two (n, k) distributions."""
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(a / m), 0.0).sum(axis=1)

    return np.clip((kl(p) + kl(q)) / 2, 0.0, 1.0)


def horizon_divergence(events, points: pd.DataFrame, n_categories: int,
                       past_days: int = 30, future_days: int = 7) -> np.ndarray:
    """(n,) Jensen-Shannon divergence between each point's future and past category shares
    (NaN without events on either side).

    Args:
        events: a psycopg connection or an ``event_history`` object.
        points: columns user_id and as_of (tz-aware); events at ``as_of`` count as future.
    """
    past, future = pd.Timedelta(days=past_days), pd.Timedelta(days=future_days)
    events = event_history(events).category_events(
        [int(u) for u in points.user_id.unique()], (points.as_of.min() - past).to_pydatetime(),
        (points.as_of.max() + future).to_pydatetime())
    out = np.full(len(points), np.nan)
    if events.empty:
        return out
    times = pd.to_datetime(events.event_timestamp, utc=True).to_numpy("datetime64[ns]").astype(np.int64)
    categories = events.category_id.to_numpy(np.int64)
    users = events.user_id.to_numpy(np.int64)
    as_of = pd.to_datetime(points.as_of, utc=True).to_numpy("datetime64[ns]").astype(np.int64)
    point_users = points.user_id.to_numpy(np.int64)
    first, last = np.searchsorted(users, point_users, "left"), np.searchsorted(users, point_users, "right")
    histograms = np.zeros((2, len(points), n_categories + 1))
    for row in range(len(points)):
        t, c = times[first[row]:last[row]], categories[first[row]:last[row]]
        split = np.searchsorted(t, as_of[row], "left")
        start = np.searchsorted(t, as_of[row] - past.value, "left")
        end = np.searchsorted(t, as_of[row] + future.value, "right")
        histograms[0, row] = np.bincount(c[start:split], minlength=n_categories + 1)[: n_categories + 1]
        histograms[1, row] = np.bincount(c[split:end], minlength=n_categories + 1)[: n_categories + 1]
    totals = histograms.sum(axis=2)
    known = (totals > 0).all(axis=0)
    shares = histograms[:, known] / totals[:, known, None]
    out[known] = jensen_shannon(shares[1], shares[0])
    return out

