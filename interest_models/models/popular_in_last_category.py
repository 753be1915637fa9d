"""PopularInLastCategory: popular items of the category of the user's last item first."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interest_models.models.baseline import Baseline, minus_inf_padding


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

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        return {"item_category": self.item_category}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_category = arrays["item_category"]

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
        return minus_inf_padding(scores)
