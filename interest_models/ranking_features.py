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


def _padded(arrays, width: int | None = None, dtype=np.float64) -> np.ndarray:
    """(n, width) array from per-row sequences (None = empty), zero padded on the right."""
    lengths = [0 if a is None else len(a) for a in arrays]
    width = max(lengths, default=0) if width is None else width
    out = np.zeros((len(lengths), max(width, 1)), dtype=dtype)
    for row, (values, length) in enumerate(zip(arrays, lengths)):
        if length:
            out[row, : min(length, width)] = np.asarray(values, dtype=dtype)[:width]
    return out


def _recent_item_stats(users: pd.DataFrame, point: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: times its item appears in the user's recent items, and steps back
    from the newest event to its last appearance (``NOT_IN_RECENT`` when absent)."""
    recent = users.recent_item_ids
    lengths = np.array([0 if v is None else len(v) for v in recent])
    long = pd.DataFrame({
        "point": np.repeat(np.arange(len(recent)), lengths),
        "item_id": np.concatenate([np.asarray(v, np.int64) for v in recent if v is not None and len(v)] or [np.empty(0, np.int64)]),
    })
    long["steps_back"] = np.concatenate([np.arange(n - 1, -1, -1) for n in lengths] or [np.empty(0, np.int64)])
    stats = long.groupby(["point", "item_id"]).steps_back.agg(["size", "min"])
    keys = pd.MultiIndex.from_arrays([point, item_ids])
    found = stats.reindex(keys)
    return found["size"].fillna(0).to_numpy(float), found["min"].fillna(NOT_IN_RECENT).to_numpy(float)


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
    columns: dict[str, np.ndarray] = {}
    for column in USER_COLUMNS:
        columns[column] = pd.to_numeric(user_rows[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)[point]
    for column in ITEM_COLUMNS:
        columns[column] = pd.to_numeric(candidates[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    category = candidates.category_id.to_numpy(np.int64)
    item_ids = candidates.item_id.to_numpy(np.int64)
    item_index = candidates.item_index.to_numpy(np.int64)
    for column, shares in (("user_category_share_7d", user_rows.category_share_7d), ("user_category_share_30d", user_rows.category_share_30d)):
        table = _padded(list(shares))
        valid = (category >= 1) & (category <= table.shape[1])
        columns[column] = np.where(valid, table[point, np.clip(category - 1, 0, table.shape[1] - 1)], 0.0)
    last_category = np.array([v[-1] if v is not None and len(v) else -1 for v in user_rows.recent_category_ids])
    columns["same_category_as_last"] = (last_category[point] == category).astype(float)
    columns["times_in_recent"], columns["steps_since_in_recent"] = _recent_item_stats(user_rows, point, item_ids)
    for window in ("7d", "30d"):
        dominant = pd.to_numeric(user_rows[f"dominant_category_{window}"], errors="coerce").fillna(0).to_numpy(np.int64)
        columns[f"is_dominant_category_{window}"] = (dominant[point] == category).astype(float)
    columns["lstm_category_probability"] = category_probabilities[point, np.clip(category, 0, category_probabilities.shape[1] - 1)]
    order = np.argsort(-lstm_scores, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, lstm_scores.shape[1] + 1)[None, :].repeat(len(order), 0), axis=1)
    columns["lstm_item_score"] = lstm_scores[point, item_index]
    columns["lstm_item_rank"] = rank[point, item_index].astype(float)
    columns["lstm_shift_probability"] = shift_probability[point]
    columns["interest_item_cosine"] = candidates.interest_item_cosine.to_numpy(np.float64)
    matrix = pd.DataFrame(columns, index=candidates.index)
    return matrix[FEATURE_COLUMNS]
