"""The synthetic shop's oracle: the Bayes-optimal next-category forecast from the hidden state.

At a session start ``s`` the generator draws the session category from the user's true
preference ``p(s)`` (``SyntheticShop.category_preference``), and the first view's category is
that category with probability ``ON_CATEGORY_VIEW_SHARE``, otherwise a fresh draw from the same
``p(s)``; every draw uses its own uniform. Given the hidden state (the user's preference before
and after, the shift's kind and times), the category of the first event of a session starting
at ``s`` is therefore distributed exactly as ``p(s)``, whatever happened before: no forecast
from any history can do better in expectation (accuracy@1, log-loss). The probability that it
differs from a given category ``d`` (the 30-day dominant one of the shift label) is
``1 - p_d(s)``.

Exactness: ``s`` is known to the millisecond, as events carry it. A switch happens at a whole
second, so the preference at the truncated time is the preference at ``s``; inside a drift the
preference moves by less than 1 ms / ``drift_days`` (about 1e-9) within that millisecond.

The forecast from the observed events alone (an oracle without the hidden state) has no
closed form: ``synthetic_posterior`` samples it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from materialize.ingest.sources.synthetic import SyntheticShop


@dataclass(frozen=True)
class OracleForecast:
    """The oracle's forecast for n sessions; categories in ``SyntheticShop.categories`` order."""

    next_category: np.ndarray  # (n, n_categories) float64, rows sum to 1
    shift_probability: np.ndarray  # (n,) float64, P(next category != dominant); NaN where dominant < 0


def next_category_oracle(shop: SyntheticShop, user_id: np.ndarray, session_start: pd.Series,
                         dominant: np.ndarray) -> OracleForecast:
    """The Bayes-optimal forecast of the first event's category of each session.

    Args:
        shop: the generator of the events.
        user_id: (n,) int, ids in 1..n_users.
        session_start: (n,) datetime64[ns, UTC], the time of the session's first event (a
            decision point's label time).
        dominant: (n,) int, the category (index into ``shop.categories``) the shift label
            compares with; -1 where the user has none.
    """
    preference = shop.category_preference(user_id, session_start)
    dominant = np.asarray(dominant, dtype=np.int64)
    known = dominant >= 0
    shift = np.full(len(dominant), np.nan)
    shift[known] = 1.0 - preference[np.flatnonzero(known), dominant[known]]
    return OracleForecast(preference, shift)
