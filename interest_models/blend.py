"""The blended ensemble: a learned mix of the sequence model's and the ranker's scores.

Within each decision point both scores are standardised over its candidates, then mixed
as ``weight * lstm + (1 - weight) * ranker``. The weight is chosen on the validation
period (NDCG@10 of the full ranking), never on test.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def standardise_within(scores: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Scores minus their query's mean, over their query's standard deviation (1 if 0)."""
    out = np.empty_like(scores, dtype=np.float64)
    for q in np.unique(query):
        rows = query == q
        values = scores[rows].astype(np.float64)
        spread = values.std()
        out[rows] = (values - values.mean()) / (spread if spread > 0 else 1.0)
    return out


@dataclass(frozen=True)
class Blend:
    lstm_weight: float  # in [0, 1]; 1 = sequence model only, 0 = ranker only

    def combine(self, lstm_scores: np.ndarray, ranker_scores: np.ndarray, query: np.ndarray) -> np.ndarray:
        return self.lstm_weight * standardise_within(lstm_scores, query) + (1 - self.lstm_weight) * standardise_within(ranker_scores, query)

    @classmethod
    def learn(cls, lstm_scores: np.ndarray, ranker_scores: np.ndarray, query: np.ndarray, objective,
              grid: np.ndarray | None = None) -> tuple["Blend", dict[float, float]]:
        """Pick the weight that maximises ``objective(blended_scores)`` (higher is better).

        Returns:
            The blend and the objective at every weight tried.
        """
        grid = np.round(np.linspace(0, 1, 21), 2) if grid is None else grid
        lstm_z, ranker_z = standardise_within(lstm_scores, query), standardise_within(ranker_scores, query)
        tried = {float(w): float(objective(w * lstm_z + (1 - w) * ranker_z)) for w in grid}
        best = max(tried, key=lambda w: (tried[w], -abs(w - 0.5)))
        return cls(best), tried
