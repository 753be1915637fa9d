"""Drift in logged behaviour: the population's category mix, the live CTR and the shift rate.

Each day's events per category are compared with the previous ``window_days`` days'
(a chi-square test of the day's counts against the window's smoothed shares, and the
Jensen-Shannon divergence between the two mixes as the effect size), the day's CTR
with the window's, and the day's shift rate (the share of active users whose 7-day
dominant category differs from their 30-day one) with the window's. The mix is the
population's own: events that answer no recommendation. Clicks on served lists follow
what the policy shows, so a learning policy moved the served mix by itself (the bandit arms
of the feedback benchmark alarmed on days without a shift). Events are not independent
draws (a day's users differ, and one user's events follow one taste), so the chi-square
statistic is divided by the overdispersion the window itself shows: the mean of each
window day's statistic per degree of freedom against the other window days (at least 1; a
quasi-likelihood correction). Without it, a test at 1e-3 flagged 4 of 15 stationary
simulated days. A day drifts when the corrected test is significant at ``alpha`` with a
divergence of at least ``min_divergence``, when the CTR fell by at least ``ctr_drop``
(relative) with enough impressions, or when the shift rate rose by at least
``shift_rate_rise`` (absolute) with enough active users.
"""
from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import stats


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (nats) of two distributions (normalised here)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def _shares(counts: np.ndarray) -> np.ndarray:
    smoothed = np.asarray(counts, np.float64) + 1.0  # add-one smoothing
    return smoothed / smoothed.sum()


def _chi_square(counts: np.ndarray, shares: np.ndarray) -> float:
    expected = shares * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


@dataclass
class DriftSignal:
    day: object             # the day's number, or its date (``daily_signals``)
    divergence: float       # JS divergence of the day's category mix vs the window's
    p_value: float          # chi-square test of the day's counts against the window's shares
    ctr: float
    baseline_ctr: float
    drifted: bool
    shift_rate: float = float("nan")           # NaN: not measured
    baseline_shift_rate: float = float("nan")
    reasons: tuple[str, ...] = ()              # "category mix", "CTR drop", "shift rate"


class DriftMonitor:
    """Feed one day at a time with ``observe``; the first ``window_days`` days only fill the window."""

    def __init__(self, window_days: int = 7, alpha: float = 1e-3, min_divergence: float = 0.01, ctr_drop: float = 0.15,
                 min_impressions: int = 500, shift_rate_rise: float = 0.1, min_users: int = 100):
        self.window_days, self.alpha, self.min_divergence = window_days, alpha, min_divergence
        self.ctr_drop, self.min_impressions = ctr_drop, min_impressions
        self.shift_rate_rise, self.min_users = shift_rate_rise, min_users
        self.window: deque[tuple[np.ndarray, int, int]] = deque(maxlen=window_days)
        self.shift_window: deque[tuple[int, int]] = deque(maxlen=window_days)  # (active users, shifted users)

    def observe(self, day: int, category_counts: np.ndarray, impressions: int, clicks: int,
                active_users: int = 0, shifted_users: int = 0) -> DriftSignal:
        """Compare the day with the window, then add it to the window (a drifted day too:
        the new normal becomes the reference).

        Args:
            category_counts: (n_categories,) the population's events of the day by category.
            impressions, clicks: the day's logged impressions and their clicks (CTR).
            active_users, shifted_users: users active that day, and those of them whose 7-day
                dominant category differs from the 30-day one (0, 0: not measured).
        """
        category_counts = np.asarray(category_counts, np.float64)
        ctr = clicks / impressions if impressions else float("nan")
        shift_rate = shifted_users / active_users if active_users else float("nan")
        baseline_users = sum(w[0] for w in self.shift_window)
        baseline_shift_rate = sum(w[1] for w in self.shift_window) / baseline_users if baseline_users else float("nan")
        if active_users:
            self.shift_window.append((active_users, shifted_users))
        if len(self.window) < self.window_days:
            self.window.append((category_counts, impressions, clicks))
            return DriftSignal(day, float("nan"), float("nan"), ctr, float("nan"), False, shift_rate, float("nan"))
        days = [w[0] for w in self.window]
        shares = _shares(np.sum(days, axis=0))
        baseline_ctr = sum(w[2] for w in self.window) / max(1, sum(w[1] for w in self.window))
        dof = len(category_counts) - 1
        spread = [_chi_square(day, _shares(np.sum(days, axis=0) - day)) / dof for day in days if day.sum() > 0]
        overdispersion = max(1.0, float(np.mean(spread))) if spread else 1.0
        if category_counts.sum() > 0:
            p_value = float(stats.chi2.sf(_chi_square(category_counts, shares) / overdispersion, dof))
            divergence = js_divergence(category_counts + 1e-9, shares)
        else:
            p_value, divergence = 1.0, 0.0
        reasons = []
        if p_value < self.alpha and divergence >= self.min_divergence:
            reasons.append("category mix")
        if impressions >= self.min_impressions and ctr < (1 - self.ctr_drop) * baseline_ctr:
            reasons.append("CTR drop")
        if active_users >= self.min_users and baseline_users and shift_rate >= baseline_shift_rate + self.shift_rate_rise:
            reasons.append("shift rate")
        self.window.append((category_counts, impressions, clicks))
        return DriftSignal(day, divergence, p_value, ctr, baseline_ctr, bool(reasons), shift_rate, baseline_shift_rate,
                           tuple(reasons))


