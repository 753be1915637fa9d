"""MostPopular: the baseline that ranks every user's items by global interaction counts."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interest_models.models.baseline import Baseline, minus_inf_padding


class MostPopular(Baseline):
    """Global interaction counts, the same for every user."""

    name = "most_popular"

    def score(self, recent: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, n_items + 1) float64 interaction counts; column 0 is -inf."""
        recent = self._recent(recent)
        scores = np.tile(self.popularity.astype(np.float64), (len(recent), 1))
        return minus_inf_padding(scores)
