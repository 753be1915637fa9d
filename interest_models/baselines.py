"""Non-learned baselines for next-item ranking: popularity, popularity in the last
category, and item-to-item KNN.

Every baseline is fitted on training histories only and scores all items for a batch of
users, in the layout the metrics expect: a (batch, n_items + 1) float64 matrix whose column
0 (padding) is ``-inf``. Items are the integers ``1..n_items``; a 0 inside a history or a
recent sequence is padding and is dropped, so left- or right-padded (batch, seq_len) int
arrays can be passed as they are. Everything is deterministic.

    model = ItemKNN(neighbours=100).fit(train_histories, n_items)
    ranks = target_ranks(model.score(recent), targets, exclude=recent)
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from scipy import sparse  # a dependency of xgboost, already in the environment


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _item_sequences(sequences: Sequence[np.ndarray], n_items: int, name: str) -> list[np.ndarray]:
    """Validate per-user item arrays; returns int64 copies with padding (0) removed."""
    if isinstance(sequences, np.ndarray) and sequences.dtype != object and sequences.ndim != 2:
        raise ValueError(f"{name} must be a list of 1-D item arrays or a 2-D array, got shape {sequences.shape}")
    cleaned = []
    for row, items in enumerate(sequences):
        items = np.asarray(items)
        if items.size == 0:
            cleaned.append(np.empty(0, dtype=np.int64))
            continue
        if items.ndim != 1 or items.dtype == bool or not np.issubdtype(items.dtype, np.integer):
            raise ValueError(f"{name}[{row}] must be a 1-D integer array, got {items.dtype} {items.shape}")
        if items.min() < 0 or items.max() > n_items:
            raise ValueError(f"{name}[{row}] holds items outside [0, {n_items}]")
        cleaned.append(items[items != 0].astype(np.int64))
    return cleaned


def _minus_inf_padding(scores: np.ndarray) -> np.ndarray:
    scores[:, 0] = -np.inf
    return scores


class Baseline(ABC):
    """Contract shared by the baselines: ``fit`` on training histories, ``score`` all items.

    ``fit`` validates its inputs and counts item popularity (``self.popularity``:
    (n_items + 1,) int64 interaction counts, index 0 always 0) before the subclass hook
    ``_fit``; ``score`` is the subclass's own.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self.n_items: int | None = None
        self.popularity: np.ndarray | None = None

    def fit(
        self,
        histories: Sequence[np.ndarray],
        n_items: int,
        item_category: np.ndarray | None = None,
    ) -> Baseline:
        """Fit on training histories.

        Args:
            histories: one time-ordered 1-D int array of item indices per user (0 = padding).
            n_items: number of items; valid items are 1..n_items.
            item_category: optional (n_items + 1,) int category per item (0 for padding);
                required by ``PopularInLastCategory``, ignored by the others.

        Returns:
            self.
        """
        n_items = _check_positive_int(n_items, "n_items")
        histories = _item_sequences(histories, n_items, "histories")
        if item_category is not None:
            item_category = np.asarray(item_category)
            if item_category.shape != (n_items + 1,):
                raise ValueError(f"item_category must have shape ({n_items + 1},), got {item_category.shape}")
            if item_category.dtype == bool or not np.issubdtype(item_category.dtype, np.integer):
                raise ValueError(f"item_category must hold integers, got dtype {item_category.dtype}")
            if item_category.min() < 0:
                raise ValueError("item_category must be >= 0")
            item_category = item_category.astype(np.int64)
        all_items = np.concatenate(histories) if histories else np.empty(0, dtype=np.int64)
        self.popularity = np.bincount(all_items, minlength=n_items + 1).astype(np.int64)
        self.n_items = n_items
        self._fit(histories, item_category)
        return self

    def _fit(self, histories: list[np.ndarray], item_category: np.ndarray | None) -> None:
        """Subclass hook: histories are validated int64 arrays without padding."""

    @abstractmethod
    def score(self, recent: Sequence[np.ndarray]) -> np.ndarray:
        """Scores (batch, n_items + 1) float64 for users whose time-ordered recent items
        are ``recent`` (one 1-D int array per user, or a 0-padded 2-D array); column 0 is -inf."""

    def _recent(self, recent: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.n_items is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        return _item_sequences(recent, self.n_items, "recent")


class MostPopular(Baseline):
    """Global interaction counts, the same for every user."""

    name = "most_popular"

    def score(self, recent: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, n_items + 1) float64 interaction counts; column 0 is -inf."""
        recent = self._recent(recent)
        scores = np.tile(self.popularity.astype(np.float64), (len(recent), 1))
        return _minus_inf_padding(scores)


class PopularInLastCategory(Baseline):
    """Items of the category of the user's last item first, by popularity; then all other
    items by global popularity. Users with no recent item get global popularity."""

    name = "popular_in_last_category"

    def __init__(self) -> None:
        super().__init__()
        self.item_category: np.ndarray | None = None

    def _fit(self, histories: list[np.ndarray], item_category: np.ndarray | None) -> None:
        if item_category is None:
            raise ValueError("item_category is required by PopularInLastCategory")
        self.item_category = item_category

    def score(self, recent: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, n_items + 1) float64: count, plus (max count + 1) for items in the last
        item's category; column 0 is -inf."""
        recent = self._recent(recent)
        last_category = np.array(
            [self.item_category[items[-1]] if items.size else -1 for items in recent], dtype=np.int64
        )
        popularity = self.popularity.astype(np.float64)
        boosted = popularity + (popularity.max() + 1.0)
        in_last = self.item_category[None, :] == last_category[:, None]
        scores = np.where(in_last, boosted[None, :], popularity[None, :])
        return _minus_inf_padding(scores)


class ItemKNN(Baseline):
    """Item-to-item cosine similarity over the sets of items users interacted with.

    ``sim(i, j) = n_users(i and j) / sqrt(n_users(i) * n_users(j))``, self-similarity
    removed, only the ``neighbours`` most similar items kept per item (ties by item index).
    A user's score for item j is ``sum_s decay**s * sim(recent[-1 - s], j)`` over the last
    ``last_n`` recent items (s = 0 is the most recent; repeats add up), plus
    ``1e-9 * popularity / max popularity`` so ties, and users with no neighbours, fall back to
    popularity order.
    """

    name = "item_knn"
    TIE_BREAK = 1e-9

    def __init__(self, neighbours: int = 100, decay: float = 0.9, last_n: int = 20) -> None:
        super().__init__()
        self.neighbours = _check_positive_int(neighbours, "neighbours")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        self.decay = float(decay)
        self.last_n = _check_positive_int(last_n, "last_n")
        self.similarity: sparse.csr_matrix | None = None  # (n_items + 1, n_items + 1)

    def _fit(self, histories: list[np.ndarray], item_category: np.ndarray | None) -> None:
        size = self.n_items + 1
        lengths = [items.size for items in histories]
        users = np.repeat(np.arange(len(histories)), lengths)
        items = np.concatenate(histories) if histories else np.empty(0, dtype=np.int64)
        user_item = sparse.csr_matrix(
            (np.ones(items.size), (users, items)), shape=(len(histories), size)
        )
        user_item.sum_duplicates()
        user_item.data[:] = 1.0  # each user's set of items
        co = (user_item.T @ user_item).tocoo()
        users_per_item = np.asarray(user_item.sum(axis=0)).ravel()

        off_diagonal = co.row != co.col
        row, col = co.row[off_diagonal], co.col[off_diagonal]
        sim = co.data[off_diagonal] / np.sqrt(users_per_item[row] * users_per_item[col])

        order = np.lexsort((col, -sim, row))  # by row, most similar first, then item index
        row, col, sim = row[order], col[order], sim[order]
        row_start = np.searchsorted(row, np.arange(size))
        position = np.arange(row.size) - row_start[row]
        keep = position < self.neighbours
        self.similarity = sparse.csr_matrix((sim[keep], (row[keep], col[keep])), shape=(size, size))
        self._tie_break = self.TIE_BREAK * self.popularity / max(int(self.popularity.max()), 1)

    def score(self, recent: Sequence[np.ndarray], last_n: int | None = None) -> np.ndarray:
        """(batch, n_items + 1) float64 recency-weighted neighbour similarity; column 0 is -inf.

        ``last_n`` overrides the constructor's for this call.
        """
        recent = self._recent(recent)
        last_n = self.last_n if last_n is None else _check_positive_int(last_n, "last_n")
        tails = [items[-last_n:] for items in recent]
        lengths = [items.size for items in tails]
        rows = np.repeat(np.arange(len(tails)), lengths)
        items = np.concatenate(tails) if tails else np.empty(0, dtype=np.int64)
        steps_back = np.concatenate([np.arange(n - 1, -1, -1) for n in lengths]) if tails else items
        weights = sparse.csr_matrix(
            (self.decay ** steps_back.astype(np.float64), (rows, items)), shape=(len(tails), self.n_items + 1)
        )  # repeated items are summed
        scores = (weights @ self.similarity).toarray() + self._tie_break[None, :]
        return _minus_inf_padding(scores)