def episode_start(signals: list[DriftSignal], days: int) -> object | None:
    """The first day of the newest drift episode (a run of consecutive drifted days) that
    reaches into the last ``days`` signals, or None when none of them drifted."""
    recent = [n for n in range(max(0, len(signals) - days), len(signals)) if signals[n].drifted]
    if not recent:
        return None
    first = recent[-1]
    while first > 0 and signals[first - 1].drifted:
        first -= 1
    return signals[first].day


def daily_signals(conn, days: int, window_days: int = 7, **monitor_options) -> list[DriftSignal]:
    """The monitor run over the last ``days`` days before the newest event (UTC days): the
    population's views per category from ``interest.events`` (the events that answer no
    recommendation: the population's own browsing, whatever a policy shows), the CTR of the
    logged recommendations (impressions joined to events by recommendation id; NaN on days
    without impressions) and the shift rate of the users active each day
    (``interest.user_daily_features``, as built; not measured on days not built yet)."""
    newest = conn.execute("SELECT max(event_timestamp) FROM interest.events").fetchone()[0]
    if newest is None:
        return []
    params = {"last_day": newest.astimezone(dt.timezone.utc).date(), "days": days + window_days}
    clicks = conn.execute(
        "SELECT (e.event_timestamp AT TIME ZONE 'UTC')::date AS day, i.category_id, count(*) FROM interest.events e "
        "JOIN interest.items i ON i.item_id = e.item_id WHERE e.event_type = 0 AND e.recommendation_id IS NULL "
        "AND e.event_timestamp >= (%(last_day)s::date - %(days)s + 1)::timestamp AT TIME ZONE 'UTC' GROUP BY 1, 2",
        params).fetchall()
    shifts = conn.execute(
        "SELECT ((event_timestamp - interval '1 millisecond') AT TIME ZONE 'UTC')::date AS day, count(*), "
        "count(*) FILTER (WHERE dominant_category_changed) FROM interest.user_daily_features "
        "WHERE view_count_1d + click_count_1d + cart_count_1d + purchase_count_1d > 0 "
        "AND event_timestamp > (%(last_day)s::date - %(days)s + 1)::timestamp AT TIME ZONE 'UTC' GROUP BY 1", params).fetchall()
    logged = conn.execute(
        "SELECT (i.served_at AT TIME ZONE 'UTC')::date AS day, count(*), count(*) FILTER (WHERE f.clicked) "
        "FROM interest.impressions i LEFT JOIN LATERAL (SELECT bool_or(e.event_type >= 1) AS clicked FROM interest.events e "
        "  WHERE e.recommendation_id = i.recommendation_id AND e.user_id = i.user_id AND e.item_id = i.item_id) f ON true "
        "WHERE i.served_at >= (%(last_day)s::date - %(days)s + 1)::timestamp AT TIME ZONE 'UTC' GROUP BY 1", params).fetchall()
    n_categories = conn.execute("SELECT count(*) FROM interest.categories").fetchone()[0]
    conn.commit()
    first = params["last_day"] - dt.timedelta(days=days + window_days - 1)
    per_day = {first + dt.timedelta(days=d): np.zeros(n_categories) for d in range(days + window_days)}
    for day, category_id, count in clicks:
        per_day[day][category_id - 1] += count
    ctr = {day: (shown, clicked) for day, shown, clicked in logged}
    shift = {day: (active, shifted) for day, active, shifted in shifts}
    monitor = DriftMonitor(window_days=window_days, **monitor_options)
    signals = []
    for n, (day, counts) in enumerate(sorted(per_day.items())):
        shown, clicked = ctr.get(day, (0, 0))
        signal = monitor.observe(n, counts, shown, clicked, *shift.get(day, (0, 0)))
        signal.day = day
        if n >= window_days:
            signals.append(signal)
    return signals
