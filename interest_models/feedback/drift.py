"""Drift in logged behaviour: the population's category mix of clicks and the live CTR.

Each day's clicks per category are compared with the previous ``window_days`` days'
(a chi-square test of the day's counts against the window's smoothed shares, and the
Jensen-Shannon divergence between the two mixes as the effect size), and the day's CTR
with the window's. A day drifts when the mix test is significant at ``alpha`` with a
divergence of at least ``min_divergence``, or when the CTR fell by at least
``ctr_drop`` (relative) with enough impressions.
"""
from __future__ import annotations

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


@dataclass
class DriftSignal:
    day: int
    divergence: float       # JS divergence of the day's click mix vs the window's
    p_value: float          # chi-square test of the day's clicks against the window's shares
    ctr: float
    baseline_ctr: float
    drifted: bool


class DriftMonitor:
    """Feed one day at a time with ``observe``; the first ``window_days`` days only fill the window."""

    def __init__(self, window_days: int = 7, alpha: float = 1e-3, min_divergence: float = 0.01, ctr_drop: float = 0.15,
                 min_impressions: int = 500):
        self.window_days, self.alpha, self.min_divergence = window_days, alpha, min_divergence
        self.ctr_drop, self.min_impressions = ctr_drop, min_impressions
        self.window: deque[tuple[np.ndarray, int, int]] = deque(maxlen=window_days)

    def observe(self, day: int, category_clicks: np.ndarray, impressions: int, clicks: int) -> DriftSignal:
        """Compare the day with the window, then add it to the window (a drifted day too:
        the new normal becomes the reference)."""
        category_clicks = np.asarray(category_clicks, np.float64)
        ctr = clicks / impressions if impressions else float("nan")
        if len(self.window) < self.window_days:
            self.window.append((category_clicks, impressions, clicks))
            return DriftSignal(day, float("nan"), float("nan"), ctr, float("nan"), False)
        reference = np.sum([w[0] for w in self.window], axis=0) + 1.0  # add-one smoothing
        shares = reference / reference.sum()
        baseline_ctr = sum(w[2] for w in self.window) / max(1, sum(w[1] for w in self.window))
        total = category_clicks.sum()
        if total > 0:
            p_value = float(stats.chisquare(category_clicks, shares * total).pvalue)
            divergence = js_divergence(category_clicks + 1e-9, shares)
        else:
            p_value, divergence = 1.0, 0.0
        mix_drift = p_value < self.alpha and divergence >= self.min_divergence
        ctr_drift = impressions >= self.min_impressions and ctr < (1 - self.ctr_drop) * baseline_ctr
        self.window.append((category_clicks, impressions, clicks))
        return DriftSignal(day, divergence, p_value, ctr, baseline_ctr, bool(mix_drift or ctr_drift))
