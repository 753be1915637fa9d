"""ItemKNN: item-to-item cosine neighbours of the user's recent items."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse  # a dependency of xgboost, already in the environment

from interest_models.models.baseline import Baseline, check_positive_int, minus_inf_padding


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
        self.neighbours = check_positive_int(neighbours, "neighbours")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        self.decay = float(decay)
        self.last_n = check_positive_int(last_n, "last_n")
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

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        s = self.similarity
        return {"similarity_data": s.data, "similarity_indices": s.indices, "similarity_indptr": s.indptr}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        size = self.n_items + 1
        self.similarity = sparse.csr_matrix(
            (arrays["similarity_data"], arrays["similarity_indices"], arrays["similarity_indptr"]), shape=(size, size)
        )

    def _arguments(self) -> dict:
        return {"neighbours": self.neighbours, "decay": self.decay, "last_n": self.last_n}

    def score(self, recent: Sequence[np.ndarray], last_n: int | None = None) -> np.ndarray:
        """(batch, n_items + 1) float64 recency-weighted neighbour similarity; column 0 is -inf.

        ``last_n`` overrides the constructor's for this call.
        """
        recent = self._recent(recent)
        last_n = self.last_n if last_n is None else check_positive_int(last_n, "last_n")
        tails = [items[-last_n:] for items in recent]
        lengths = [items.size for items in tails]
        rows = np.repeat(np.arange(len(tails)), lengths)
        items = np.concatenate(tails) if tails else np.empty(0, dtype=np.int64)
        steps_back = np.concatenate([np.arange(n - 1, -1, -1) for n in lengths]) if tails else items
        weights = sparse.csr_matrix(
            (self.decay ** steps_back.astype(np.float64), (rows, items)), shape=(len(tails), self.n_items + 1)
        )  # repeated items are summed
        tie_break = self.TIE_BREAK * self.popularity / max(int(self.popularity.max()), 1)
        scores = (weights @ self.similarity).toarray() + tie_break[None, :]
        return minus_inf_padding(scores)
