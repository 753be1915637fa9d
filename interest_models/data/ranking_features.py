"""The ranker's feature matrix: one row per (decision point, candidate item).

Built from (a) the point-in-time user features of the decision point, (b) the candidate's
item and category features, (c) the sequence model's outputs, (d) the on-demand
affinity and (e) the neighbour models' scores (co-purchase, item-kNN). The same function
(``feature_matrix``) serves training and online scoring, so both see the same columns
computed the same way; it works on numpy arrays so that one online request builds no
DataFrame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from interest_models.data.columns import Columns, as_float, as_int, padded

USER_COLUMNS = [
    "view_count_7d", "click_count_7d", "cart_count_7d", "purchase_count_7d", "view_count_30d",
    "purchase_count_30d", "spend_30d", "session_count_7d", "days_since_last_event",
    "category_entropy_30d", "category_divergence_7d_30d", "dominant_category_changed",
    "days_since_interest_shift", "sequence_length",
]
ITEM_COLUMNS = [
    "item_view_count_1d", "item_view_count_7d", "item_view_count_30d", "item_purchase_count_30d",
    "item_unique_users_7d", "item_conversion_rate_30d", "item_trend_1d_vs_7d", "item_price",
    "category_event_share_7d", "category_trend_7d_vs_30d", "category_event_count_30d",
]
PAIR_COLUMNS = [
    "user_category_share_7d", "user_category_share_30d", "is_dominant_category_7d", "is_dominant_category_30d",
    "same_category_as_last", "times_in_recent", "steps_since_in_recent", "lstm_category_probability",
    "lstm_item_score", "lstm_item_rank", "lstm_shift_probability", "interest_item_cosine",
    "co_purchase_score", "item_knn_score", "item_share_of_category_30d", "lstm_category_popularity",
]
FEATURE_COLUMNS = USER_COLUMNS + ITEM_COLUMNS + PAIR_COLUMNS
"""Column order of the matrix the ranker is trained on."""
MODEL_COLUMNS = ["lstm_category_probability", "lstm_item_score", "lstm_item_rank", "lstm_shift_probability",
                 "co_purchase_score", "item_knn_score", "lstm_category_popularity"]
"""The columns other models' outputs fill (the LSTM and the neighbour models): the ranker
over all ``FEATURE_COLUMNS`` stacks them, the one over ``FEAST_COLUMNS`` does not."""
FEAST_COLUMNS = [c for c in FEATURE_COLUMNS if c not in MODEL_COLUMNS]
NEIGHBOUR_MODELS = {"co_purchase_score": "co_purchase", "item_knn_score": "item_knn"}
"""Neighbour-score column -> the baseline (``name``) whose score it holds."""

NOT_IN_RECENT = 1000.0
_STATS_BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class UserRows:
    """The user side of the ranking features, one row per decision point."""

    values: np.ndarray         # (n_points, len(USER_COLUMNS)) float64, NaN = missing
    share_7d: np.ndarray       # (n_points, n_categories) float64; column c - 1 is category c
    share_30d: np.ndarray      # (n_points, n_categories) float64
    dominant_7d: np.ndarray    # (n_points,) int64, 0 = unknown
    dominant_30d: np.ndarray   # (n_points,) int64, 0 = unknown
    recent_items: np.ndarray   # (n_points, max_len) int64 item ids, oldest first, 0-padded
    recent_length: np.ndarray  # (n_points,) int64
    last_category: np.ndarray  # (n_points,) int64 category of the newest event, -1 = none

    @classmethod
    def from_columns(cls, users: Columns) -> "UserRows":
        """From retrieved user features: the ``USER_COLUMNS`` and the arrays
        category_share_7d/30d, recent_item_ids and recent_category_ids."""
        recent_items, recent_length = padded(users["recent_item_ids"], dtype=np.int64)
        return cls(
            values=np.column_stack([as_float(users[c]) for c in USER_COLUMNS]),
            share_7d=padded(users["category_share_7d"])[0],
            share_30d=padded(users["category_share_30d"])[0],
            dominant_7d=as_int(users["dominant_category_7d"]),
            dominant_30d=as_int(users["dominant_category_30d"]),
            recent_items=recent_items,
            recent_length=recent_length,
            last_category=np.array([v[-1] if v is not None and len(v) else -1 for v in users["recent_category_ids"]], np.int64),
        )


@dataclass(frozen=True)
class CandidateRows:
    """The candidate side: one row per (decision point, candidate item)."""

    point: np.ndarray          # (n,) int64 row of ``UserRows``
    item_index: np.ndarray     # (n,) int64 vocabulary index
    item_id: np.ndarray        # (n,) int64
    category_id: np.ndarray    # (n,) int64
    item_values: np.ndarray    # (n, len(ITEM_COLUMNS)) float64, NaN = missing
    interest_item_cosine: np.ndarray  # (n,) float64, the on-demand affinity
    neighbour_scores: dict[str, np.ndarray]  # ``NEIGHBOUR_MODELS`` column -> (n,) float64

    @classmethod
    def from_frame(cls, candidates: pd.DataFrame) -> "CandidateRows":
        return cls(
            point=candidates.point.to_numpy(np.int64), item_index=candidates.item_index.to_numpy(np.int64),
            item_id=candidates.item_id.to_numpy(np.int64), category_id=candidates.category_id.to_numpy(np.int64),
            item_values=np.column_stack([as_float(candidates[c]) for c in ITEM_COLUMNS]),
            interest_item_cosine=candidates.interest_item_cosine.to_numpy(np.float64),
            neighbour_scores={c: candidates[c].to_numpy(np.float64) for c in NEIGHBOUR_MODELS},
        )


def neighbour_scores(models: dict, recent: list[np.ndarray], point: np.ndarray, item_index: np.ndarray,
                     points_per_chunk: int = 1024) -> dict[str, np.ndarray]:
    """Each neighbour model's score of candidate rows, ``NEIGHBOUR_MODELS`` column -> (n,).

    Args:
        models: baseline name -> fitted baseline (``score(recent)`` gives (batch, n_items + 1));
        recent: per decision point, the vocabulary indices of its recent items;
        point, item_index: (n,) the candidate rows. Points are scored in chunks, so memory
        is bounded by ``points_per_chunk x n_items``, not by points x catalogue.
    """
    out = {column: np.zeros(len(point)) for column in NEIGHBOUR_MODELS}
    for start in range(0, len(recent), points_per_chunk):
        rows = np.flatnonzero((point >= start) & (point < start + points_per_chunk))
        if len(rows) == 0:
            continue
        chunk = recent[start : start + points_per_chunk]
        for column, name in NEIGHBOUR_MODELS.items():
            out[column][rows] = models[name].score(chunk)[point[rows] - start, item_index[rows]]
    return out


def _recent_item_stats(users: UserRows, point: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: times its item appears in the user's recent items, and steps back
    from the newest event to its last appearance (``NOT_IN_RECENT`` when absent)."""
    times = np.zeros(len(point))
    steps = np.full(len(point), NOT_IN_RECENT)
    positions = np.arange(users.recent_items.shape[1])
    for start in range(0, len(point), _STATS_BLOCK_ROWS):
        rows = slice(start, start + _STATS_BLOCK_ROWS)
        matches = users.recent_items[point[rows]] == item_ids[rows, None]  # padding (0) never matches an id
        times[rows] = matches.sum(axis=1)
        last_seen = np.where(matches, positions, -1).max(axis=1)
        steps[rows] = np.where(last_seen >= 0, users.recent_length[point[rows]] - 1 - last_seen, NOT_IN_RECENT)
    return times, steps


