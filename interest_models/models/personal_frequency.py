"""PersonalFrequency: the user's own items again, most frequent first (repeat purchase)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interest_models.models.baseline import Baseline, minus_inf_padding


class PersonalFrequency(Baseline):
    """The items of the user's recent sequence, by how often they occur there, ties broken
    by recency; every other item after them, by global popularity.

    For an item the user has: ``count + position / (n + 1)``, where ``count`` (>= 1) is how
    often it occurs among the user's ``n`` recent items and ``position`` (1..n) is its last
    occurrence (n = the most recent), so the fraction only breaks ties between counts. Every
    other item: ``popularity / (max popularity + 1)`` in [0, 1), below all of the user's own.
    """

    name = "personal_frequency"

    def score(self, recent: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, n_items + 1) float64 as above; column 0 is -inf."""
        recent = self._recent(recent)
        lengths = np.array([items.size for items in recent], dtype=np.int64)
        rows = np.repeat(np.arange(len(recent)), lengths)
        items = np.concatenate(recent) if recent else np.empty(0, dtype=np.int64)
        positions = np.concatenate([np.arange(1, n + 1) for n in lengths]) if recent else items
        shape = (len(recent), self.n_items + 1)
        counts = np.zeros(shape)
        np.add.at(counts, (rows, items), 1.0)
        recency = np.zeros(shape)
        np.maximum.at(recency, (rows, items), positions / (lengths[rows] + 1.0))
        fallback = self.popularity / (self.popularity.max() + 1.0)
        scores = np.where(counts > 0, counts + recency, fallback[None, :])
        return minus_inf_padding(scores)
