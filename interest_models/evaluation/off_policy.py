"""Off-policy estimates of a target policy's click (or purchase) rate from logged lists.

The estimand: the expected reward per impression had the target policy chosen the lists,
on the logged requests. The estimators assume what the project's policies and the
simulator's shoppers satisfy: the reward at a position depends on the user, the item and
the position, not on the other items of the list (no cascade), and the logging policy gave
every (item, position) the target can choose a positive probability. For each logged list n
and position j, with the logged item i, reward r, logged propensity p = P_log(i at j) and
target propensity q = P_target(i at j), weight w = q / p:

- IPS: sum_j r w per list (unbiased);
- SNIPS: per position, sum_n r w / sum_n w (self-normalised: lower variance, slightly biased);
- DR (doubly robust): sum_j [ sum_i' P_target(i' at j) m(i', j) + (r - m(i, j)) w ] with a
  reward model m (``direct``, ``model_at_logged``): unbiased whatever m, lower variance when m is good.

Per-impression rates are per-list values divided by the positions per list. 95 % intervals
come from a bootstrap over lists (``n_boot`` resamples, percentile), all three estimators
on the same resamples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

ESTIMATORS = ("IPS", "SNIPS", "DR")


@dataclass
class ReplayedLists:
    """Logged lists replayed for one target policy; arrays (n_lists, k), position j in column j.

    Attributes:
        reward: observed reward of the logged item (0/1).
        logged_propensity: P_log(logged item at j).
        target_propensity: P_target(logged item at j).
        direct: sum over candidates of P_target(candidate at j) * m(candidate, j).
        model_at_logged: m(logged item, j).
        present: whether the list had a position j (shorter lists pad with False).
    """

    reward: np.ndarray
    logged_propensity: np.ndarray
    target_propensity: np.ndarray
    direct: np.ndarray
    model_at_logged: np.ndarray
    present: np.ndarray

    def __post_init__(self) -> None:
        shapes = {a.shape for a in (self.reward, self.logged_propensity, self.target_propensity, self.direct,
                                    self.model_at_logged, self.present)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"replayed arrays must share one (n_lists, k) shape, got {sorted(shapes)}")
        if np.any(self.logged_propensity[self.present] <= 0):
            raise ValueError("a logged propensity is 0 or negative: the log cannot say what that list was worth")


def _values(lists: ReplayedLists, rows: np.ndarray) -> dict[str, float]:
    """Per-impression estimates on the lists ``rows`` (a resample)."""
    present = lists.present[rows]
    weight = np.where(present, lists.target_propensity[rows] / np.where(present, lists.logged_propensity[rows], 1.0), 0.0)
    reward = np.where(present, lists.reward[rows], 0.0)
    impressions = present.sum()
    ips = (reward * weight).sum() / impressions
    weight_by_position = weight.sum(axis=0)
    positions = present.sum(axis=0)
    ratio = np.divide((reward * weight).sum(axis=0), weight_by_position, out=np.zeros(present.shape[1]),
                      where=weight_by_position > 0)
    snips = (ratio * positions).sum() / impressions
    correction = np.where(present, lists.direct[rows] + (reward - lists.model_at_logged[rows]) * weight, 0.0)
    dr = correction.sum() / impressions
    return {"IPS": float(ips), "SNIPS": float(snips), "DR": float(dr)}


def estimate(lists: ReplayedLists, n_boot: int = 500, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """IPS, SNIPS and DR estimates with bootstrap intervals.

    Returns:
        One row per estimator: ``estimate``, ``low``, ``high`` (per impression), ``lists``,
        and ``max_weight`` (the largest importance weight: large means few lists carry the
        estimate).
    """
    n = lists.reward.shape[0]
    if n == 0:
        raise ValueError("no logged lists to evaluate")
    point = _values(lists, np.arange(n))
    rng = np.random.default_rng(seed)
    draws = np.array([[v for v in _values(lists, rng.integers(0, n, n)).values()] for _ in range(n_boot)])
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail], axis=0)
    present = lists.present
    max_weight = float(np.max(np.where(present, lists.target_propensity / np.where(present, lists.logged_propensity, 1), 0)))
    return pd.DataFrame({"estimate": [point[e] for e in ESTIMATORS], "low": low, "high": high, "lists": n,
                         "max_weight": max_weight}, index=list(ESTIMATORS))