def item_share_of_category(item_views_30d: np.ndarray, category_events_30d: np.ndarray) -> np.ndarray:
    """(n,) an item's share of its category's events over 30 days, in (0, 1]: its views
    plus 0.5 over the category's events plus 1 (missing counts are 0), so unseen items
    keep a small share and the ratio stays a probability when the counts disagree."""
    views = np.nan_to_num(item_views_30d, nan=0.0)
    return (views + 0.5) / (np.maximum(np.nan_to_num(category_events_30d, nan=0.0), views) + 1.0)


def _category_share(shares: np.ndarray, point: np.ndarray, category: np.ndarray) -> np.ndarray:
    valid = (category >= 1) & (category <= shares.shape[1])
    return np.where(valid, shares[point, np.clip(category - 1, 0, shares.shape[1] - 1)], 0.0)


def feature_matrix(users: UserRows, candidates: CandidateRows, lstm_scores: np.ndarray,
                   category_probabilities: np.ndarray, shift_probability: np.ndarray) -> np.ndarray:
    """(n, len(FEATURE_COLUMNS)) float64 ranking features of candidate rows.

    Args:
        lstm_scores: (n_points, n_items + 1); category_probabilities: (n_points, n_categories + 1);
        shift_probability: (n_points,), the sequence model's outputs per decision point.
    """
    point, category, item_index = candidates.point, candidates.category_id, candidates.item_index
    order = np.argsort(-lstm_scores, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(1, lstm_scores.shape[1] + 1), order.shape), axis=1)
    times_in_recent, steps_since_in_recent = _recent_item_stats(users, point, candidates.item_id)
    item_share = item_share_of_category(candidates.item_values[:, ITEM_COLUMNS.index("item_view_count_30d")],
                                        candidates.item_values[:, ITEM_COLUMNS.index("category_event_count_30d")])
    category_probability = category_probabilities[point, np.clip(category, 0, category_probabilities.shape[1] - 1)]
    pair = {
        "user_category_share_7d": _category_share(users.share_7d, point, category),
        "user_category_share_30d": _category_share(users.share_30d, point, category),
        "is_dominant_category_7d": (users.dominant_7d[point] == category).astype(float),
        "is_dominant_category_30d": (users.dominant_30d[point] == category).astype(float),
        "same_category_as_last": (users.last_category[point] == category).astype(float),
        "times_in_recent": times_in_recent,
        "steps_since_in_recent": steps_since_in_recent,
        "lstm_category_probability": category_probability,
        "lstm_item_score": lstm_scores[point, item_index],
        "lstm_item_rank": rank[point, item_index].astype(float),
        "lstm_shift_probability": shift_probability[point],
        "interest_item_cosine": candidates.interest_item_cosine,
        **candidates.neighbour_scores,
        "item_share_of_category_30d": item_share,
        # log P(next event in the item's category) + log P(item | its category): the next
        # item's probability when the category forecast and popularity within it are right
        "lstm_category_popularity": np.log(np.maximum(category_probability, 1e-9)) + np.log(item_share),
    }
    return np.column_stack([users.values[point], candidates.item_values, *(pair[c] for c in PAIR_COLUMNS)]).astype(np.float64)


def build_matrix(user_rows: Columns, candidates: pd.DataFrame, lstm_scores: np.ndarray,
                 category_probabilities: np.ndarray, shift_probability: np.ndarray) -> pd.DataFrame:
    """``feature_matrix`` of DataFrame inputs, as a DataFrame in ``FEATURE_COLUMNS`` order.

    Args:
        user_rows: one row per decision point (position = ``candidates.point``); see
            ``UserRows.from_columns``.
        candidates: columns point, item_id, item_index, category_id, ``ITEM_COLUMNS``,
            interest_item_cosine and the ``NEIGHBOUR_MODELS`` columns.
    """
    matrix = feature_matrix(UserRows.from_columns(user_rows), CandidateRows.from_frame(candidates),
                            lstm_scores, category_probabilities, shift_probability)
    return pd.DataFrame(matrix, columns=FEATURE_COLUMNS, index=candidates.index)
