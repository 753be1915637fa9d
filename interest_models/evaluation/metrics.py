"""Evaluation metrics for next-item ranking and interest-shift classification.

Pure functions over numpy arrays; every input is validated up front and a bad one raises
``ValueError`` naming the argument.

Conventions shared with the models: items are the integers ``1..n_items``; a score matrix is
``(batch, n_items + 1)`` float with column 0 the padding item, which is never ranked.

Ranking metrics take the 1-based rank of the single relevant item per row (from
``target_ranks``), so a model is scored once and every cut-off is read off the same ranks.
Ties are split at their median: a target tied with ``e`` other items and beaten by ``g``
items has rank ``1 + g + e // 2``; a constant scorer therefore lands in the middle rather
than at the top.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# Elements of a score block compared at once (about 32 MB of float64 per block).
_BLOCK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------- validation


def _check_k(k, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return int(k)


def _check_score_matrix(values, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, n), got shape {values.shape}")
    if values.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if values.dtype == bool or not (
        np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be a real numeric array, got dtype {values.dtype}")
    return values


def _check_index_vector(values, name: str, n_rows: int, low: int, high: int) -> np.ndarray:
    """1-D integer array of length ``n_rows`` with every value in ``[low, high]``."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if values.shape[0] != n_rows:
        raise ValueError(f"{name} has {values.shape[0]} entries but the scores have {n_rows} rows")
    if values.dtype == bool or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
    if values.size and (values.min() < low or values.max() > high):
        bad = values[(values < low) | (values > high)][0]
        raise ValueError(f"{name} must lie in [{low}, {high}], found {bad}")
    return values.astype(np.int64, copy=False)


def _check_ranks(ranks) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1:
        raise ValueError(f"ranks must be 1-D, got shape {ranks.shape}")
    if ranks.size == 0:
        raise ValueError("ranks is empty")
    if ranks.dtype == bool or not (
        np.issubdtype(ranks.dtype, np.integer) or np.issubdtype(ranks.dtype, np.floating)
    ):
        raise ValueError(f"ranks must be numeric, got dtype {ranks.dtype}")
    if not np.all(np.isfinite(ranks)) or np.any(ranks < 1) or np.any(ranks != np.floor(ranks)):
        raise ValueError("ranks must be whole numbers >= 1 (1-based ranks)")
    return ranks.astype(np.float64)


