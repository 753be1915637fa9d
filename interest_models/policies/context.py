"""The context a policy sees for each candidate of one request.

One row per candidate, ``CONTEXT_COLUMNS`` then a one-hot of the candidate's category
(``n_categories`` columns): the blend's opinion (standardised score, reciprocal rank),
what the logged feedback says about the user's taste for the candidate's category and about
the item (position-corrected click rates, smoothed towards priors), the user's interest
state from Feast (7- and 30-day category shares, the LSTM's next-category probability, and
the shift signal: the 7-vs-30-day divergence times the category's change in share).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTEXT_COLUMNS = (
    "bias",
    "blend_z",
    "blend_reciprocal_rank",
    "user_category_ctr",
    "user_category_click_share",
    "user_category_exposure_log",
    "item_ctr",
    "category_share_7d",
    "category_share_30d",
    "lstm_category_probability",
    "shift_signal",
)
PRIOR_CTR = 0.1        # click rate a category or item is assumed to have before feedback
PRIOR_EXPOSURE = 2.0   # how many discounted impressions that prior weighs


def context_columns(n_categories: int) -> list[str]:
    """The names of the context's columns: ``CONTEXT_COLUMNS`` then ``category_<id>``."""
    return list(CONTEXT_COLUMNS) + [f"category_{c}" for c in range(1, n_categories + 1)]


def candidate_categories(context: np.ndarray) -> np.ndarray:
    """(n,) int64 the category ids that (n, dim) context rows' one-hot columns state (0: none)."""
    one_hot = np.asarray(context)[:, len(CONTEXT_COLUMNS):]
    if one_hot.shape[1] == 0:
        return np.zeros(len(one_hot), np.int64)
    return np.where(one_hot.max(axis=1) > 0, one_hot.argmax(axis=1) + 1, 0).astype(np.int64)


@dataclass
class UserState:
    """One user's inputs to the context, category arrays indexed by ``category_id - 1``.

    Attributes:
        category_clicks: (n_categories,) clicks on logged recommendations over 7 days.
        category_exposure: (n_categories,) position-discounted impressions over 7 days.
        share_7d, share_30d: (n_categories,) category shares of the user's events (Feast).
        divergence: Jensen-Shannon divergence of the 7-day vs 30-day shares (0 when unknown).
        category_probability: (n_categories + 1,) the LSTM's next-category distribution
            indexed by category id (index 0 unused); zeros for a cold user.
    """

    category_clicks: np.ndarray
    category_exposure: np.ndarray
    share_7d: np.ndarray
    share_30d: np.ndarray
    divergence: float
    category_probability: np.ndarray

    @classmethod
    def empty(cls, n_categories: int) -> "UserState":
        zeros = np.zeros(n_categories)
        return cls(zeros, zeros, zeros, zeros, 0.0, np.zeros(n_categories + 1))


def _array(value, n: int) -> np.ndarray:
    """A feature array as float64 of length ``n`` (None or a shorter array padded with 0)."""
    out = np.zeros(n)
    if value is not None:
        values = np.asarray(value, np.float64)[:n]
        out[: len(values)] = np.nan_to_num(values)
    return out


def user_state(user: dict, feedback: dict | None, category_probability: np.ndarray | None, n_categories: int) -> UserState:
    """A ``UserState`` from one-row online feature dicts (``{name: [value]}``, as Feast's
    ``to_dict`` gives them); ``feedback`` holds the ``user_feedback`` view's features (None:
    no feedback logged yet)."""
    first = lambda d, name: (d.get(name) or [None])[0] if d else None  # noqa: E731
    divergence = first(user, "category_divergence_7d_30d")
    probability = np.zeros(n_categories + 1)
    if category_probability is not None:
        given = np.asarray(category_probability, np.float64)[: n_categories + 1]
        probability[: len(given)] = given
    return UserState(
        _array(first(feedback, "category_clicks_7d"), n_categories),
        _array(first(feedback, "category_exposure_7d"), n_categories),
        _array(first(user, "category_share_7d"), n_categories),
        _array(first(user, "category_share_30d"), n_categories),
        float(divergence) if divergence is not None and np.isfinite(divergence) else 0.0,
        probability,
    )


def build_context(blend_score: np.ndarray, category_id: np.ndarray, user: UserState, item_clicks: np.ndarray,
                  item_exposure: np.ndarray, n_categories: int) -> np.ndarray:
    """The (n, len(context_columns(n_categories))) float32 context of n candidates.

    Args:
        blend_score: (n,) the blend's scores of the candidates.
        category_id: (n,) int, their categories (1-based; 0 or out of range: no category).
        item_clicks, item_exposure: (n,) the items' clicks and position-discounted
            impressions over 7 days (0 where none).
    """
    n = len(blend_score)
    blend_score = np.asarray(blend_score, np.float64)
    spread = blend_score.std()
    z = (blend_score - blend_score.mean()) / spread if spread > 0 else np.zeros(n)
    rank = np.empty(n)
    rank[np.argsort(-blend_score, kind="stable")] = np.arange(1, n + 1)
    category_id = np.asarray(category_id, np.int64)
    known = (category_id >= 1) & (category_id <= n_categories)
    c = np.where(known, category_id - 1, 0)
    clicks, exposure = user.category_clicks[c] * known, user.category_exposure[c] * known
    user_ctr_prior = (user.category_clicks.sum() + PRIOR_EXPOSURE * PRIOR_CTR) / (user.category_exposure.sum() + PRIOR_EXPOSURE)
    share_30d = user.share_30d[c] * known
    columns = np.column_stack([
        np.ones(n),
        z,
        1.0 / rank,
        (clicks + PRIOR_EXPOSURE * user_ctr_prior) / (exposure + PRIOR_EXPOSURE),
        (clicks + PRIOR_EXPOSURE * share_30d) / (user.category_clicks.sum() + PRIOR_EXPOSURE),
        np.log1p(exposure),
        (np.nan_to_num(item_clicks) + PRIOR_EXPOSURE * PRIOR_CTR) / (np.nan_to_num(item_exposure) + PRIOR_EXPOSURE),
        user.share_7d[c] * known,
        share_30d,
        user.category_probability[np.where(known, category_id, 0)] * known,
        user.divergence * (user.share_7d[c] - user.share_30d[c]) * known,
    ])
    one_hot = np.zeros((n, n_categories))
    one_hot[np.flatnonzero(known), c[known]] = 1.0
    return np.hstack([columns, one_hot]).astype(np.float32)
