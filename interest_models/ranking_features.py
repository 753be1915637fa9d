"""The ranker's feature matrix: one row per (decision point, candidate item).

Built from (a) the point-in-time user features of the decision point, (b) the candidate's
item and category features, (c) the sequence model's outputs and (d) the on-demand
affinity. The same function serves training and online scoring, so both see the same
columns computed the same way.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

USER_COLUMNS = [
    "view_count_7d", "click_count_7d", "cart_count_7d", "purchase_count_7d", "view_count_30d",
    "purchase_count_30d", "spend_30d", "session_count_7d", "days_since_last_event",
    "category_entropy_30d", "category_divergence_7d_30d", "dominant_category_changed",
    "days_since_interest_shift", "sequence_length",
]
ITEM_COLUMNS = [
    "item_view_count_1d", "item_view_count_7d", "item_view_count_30d", "item_purchase_count_30d",
    "item_unique_users_7d", "item_conversion_rate_30d", "item_trend_1d_vs_7d", "item_price",
    "category_event_share_7d", "category_trend_7d_vs_30d",
]
PAIR_COLUMNS = [
    "user_category_share_7d", "user_category_share_30d", "is_dominant_category_7d", "is_dominant_category_30d",
    "same_category_as_last", "times_in_recent", "steps_since_in_recent", "lstm_category_probability",
    "lstm_item_score", "lstm_item_rank", "lstm_shift_probability", "interest_item_cosine",
]
FEATURE_COLUMNS = USER_COLUMNS + ITEM_COLUMNS + PAIR_COLUMNS
"""Column order of the matrix the ranker is trained on."""

NOT_IN_RECENT = 1000.0


def _share(shares, category: int) -> float:
    if shares is None or category < 1 or category > len(shares):
        return 0.0
    return float(shares[category - 1])


def build_matrix(user_rows: pd.DataFrame, candidates: pd.DataFrame, lstm_scores: np.ndarray,
                 category_probabilities: np.ndarray, shift_probability: np.ndarray) -> pd.DataFrame:
    """Assemble ``FEATURE_COLUMNS`` for candidate rows.

    Args:
        user_rows: one row per decision point (position = ``candidates.point``), with the
            user features of ``USER_COLUMNS`` and the arrays category_share_7d/30d,
            recent_item_ids, recent_category_ids.
        candidates: columns point, item_id, item_index, category_id, ``ITEM_COLUMNS`` and
            interest_item_cosine.
        lstm_scores: (n_points, n_items + 1); category_probabilities: (n_points, n_categories + 1);
        shift_probability: (n_points,).
    """
    point = candidates.point.to_numpy()
    users = user_rows.iloc[point].reset_index(drop=True)
    matrix = pd.DataFrame(index=candidates.index)
    for column in USER_COLUMNS:
        matrix[column] = pd.to_numeric(users[column], errors="coerce").astype("float64").to_numpy()
    for column in ITEM_COLUMNS:
        matrix[column] = pd.to_numeric(candidates[column], errors="coerce").astype("float64").to_numpy()

    category = candidates.category_id.to_numpy(np.int64)
    item_ids = candidates.item_id.to_numpy(np.int64)
    item_index = candidates.item_index.to_numpy(np.int64)
    share_7d, share_30d, times, steps, same_last = (np.zeros(len(candidates)) for _ in range(5))
    for row, (shares7, shares30, recent_items, recent_categories) in enumerate(
        zip(users.category_share_7d, users.category_share_30d, users.recent_item_ids, users.recent_category_ids)
    ):
        share_7d[row] = _share(shares7, category[row])
        share_30d[row] = _share(shares30, category[row])
        if recent_items is not None and len(recent_items):
            hits = np.flatnonzero(np.asarray(recent_items) == item_ids[row])
            times[row] = len(hits)
            steps[row] = len(recent_items) - 1 - hits[-1] if len(hits) else NOT_IN_RECENT
            same_last[row] = float(recent_categories[-1] == category[row])
        else:
            steps[row] = NOT_IN_RECENT
    matrix["user_category_share_7d"] = share_7d
    matrix["user_category_share_30d"] = share_30d
    matrix["is_dominant_category_7d"] = (users.dominant_category_7d.fillna(0).to_numpy() == category).astype(float)
    matrix["is_dominant_category_30d"] = (users.dominant_category_30d.fillna(0).to_numpy() == category).astype(float)
    matrix["same_category_as_last"] = same_last
    matrix["times_in_recent"] = times
    matrix["steps_since_in_recent"] = steps
    matrix["lstm_category_probability"] = category_probabilities[point, np.clip(category, 0, category_probabilities.shape[1] - 1)]
    order = np.argsort(-lstm_scores, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, lstm_scores.shape[1] + 1)[None, :].repeat(len(order), 0), axis=1)
    matrix["lstm_item_score"] = lstm_scores[point, item_index]
    matrix["lstm_item_rank"] = rank[point, item_index].astype(float)
    matrix["lstm_shift_probability"] = shift_probability[point]
    matrix["interest_item_cosine"] = candidates.interest_item_cosine.to_numpy(np.float64)
    return matrix[FEATURE_COLUMNS]