def _check_binary_labels(labels, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"{name} is empty")
    if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.number)):
        raise ValueError(f"{name} must be 0/1 or boolean, got dtype {labels.dtype}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return labels.astype(bool)


def _check_real_vector(values, name: str, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if values.shape[0] != n:
        raise ValueError(f"{name} has {values.shape[0]} entries, labels have {n}")
    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {values.dtype}")
    if np.iscomplexobj(values) or np.isnan(values).any():
        raise ValueError(f"{name} must be real, without NaN")
    return values.astype(np.float64, copy=False)


# --------------------------------------------------------------------------- ranks


def _greater_and_tied(values: np.ndarray, target_cols: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``values`` (batch, n): #entries > the target's and #other entries == it.

    Processed in row blocks so the boolean temporaries stay small.
    """
    batch, n = values.shape
    greater = np.empty(batch, dtype=np.int64)
    tied = np.empty(batch, dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    floating = np.issubdtype(values.dtype, np.floating)
    for start in range(0, batch, block):
        rows = slice(start, min(start + block, batch))
        chunk = values[rows]
        if floating and np.isnan(chunk).any():
            raise ValueError(f"{name} contains NaN")
        target = chunk[np.arange(chunk.shape[0]), target_cols[rows]][:, None]
        greater[rows] = np.count_nonzero(chunk > target, axis=1)
        tied[rows] = np.count_nonzero(chunk == target, axis=1) - 1
    return greater, tied


def _exclusion_pairs(exclude, batch: int, n_items: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (row, item) pairs to drop, padding (0) removed; raises on a bad entry."""
    if len(exclude) != batch:
        raise ValueError(f"exclude has {len(exclude)} entries but the scores have {batch} rows")
    arrays, lengths = [], np.zeros(batch, dtype=np.int64)
    for row, items in enumerate(exclude):
        items = np.asarray(items)
        if items.size == 0:
            continue
        if items.ndim != 1 or items.dtype == bool or not np.issubdtype(items.dtype, np.integer):
            raise ValueError(f"exclude[{row}] must be a 1-D integer array, got {items.dtype} {items.shape}")
        arrays.append(items.astype(np.int64, copy=False))
        lengths[row] = items.size
    if not arrays:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    rows = np.repeat(np.arange(batch, dtype=np.int64), lengths)
    items = np.concatenate(arrays)
    if items.min() < 0 or items.max() > n_items:
        bad_at = np.flatnonzero((items < 0) | (items > n_items))[0]
        raise ValueError(f"exclude[{rows[bad_at]}] holds item {items[bad_at]}, outside [0, {n_items}]")
    hits = items == targets[rows]
    if hits.any():
        row = rows[np.flatnonzero(hits)[0]]
        raise ValueError(f"exclude[{row}] contains that row's target {targets[row]}")
    keep = items != 0
    keys = np.unique(rows[keep] * (n_items + 1) + items[keep])
    return keys // (n_items + 1), keys % (n_items + 1)


def target_ranks(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """1-based rank of each row's target item among all items.

    Args:
        scores: (batch, n_items + 1) float; higher is better. Column 0 (padding) is ignored
            whatever it holds. No NaN in columns 1..n_items.
        targets: (batch,) int in 1..n_items.
        exclude: optional, one 1-D int array per row of items removed from that row's
            ranking (e.g. items already seen); a (batch, m) int array padded with 0 works
            too. Duplicates and 0 are ignored. A row's target must not be excluded.

    Returns:
        (batch,) int64 ranks in 1..n_items: ``1 + #greater + #tied_others // 2``, counted
        over the items that are not excluded.

    Raises:
        ValueError: on a shape mismatch, a target out of range or excluded, NaN scores.
    """
    scores = _check_score_matrix(scores, "scores")
    batch, width = scores.shape
    n_items = width - 1
    if n_items < 1:
        raise ValueError(f"scores needs at least 2 columns (padding + 1 item), got {width}")
    targets = _check_index_vector(targets, "targets", batch, 1, n_items)

    greater, tied = _greater_and_tied(scores[:, 1:], targets - 1, "scores")

    if exclude is not None:
        rows, items = _exclusion_pairs(exclude, batch, n_items, targets)
        if rows.size:
            excluded = scores[rows, items]
            target_of_row = scores[rows, targets[rows]]
            greater -= np.bincount(rows, weights=excluded > target_of_row, minlength=batch).astype(np.int64)
            tied -= np.bincount(rows, weights=excluded == target_of_row, minlength=batch).astype(np.int64)
    return 1 + greater + tied // 2


# --------------------------------------------------------------------------- rank metrics


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of rows whose target rank is <= k. ranks: (n,) 1-based."""
    ranks = _check_ranks(ranks)
    k = _check_k(k)
    return float(np.mean(ranks <= k))


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item per row: 1/log2(rank + 1) if rank <= k else 0."""
    ranks = _check_ranks(ranks)
    k = _check_k(k)
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: np.ndarray, k: int | None = None) -> float:
    """Mean reciprocal rank; with ``k``, ranks beyond k count 0 (RecBole's MRR@k)."""
    ranks = _check_ranks(ranks)
    reciprocal = 1.0 / ranks
    if k is not None:
        k = _check_k(k)
        reciprocal = np.where(ranks <= k, reciprocal, 0.0)
    return float(np.mean(reciprocal))


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = (10,)) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k for every k in ``ks`` (in that order), then uncut "MRR"."""
    ranks = _check_ranks(ranks)
    if isinstance(ks, (int, np.integer)):
        raise ValueError(f"ks must be a sequence of integers, got {ks!r}")
    ks = [_check_k(k, "ks") for k in ks]
    result: dict[str, float] = {}
    for k in ks:
        result[f"HR@{k}"] = hit_rate_at_k(ranks, k)
        result[f"NDCG@{k}"] = ndcg_at_k(ranks, k)
        result[f"MRR@{k}"] = mrr(ranks, k)
    result["MRR"] = mrr(ranks)
    return result


def ndcg_per_row(ranks: np.ndarray, k: int) -> np.ndarray:
    """(n,) NDCG@k of each row (``ndcg_at_k`` is their mean)."""
    ranks = _check_ranks(ranks)
    return np.where(ranks <= _check_k(k), 1.0 / np.log2(ranks + 1.0), 0.0)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, groups: np.ndarray, resamples: int = 2000,
                     seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` with a percentile bootstrap interval that resamples whole groups
    (users: their decision points are not independent).

    Args:
        a, b: (n,) paired per-row values (for example ``ndcg_per_row`` of two models);
        groups: (n,) the group (user) of each row.

    Returns:
        difference, low, high (the ``level`` interval) and relative (difference / mean of b).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(groups) != len(a) or len(a) == 0:
        raise ValueError(f"a, b and groups must be equal-length non-empty vectors, got {a.shape}, {b.shape}, {len(groups)}")
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = group.max() + 1
    sums, counts = np.bincount(group, a - b, n_groups), np.bincount(group, minlength=n_groups).astype(np.float64)
    weights = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=resamples)
    draws = (weights @ sums) / (weights @ counts)
    tail = (1.0 - level) / 2.0
    difference = float(np.mean(a - b))
    return {"difference": difference, "low": float(np.quantile(draws, tail)), "high": float(np.quantile(draws, 1.0 - tail)),
            "relative": difference / float(np.mean(b)) if np.mean(b) > 0 else float("nan")}


# --------------------------------------------------------------------------- classification


def accuracy_at_k(probabilities: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of rows whose target class is among the k highest.

    Args:
        probabilities: (n, C) class scores (probabilities or logits), no NaN.
        targets: (n,) int class indices in 0..C-1.
        k: cut-off >= 1; k >= C gives 1.0.

    Ties are split as in ``target_ranks``: the target counts as top-k when
    ``1 + #greater + #tied_others // 2 <= k``.
    """
    probabilities = _check_score_matrix(probabilities, "probabilities")
    n, n_classes = probabilities.shape
    targets = _check_index_vector(targets, "targets", n, 0, n_classes - 1)
    k = _check_k(k)
    greater, tied = _greater_and_tied(probabilities, targets, "probabilities")
    return float(np.mean(1 + greater + tied // 2 <= k))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (n,), tied values sharing the mean of their positions."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]  # exclusive
    group_rank = (starts + 1 + ends) / 2.0  # mean of positions starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic (average ranks for ties).

    Args:
        labels: (n,) 0/1 or bool.
        scores: (n,) real, no NaN (infinities are fine); higher means more likely positive.

    Returns:
        AUC in [0, 1]; ``nan`` (no exception, no warning) when only one class is present,
        so per-segment AUCs can be averaged with ``np.nanmean``.
    """
    labels = _check_binary_labels(labels)
    scores = _check_real_vector(scores, "scores", labels.size)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(scores)[labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def calibration_bins(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability-diagram table over ``n_bins`` equal-width bins of [0, 1].

    Args:
        labels: (n,) 0/1 or bool outcomes.
        probabilities: (n,) predicted P(label = 1) in [0, 1]; 1.0 falls in the last bin.
        n_bins: number of bins >= 1.

    Returns:
        One row per bin, all ``n_bins`` of them, columns ``bin`` (0..n_bins-1),
        ``mean_predicted``, ``observed_rate`` (NaN for an empty bin) and ``count``.
    """
    labels = _check_binary_labels(labels)
    probabilities = _check_real_vector(probabilities, "probabilities", labels.size)
    n_bins = _check_k(n_bins, "n_bins")
    if probabilities.min() < 0.0 or probabilities.max() > 1.0:
        raise ValueError("probabilities must lie in [0, 1]")
    bins = np.minimum((probabilities * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    predicted_sum = np.bincount(bins, weights=probabilities, minlength=n_bins)
    positive_sum = np.bincount(bins, weights=labels.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(count > 0, predicted_sum / count, np.nan)
        observed_rate = np.where(count > 0, positive_sum / count, np.nan)
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins, dtype=np.int64),
            "mean_predicted": mean_predicted,
            "observed_rate": observed_rate,
            "count": count.astype(np.int64),
        }
    )
