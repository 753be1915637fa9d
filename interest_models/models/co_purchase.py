"""CoPurchase: items bought (or viewed) in the same sessions as the user's recent items."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse  # a dependency of xgboost, already in the environment

from interest_models.models.baseline import Baseline, check_positive_int, minus_inf_padding


class CoPurchase(Baseline):
    """Same-basket neighbours: "people who had this in a session also had ...".

    Fitted on baskets, not on user histories: ``fit(baskets, n_items)`` with one 1-D int
    array of item indices per training session (or basket). ``co(i, j)`` counts the baskets
    holding both i and j (i != j; an item repeated in a basket counts once); with
    ``normalise`` it is divided by the baskets holding i, so ``co(i, j) = P(j in basket |
    i in basket)`` and a recent item seen in many baskets does not drown the others.
    A user's score for item j is ``sum_i co(i, j)`` over the distinct items i among the last
    ``last_n`` recent items, plus ``1e-9 * popularity / max popularity`` so ties, and users
    with no co-occurring items, fall back to popularity order.
    """

    name = "co_purchase"
    TIE_BREAK = 1e-9

    def __init__(self, last_n: int = 10, normalise: bool = False) -> None:
        super().__init__()
        self.last_n = check_positive_int(last_n, "last_n")
        if not isinstance(normalise, (bool, np.bool_)):
            raise TypeError(f"normalise must be True or False, got {normalise!r}")
        self.normalise = bool(normalise)
        self.co_occurrence: sparse.csr_matrix | None = None  # (n_items + 1, n_items + 1) float64

    def _fit(self, histories: list[np.ndarray], item_category: np.ndarray | None) -> None:
        size = self.n_items + 1
        lengths = [items.size for items in histories]
        baskets = np.repeat(np.arange(len(histories)), lengths)
        items = np.concatenate(histories) if histories else np.empty(0, dtype=np.int64)
        basket_item = sparse.csr_matrix((np.ones(items.size), (baskets, items)), shape=(len(histories), size))
        basket_item.sum_duplicates()
        basket_item.data[:] = 1.0  # each basket's set of items
        co = (basket_item.T @ basket_item).tocoo()
        off_diagonal = co.row != co.col
        row, col, counts = co.row[off_diagonal], co.col[off_diagonal], co.data[off_diagonal]
        if self.normalise:
            baskets_per_item = np.asarray(basket_item.sum(axis=0)).ravel()
            counts = counts / baskets_per_item[row]
        self.co_occurrence = sparse.csr_matrix((counts, (row, col)), shape=(size, size))

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        c = self.co_occurrence
        return {"co_occurrence_data": c.data, "co_occurrence_indices": c.indices, "co_occurrence_indptr": c.indptr}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        size = self.n_items + 1
        self.co_occurrence = sparse.csr_matrix(
            (arrays["co_occurrence_data"], arrays["co_occurrence_indices"], arrays["co_occurrence_indptr"]),
            shape=(size, size),
        )

    def _arguments(self) -> dict:
        return {"last_n": self.last_n, "normalise": self.normalise}

    def score(self, recent: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, n_items + 1) float64 co-occurrence with the last ``last_n`` recent items;
        column 0 is -inf."""
        recent = self._recent(recent)
        tails = [np.unique(items[-self.last_n:]) for items in recent]
        rows = np.repeat(np.arange(len(tails)), [items.size for items in tails])
        items = np.concatenate(tails) if tails else np.empty(0, dtype=np.int64)
        weights = sparse.csr_matrix((np.ones(items.size), (rows, items)), shape=(len(tails), self.n_items + 1))
        tie_break = self.TIE_BREAK * self.popularity / max(int(self.popularity.max()), 1)
        scores = (weights @ self.co_occurrence).toarray() + tie_break[None, :]
        return minus_inf_padding(scores)
